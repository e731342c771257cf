"""PFGM++ (Xu et al. 2023, "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models") as a forward
process (model.process = "pfgmpp", model.pfgm_D = D; docs/pfgmpp.md). It augments the N dimensions of the data with
D more. In its EDM-aligned form, r = sigma sqrt(D), its kernel is

    x = y + R u,   u uniform on the unit sphere of R^N,   R = r sqrt(b / (1 - b)),   b ~ Beta(N/2, D/2),

a heavier-tailed kernel (a multivariate Student t with D degrees of freedom and scale sigma) that becomes EDM's
Gaussian as D -> infinity. Everything else stays EDM's: the network, the preconditioning, the loss weighting, the
distribution of sigma, the time grid, and the ODE dx/dsigma = (x - D(x, sigma)) / sigma that the samplers solve.
Only two draws change: the training perturbation and the initial sample at sigma_max.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..process import Process, register_process


def perturbation(g: torch.Tensor, sigma, D: float, gamma: Callable[[float], torch.Tensor]) -> torch.Tensor:
    """The noise n = x - y of the kernel with D extra dimensions at noise level `sigma` (a number, or one per sample
    shaped to broadcast against g), built from `g` [B, *shape], a standard Gaussian the caller drew, and
    `gamma(alpha)`, which draws Gamma(alpha, 1) [B] and is called only for a finite D.

    D = inf is EDM: n = sigma g, with no further draw. For a finite D, g gives both the direction and half of b:
    u = g / |g| is uniform on the sphere and independent of |g|^2 / 2 ~ Gamma(N/2), so with G_D ~ Gamma(D/2),
    b = G_N / (G_N + G_D) ~ Beta(N/2, D/2), and b / (1 - b) = G_N / G_D. One Gamma draw per sample on top of EDM's,
    and each sample keeps the direction its EDM noise would have had.
    """
    if math.isinf(D):
        return g * sigma
    norm = g.flatten(1).double().norm(dim=1)
    G_N, G_D = norm.square() / 2, gamma(D / 2)
    r = torch.as_tensor(sigma, dtype=torch.float64, device=g.device).reshape(-1) * math.sqrt(D)
    R = r * (G_N / G_D).sqrt()
    u = g / norm.to(g.dtype).reshape(-1, *[1] * (g.ndim - 1))
    return R.to(g.dtype).reshape(-1, *[1] * (g.ndim - 1)) * u


class PFGMPP(Process):
    name = "pfgmpp"

    def __init__(self, D: float):
        self.D = float(D)

    def perturbation(self, g, sigma, gamma):
        return perturbation(g, sigma, self.D, gamma)


@register_process("pfgmpp")
def _pfgmpp(cfg) -> PFGMPP:
    return PFGMPP(cfg.pfgm_D)
