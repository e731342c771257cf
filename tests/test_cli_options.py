"""Command-line fixes: the encoder options that fit a switched latent type, one set of sampling options for every
command that samples, loss-vs-sigma with the run's own training loss, and optional packages refused up front."""
import json

import pytest
import torch
from conftest import run_cli

from discodiff.config import preset_config

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line]) == 1, err
    for needle in needles:
        assert needle in err, err


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
    assert loss.D == 4
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
    tiny = ["--kimg", "0.25", "--set", "model.network.hidden=16", "--set", "model.network.emb_dim=8",
            "--set", "model.encoder.hidden=16", "--set", "train.batch=64", "--set", "train.tick_kimg=0.25", "--quiet"]
    code, out, err = run_cli([*args, *tiny], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # discrete latents (the default) keep the preset's prototypes
    code, out, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "d"), "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["model"]["encoder"]["prototypes"] is True and "discrete latents" not in err


def test_an_explicit_discrete_encoder_option_with_continuous_latents_is_still_refused(tmp_path, capsys):
    code, _, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "run"), "--latent-type",
                            "continuous", "--set", "model.encoder.prototypes=true", "--dry-run"], capsys)
    _one_line_error(code, err, "prototypes=true applies to discrete latents")


def test_continuous_encoder_fixes():
    from discodiff.networks import continuous_encoder_fixes

    assert continuous_encoder_fixes({"name": "mlp", "hidden": 8, "prototypes": True}) == {"prototypes": False}
    assert continuous_encoder_fixes({"name": "mlp", "prototypes": False}) == {}
    assert continuous_encoder_fixes({"name": "vit", "head_init": "kmeans"}) == {"head_init": "random"}
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
    _one_line_error(code, err, missing, f"discodiff[{extra}]")
    assert not (tmp_path / "d").exists()


def test_demo_without_digits_does_not_need_scikit_learn(tmp_path, capsys, monkeypatch):
    import discodiff.experiments.toy2d as toy2d
    from discodiff.errors import ConfigError

    def stop(*a, **k):
        raise ConfigError("reached the toy experiment")

    monkeypatch.setattr(toy2d, "run_toy2d", stop)
    _uninstall(monkeypatch, "sklearn")
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--digits-kimg", "0"], capsys)
    _one_line_error(code, err, "reached the toy experiment")


@pytest.mark.parametrize("command", ["loss-vs-sigma", "switching", "codebook", "guidance", "nfe"])
def test_analyses_that_draw_figures_refuse_without_matplotlib_first(tmp_path, capsys, monkeypatch, command):
    _uninstall(monkeypatch, "matplotlib", "matplotlib.pyplot")
    code, _, err = run_cli(["analyze", command, "--run-dir", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "out")], capsys)
    _one_line_error(code, err, "matplotlib", "discodiff[plots]", f"discodiff analyze {command}")
    assert not (tmp_path / "out").exists()


COMMANDS = [["train"], ["train-prior"], ["sample"], ["fid", "ref"], ["fid", "calc"], ["fid", "gen"], ["demo"],
            *[["analyze", c] for c in ("loss-vs-sigma", "switching", "codebook", "oracle", "guidance", "nfe")]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_loads_without_the_extras(capsys, monkeypatch, command):
    _uninstall(monkeypatch, *OPTIONAL)
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code == 0 and "Usage:" in out, err
