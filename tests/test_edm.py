import math

import pytest
import torch

from discodiff.edm import Denoiser, EDMLoss, edm_scalings, loss_weight
from discodiff.sampling import karras_sigmas, sample_edm_stochastic, sample_euler, sample_heun, StackedGenerator

from conftest import gaussian_mixture_denoiser

SIGMAS = torch.logspace(-3, 2, 50, dtype=torch.float64)


def test_scaling_limits():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([1e-8, 1e8], dtype=torch.float64), 0.5)
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0, abs=1e-7)  # D(x, 0) = x
    assert c_skip[1] == pytest.approx(0.0, abs=1e-12) and c_out[1] == pytest.approx(0.5)  # D ~ sigma_data F at high noise
    assert c_noise[0] == pytest.approx(math.log(1e-8) / 4)


def test_unit_variance_identities():
    sd = 0.5
    c_skip, c_out, c_in, _ = edm_scalings(SIGMAS, sd)
    # network input has unit variance: c_in^2 (sigma_data^2 + sigma^2) = 1
    torch.testing.assert_close(c_in**2 * (sd**2 + SIGMAS**2), torch.ones_like(SIGMAS))
    # the effective training target (y - c_skip x) / c_out has unit variance
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))
    # the loss weight undoes c_out^2
    torch.testing.assert_close(loss_weight(SIGMAS, sd) * c_out**2, torch.ones_like(SIGMAS))


def test_karras_sigmas():
    s = karras_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002)
    assert bool((s[:-1] > s[1:]).all())
    assert len(karras_sigmas(1)) == 2
    with pytest.raises(ValueError):
        karras_sigmas(0)


class _ZeroNet(torch.nn.Module):
    def forward(self, x, c_noise, **kw):
        return torch.zeros_like(x)


def test_denoiser_with_zero_net_is_gaussian_posterior_mean():
    """F = 0 gives D = c_skip x: the exact denoiser of N(0, sigma_data^2)."""
    d = Denoiser(_ZeroNet(), sigma_data=0.5)
    x, sigma = torch.randn(16, 3), torch.rand(16) + 0.1
    expected = 0.25 / (0.25 + sigma[:, None] ** 2) * x
    torch.testing.assert_close(d(x, sigma), expected)


def test_loss_of_exact_denoiser_is_lower_than_wrong_one():
    loss = EDMLoss(sigma_data=1.0)
    y = torch.randn(4096, 2)
    exact = Denoiser(_ZeroNet(), sigma_data=1.0)
    wrong = Denoiser(_ZeroNet(), sigma_data=3.0)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    l_exact, l_wrong = loss(exact, y, generator=g1).mean(), loss(wrong, y, generator=g2).mean()
    # for N(0, 1) data and the exact denoiser the weighted loss has expectation 1 at every sigma
    assert float(l_exact) == pytest.approx(1.0, rel=0.08)
    assert float(l_wrong) > float(l_exact) * 1.2


MEANS = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
STD = 0.2


def _mixture_stats(x):
    d = torch.cdist(x.double(), MEANS)
    comp = d.argmin(1)
    freqs = torch.bincount(comp, minlength=3).double() / len(x)
    within = torch.stack([(x[comp == j].double() - MEANS[j]).std(0).mean() for j in range(3)])
    return freqs, within, d.min(1).values


@pytest.mark.parametrize("sampler,steps", [("euler", 200), ("heun", 40), ("edm", 60)])
def test_samplers_reproduce_gaussian_mixture(sampler, steps):
    denoise = gaussian_mixture_denoiser(MEANS, STD)
    gen = StackedGenerator(range(3000))
    sigmas = karras_sigmas(steps, dtype=torch.float64)
    noise = gen.randn([2], dtype=torch.float64) * sigmas[0]
    if sampler == "euler":
        x = sample_euler(denoise, noise, sigmas)
    elif sampler == "heun":
        x = sample_heun(denoise, noise, sigmas)
    else:
        x = sample_edm_stochastic(denoise, noise, sigmas, S_churn=20, S_min=0.05, S_max=50, S_noise=1.003,
                                  randn_like=gen.randn_like)
    freqs, within, dist = _mixture_stats(x)
    assert torch.allclose(freqs, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04), freqs
    assert torch.allclose(within, torch.full((3,), STD, dtype=torch.float64), rtol=0.12), within
    assert float((dist > 5 * STD).double().mean()) < 0.01


def test_heun_is_second_order():
    """Heun's error against a fine reference falls much faster with steps than Euler's."""
    denoise = gaussian_mixture_denoiser(MEANS, STD)
    noise = StackedGenerator(range(200)).randn([2], dtype=torch.float64) * 80
    ref = sample_heun(denoise, noise, karras_sigmas(400, dtype=torch.float64))
    err = {n: float((sample_heun(denoise, noise, karras_sigmas(n, dtype=torch.float64)) - ref).norm(dim=1).mean())
           for n in (20, 40)}
    assert err[40] < err[20] / 2.5


def _heun_reference(denoise, x, sigmas):
    """EDM Algorithm 1 written out: Heun steps of dx/dsigma = (x - D(x, sigma)) / sigma, Euler on the last step to 0."""
    n = len(sigmas) - 1
    for i in range(n):
        t, t_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, t.expand(len(x)))) / t
        x_next = x + (t_next - t) * d
        if i < n - 1:
            d2 = (x_next - denoise(x_next, t_next.expand(len(x)))) / t_next
            x_next = x + (t_next - t) * (d + d2) / 2
        x = x_next
    return x


def _algorithm2_reference(denoise, x, sigmas, eps, S_churn, S_min, S_max, S_noise):
    """EDM Algorithm 2 (Karras et al. 2022) transcribed line by line, with the churn noise eps[i] of step i given."""
    N = len(sigmas) - 1
    for i in range(N):
        t = sigmas[i]
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_min <= t <= S_max else 0.0
        t_hat = t + gamma * t
        if gamma > 0:
            x = x + math.sqrt(t_hat**2 - t**2) * S_noise * eps[i]
        d = (x - denoise(x, t_hat.expand(len(x)))) / t_hat
        x_next = x + (sigmas[i + 1] - t_hat) * d
        if sigmas[i + 1] != 0:
            d2 = (x_next - denoise(x_next, sigmas[i + 1].expand(len(x)))) / sigmas[i + 1]
            x_next = x + (sigmas[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def test_stochastic_sampler_follows_algorithm_2_and_heun_without_churn():
    denoise = gaussian_mixture_denoiser(MEANS, STD)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64) * 80
    sig = karras_sigmas(10, dtype=torch.float64)
    # churn 0: the deterministic Heun loop, and sample_heun too
    heun = _heun_reference(denoise, noise, sig)
    torch.testing.assert_close(sample_edm_stochastic(denoise, noise, sig), heun, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sample_heun(denoise, noise, sig), heun, rtol=1e-10, atol=1e-10)
    # churn > 0 on part of the schedule, driven by the same pre-drawn noise: one draw per step where gamma > 0
    S_churn, S_min, S_max, S_noise = 4.0, 0.05, 10.0, 1.007
    churned = [i for i in range(len(sig) - 1) if S_min <= sig[i] <= S_max]
    assert 0 < len(churned) < len(sig) - 1  # the window leaves some steps without churn
    eps = {i: torch.randn(64, 2, generator=g, dtype=torch.float64) for i in churned}
    draws = iter(eps[i] for i in churned)
    calls = []

    def randn_like(x):
        calls.append(x.shape)
        return next(draws)

    got = sample_edm_stochastic(denoise, noise, sig, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
                                randn_like=randn_like)
    assert calls == [noise.shape] * len(churned)
    expected = _algorithm2_reference(denoise, noise, sig, eps, S_churn, S_min, S_max, S_noise)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (got - heun).abs().max() > 1e-3  # the churn changed the result
