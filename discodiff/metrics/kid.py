"""Kernel Inception Distance (Bińkowski et al. 2018): the squared MMD between two feature sets under the cubic
polynomial kernel k(x, y) = (x . y / d + 1)^3, with its unbiased estimator.

    KID = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)

Unlike FID it has no bias at small N (its expectation is the population MMD^2 whatever N is), which is what makes it
the right second number for FIDs over a few thousand samples. `kid` uses all pairs of the two full sets; `kid_subsets`
repeats it on random subsets of 1,000 as torch-fidelity does, for its spread (`kid_std`).

The kernel sums are taken in blocks, so a 60,000-image reference needs no 60,000^2 matrix; the products are float32
matrix multiplies (the features are float32) and the sums float64.
"""
from __future__ import annotations

import numpy as np
import torch

BLOCK = 4096


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / d + 1)^3 for every pair of rows, [len(x), len(y)]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _as_tensor(features) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features, dtype=np.float32))


def kernel_sum(x: torch.Tensor, y: torch.Tensor, *, same: bool = False) -> float:
    """sum_{i, j} k(x_i, y_j), over i != j when `same` (x and y are the same set)."""
    total = 0.0
    for i in range(0, len(x), BLOCK):
        for j in range(0, len(y), BLOCK):
            if same and j < i:  # the kernel matrix of a set is symmetric: the upper triangle of blocks, twice
                continue
            k = polynomial_kernel(x[i:i + BLOCK], y[j:j + BLOCK]).double()
            if same and i == j:
                total += float(k.sum() - k.diagonal().sum())
            else:
                total += float(k.sum()) * (2 if same else 1)
    return total


def self_kernel_mean(features) -> float:
    """mean_{i != j} k(f_i, f_j) of one set: the term of KID that a fixed reference contributes (cacheable)."""
    f = _as_tensor(features)
    n = len(f)
    if n < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {n}")
    return kernel_sum(f, f, same=True) / (n * (n - 1))


def kid(x, y, *, y_self_mean: float | None = None) -> float:
    """The unbiased squared MMD of feature sets x [m, d] and y [n, d] (all pairs). `y_self_mean` is
    `self_kernel_mean(y)` when already known (a reference file stores it)."""
    x, y = _as_tensor(x), _as_tensor(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs feature sets [m, d] and [n, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    yy = self_kernel_mean(y) if y_self_mean is None else y_self_mean
    return self_kernel_mean(x) + yy - 2 * kernel_sum(x, y) / (len(x) * len(y))


def kid_subsets(x, y, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float, int]:
    """(mean, std, subset size) of KID over `subsets` random subsets of `subset_size` of each set, drawn without
    replacement, as torch-fidelity computes its kid_subset estimates; the size shrinks to the smaller set's if
    needed. Seeded, so the same features give the same figures."""
    x, y = _as_tensor(x), _as_tensor(y)
    size = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = [kid(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values)), size
