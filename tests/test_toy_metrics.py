"""Analytic checks of the toy-2D metrics (discodiff/metrics/toy.py) and of the ODE-path metrics (metrics/ode.py).
Fast: closed-form denoisers, no training."""
import math

import numpy as np
import pytest
import torch

from discodiff.data.toy import ring_means
from discodiff.metrics import ode
from discodiff.metrics import toy as tm
from discodiff.sampling import karras_sigmas, sample_heun, trajectory_recorder

MEANS = ring_means()
STD = 0.2


# ---- closed-form denoisers -------------------------------------------------------------------------------

def mixture_denoiser(means=MEANS, std=STD):
    """E[y | x] for y ~ (1/K) sum_j N(mu_j, std^2 I), x = y + N(0, sigma^2 I): the exact denoiser of the toy data."""
    def denoise(x, sigma):
        s2 = sigma.view(-1, 1) ** 2
        var = std**2 + s2
        logits = -((x[:, None, :] - means[None]) ** 2).sum(-1) / (2 * var)
        r = logits.softmax(1)                                        # posterior over components
        per_comp = means[None] + (std**2 / var)[:, :, None] * (x[:, None, :] - means[None])
        return (r[:, :, None] * per_comp).sum(1)
    return denoise


def component_denoiser(z, means=MEANS, std=STD):
    """E[y | x, z]: the exact denoiser of component z alone (what a perfect DisCo-Diff learns)."""
    def denoise(x, sigma):
        mu = means[z]
        return mu + (std**2 / (std**2 + sigma.view(-1, 1) ** 2)) * (x - mu)
    return denoise


def run_heun(denoise, n, steps=30, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps, dtype=dtype)
    callback, points = trajectory_recorder()
    noise = torch.randn(n, 2, generator=g, dtype=dtype) * sigmas[0]
    callback(-1, noise)
    x = sample_heun(denoise, noise, sigmas, callback=callback)
    return x, torch.stack(points), sigmas


# ---- W2 ---------------------------------------------------------------------------------------------------

def test_w2_of_a_set_to_itself_and_to_a_permutation_is_zero():
    a = np.random.default_rng(0).normal(size=(300, 2))
    assert tm.w2_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert tm.w2_distance(a, a[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_w2_to_a_shifted_copy_is_the_shift_length():
    a = np.random.default_rng(1).normal(size=(400, 2))
    v = np.array([0.3, -0.4])
    assert tm.w2_distance(a, a + v) == pytest.approx(0.5, rel=1e-9)


def test_w2_small_hand_example_and_symmetry():
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0]])  # optimal: 0->1, 2->3, each cost 1
    assert tm.w2_distance(a, b) == pytest.approx(1.0)
    assert tm.w2_distance(b, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tm.w2_distance(a, b[:1])


def test_sampling_floor_is_positive_and_shrinks_with_n():
    small, large = tm.sampling_floor(100, 0), tm.sampling_floor(1600, 0)
    assert 0 < large < small


# ---- mode statistics --------------------------------------------------------------------------------------

def test_mode_statistics_of_extreme_sets():
    at_means = MEANS.repeat(10, 1).numpy()
    assert tm.off_mode_fraction(at_means) == 0.0
    assert tm.mode_tv(at_means) == pytest.approx(0.0)
    assert tm.off_mode_fraction(np.zeros((5, 2))) == 1.0         # the origin is 3 away from every mean
    one_mode = np.tile(MEANS[3].numpy(), (40, 1))
    assert tm.mode_tv(one_mode) == pytest.approx(7 / 8)


def test_within_mode_w2_sees_a_wrong_mode_width():
    rng = np.random.default_rng(2)
    comp = np.arange(2000) % 8
    right = MEANS.numpy()[comp] + STD * rng.normal(size=(2000, 2))
    wide = MEANS.numpy()[comp] + 2 * STD * rng.normal(size=(2000, 2))
    w_right, w_wide = tm.within_mode_w2(right)["mean"], tm.within_mode_w2(wide)["mean"]
    assert w_right < 2 * tm.within_mode_floor(right)
    assert w_wide > 2 * w_right


def test_latent_purity():
    modes = np.arange(800) % 8
    assert tm.latent_purity(modes, modes) == {"purity": 1.0, "codes_used": 8, "modes_covered": 8}
    merged = tm.latent_purity(modes // 2, modes)                 # each code covers two modes
    assert merged["purity"] == pytest.approx(0.5)
    assert merged["codes_used"] == 4 and merged["modes_covered"] == 4
    permuted = tm.latent_purity((modes * 3 + 1) % 8, modes)      # code names do not matter
    assert permuted["purity"] == 1.0


# ---- the exact denoisers give sensible sample metrics --------------------------------------------------------

def test_exact_mixture_denoiser_samples_the_ring():
    x, _, _ = run_heun(mixture_denoiser(), 800)
    assert tm.off_mode_fraction(x) < 0.01
    assert tm.mode_tv(x) < 0.1
    wm = tm.within_mode_w2(x)
    assert wm["modes_missing"] == 0 and wm["mean"] < 2 * tm.within_mode_floor(x)


def test_exact_component_denoiser_gives_pure_latents_and_straight_paths():
    z = torch.arange(800) % 8
    means = MEANS.double()
    x, traj, sigmas = run_heun(component_denoiser(z, means), 800, dtype=torch.float64)
    mode, _ = tm.nearest_mode(x)
    assert tm.latent_purity(z.numpy(), mode)["purity"] > 0.99
    # Each trajectory is mu + sqrt(s^2 + t^2) * (unit direction): a straight line to its component's mean.
    assert ode.straightness(traj).min() == pytest.approx(1.0, abs=1e-4)
    prof = ode.ode_profile(component_denoiser(z, means), traj, sigmas)
    mix = ode.ode_profile(mixture_denoiser(means), traj, sigmas)
    assert max(prof["curvature"]) < 1e-2
    assert np.mean(mix["curvature"]) > 10 * np.mean(prof["curvature"])   # the unconditional ODE bends


# ---- curvature, Jacobian and straightness on fields with known answers ---------------------------------------

def test_curvature_of_a_straight_ode_is_zero():
    mu = torch.tensor([[1.0, -2.0]])
    point_mass = lambda x, sigma: mu.expand_as(x)                    # D = mu: G = (x - mu) / t, radial lines
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ode.curvature(point_mass, x, 0.7).abs().max() < 1e-6


def rotation_denoiser(x, sigma):
    """D = x - t * R x, so G = R x with R the 90-degree rotation: circles around the origin, curvature 1 / radius."""
    t = sigma.view(-1, 1)
    return x - t * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def test_curvature_of_circles_is_one_over_the_radius():
    r = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    x = torch.stack([r, torch.zeros_like(r)], dim=1)
    kappa = ode.curvature(rotation_denoiser, x, 1.0)
    assert torch.allclose(kappa, 1 / r, rtol=1e-3)


def test_jacobian_norm_matches_closed_forms():
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    t = 0.5
    # D = mu gives G = (x - mu) / t, so grad G = I / t and ||grad G||_F^2 = 2 / t^2.
    point_mass = lambda x, sigma: torch.zeros_like(x) + 1.0
    assert torch.allclose(ode.jacobian_frobenius_sq(point_mass, x, t), torch.full((32,), 2 / t**2))
    # The rotation field: grad G = R, whose squared Frobenius norm is 2, independent of x.
    assert torch.allclose(ode.jacobian_frobenius_sq(rotation_denoiser, x, t), torch.full((32,), 2.0), atol=1e-5)
    # A linear denoiser D = A x: grad G = (I - A) / t.
    A = torch.tensor([[0.3, -1.2], [0.4, 0.1]])
    expected = ((torch.eye(2) - A) / t).square().sum()
    got = ode.jacobian_frobenius_sq(lambda x, sigma: x @ A.T, x, t)
    assert torch.allclose(got, expected.expand(32), rtol=1e-5)


def test_straightness():
    line = np.linspace(0, 1, 11)[:, None, None] * np.array([[[3.0, 4.0]]])
    assert ode.straightness(line) == pytest.approx([1.0])
    angle = np.linspace(0, math.pi, 2001)
    semicircle = np.stack([np.cos(angle), np.sin(angle)], -1)[:, None, :]
    assert ode.straightness(semicircle)[0] == pytest.approx(2 / math.pi, rel=1e-4)   # chord 2 / arc pi


def test_straightness_of_the_late_part_of_a_path():
    # A path that runs straight in from far away, then turns a right angle: whole-path ratio ~1, late part 1/sqrt(2).
    sigmas = np.array([80.0, 2.0, 1.0, 0.0])
    traj = np.array([[80.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])[:, None, :]
    assert ode.straightness(traj)[0] > 0.98
    assert ode.straightness(traj, sigmas, t_max=2.0)[0] == pytest.approx(math.sqrt(2) / 2)


def test_ode_profile_runs_on_a_float64_copy_of_a_toy_model():
    import copy

    from discodiff.config import preset_config
    from discodiff.model import DiscoDiff

    torch.manual_seed(0)
    model = DiscoDiff(preset_config("toy2d").model).eval()
    z = torch.arange(16).remainder(8).view(-1, 1)
    x, traj, sigmas = run_heun(model.make_denoiser(z), 16, steps=4)
    model64 = copy.deepcopy(model).double()
    prof = ode.ode_profile(model64.make_denoiser(z), traj, sigmas)
    assert len(prof["t"]) == 4 and all(np.isfinite(prof["curvature"])) and all(np.isfinite(prof["jacobian_fro_sq"]))
    # The float64 copy computes the same function as the float32 model.
    d32 = model.denoise(x, torch.full((16,), 0.5), z=z)
    d64 = model64.denoise(x.double(), torch.full((16,), 0.5), z=z)
    assert d64.dtype == torch.float64 and torch.allclose(d64.float(), d32, atol=1e-5)


def test_turning_rate_and_total_turning():
    # Circles: the tangent turns by |G| / r = 1 radian per unit t at every radius; straight lines never turn.
    r = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    x = torch.stack([r, torch.zeros_like(r)], dim=1)
    assert torch.allclose(ode.turning_rate(rotation_denoiser, x, 1.0), torch.ones(3, dtype=torch.float64), rtol=1e-3)
    profile = {"t": [3.0, 2.0, 1.0, 0.5], "turning_rate": [1.0, 1.0, 1.0, 1.0]}
    assert ode.total_turning(profile) == pytest.approx(2.5)
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    assert ode.turning_rate(lambda x, s: mu.expand_as(x), x, 0.7).abs().max() < 1e-6
