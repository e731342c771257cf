"""Metrics for 2D samples of the 8-Gaussian ring (paper-spec sections 2, 7 and 8).

Sample-quality metrics work on numpy arrays [N, 2]. The ODE metrics (curvature, Jacobian norm) take a
`denoise(x, sigma) -> D` callable, as the samplers do, and use dx/dt = G(x, t) = (x - D(x, t)) / t (sigma(t) = t).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..data.toy import ring_means, sample_ring


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


# ---- distances between point sets -------------------------------------------------------------------------

def w2_distance(a, b) -> float:
    """Exact 2-Wasserstein distance between two equal-size empirical measures.

    For uniform weights on n points each, the optimal plan is a permutation, so
    W2^2 = min_pi (1/n) sum_i |a_i - b_pi(i)|^2, solved exactly by the Hungarian algorithm.
    """
    a, b = _np(a), _np(b)
    if a.shape != b.shape:
        raise ValueError(f"w2_distance needs equal-size sets, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return 0.0
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def true_samples(n: int, seed: int, *, balanced: bool = False, num_modes: int = 8, radius: float = 3.0,
                 std: float = 0.2) -> np.ndarray:
    """n fresh points of the true mixture: components drawn at random, as a model's samples are, or with
    `balanced` exactly n / num_modes per component (a stratified sample, used as the reference set)."""
    return _np(sample_ring(n, num_modes=num_modes, radius=radius, std=std, seed=seed, balanced=balanced)[0])


def reference_samples(n: int, seed: int = 0, **ring) -> np.ndarray:
    """The set model samples are compared with. Stratified, because W2 between two size-n sets is dominated by
    mass moved between modes (2.3 apart): with random counts on both sides the reference's own count noise
    would double that part."""
    return true_samples(n, seed + 5_000_011, balanced=True, **ring)


def sampling_floor(n: int, seed: int = 0, **ring) -> float:
    """W2 of an independent true sample of size n to the reference: what a perfect model would score at this n."""
    return w2_distance(true_samples(n, 2 * seed + 1_000_001, **ring), reference_samples(n, seed, **ring))


# ---- modes ------------------------------------------------------------------------------------------------

def nearest_mode(x, means=None) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest mean [N], distance to it [N])."""
    x = _np(x)
    means = _np(ring_means() if means is None else means)
    d = np.linalg.norm(x[:, None, :] - means[None, :, :], axis=-1)
    return d.argmin(1), d.min(1)


def within_mode_w2(x, seed: int = 0, *, means=None, std: float = 0.2, min_count: int = 2) -> dict:
    """Per mode j: W2 between the samples nearest to mean j and as many fresh draws of N(mean_j, std^2 I).

    This scores the shape of each mode, free of how the samples are split between modes. Modes with fewer
    than `min_count` samples are left out of the mean (and counted in `modes_missing`).
    """
    x = _np(x)
    means = _np(ring_means() if means is None else means)
    mode, _ = nearest_mode(x, means)
    rng = np.random.default_rng(seed + 7_000_003)
    per_mode = []
    for j, mu in enumerate(means):
        own = x[mode == j]
        if len(own) < min_count:
            per_mode.append(float("nan"))
            continue
        per_mode.append(w2_distance(own, mu + std * rng.standard_normal(own.shape)))
    vals = np.array(per_mode)
    return {"mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
            "per_mode": per_mode, "modes_missing": int(np.isnan(vals).sum())}


def mode_tv(x, means=None) -> float:
    """Total variation between the modes' sample frequencies (by nearest mean) and the uniform weights."""
    means = _np(ring_means() if means is None else means)
    mode, _ = nearest_mode(x, means)
    freq = np.bincount(mode, minlength=len(means)) / max(len(mode), 1)
    return float(0.5 * np.abs(freq - 1.0 / len(means)).sum())


def off_mode_fraction(x, means=None, std: float = 0.2, num_std: float = 4.0) -> float:
    """Share of samples further than `num_std` standard deviations from every mean (between the modes)."""
    _, dist = nearest_mode(x, means)
    return float((dist > num_std * std).mean())


# ---- latents ----------------------------------------------------------------------------------------------

def latent_purity(z, modes) -> dict:
    """How well one latent value names one mode.

    For each code c, its majority mode is the most common mode among samples with code c; purity is the share
    of samples whose mode is their code's majority mode (1: every code sits inside a single mode).
    `z`: integer codes [N] (or [N, 1]); `modes`: the mode of each sample [N] (true label or nearest mean).
    """
    modes = np.asarray(modes).reshape(-1)
    _, code = np.unique(np.asarray(z).reshape(len(modes), -1), axis=0, return_inverse=True)
    code = code.reshape(-1)
    # counts[c, j]: samples with code c in mode j; argmax over j is each code's majority mode
    counts = np.zeros((code.max() + 1, modes.max() + 1), dtype=np.int64)
    np.add.at(counts, (code, modes), 1)
    majority = counts.argmax(1)
    hits = majority[code] == modes
    # Modes covered: each mode should be some code's majority; fewer means some codes merged modes.
    return {"purity": float(hits.mean()), "codes_used": len(majority),
            "modes_covered": len(set(majority.tolist()))}


# ---- the probability-flow ODE: curvature and Jacobian -----------------------------------------------------

def ode_field(denoise, x: torch.Tensor, t: float) -> torch.Tensor:
    """G(x, t) = dx/dt = (x - D(x, t)) / t, the EDM probability-flow ODE with sigma(t) = t."""
    sigma = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return (x - denoise(x, sigma)) / t


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _tangent_step(denoise, x: torch.Tensor, t: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|T(x(t)) - T(x(t - dt))|, |x(t) - x(t - dt)|) per sample, with x(t - dt) = x(t) - G dt (one Euler step)."""
    g = ode_field(denoise, x, t)
    x_prev = x - g * dt
    g_prev = ode_field(denoise, x_prev, t - dt)
    return (_unit(g) - _unit(g_prev)).norm(dim=1), (x - x_prev).norm(dim=1)


def curvature(denoise, x: torch.Tensor, t: float, dt: float = 1e-3) -> torch.Tensor:
    """kappa(x(t)) = |dT/dt| / |x'(t)| ~ |T(x(t)) - T(x(t - dt))| / |x(t) - x(t - dt)|  (paper App. F.3).

    T = G / |G| is the unit tangent; x(t - dt) = x(t) - G dt is one Euler step back towards the data.
    Returns kappa per sample [N].
    """
    d_tangent, d_x = _tangent_step(denoise, x, t, dt)
    return d_tangent / d_x.clamp_min(1e-12)


def turning_rate(denoise, x: torch.Tensor, t: float, dt: float = 1e-3) -> torch.Tensor:
    """|dT/dt| = kappa |G| per sample [N]: radians the tangent turns per unit t. Unlike kappa it stays small where
    the path barely moves (t -> 0), so its integral over t is each path's total turning angle."""
    d_tangent, _ = _tangent_step(denoise, x, t, dt)
    return d_tangent / dt


def jacobian_frobenius_sq(denoise, x: torch.Tensor, t: float) -> torch.Tensor:
    """||grad_x G(x, t)||_F^2 per sample [N], from the exact Jacobian.

    Samples do not interact in the network, so d(sum_n G_n[i]) / dx_n is row i of sample n's Jacobian:
    one backward pass per output dimension (two in 2D) gives every sample's full Jacobian.
    """
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        g = ode_field(denoise, x, t)
        rows = [torch.autograd.grad(g[:, i].sum(), x, retain_graph=i < g.shape[1] - 1)[0] for i in range(g.shape[1])]
    return sum(r.square().sum(1) for r in rows).detach()


def ode_profile(denoise, traj: torch.Tensor, sigmas: torch.Tensor, dt: float = 1e-3,
                dtype: torch.dtype = torch.float64) -> dict:
    """Mean curvature and mean squared Jacobian norm at each noise level a sampler visited.

    `traj` [steps + 1, N, 2] holds the points at sigmas[0..steps] (as recorded by `trajectory_recorder`);
    the last point sits at sigma = 0, where G is undefined, so the profile covers sigmas[0..steps-1].
    The points are cast to `dtype`, and `denoise` should compute in it: near t = 0.002, x - D(x) is a
    difference of nearly equal numbers, and float32 rounding alone shows up as curvatures of ~1e3.
    """
    ts, kappa, turn, jac = [], [], [], []
    for i in range(len(sigmas) - 1):
        t = float(sigmas[i])
        if t <= dt:
            continue
        x = traj[i].to(dtype)
        ts.append(t)
        kappa.append(float(curvature(denoise, x, t, dt).mean()))
        turn.append(float(turning_rate(denoise, x, t, dt).mean()))
        jac.append(float(jacobian_frobenius_sq(denoise, x, t).mean()))
    return {"t": ts, "curvature": kappa, "turning_rate": turn, "jacobian_fro_sq": jac}


def total_turning(profile: dict) -> float:
    """E[total turning angle of a path] = integral of E|dT/dt| over the profile's t range (trapezoid rule)."""
    t, rate = np.asarray(profile["t"]), np.asarray(profile["turning_rate"])
    return float(np.sum(0.5 * (rate[1:] + rate[:-1]) * np.abs(np.diff(t))))


def straightness(traj, sigmas=None, t_max: float | None = None) -> np.ndarray:
    """End-to-end displacement / path length of each trajectory [steps + 1, N, D] -> [N]; 1 for a straight line.

    From sigma_max = 80 every path starts with a long, nearly straight run towards the data, which pushes the
    ratio to ~1 for any model; with `sigmas` and `t_max` only the part of the path at t <= t_max is measured.
    """
    traj = _np(traj)
    if t_max is not None:
        traj = traj[_np(sigmas) <= t_max]
    path = np.linalg.norm(np.diff(traj, axis=0), axis=-1).sum(0)
    chord = np.linalg.norm(traj[-1] - traj[0], axis=-1)
    return chord / np.maximum(path, 1e-12)


# ---- everything for one set of samples ---------------------------------------------------------------------

def sample_metrics(x, seed: int = 0, *, means=None, std: float = 0.2, w2_floor: float | None = None) -> dict:
    """W2 (beside its sampling floor), within-mode W2 (beside its floor), mode TV and off-mode fraction of x [N, 2].

    The W2 floor depends only on N; pass `w2_floor` to reuse one computed for several sets of the same size.
    """
    x = _np(x)
    means = _np(ring_means() if means is None else means)
    ring = {"num_modes": len(means), "radius": float(np.linalg.norm(means[0])), "std": std}
    wm = within_mode_w2(x, seed, means=means, std=std)
    return {"w2": w2_distance(x, reference_samples(len(x), seed, **ring)),
            "w2_floor": sampling_floor(len(x), seed, **ring) if w2_floor is None else w2_floor,
            "within_mode_w2": wm["mean"], "within_mode_w2_floor": within_mode_floor(x, seed, means=means, std=std),
            "modes_missing": wm["modes_missing"],
            "mode_tv": mode_tv(x, means), "off_mode": off_mode_fraction(x, means, std)}


def within_mode_floor(x, seed: int = 0, *, means=None, std: float = 0.2) -> float:
    """The within-mode W2 a perfect sampler would get with the same per-mode counts as x."""
    means = _np(ring_means() if means is None else means)
    mode, _ = nearest_mode(x, means)
    rng = np.random.default_rng(seed + 9_000_007)
    vals = [w2_distance(mu + std * rng.standard_normal((c, 2)), mu + std * rng.standard_normal((c, 2)))
            for mu, c in zip(means, np.bincount(mode, minlength=len(means))) if c >= 2]
    return float(np.mean(vals)) if vals else float("nan")
