"""The analyses (discodiff.analysis) and `discodiff analyze`, on tiny runs and a tiny TorchScript detector in place of
Inception: shapes and keys, the identities each analysis must satisfy, and the errors for runs that cannot be used."""
import copy
import json

import numpy as np
import pytest
from conftest import one_line_error, run_cli, save_tiny_detector
import torch

from discodiff.analysis import AnalysisError, jsonable
from discodiff.analysis.codebook import class_information, codebook_analysis, images_by_code, samples_by_latent
from discodiff.analysis.common import pick_images
from discodiff.analysis.guidance import guidance_sweep
from discodiff.analysis.loss_sigma import loss_ratios, loss_vs_sigma
from discodiff.analysis.nfe import quality_vs_steps
from discodiff.analysis.oracle import oracle_vs_prior
from discodiff.analysis.quality import FIDCache, reference_stats, sample_batches, sample_fid
from discodiff.analysis.switching import latent_switching, switched_samples
from discodiff.cli.options import parse_list
from discodiff.config import preset_config
from discodiff.data import load_dataset, to_uint8
from discodiff.metrics.fid import InceptionDetector, fid_from_stats, stats_of_images
from discodiff.pipeline import generate, sample_latents
from discodiff.runs import Run
from discodiff.sampling import karras_sigmas
from discodiff.train.prior import train_prior
from discodiff.train.stage1 import train_stage1

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]

TOY = {"model": {"network": {"hidden": 32, "emb_dim": 16}, "encoder": {"hidden": 32},
                 "prior": {"depth": 1, "width": 32, "heads": 2}},
       "train": {"kimg": 0.512, "batch": 64, "tick_kimg": 0.512, "snapshot_ticks": 1, "state_ticks": 1},
       "prior_train": {"kimg": 0.5, "batch": 64, "tick_kimg": 0.5}}
DIGITS = {"model": {"network": {"model_channels": 8, "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2,
                                "latent_depth": 1, "dropout": 0.0},
                    "encoder": {"width": 16, "heads": 2, "depth": 1},
                    "prior": {"depth": 1, "width": 32, "heads": 2}},
          "train": {"kimg": 0.256, "batch": 32, "tick_kimg": 0.256, "snapshot_ticks": 1, "state_ticks": 1},
          "prior_train": {"kimg": 0.256, "batch": 64, "tick_kimg": 0.256},
          "sample": {"steps": 3}, "data": {"name": "digits", "options": {"max_images": 300}}}


def _train(run_dir, preset, overrides, m=None, prior=True):
    over = {**overrides, "model": {**overrides["model"], **({"num_latents": m} if m is not None else {})}}
    cfg = preset_config(preset, over)
    data = load_dataset(cfg.data)
    cfg.model.data_shape = data.shape
    Run.create(run_dir, cfg)
    model = train_stage1(run_dir, cfg, data, quiet=True)
    if prior and cfg.model.num_latents:
        train_prior(run_dir, cfg, data, model.eval(), quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: toy2d DisCo-Diff (with prior), toy2d baseline, digits DisCo-Diff (with prior), digits
    baseline, and a digits DisCo-Diff without a prior."""
    root = tmp_path_factory.mktemp("runs")
    return {"toy": _train(root / "toy", "toy2d", TOY), "toy0": _train(root / "toy0", "toy2d", TOY, m=0),
            "img": _train(root / "img", "digits", DIGITS), "img0": _train(root / "img0", "digits", DIGITS, m=0),
            "noprior": _train(root / "noprior", "toy2d", TOY, prior=False)}


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return save_tiny_detector(tmp_path_factory.mktemp("det") / "tiny.pt", kernel=13)


@pytest.fixture(scope="module")
def detector(detector_file):
    return InceptionDetector.from_file(detector_file)


@pytest.fixture(scope="module")
def img_ref(runs, detector):
    data = load_dataset(Run(runs["img"]).config.data)
    ref, _ = reference_stats(to_uint8(data.x[:200]), detector)
    return ref, data


def _model(run_dir):
    return Run(run_dir).load_model()


def _with_prior(run_dir):
    """(model, prior) of a run, as `discodiff sample` loads them."""
    run = Run(run_dir)
    return run.load_model(), run.load_prior()




# ---- loss against sigma ---------------------------------------------------------------------------------------

def test_loss_vs_sigma_is_the_edm_loss_on_the_same_noise(runs):
    """Each point of a curve is lambda(sigma) * mean (D(y + sigma eps, sigma, z) - y)^2 over the images, with z the
    encoder's argmax (or the null latent for the "(null z)" curve), computed here directly on the analysis' noise;
    a model given twice gets the same curve, a different model a different one."""
    from discodiff.analysis.loss_sigma import noise_for_sigma
    from discodiff.edm import loss_weight

    model, base = _model(runs["toy"]), _model(runs["toy0"])
    y = load_dataset(preset_config("toy2d").data).x[:96]
    res = loss_vs_sigma({"a": model, "b": model, "base": base}, y, num_sigmas=5, seed=3, batch=40)
    assert set(res["curves"]) == {"a", "b", "base", "a (null z)", "b (null z)"}
    assert len(res["sigma"]) == 5 and res["num_images"] == 96
    assert res["curves"]["a"]["latents"] == "oracle" and res["curves"]["base"]["latents"] == "none"
    z = model.encode(y)
    with torch.no_grad():
        for j, sigma in enumerate(res["sigma"]):
            eps = noise_for_sigma(y.shape, 3, j)
            s = torch.full((len(y),), sigma)
            lam = float(loss_weight(torch.tensor(sigma, dtype=torch.float64), model.config.sigma_data))
            x = y + sigma * eps
            for label, D in (("a", model.denoise(x, s, z=z)), ("a (null z)", model.denoise(x, s)),
                             ("base", base.denoise(x, s))):
                per_image = lam * (D - y).square().mean(1)
                assert res["curves"][label]["loss"][j] == pytest.approx(float(per_image.mean()), rel=1e-5), (label, j)
                assert res["curves"][label]["stderr"][j] == pytest.approx(
                    float(per_image.std() / len(y) ** 0.5), rel=1e-4), (label, j)
    assert res["curves"]["a"]["loss"] == res["curves"]["b"]["loss"]
    assert all(r == 1.0 for r in loss_ratios(res, "a")["b"])
    assert all(abs(r - 1) > 1e-3 for r in loss_ratios(res, "base")["a"])
    # the latents help: at large sigma the oracle z lowers the loss below the null latent's
    assert res["curves"]["a"]["loss"][-1] < res["curves"]["a (null z)"]["loss"][-1]


def test_loss_vs_sigma_same_noise_any_batch_and_baseline(runs):
    disco, base = _model(runs["toy"]), _model(runs["toy0"])
    y = load_dataset(preset_config("toy2d").data).x[:64]
    a = loss_vs_sigma({"base": base, "disco": disco}, y, sigmas=[0.01, 1.0, 30.0], null_curves=False, batch=64)
    b = loss_vs_sigma({"base": base, "disco": disco}, y, sigmas=[0.01, 1.0, 30.0], null_curves=False, batch=7)
    assert set(a["curves"]) == {"base", "disco"} and a["curves"]["base"]["latents"] == "none"
    for k in a["curves"]:
        np.testing.assert_allclose(a["curves"][k]["loss"], b["curves"][k]["loss"], rtol=1e-5)
    with pytest.raises(AnalysisError, match="shape"):
        loss_vs_sigma({"img": _model(runs["img"])}, y)


# ---- latent switching --------------------------------------------------------------------------------------------

def test_switching_with_f0_changes_nothing_and_f1_is_the_other_latent(runs):
    model, prior = _with_prior(runs["toy"])
    seeds = list(range(12))
    z_a = sample_latents(model, prior, seeds)
    z_b = (z_a + 1) % model.config.codebook_size
    xs = switched_samples(model, seeds, z_a, z_b, [0.0, 0.5, 1.0], steps=6)
    assert xs.shape == (3, 12, 2)
    assert torch.equal(xs[0], generate(model, seeds, karras_sigmas(6), z=z_a)[0])
    assert torch.equal(xs[2], generate(model, seeds, karras_sigmas(6), z=z_b)[0])
    res = latent_switching(model, prior, seeds, fractions=[0.25, 0.5], steps=6, batch=5, keep=3)
    assert res["fractions"] == [0.0, 0.25, 0.5, 1.0] and res["switch_step"] == [6, 4, 3, 0]
    assert res["rms"][0] == 0.0 and res["rms_ratio"][-1] == pytest.approx(1.0)
    assert res["samples"].shape == (4, 3, 2) and res["num"] == 12
    json.dumps(jsonable(res))
    with pytest.raises(AnalysisError, match="deterministic"):
        switched_samples(model, seeds, z_a, z_b, [0.5], steps=6, sampler="edm")


# ---- m = 0 and prior-less runs ---------------------------------------------------------------------------------

def test_latent_analyses_refuse_a_plain_model(runs, detector, img_ref):
    base, img0 = _model(runs["toy0"]), _model(runs["img0"])
    ref, data = img_ref
    for call in (lambda: latent_switching(base, None, [0, 1]),
                 lambda: codebook_analysis(base, None, torch.zeros(4, 2)),
                 lambda: oracle_vs_prior(img0, None, data.x, None, ref, detector, num=4),
                 lambda: guidance_sweep(img0, None, [0.0], [0, 1], ref, detector)):
        with pytest.raises(AnalysisError, match=r"m = 0"):
            call()
    with pytest.raises(AnalysisError, match="no trained prior"):
        latent_switching(_model(runs["noprior"]), None, [0, 1])


@pytest.mark.parametrize("command", ["switching", "codebook", "oracle", "guidance"])
def test_cli_latent_commands_on_a_plain_model(runs, tmp_path, capsys, command, detector_file):
    extra = ["--detector", str(detector_file)] if command in ("oracle", "guidance") else []
    code, _, err = run_cli(["analyze", command, "--run-dir", str(runs["img0"]), "--out", str(tmp_path), *extra], capsys)
    one_line_error(code, err, "m = 0", str(runs["img0"]))


def test_cli_errors(runs, tmp_path, capsys):
    code, _, err = run_cli(["analyze", "switching", "--run-dir", str(runs["noprior"]), "--out", str(tmp_path)], capsys)
    one_line_error(code, err, "no trained prior", "train-prior")
    code, _, err = run_cli(["analyze", "nfe", "--run-dir", str(runs["toy"]), "--out", str(tmp_path)], capsys)
    one_line_error(code, err, "image model")
    code, _, err = run_cli(["analyze", "guidance", "--run-dir", str(runs["img"]), "--out", str(tmp_path),
                            "--weights", "0,x"], capsys)
    one_line_error(code, err, "--weights")
    code, _, err = run_cli(["analyze", "codebook", "--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path)], capsys)
    one_line_error(code, err, "does not exist")
    with pytest.raises(AnalysisError):  # a step count of 0 is refused before any sampling
        quality_vs_steps({"img": (_model(runs["img"]), None)}, [4, 0], [0, 1], None, None)
    assert parse_list("0, 0.5,2", float, "w") == [0.0, 0.5, 2.0]


# ---- codebook --------------------------------------------------------------------------------------------------

def test_codebook_report_and_grids(runs):
    model, prior = _with_prior(runs["img"])
    data = load_dataset(preset_config("digits").data)
    res = codebook_analysis(model, prior, data.x[:300], prior_samples=200, labels=data.labels[:300])
    enc, k, m = res["encoder"], model.config.codebook_size, model.num_latents
    assert enc["num"] == 300 and len(enc["perplexity"]) == m
    assert all(sum(c) == 300 for c in enc["counts"]) and all(len(c) == k for c in enc["counts"])
    assert enc["dead_codes"] == [k - u for u in enc["codes_used"]]
    assert all(1.0 - 1e-6 <= p <= k + 1e-6 for p in enc["perplexity"])
    assert res["prior"]["num"] == 200 and len(res["prior_vs_encoder_tv"]) == m
    assert res["z"].shape == (300, m) and len(res["confidence"]) == m
    assert len(res["class"]["mutual_information_bits"]) == m and res["class"]["num_test"] == 50
    grid, codes = images_by_code(to_uint8(data.x[:300]), res["z"], 0, cols=5, max_rows=3)
    assert grid.shape == (5 * len(codes), 1, 8, 8) and 1 <= len(codes) <= 3
    samples, z_rows = samples_by_latent(model, prior, 2, 3, steps=2)
    assert samples.shape == (6, 1, 8, 8) and samples.dtype == torch.uint8 and z_rows.shape == (2, m)


def test_class_information_of_a_latent_that_names_the_class_and_of_one_that_does_not():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3000) % 10  # ten equal classes: H(class) = log2(10)
    noise = torch.randint(0, 10, (3000,), generator=g)
    info = class_information(torch.stack([labels, noise], 1), labels, 10)
    assert info["class_entropy_bits"] == pytest.approx(np.log2(10))
    assert info["mutual_information_bits"][0] == pytest.approx(np.log2(10), abs=1e-9)
    assert 0 <= info["mutual_information_bits"][1] < 0.03  # plug-in bias only: (k-1)(C-1) / (2 N ln 2) = 0.02
    assert info["probe_accuracy"] == 1.0 and info["majority_accuracy"] < 0.15
    blind = class_information(noise[:, None], labels, 10)
    assert blind["probe_accuracy"] < 0.2
    with pytest.raises(ValueError, match="labels"):
        class_information(noise[:, None], labels[:10], 10)


# ---- FID-based analyses ----------------------------------------------------------------------------------------

def test_guidance_zero_is_plain_conditional_sampling(runs):
    model, prior = _with_prior(runs["img"])
    seeds = list(range(5))
    plain = to_uint8(generate(model, seeds, karras_sigmas(3), prior=prior)[0])
    assert torch.equal(next(sample_batches(model, prior, seeds, steps=3, guidance=0.0)), plain)
    z = sample_latents(model, prior, seeds)
    assert torch.equal(next(sample_batches(model, prior, seeds, z=z, steps=3, guidance=0.0)), plain)


def test_oracle_guidance_and_nfe_results(runs, detector, img_ref):
    ref, data = img_ref
    (model, prior), base = _with_prior(runs["img"]), _model(runs["img0"])
    cache = FIDCache()
    o = oracle_vs_prior(model, prior, data.x, data.labels, ref, detector, num=6, steps=2, cache=cache, model_key="d")
    assert {"oracle", "prior", "gap", "prior_tuples_seen_in_data"} <= set(o) and o["num"] == 6
    assert o["gap"] == pytest.approx(o["prior"]["fid"] - o["oracle"]["fid"])
    assert o["prior"]["nfe"] == 3
    # The oracle row samples with the encoder's argmax latents of the seeded subset of images, the prior row with
    # the prior's: each FID must be that of those samples against the reference, computed here independently. The
    # tiny run's latents barely move its samples, so a copy whose denoiser weights are jittered (which makes the
    # samples depend on z) is measured; the encoder and the prior stay the trained ones.
    jittered = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in jittered.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    oj = oracle_vs_prior(jittered, prior, data.x, None, ref, detector, num=6, steps=2)
    seeds = list(range(6))
    z_oracle = jittered.encode(data.x[pick_images(len(data.x), 6, 0)])
    z_prior = sample_latents(jittered, prior, seeds)
    assert not torch.equal(z_prior, z_oracle)
    fids = {}
    for row, z in (("oracle", z_oracle), ("prior", z_prior), ("other images", z_oracle.roll(1, 0))):
        images = to_uint8(generate(jittered, seeds, karras_sigmas(2), z=z)[0])
        fids[row] = fid_from_stats(stats_of_images(images, detector), ref)
    assert len(set(fids.values())) == 3, fids  # the latents change the FID, so the checks below can fail
    for row in ("oracle", "prior"):
        assert np.isfinite(oj[row]["fid"]) and oj[row]["fid"] == pytest.approx(fids[row], rel=1e-6), (row, oj, fids)
    assert oj["oracle_prior_agreement"] == pytest.approx(float((z_prior == z_oracle).float().mean()))
    g = guidance_sweep(model, prior, [0.0, 1.0], list(range(6)), ref, detector, steps=2, cache=cache, model_key="d")
    assert [r["guidance"] for r in g["rows"]] == [0.0, 1.0] and g["rows"][1]["network_passes"] == 6
    assert g["rows"][0]["fid"] == o["prior"]["fid"]  # same seeds, latents and steps: the same samples
    n = len(cache)
    q = quality_vs_steps({"base": (base, None), "d": (model, prior)}, [1, 2], list(range(6)), ref, detector, cache=cache)
    assert [r["nfe"] for r in q["rows"]["base"]] == [1, 3]
    assert len(cache) == n + 3  # d at 2 steps was measured already
    again = sample_fid(base, None, list(range(6)), ref, detector, steps=1, cache=FIDCache())
    assert again["fid"] == pytest.approx(q["rows"]["base"][0]["fid"], rel=1e-9)
    json.dumps(jsonable({"o": o, "g": g, "q": q}))


# ---- the CLI end to end ----------------------------------------------------------------------------------------

def test_cli_loss_vs_sigma_and_switching(runs, tmp_path, capsys):
    out = tmp_path / "loss"
    code, stdout, _ = run_cli(["analyze", "loss-vs-sigma", "--run-dir", str(runs["toy0"]), "--run-dir",
                               str(runs["toy"]), "--out", str(out), "--num", "64", "--sigmas", "4"], capsys)
    assert code == 0
    res = json.loads((out / "loss_vs_sigma.json").read_text())
    assert set(res["curves"]) == {"toy0", "toy", "toy (null z)"} and res["ratio_to"] == "toy0"
    assert (out / "loss_vs_sigma.png").stat().st_size > 0 and "loss_vs_sigma.json" in stdout
    out = tmp_path / "sw"
    code, stdout, _ = run_cli(["analyze", "switching", "--run-dir", str(runs["img"]), "--out", str(out), "--num", "4",
                               "--steps", "3", "--fractions", "0.5"], capsys)
    assert code == 0
    res = json.loads((out / "switching.json").read_text())
    assert res["fractions"] == [0.0, 0.5, 1.0] and "samples" not in res
    assert (out / "switching.png").is_file() and (out / "switching_grid.png").is_file()
    out = tmp_path / "cb"  # digits has labels: the report says what the latents name of the class
    code, stdout, _ = run_cli(["analyze", "codebook", "--run-dir", str(runs["img"]), "--out", str(out),
                               "--prior-samples", "50", "--rows", "1", "--cols", "2", "--positions", "1",
                               "--steps", "2"], capsys)
    assert code == 0 and "class information" in stdout
    res = json.loads((out / "codebook.json").read_text())
    assert res["class"]["classes"] == 10 and 0 <= res["class"]["probe_accuracy"] <= 1


def test_cli_oracle_and_nfe_share_the_cached_reference(runs, tmp_path, capsys, detector_file):
    out = tmp_path / "fid"
    common = ["--out", str(out), "--num", "4", "--detector", str(detector_file)]
    code, stdout, err = run_cli(["analyze", "oracle", "--run-dir", str(runs["img"]), "--steps", "2", *common], capsys)
    assert code == 0, err
    res = json.loads((out / "oracle.json").read_text())
    assert res["oracle"]["num"] == 4 and "4 samples" in res["note"] and (out / "oracle.png").is_file()
    assert (out / "fid-ref.npz").is_file() and "prior" in stdout
    code, stdout, err = run_cli(["analyze", "nfe", "--run-dir", str(runs["img0"]), "--run-dir", str(runs["img"]),
                                 "--steps", "1,2", *common], capsys)
    assert code == 0, err
    assert "reusing the reference" in err
    res = json.loads((out / "nfe.json").read_text())
    assert [r["steps"] for r in res["rows"]["img"]] == [1, 2] and (out / "nfe.png").is_file()


def test_cli_oracle_in_the_classifiers_features(runs, tmp_path, capsys, monkeypatch):
    """`analyze oracle --features classifier`: the digits' classifier (trained once into a fresh cache), its own
    cached reference beside Inception's name, and the class balance of both rows."""
    from discodiff.metrics import classifier as C
    monkeypatch.setattr(C, "MIN_STEPS", 100)
    monkeypatch.setenv("DISCODIFF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "fid"
    code, stdout, err = run_cli(["analyze", "oracle", "--run-dir", str(runs["img"]), "--steps", "2", "--out", str(out),
                                 "--num", "6", "--bootstrap", "0", "--features", "classifier"], capsys)
    assert code == 0, err
    assert "training the classifier of digits" in err and "class TV" in stdout
    res = json.loads((out / "oracle.json").read_text())
    for row in ("oracle", "prior"):
        assert 0 <= res[row]["class_tv"] <= 1 and res[row]["fid"] >= 0 and "fid_class_matched" in res[row]
    assert (out / "fid-ref-classifier.npz").is_file() and not (out / "fid-ref.npz").exists()
    code, _, err = run_cli(["analyze", "oracle", "--run-dir", str(runs["img"]), "--out", str(tmp_path / "x"),
                            "--features", "classifier", "--detector", str(tmp_path / "inception.pt")], capsys)
    assert code != 0 and "--detector names an Inception file" in err
