"""Command-line fixes: the encoder options that fit a switched latent type, one set of sampling options for every
command that samples, loss-vs-sigma with the run's own training loss, and optional packages refused up front."""
import json

import pytest
import torch
from conftest import TINY_TOY_ARGS, one_line_error, run_cli

from discodiff.config import preset_config

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]




def _tiny_toy_model(**model):
    """An untrained tiny toy2d DisCo-Diff model (random weights) with the given model settings."""
    from discodiff.model import DiscoDiff

    cfg = preset_config("toy2d", {"model": {"network": {"hidden": 16, "emb_dim": 8}, "encoder": {"hidden": 16},
                                            **model}})
    torch.manual_seed(0)
    return DiscoDiff(cfg.model).eval()


# ---- loss-vs-sigma measures each run with its own training loss -----------------------------------------------

def test_loss_vs_sigma_of_a_pfgmpp_run_is_its_training_loss():
    """For a PFGM++ run (model.process=pfgmpp), each point is EDMLoss.for_model(cfg) at that sigma and seed: the
    run's own heavy-tailed kernel, not EDM's Gaussian noise."""
    from discodiff.analysis.loss_sigma import loss_vs_sigma, noise_generator
    from discodiff.edm import EDMLoss

    model = _tiny_toy_model(process="pfgmpp", pfgm_D=4)
    y = torch.randn(48, 2, generator=torch.Generator().manual_seed(1)) * 2
    sigmas = [0.05, 1.0, 20.0]
    res = loss_vs_sigma({"pfgm": model}, y, sigmas=sigmas, seed=5, batch=20, null_curves=False)
    loss = EDMLoss.for_model(model.config)
    assert loss.process.D == 4
    z = model.encode(y)
    gaussian = []
    with torch.no_grad():
        for j, sigma in enumerate(sigmas):
            s = torch.full((len(y),), sigma)
            want = loss(lambda x, sg: model.denoise(x, sg, z=z), y, sigma=s, generator=noise_generator(5, j))
            assert res["curves"]["pfgm"]["loss"][j] == pytest.approx(float(want.mean()), rel=1e-5), j
            gaussian.append(float(EDMLoss(sigma_data=model.config.sigma_data)(
                lambda x, sg: model.denoise(x, sg, z=z), y, sigma=s, generator=noise_generator(5, j)).mean()))
    # the kernel matters: EDM's Gaussian noise gives other values at the large noise levels
    assert gaussian[-1] != pytest.approx(res["curves"]["pfgm"]["loss"][-1], rel=1e-3)
    # and the values do not depend on the batch
    again = loss_vs_sigma({"pfgm": model}, y, sigmas=sigmas, seed=5, batch=7, null_curves=False)
    assert again["curves"]["pfgm"]["loss"] == pytest.approx(res["curves"]["pfgm"]["loss"], rel=1e-6)


# ---- --latent-type continuous brings the encoder settings that fit it ------------------------------------------

def test_continuous_latents_on_the_toy_preset_drop_the_discrete_encoder_options(tmp_path, capsys):
    """The README's `train --preset toy2d --latent-type continuous ...` ran into "the mlp encoder's prototypes=true
    applies to discrete latents": the preset's discrete-only encoder option is now set to fit, with a line saying
    so, and the run trains."""
    args = ["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "run"), "--latent-type", "continuous",
            "--latent-dim", "4", "--kl-weight", "0.1"]
    code, out, err = run_cli([*args, "--dry-run"], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["latent_type"] == "continuous" and cfg["model"]["encoder"]["prototypes"] is False
    assert cfg["model"]["encoder"]["name"] == "mlp" and cfg["model"]["encoder"]["hidden"] == 128  # the rest kept
    assert "prototypes=true" in err and "discrete latents only" in err and "model.encoder.prototypes=false" in err
    tiny = ["--kimg", "0.25", *TINY_TOY_ARGS[:-1], "--set", "train.batch=64", "--set", "train.tick_kimg=0.25",
            "--quiet"]
    code, out, err = run_cli([*args, *tiny], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # discrete latents (the default) keep the preset's prototypes
    code, out, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "d"), "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["model"]["encoder"]["prototypes"] is True and "discrete latents" not in err


def test_an_explicit_discrete_encoder_option_with_continuous_latents_is_still_refused(tmp_path, capsys):
    code, _, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "run"), "--latent-type",
                            "continuous", "--set", "model.encoder.prototypes=true", "--dry-run"], capsys)
    one_line_error(code, err, "prototypes=true applies to discrete latents")


def test_continuous_encoder_fixes():
    from discodiff.networks import continuous_encoder_fixes

    assert continuous_encoder_fixes({"name": "mlp", "hidden": 8, "prototypes": True}) == {"prototypes": False}
    assert continuous_encoder_fixes({"name": "mlp", "prototypes": False}) == {}
    assert continuous_encoder_fixes({"name": "vit", "patch_size": 4}) == {}
    assert continuous_encoder_fixes({"name": "kmeans"}) == {}


# ---- the core install: every command works or refuses in one line, naming the extra -----------------------------

OPTIONAL = ("scipy", "scipy.optimize", "matplotlib", "matplotlib.pyplot", "sklearn", "sklearn.datasets", "fontTools",
            "fontTools.ttLib", "onnxruntime", "onnx")


def _uninstall(monkeypatch, *modules):
    import sys
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # as if not installed: importing it raises ImportError


def test_the_toy_metrics_import_without_scipy(monkeypatch):
    import importlib
    import sys

    _uninstall(monkeypatch, "scipy", "scipy.optimize")
    monkeypatch.delitem(sys.modules, "discodiff.metrics.toy", raising=False)
    monkeypatch.delitem(sys.modules, "discodiff.experiments.toy2d", raising=False)
    importlib.import_module("discodiff.experiments.toy2d")  # `discodiff demo` imports it
    toy = importlib.import_module("discodiff.metrics.toy")
    assert toy.mode_tv(torch.zeros(4, 2)) >= 0
    with pytest.raises(ImportError):
        toy.w2_distance(torch.zeros(3, 2), torch.ones(3, 2))


@pytest.mark.parametrize("missing, extra, args", [
    ("scipy", "metrics", []),
    ("matplotlib", "plots", []),
    ("sklearn", "data", []),  # the digits part, which runs after the toy experiment
])
def test_demo_refuses_a_missing_extra_before_any_work(tmp_path, capsys, monkeypatch, missing, extra, args):
    import discodiff.experiments.toy2d as toy2d

    def no_work(*a, **k):
        raise AssertionError("the demo started its work")

    monkeypatch.setattr(toy2d, "run_toy2d", no_work)
    _uninstall(monkeypatch, missing)
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), *args], capsys)
    one_line_error(code, err, missing, f"discodiff[{extra}]")
    assert not (tmp_path / "d").exists()


def test_demo_without_digits_does_not_need_scikit_learn(tmp_path, capsys, monkeypatch):
    import discodiff.experiments.toy2d as toy2d
    from discodiff.errors import ConfigError

    def stop(*a, **k):
        raise ConfigError("reached the toy experiment")

    monkeypatch.setattr(toy2d, "run_toy2d", stop)
    _uninstall(monkeypatch, "sklearn")
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--digits-kimg", "0"], capsys)
    one_line_error(code, err, "reached the toy experiment")


@pytest.mark.parametrize("command", ["loss-vs-sigma", "switching", "codebook", "guidance", "nfe"])
def test_analyses_that_draw_figures_refuse_without_matplotlib_first(tmp_path, capsys, monkeypatch, command):
    _uninstall(monkeypatch, "matplotlib", "matplotlib.pyplot")
    code, _, err = run_cli(["analyze", command, "--run-dir", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "out")], capsys)
    one_line_error(code, err, "matplotlib", "discodiff[plots]", f"discodiff analyze {command}")
    assert not (tmp_path / "out").exists()


COMMANDS = [["train"], ["train-prior"], ["sample"], ["fid", "ref"], ["fid", "calc"], ["fid", "gen"], ["demo"],
            *[["analyze", c] for c in ("loss-vs-sigma", "switching", "codebook", "oracle", "guidance", "nfe")]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_loads_without_the_extras(capsys, monkeypatch, command):
    _uninstall(monkeypatch, *OPTIONAL)
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code == 0 and "Usage:" in out, err


# ---- one set of sampling options for every command that samples ------------------------------------------------

SAMPLING_FLAGS = ("--steps", "--sampler", "--churn", "--restart-preset", "--restart-intervals", "--guidance-interval",
                  "--prior-temperature", "--hybrid-run", "--switch-sigma")
SAMPLING_COMMANDS = [["sample"], ["fid", "gen"], ["analyze", "oracle"], ["analyze", "guidance"],
                     ["analyze", "codebook"]]


@pytest.mark.parametrize("command", SAMPLING_COMMANDS, ids=" ".join)
def test_every_command_that_samples_has_the_sampling_options(capsys, command):
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code == 0, err
    for flag in SAMPLING_FLAGS:
        assert flag in out, (command, flag)
    # the guidance sweep sets the weight itself (--weights); the others take --guidance
    assert ("--guidance " in out or "--guidance\n" in out) == (command != ["analyze", "guidance"])
    assert "S_churn" in out


def test_the_sampling_options_resolve_to_the_sampler_call():
    from discodiff.cli.options import SamplingArgs, resolve_sampling
    from discodiff.config import SampleConfig
    from discodiff.errors import ConfigError
    from discodiff.sampling import sample_edm_stochastic

    run = SampleConfig(steps=12, sampler="heun", guidance=0.5, prior_temperature=0.9)
    s = resolve_sampling(SamplingArgs(), run)
    assert (s.sampler, s.steps, s.guidance, s.prior_temperature, s.options) == ("heun", 12, 0.5, 0.9, {})
    assert s.churn is None and s.nfe() == 23
    s = resolve_sampling(SamplingArgs(sampler="edm", churn=40, steps=4, guidance=0, guidance_interval="0.1,2",
                                      prior_temperature=1.5), run)
    assert s.options == {"S_churn": 40.0} and s.churn == 40 and s.guidance == 0 and s.guidance_interval == (0.1, 2.0)
    fn = s.sampler_fn()
    assert fn.func is sample_edm_stochastic and fn.keywords == {"S_churn": 40.0}
    assert s.generate_options()["prior_temperature"] == 1.5 and "churn 40" in s.describe()
    assert s.batch_options()["sampler_options"] == {"S_churn": 40.0}
    assert resolve_sampling(SamplingArgs(sampler="edm"), run).options == {"S_churn": 0.0}  # said, not implied
    with pytest.raises(ConfigError, match="--churn applies to the stochastic sampler"):
        resolve_sampling(SamplingArgs(churn=5), run)
    with pytest.raises(ConfigError, match="--hybrid-run and --switch-sigma go together"):
        resolve_sampling(SamplingArgs(switch_sigma=1.0), run)
    s = resolve_sampling(SamplingArgs(sampler="restart", restart_intervals="[[2, 1, 0.5, 2.0]]", steps=4), run)
    assert s.options == {"intervals": [[2, 1, 0.5, 2.0]]} and s.churn is None


@pytest.fixture
def churn_spy(monkeypatch):
    """Records the S_churn of every call of the edm sampler (the registry's entry, wrapped)."""
    import dataclasses
    import functools

    from discodiff.sampling import SAMPLERS

    info = SAMPLERS["edm"]
    seen = []

    @functools.wraps(info.fn)
    def spy(*args, **kwargs):
        seen.append(kwargs.get("S_churn"))
        return info.fn(*args, **kwargs)

    monkeypatch.setitem(SAMPLERS, "edm", dataclasses.replace(info, fn=spy))
    return seen


DIGITS = {"model": {"network": {"model_channels": 8, "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2,
                                "latent_depth": 1, "dropout": 0.0},
                    "encoder": {"width": 16, "heads": 2, "depth": 1},
                    "prior": {"depth": 1, "width": 32, "heads": 2}},
          "train": {"kimg": 0.128, "batch": 32, "tick_kimg": 0.128, "snapshot_ticks": 1, "state_ticks": 1},
          "prior_train": {"kimg": 0.128, "batch": 64, "tick_kimg": 0.128},
          "data": {"name": "digits", "options": {"max_images": 64}}}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits DisCo-Diff run with its prior, and a tiny TorchScript detector in place of Inception."""
    from conftest import save_tiny_detector

    from discodiff.data import load_dataset
    from discodiff.runs import Run
    from discodiff.train.prior import train_prior
    from discodiff.train.stage1 import train_stage1

    root = tmp_path_factory.mktemp("digits")
    run = root / "run"
    cfg = preset_config("digits", DIGITS)
    data = load_dataset(cfg.data)
    cfg.model.data_shape = data.shape
    Run.create(run, cfg)
    model = train_stage1(run, cfg, data, quiet=True)
    train_prior(run, cfg, data, model.eval(), quiet=True)
    return run, save_tiny_detector(root / "tiny.pt", kernel=13)


def test_churn_reaches_the_sampler_of_every_command_that_samples(digits_run, tmp_path, capsys, churn_spy):
    """--churn with --sampler edm is the sampler's S_churn in `sample`, `fid gen` and the analyses that sample
    (before, `fid gen` and `analyze` had no --churn and ran edm at churn 0 without saying so)."""
    import numpy as np

    run, det = digits_run
    edm = ["--sampler", "edm", "--churn", "7", "--steps", "2"]
    code, out, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "s.npz"), *edm],
                             capsys)
    assert code == 0, err
    assert churn_spy and set(churn_spy) == {7.0} and "churn 7" in out
    assert np.load(tmp_path / "s.npz")["x"].shape[0] == 2

    churn_spy.clear()
    res = tmp_path / "gen.json"
    code, out, err = run_cli(["fid", "gen", "--run-dir", str(run), "--num", "3", "--batch", "2", "--detector", str(det),
                              "--out", str(res), *edm], capsys)
    assert code == 0, err
    assert churn_spy and set(churn_spy) == {7.0} and "edm (churn 7)" in err
    assert json.loads(res.read_text())["churn"] == 7.0

    for sub, extra in (("oracle", ["--num", "2"]), ("guidance", ["--num", "2", "--weights", "0,1"]),
                       ("codebook", ["--rows", "1", "--cols", "2", "--prior-samples", "0", "--positions", "0"])):
        churn_spy.clear()
        fid = ["--detector", str(det), "--bootstrap", "0"] if sub != "codebook" else []
        code, out, err = run_cli(["analyze", sub, "--run-dir", str(run), "--out", str(tmp_path / sub), *fid, *extra,
                                  *edm], capsys)
        assert code == 0, (sub, err)
        assert churn_spy and set(churn_spy) == {7.0}, sub
        assert "churn 7" in err, (sub, err)
    result = json.loads((tmp_path / "oracle" / "oracle.json").read_text())
    assert result["oracle"]["sampler_options"] == {"S_churn": 7.0} == result["prior"]["sampler_options"]


def test_fid_gen_refuses_churn_without_the_stochastic_sampler_before_any_work(digits_run, tmp_path, capsys,
                                                                             churn_spy):
    run, det = digits_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    code, _, err = run_cli(["fid", "gen", "--run-dir", str(run), "--num", "3", "--detector", str(det),
                            "--sampler", "heun", "--churn", "5"], capsys)
    one_line_error(code, err, "--churn applies to the stochastic sampler (--sampler edm), not heun")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before and not churn_spy
