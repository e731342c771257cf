"""Autoguidance (discodiff/autoguidance.py): D~ = G + w (D - D_weak) with a weak version of the model, its
composition with latent and class guidance, its evaluation count, its refusals, and the weak run of stage I on the
strong run's frozen encoder (`train --weak-of` / `--encoder-from`). Tiny models throughout."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from discodiff import autoguidance
from discodiff.autoguidance import Autoguide, check_runs, latent_form
from discodiff.checkpoint import MODEL, load_tensors
from discodiff.cli import main
from discodiff.cli.sample import describe_passes
from discodiff.config import ConfigError, ModelConfig, preset_config
from discodiff.model import DiscoDiff
from discodiff.pipeline import PassCounter, generate, generate_batches
from discodiff.runs import Run, file_sha256
from discodiff.sampling import karras_sigmas

pytestmark = [pytest.mark.usefixtures("one_thread")]

UNET = dict(name="unet", model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0,
            channels_per_head=8, latent_dim=16, latent_depth=1, latent_heads=2, latent_injection="embedding")
VIT = dict(name="vit", patch_size=2, width=32, depth=1, heads=4)
M, K, CLASSES = 2, 4, 3


def tiny(num_latents=M, num_classes=CLASSES, width=16, seed=0, **model) -> DiscoDiff:
    """A tiny U-Net whose weights are all moved a little (a fresh U-Net outputs exactly 0 and ignores z)."""
    net = dict(UNET, model_channels=width)
    if not num_latents:
        net = {k: v for k, v in net.items() if not k.startswith("latent_")}
    cfg = ModelConfig(data_shape=[1, 8, 8], num_classes=num_classes, num_latents=num_latents,
                      **{"codebook_size": K, **model}, network=net, encoder=dict(VIT))
    torch.manual_seed(seed)
    m = DiscoDiff(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def weak_of(strong: DiscoDiff, width=8, seed=5) -> DiscoDiff:
    """A narrower model that shares the strong model's encoder (as a weak run on its frozen encoder does)."""
    weak = tiny(strong.num_latents, strong.config.num_classes, width=width, seed=seed)
    weak.encoder.load_state_dict(strong.encoder.state_dict())
    return weak


@pytest.fixture(scope="module")
def models():
    strong = tiny()
    return strong, weak_of(strong), tiny(0, width=8, seed=7)  # strong, weak on its encoder, plain weak


SEEDS, SIGMAS = list(range(10, 15)), karras_sigmas(4)
Z = torch.tensor([[0, 1], [2, 3], [1, 1], [3, 0], [0, 2]])


def _gen(model, **kw):
    return generate(model, SEEDS, SIGMAS, z=Z, class_labels=torch.tensor([0, 1, 2, 0, 1]), **kw)[0]


# ---- the sampler --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [dict(), dict(guidance=1.0, class_guidance=0.5, guidance_interval=(0.2, 5.0))])
def test_w0_gives_exactly_the_unguided_samples(models, guidance):
    strong, weak, _ = models
    plain = _gen(strong, **guidance)
    assert torch.equal(_gen(strong, autoguide=(weak, 0.0), **guidance), plain)
    assert torch.equal(_gen(strong, autoguide=Autoguide(weak, 0.0, (0.1, 1.0)), **guidance), plain)


def test_the_model_as_its_own_weak_model_changes_nothing(models):
    """D - D_0 = 0 when D_0 is D itself given the same z, up to float rounding (the weak pass runs on a batch of
    its own); given the null latent it is another input, and the samples move."""
    strong = models[0]
    for guidance in (dict(), dict(guidance=1.0, class_guidance=0.5)):
        plain = _gen(strong, **guidance)
        guided = _gen(strong, autoguide=Autoguide(strong, 3.0, latents="z"), **guidance)
        torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)
    moved = _gen(strong, autoguide=Autoguide(strong, 3.0, latents="null"))
    assert (moved - _gen(strong)).abs().max() > 1e-3


@pytest.mark.parametrize("form", ["z", "null", "plain"])
def test_the_formula_against_a_hand_computation(models, form):
    """G + w (D(z, c) - D_0(z_0, c)), G the latent- and class-guided output, inside the interval; G outside."""
    strong, weak, plain = models
    w, wl, wc, interval = 1.5, 0.7, 0.4, (0.5, 3.0)
    d0_model = plain if form == "plain" else weak
    guide = Autoguide(d0_model, w, interval, None if form == "plain" else form)
    z, c = Z[:2], torch.tensor([1, 2])
    den = autoguidance.make_denoiser(strong, guide, z, c, guidance=wl, class_guidance=wc)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        for s in (2.0, 4.0):
            sigma = torch.full((2,), s)
            d = strong.denoise(x, sigma, z=z, class_labels=c)
            d_null = strong.denoise(x, sigma, z=None, class_labels=c)
            d_noclass = strong.denoise(x, sigma, z=z, class_labels=None)
            guided = d + wl * (d - d_null)
            guided = guided + wc * (guided - d_noclass)
            d0 = d0_model.denoise(x, sigma, z=z if form == "z" else None, class_labels=c)
            expected = guided + w * (d - d0) if s <= interval[1] else guided
            torch.testing.assert_close(den(x, sigma), expected, rtol=1e-5, atol=1e-5)


def test_the_evaluation_count_names_both_models(models):
    strong, weak, _ = models
    steps, nfe, n = 4, 7, len(SEEDS)  # Heun, 4 steps: 7 evaluations
    with PassCounter(strong, weak) as passes:
        _gen(strong, guidance=1.0, autoguide=(weak, 1.0))
    assert passes.samples_of == [2 * nfe * n, nfe * n] and passes.calls_of == [nfe, nfe]
    assert passes.total == 3 * nfe * n and passes.calls == 2 * nfe
    with PassCounter(strong, weak) as passes:  # an interval: the weak model only where sigma lies inside it
        _gen(strong, autoguide=(weak, 1.0, (0.0, 1.0)))
    evaluated = [SIGMAS[0], *(s for s in SIGMAS[1:-1] for _ in range(2))]  # Heun: where it calls the denoiser
    inside = sum(1 for s in evaluated if 0.0 < s <= 1.0)
    assert len(evaluated) == nfe and 0 < inside < nfe
    assert passes.calls_of == [nfe, inside] and passes.samples_of[1] == inside * n
    assert describe_passes(steps, 14, weak=7) == ("4 steps = 14 network evaluations per sample (7 of the model; 7 "
                                                   "of the weak model: autoguidance)")
    assert describe_passes(steps, 21, 2, weak=7) == ("4 steps = 21 network evaluations per sample (7 network calls "
                                                     "on a doubled batch: guidance; 7 of the weak model: "
                                                     "autoguidance)")


def test_seeds_fix_the_samples_whatever_the_batch(models):
    strong, weak, _ = models
    kw = dict(z=Z, class_labels=torch.tensor([0, 1, 2, 0, 1]), guidance=0.5, autoguide=(weak, 2.0, (0.1, 5.0)))
    whole = generate(strong, SEEDS, SIGMAS, **kw)[0]
    parts = torch.cat([x for _, x, _ in generate_batches(strong, SEEDS, SIGMAS, batch=2, **kw)])
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-4)  # (a batch of another size rounds otherwise)
    torch.testing.assert_close(generate(strong, SEEDS[3:4], SIGMAS, **{**kw, "z": Z[3:4], "class_labels": 0})[0][0],
                               whole[3], rtol=1e-4, atol=1e-4)
    assert torch.equal(generate(strong, SEEDS, SIGMAS, **kw)[0], whole)


# ---- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,needle", [
    (dict(num_classes=2), "classes"),
    (dict(sigma_data=1.0), "sigma_data"),
    (dict(process="pfgmpp"), "process"),
])
def test_weak_models_that_do_not_fit_are_refused(models, change, needle):
    strong = models[0]
    other = DiscoDiff(dataclasses.replace(strong.config, **change)).eval()
    with pytest.raises(ConfigError, match=needle):
        _gen(strong, autoguide=(other, 1.0))


def test_latents_of_another_structure_or_meaning_are_refused(models):
    strong, weak, plain = models
    own_encoder = tiny(width=8, seed=9)  # a DisCo-Diff weak model trained on its own: other latents
    other_k = tiny(width=8, seed=9, codebook_size=K + 1)
    assert latent_form(strong, weak) == "z" and latent_form(strong, own_encoder) == "null"
    assert latent_form(strong, plain) == "none" and latent_form(strong, other_k) == "null"
    with pytest.raises(ConfigError, match="encoder is not the model's"):
        latent_form(strong, own_encoder, "z")
    with pytest.raises(ConfigError, match="another structure"):
        latent_form(strong, other_k, "z")
    with pytest.raises(ConfigError, match="hybrid"):
        _gen(strong, autoguide=(weak, 1.0), hybrid=(plain, 1.0))


def test_runs_of_other_data_are_refused_in_one_line():
    a = preset_config("digits")
    a.model.data_shape = [1, 8, 8]
    for change, needle in [(dict(data=dataclasses.replace(a.data, options={"max_images": 10})), "other data"),
                           (dict(model=dataclasses.replace(a.model, data_shape=[1, 16, 16])), "shape"),
                           (dict(model=dataclasses.replace(a.model, num_latents=3)), "another structure")]:
        b = dataclasses.replace(a, **change)
        with pytest.raises(ConfigError, match=needle) as e:
            check_runs(a, b, "R0", "z")
        assert "\n" not in str(e.value)


# ---- the weak run: train --weak-of / --encoder-from, and the command line -------------------------------------

TINY = ["--set", 'model.network={"model_channels": 8, "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2, '
                 '"latent_depth": 1, "dropout": 0.0}',
        "--set", 'model.encoder={"width": 16, "heads": 2, "depth": 1}',
        "--set", "train.batch=32", "--set", "train.tick_kimg=0.128", "--set", "train.lr_rampup_kimg=0",
        "--set", "sample.steps=3", "--quiet"]
FEW = ["--set", 'data={"name": "digits", "options": {"max_images": 300}}']


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny digits DisCo-Diff run R1 with its prior, its weak run on its frozen encoder (--weak-of), a plain weak
    run (--weak-of --latents 0) and a DisCo-Diff run of its own encoder."""
    root = tmp_path_factory.mktemp("autoguidance")
    main(["train", "--preset", "digits", "--run-dir", str(root / "R1"), "--kimg", "0.256", "--lr", "0.005", *TINY,
          *FEW])
    main(["train-prior", "--run-dir", str(root / "R1"), "--kimg", "0.128", "--batch", "64", "--quiet"])
    main(["train", "--weak-of", str(root / "R1"), "--run-dir", str(root / "R0"), "--quiet"])
    main(["train", "--weak-of", str(root / "R1"), "--run-dir", str(root / "R0plain"), "--latents", "0",
          "--kimg-scale", "0.5", "--quiet"])
    main(["train", "--preset", "digits", "--run-dir", str(root / "own"), "--kimg", "0.128", *TINY, *FEW])
    return root


def test_weak_of_builds_a_smaller_shorter_run_on_the_frozen_encoder(runs):
    strong, weak = Run(runs / "R1").config, Run(runs / "R0").config
    assert weak.model.network["model_channels"] == 4 and weak.train.kimg == strong.train.kimg * 0.25
    assert weak.data == strong.data and weak.model.num_latents == strong.model.num_latents
    assert weak.model.encoder == strong.model.encoder
    assert weak.train.encoder_from == {"run": str((runs / "R1").resolve()), "sha256": file_sha256(runs / "R1" / MODEL)}
    enc = {k: v for k, v in load_tensors(runs / "R1" / MODEL).items() if k.startswith("encoder.")}
    mine = load_tensors(runs / "R0" / MODEL)
    assert all(torch.equal(mine[k], v) for k, v in enc.items())  # trained, yet the encoder did not move
    assert Run(runs / "R0").trained_nimg("stage1") >= 64  # (it did train)
    plain = Run(runs / "R0plain").config
    assert plain.model.num_latents == 0 and plain.train.encoder_from is None
    assert plain.train.kimg == strong.train.kimg * 0.5


def test_the_weak_run_of_a_plain_run_is_plain(runs, tmp_path):
    main(["train", "--weak-of", str(runs / "R0plain"), "--run-dir", str(tmp_path / "w"), "--dry-run", "--quiet"])
    main(["train", "--weak-of", str(runs / "R0plain"), "--run-dir", str(tmp_path / "w"), "--quiet"])
    cfg = Run(tmp_path / "w").config
    assert cfg.model.num_latents == 0 and cfg.train.encoder_from is None and cfg.model.network["model_channels"] == 4


def test_a_resumed_weak_run_keeps_the_encoder(runs, tmp_path):
    import shutil
    shutil.copytree(runs / "R0", tmp_path / "R0")
    main(["train", "--run-dir", str(tmp_path / "R0"), "--kimg", "0.128", "--quiet"])
    before, after = load_tensors(runs / "R0" / MODEL), load_tensors(tmp_path / "R0" / MODEL)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))


def test_encoder_from_refusals(runs, tmp_path, capsys):
    cases = [
        (["--preset", "digits", "--encoder-from", str(runs / "R1"), "--latents", "3"], "drop the options"),
        (["--preset", "digits", "--encoder-from", str(runs / "R0plain")], "plain run"),
        (["--preset", "digits", "--encoder-from", str(runs / "R1"), "--init-from", str(runs / "R0plain")],
         "do not go together"),
        (["--preset", "digits", "--encoder-from", str(runs / "R1"), "--set",
          'data={"name": "digits", "options": {"max_images": 200}}'], "other data"),
        (["--weak-of", str(runs / "R1"), "--preset", "digits"], "drop --preset"),
        (["--width-scale", "0.5", "--preset", "digits"], "apply to --weak-of"),
    ]
    for i, (args, needle) in enumerate(cases):
        code, _, err = run_cli(["train", "--run-dir", str(tmp_path / f"x{i}"), "--quiet", *args], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / f"x{i}" / "config.json").exists()


def test_sample_and_fid_options(runs, tmp_path, capsys):
    base = ["sample", "--run-dir", str(runs / "R1"), "--num", "3", "--out"]
    code, out, err = run_cli([*base, str(tmp_path / "a.npz"), "--autoguide-run", str(runs / "R0"),
                              "--autoguidance", "1"], capsys)
    assert code in (0, None), err
    assert "3 steps = 10 network evaluations per sample (5 of the model; 5 of the weak model: autoguidance)" in out
    assert "(the run's latents)" in out
    unguided = np.load(tmp_path / "a.npz")
    run_cli([*base, str(tmp_path / "b.npz")], capsys)
    assert not np.array_equal(unguided["x"], np.load(tmp_path / "b.npz")["x"])
    assert str(unguided["autoguide_run"]) == str(runs / "R0") and float(unguided["autoguidance"]) == 1.0
    for weak, extra, given in [(runs / "R0plain", [], "(no latents)"), (runs / "own", [], "(null latent)"),
                               (runs / "R0", ["--autoguide-latents", "null"], "(null latent)")]:
        code, out, err = run_cli([*base, str(tmp_path / "c.npz"), "--autoguide-run", str(weak), "--autoguidance",
                                  "0.5", *extra], capsys)
        assert code in (0, None) and given in out, err
    for args, needle in [(["--autoguide-run", str(runs / "R0")], "go together"),
                         (["--autoguidance", "1"], "go together"),
                         (["--autoguide-run", str(runs / "own"), "--autoguidance", "1", "--autoguide-latents", "z"],
                          "encoder is not the model's"),
                         (["--autoguide-run", str(runs / "R0plain"), "--autoguidance", "1", "--autoguide-latents",
                           "z"], "plain run")]:
        code, _, err = run_cli([*base, str(tmp_path / "d.npz"), *args], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)


def test_fid_gen_and_the_analyses_take_autoguidance(runs, tmp_path, capsys, monkeypatch):
    from conftest import save_tiny_detector
    pytest.importorskip("matplotlib")
    det = save_tiny_detector(tmp_path / "det.pt")
    calls = []
    real = autoguidance.autoguided_denoiser

    def spy(strong, weak, weight, interval=None):
        calls.append((weight, interval))
        return real(strong, weak, weight, interval)

    monkeypatch.setattr(autoguidance, "autoguided_denoiser", spy)
    auto = ["--autoguide-run", str(runs / "R0"), "--autoguidance", "0.5", "--autoguidance-interval", "0.1,5"]
    res = tmp_path / "gen.json"
    code, _, err = run_cli(["fid", "gen", "--run-dir", str(runs / "R1"), "--num", "3", "--batch", "2", "--detector",
                            str(det), "--out", str(res), *auto], capsys)
    assert code == 0, err
    assert calls and set(calls) == {(0.5, (0.1, 5.0))} and "autoguidance 0.5 by" in err
    record = json.loads(res.read_text())
    assert record["autoguidance"] == 0.5 and record["autoguidance_interval"] == [0.1, 5.0]
    assert record["autoguide_run"] == str(runs / "R0") and record["autoguide_latents"] == "z"
    calls.clear()
    code, _, err = run_cli(["analyze", "guidance", "--run-dir", str(runs / "R1"), "--out", str(tmp_path / "g"),
                            "--detector", str(det), "--num", "2", "--weights", "0,1", *auto], capsys)
    assert code == 0, err
    assert calls and set(calls) == {(0.5, (0.1, 5.0))}


@pytest.mark.parametrize("command", [["sample"], ["fid", "gen"], ["analyze", "oracle"], ["analyze", "guidance"],
                                     ["analyze", "codebook"]], ids=" ".join)
def test_every_command_that_samples_takes_the_autoguidance_options(capsys, command):
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code == 0, err
    for flag in ("--autoguide-run", "--autoguidance ", "--autoguidance-interval", "--autoguide-latents"):
        assert flag in out, (command, flag)
