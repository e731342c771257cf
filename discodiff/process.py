"""The forward process: the kernel p(x | y; sigma) that perturbs the data in training (`edm.EDMLoss`) and draws the
initial sample at sigma_max (`pipeline.generate`).

EDM's, the paper's and the default, is the Gaussian x = y + n, n ~ N(0, sigma^2 I). Another kernel plugs in by name
(model.process): `register_process` maps the name to a factory of the model config, and this module knows none of
them (variants/pfgmpp.py registers PFGM++'s heavier-tailed kernel).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import ConfigError


class Process:
    """A perturbation kernel. `D` is its PFGM++-style number of extra dimensions: infinity for the Gaussian, which
    every such kernel approaches as D grows; two processes with equal D perturb alike (fine-tuning and autoguidance
    check it)."""

    name = "edm"
    D = math.inf

    def perturbation(self, g: torch.Tensor, sigma, gamma: Callable[[float], torch.Tensor]) -> torch.Tensor:
        """The noise n = x - y at noise level `sigma` (a number, or one per sample shaped to broadcast against g),
        made from `g` [B, *shape], a standard Gaussian the caller drew, and `gamma(alpha)`, which draws
        Gamma(alpha, 1) [B] for a kernel that needs more than g. EDM's: n = sigma g, with no further draw."""
        return g * sigma


GAUSSIAN = Process()
PROCESSES: dict[str, Callable[..., Process]] = {"edm": lambda cfg: GAUSSIAN}


def register_process(name: str):
    """Registers `factory(model_config) -> Process` under `name`, the value of model.process."""
    def deco(factory):
        PROCESSES[name] = factory
        return factory
    return deco


def process_of(cfg) -> Process:
    """The forward process of a model config (model.process)."""
    if cfg.process not in PROCESSES:
        raise ConfigError(f"unknown model.process {cfg.process!r}; choose from: {', '.join(PROCESSES)}")
    return PROCESSES[cfg.process](cfg)


def kernel_D(cfg) -> float:
    """The D of a model config's process: infinity for EDM's Gaussian."""
    return process_of(cfg).D


def standard_gamma(alpha: float, n: int, *, generator=None, device=None) -> torch.Tensor:
    """n draws of Gamma(alpha, 1), float64, from `generator` (torch.distributions takes no generator)."""
    return torch._standard_gamma(torch.full((n,), float(alpha), dtype=torch.float64, device=device),
                                 generator=generator)
