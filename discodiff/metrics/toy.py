"""Metrics for 2D samples of the 8-Gaussian ring.

They work on numpy arrays [N, 2]. `w2_distance` needs scipy (the `metrics` extra), imported when it runs, so the
rest of the module, and the commands that import it, load without it. The geometry of the sampling ODE's paths
(curvature, Jacobian norm, straightness), which is not specific to the toy data, is in metrics/ode.py.
"""
from __future__ import annotations

import numpy as np
import torch

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
    from scipy.optimize import linear_sum_assignment  # the metrics extra (`discodiff demo` checks it up front)

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
