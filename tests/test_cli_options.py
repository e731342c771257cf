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
