"""The forward process: the kernel p(x | y; sigma) that perturbs the data in training and draws the initial sample.

EDM (the default) perturbs with a Gaussian: x = y + n, n ~ N(0, sigma^2 I). PFGM++ (Xu et al. 2023, "PFGM++:
Unlocking the Potential of Physics-Inspired Generative Models") augments the N dimensions of the data with D more.
In its EDM-aligned form, r = sigma sqrt(D), its kernel is

    x = y + R u,   u uniform on the unit sphere of R^N,   R = r sqrt(b / (1 - b)),   b ~ Beta(N/2, D/2),

a heavier-tailed kernel (a multivariate Student t with D degrees of freedom and scale sigma) that becomes EDM's
Gaussian as D -> infinity. Everything else stays EDM's: the network, the preconditioning, the loss weighting, the
distribution of sigma, the time grid, and the ODE dx/dsigma = (x - D(x, sigma)) / sigma that the samplers solve.
Only two draws change: the training perturbation (`edm.EDMLoss`) and the initial sample at sigma_max
(`pipeline.generate`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import ConfigError

PROCESSES = ("edm", "pfgmpp")


def kernel_D(cfg) -> float:
    """The D of a model config's process: its `pfgm_D` for PFGM++, infinity for EDM (the limit where they agree)."""
    if cfg.process not in PROCESSES:
        raise ConfigError(f"unknown model.process {cfg.process!r}; choose from: {', '.join(PROCESSES)}")
    return math.inf if cfg.process == "edm" else float(cfg.pfgm_D)


def standard_gamma(alpha: float, n: int, *, generator=None, device=None) -> torch.Tensor:
    """n draws of Gamma(alpha, 1), float64, from `generator` (torch.distributions takes no generator)."""
    return torch._standard_gamma(torch.full((n,), float(alpha), dtype=torch.float64, device=device),
                                 generator=generator)


def perturbation(g: torch.Tensor, sigma, D: float, gamma: Callable[[float], torch.Tensor]) -> torch.Tensor:
    """The noise n = x - y of the kernel at noise level `sigma` (a number, or one per sample shaped to broadcast
    against g), built from `g` [B, *shape], a standard Gaussian the caller drew, and `gamma(alpha)`, which draws
    Gamma(alpha, 1) [B] and is called only for a finite D.

    D = inf is EDM: n = sigma g, the very operation EDM always did, with no further draw. For a finite D, g gives
    both the direction and half of b: u = g / |g| is uniform on the sphere and independent of |g|^2 / 2 ~ Gamma(N/2),
    so with G_D ~ Gamma(D/2), b = G_N / (G_N + G_D) ~ Beta(N/2, D/2), and b / (1 - b) = G_N / G_D. One Gamma draw per
    sample on top of EDM's, and each sample keeps the direction its EDM noise would have had.
    """
    if math.isinf(D):
        return g * sigma
    norm = g.flatten(1).double().norm(dim=1)
    G_N, G_D = norm.square() / 2, gamma(D / 2)
    r = torch.as_tensor(sigma, dtype=torch.float64, device=g.device).reshape(-1) * math.sqrt(D)
    R = r * (G_N / G_D).sqrt()
    u = g / norm.to(g.dtype).reshape(-1, *[1] * (g.ndim - 1))
    return R.to(g.dtype).reshape(-1, *[1] * (g.ndim - 1)) * u
