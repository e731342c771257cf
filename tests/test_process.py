"""The forward process option (model.process): PFGM++'s kernel, its EDM limit, and EDM left bit for bit as it was."""
import json
import math

import pytest
import torch
from scipy import stats
from scipy.special import gammaln

from discodiff.config import ConfigError, RunConfig, preset_config
from discodiff.edm import EDMLoss, loss_weight
from discodiff.model import DiscoDiff
from discodiff.pipeline import generate
from discodiff.process import kernel_D, standard_gamma
from discodiff.variants.pfgmpp import perturbation
from discodiff.runs import Run
from discodiff.sampling import StackedGenerator, karras_sigmas

from conftest import train_tiny_toy

SMALL_MLP = {"network": {"hidden": 16, "emb_dim": 8}, "encoder": {"hidden": 16}}


def _noise(D, N=32, num=6000, sigma=1.0, seed=0):
    """num draws of the kernel's noise in N dimensions at `sigma`, from one generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num, N, generator=g)
    return perturbation(x, sigma, D, lambda a: standard_gamma(a, num, generator=g))


def _edm_norm_moments(N: int) -> tuple[float, float]:
    """Mean and variance of |n| for n ~ N(0, I_N) (the chi distribution)."""
    mean = math.sqrt(2) * math.exp(gammaln((N + 1) / 2) - gammaln(N / 2))
    return mean, N - mean**2


def test_pfgmpp_radius_and_direction_follow_the_kernel():
    """R^2 / (R^2 + r^2) with r = sigma sqrt(D) is b ~ Beta(N/2, D/2), and the direction is uniform on the sphere."""
    N, D, sigma = 16, 24, 3.0
    n = _noise(D, N, num=4000, sigma=sigma)
    R2, r2 = n.double().square().sum(1), sigma**2 * D
    b = (R2 / (R2 + r2)).numpy()
    assert stats.kstest(b, stats.beta(N / 2, D / 2).cdf).pvalue > 0.01
    assert stats.kstest(b, stats.beta(N / 2, 2 * D).cdf).pvalue < 1e-6  # the test tells another D apart
    u = n / n.norm(dim=1, keepdim=True)
    assert float(u.mean(0).abs().max()) < 4 / math.sqrt(4000 * N)  # E[u] = 0: ~4 standard errors
    torch.testing.assert_close(u.T @ u / len(u), torch.eye(N) / N, atol=0.006, rtol=0)  # ~4 standard errors


def test_pfgmpp_norm_statistics_approach_edm_as_D_grows():
    """The perturbation's norm: E|n|^2 = sigma^2 N D / (D - 2) at every D, and its mean and variance reach the
    Gaussian's (the chi distribution) as D grows; at D = 8 they are far from it."""
    N = 32
    edm_mean, edm_var = _edm_norm_moments(N)
    gaps = []
    for D in (8, 64, 1024, 65536):
        norm = _noise(D, N).double().norm(dim=1)
        assert float(norm.square().mean()) == pytest.approx(N * D / (D - 2), rel=0.03), D
        gaps.append((abs(float(norm.mean()) / edm_mean - 1), abs(float(norm.var()) / edm_var - 1)))
    (mean_8, var_8), (mean_big, var_big) = gaps[0], gaps[-1]
    assert mean_8 > 0.05 and var_8 > 1.0  # heavy tails at small D
    assert mean_big < 0.005 and var_big < 0.05, gaps[-1]
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(gaps, gaps[1:])), gaps


def test_infinite_D_is_edm_bit_for_bit_and_draws_nothing_more():
    x = torch.randn(7, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    sigma = torch.rand(7).reshape(-1, 1, 1, 1) * 10
    drew = []
    out = perturbation(x, sigma, math.inf, lambda a: drew.append(a))
    assert torch.equal(out, x * sigma) and not drew


def _edm_loss_as_it_was(loss: EDMLoss, denoise, y, generator):
    """EDMLoss.__call__ before the process option, written out."""
    sigma = (torch.randn(y.shape[0], generator=generator) * loss.P_std + loss.P_mean).exp()
    noise = torch.randn(y.shape, generator=generator) * sigma.reshape(-1, *[1] * (y.ndim - 1))
    D = denoise(y + noise, sigma)
    return loss_weight(sigma, loss.sigma_data) * (D - y).square().flatten(1).mean(1)


class _Recorder:
    """A denoiser that keeps its inputs and returns a fixed function of them."""

    def __init__(self):
        self.inputs = []

    def __call__(self, x, sigma, **cond):
        self.inputs.append(x.clone())
        return 0.3 * x


@pytest.mark.parametrize("cfg", [{}, {"process": "edm", "pfgm_D": 7}])
def test_edm_training_loss_is_unchanged_bit_for_bit(cfg):
    model_cfg = preset_config("digits", {"model": cfg}).model
    loss = EDMLoss.for_model(model_cfg)
    assert loss.process.D == math.inf
    y = torch.randn(9, 1, 8, 8)
    new, old = _Recorder(), _Recorder()
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(loss(new, y, generator=g_new), _edm_loss_as_it_was(loss, old, y, g_old))
    assert torch.equal(new.inputs[0], old.inputs[0])
    assert torch.equal(torch.rand(3, generator=g_new), torch.rand(3, generator=g_old))  # no draw more or less


def test_pfgmpp_training_draws_its_kernel_from_the_training_generator():
    model_cfg = preset_config("digits", {"model": {"process": "pfgmpp", "pfgm_D": 16}}).model
    loss = EDMLoss.for_model(model_cfg)
    assert loss.process.D == 16.0
    y = torch.randn(9, 1, 8, 8)
    rec, g = _Recorder(), torch.Generator().manual_seed(5)
    loss(rec, y, generator=g)
    g = torch.Generator().manual_seed(5)
    sigma = loss.sample_sigma(9, generator=g).reshape(-1, 1, 1, 1)
    gaussian = torch.randn(y.shape, generator=g)
    expected = perturbation(gaussian, sigma, 16.0, lambda a: standard_gamma(a, 9, generator=g))
    assert torch.equal(rec.inputs[0], y + expected)
    assert not torch.allclose(rec.inputs[0], y + gaussian * sigma)  # EDM's noise from the same draws


def _model(**model):
    cfg = preset_config("toy2d", {"model": {"num_latents": 0, **SMALL_MLP, **model}})
    torch.manual_seed(0)
    return DiscoDiff(cfg.model).eval()


def _initial_noise(model, seeds, steps=4):
    """(the noise `generate` starts from, its samples) for `seeds`."""
    points = []
    x, _ = generate(model, seeds, karras_sigmas(steps), callback=lambda i, x: points.append(x) if i < 0 else None)
    return points[0], x


def test_edm_initial_noise_is_unchanged_bit_for_bit():
    model = _model()
    seeds = [4, 9, 2]
    noise, _ = _initial_noise(model, seeds)
    gen = StackedGenerator(seeds)
    gen.rand([1])  # the prior's uniforms come first, drawn even for m = 0
    assert torch.equal(noise, gen.randn([2]) * karras_sigmas(4)[0].float())


def test_pfgmpp_initial_noise_depends_on_its_seed_only():
    model = _model(process="pfgmpp", pfgm_D=4)
    seeds = list(range(10, 16))
    noise, x = _initial_noise(model, seeds)
    for part in ([12], [15, 10], seeds[3:]):
        n_part, x_part = _initial_noise(model, part)
        idx = [seeds.index(s) for s in part]
        assert torch.equal(n_part, noise[idx])
        torch.testing.assert_close(x_part, x[idx])  # (the network may round the last bits by batch size)
    # the same direction as the EDM model's noise of that seed, another radius (heavier tails at D = 4)
    edm_noise, _ = _initial_noise(_model(), seeds)
    cos = (noise * edm_noise).sum(1) / (noise.norm(dim=1) * edm_noise.norm(dim=1))
    torch.testing.assert_close(cos, torch.ones(len(seeds)))
    assert not torch.allclose(noise.norm(dim=1), edm_noise.norm(dim=1))


def test_pfgmpp_initial_noise_is_the_kernel_at_sigma_max():
    model = _model(process="pfgmpp", pfgm_D=6)
    noise, _ = _initial_noise(model, list(range(3000)), steps=1)
    R2 = noise.double().square().sum(1) / 80.0**2
    b = (R2 / (R2 + 6)).numpy()  # r^2 = sigma_max^2 D
    assert stats.kstest(b, stats.beta(1, 3).cdf).pvalue > 0.01


@pytest.mark.parametrize("model,message", [
    ({"process": "pfgm"}, "unknown model.process 'pfgm'; choose from: edm, pfgmpp"),
    ({"process": "pfgmpp", "pfgm_D": 0}, "model.pfgm_D must be an integer >= 1, got 0"),
    ({"pfgm_D": -3}, "model.pfgm_D must be an integer >= 1, got -3"),
    ({"process": "pfgmpp", "pfgm_D": "inf"}, 'model.pfgm_D must be int, got "inf"'),
    ({"process": "pfgmpp", "pfgm_D": 12.5}, "model.pfgm_D must be int, got 12.5"),
])
def test_invalid_process_settings_are_one_line_config_errors(model, message):
    with pytest.raises(ConfigError) as e:
        preset_config("toy2d", {"model": model})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_kernel_D():
    assert kernel_D(preset_config("toy2d").model) == math.inf
    assert kernel_D(preset_config("toy2d", {"model": {"process": "pfgmpp", "pfgm_D": 64}}).model) == 64.0


def test_a_pfgmpp_run_records_its_process_and_samples_with_it(tmp_path):
    run_dir = tmp_path / "r"
    train_tiny_toy(run_dir, "--latents", "0", "--set", "model.process=pfgmpp", "--set", "model.pfgm_D=5", kimg=0.5)
    saved = json.loads((run_dir / "config.json").read_text())["model"]
    assert (saved["process"], saved["pfgm_D"]) == ("pfgmpp", 5)
    assert "process pfgmpp (D=5)" in (run_dir / "log.txt").read_text()
    model = Run(run_dir).load_model()
    assert RunConfig.load(run_dir / "config.json").model.process == "pfgmpp"
    noise, _ = _initial_noise(model, [1, 2])
    gen = StackedGenerator([1, 2])
    gen.rand([1])
    assert torch.equal(noise, perturbation(gen.randn([2]), karras_sigmas(4)[0].float(), 5.0, gen.standard_gamma))
