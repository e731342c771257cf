"""Samplers for the EDM probability-flow ODE and SDE, as pure functions (k-diffusion style).

Every sampler takes a `denoise(x, sigma) -> D` callable, the initial `noise` (already scaled by sigmas[0])
and a decreasing tensor of `sigmas` ending in 0, and returns the final sample. With sigma(t) = t the ODE
is dx/dt = (x - D(x, t)) / t (EDM eq. 1 with beta = 0).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None]


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  *, device=None, dtype=torch.float64) -> torch.Tensor:
    """EDM's time discretisation: `num_steps` sigmas from sigma_max down to sigma_min, then a final 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=dtype, device=device)
    frac = i / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _d(denoise: Denoise, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma, evaluated in float32 (float64 is kept)."""
    D = denoise(x, sigma.to(x.dtype).expand(x.shape[0]))
    return (x - D) / sigma.to(x.dtype)


def sample_euler(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
                 callback: Callback | None = None) -> torch.Tensor:
    """First-order Euler steps along the probability-flow ODE (NFE = number of steps)."""
    x = noise
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]).to(x.dtype) * _d(denoise, x, sigmas[i])
        if callback is not None:
            callback(i, x)
    return x


def sample_heun(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
                callback: Callback | None = None) -> torch.Tensor:
    """EDM Algorithm 1: Heun's second-order method, with a plain Euler step on the last step to sigma = 0."""
    return sample_edm_stochastic(denoise, noise, sigmas, S_churn=0.0, callback=callback)


def sample_edm_stochastic(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor, *,
                          S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"),
                          S_noise: float = 1.0, randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
                          callback: Callback | None = None) -> torch.Tensor:
    """EDM Algorithm 2: at each step raise the noise level by gamma (churn), then take a Heun step.

    With S_churn = 0 it is exactly the deterministic Heun sampler. `randn_like` supplies the churn noise, so
    a per-sample generator (see `StackedGenerator.randn_like`) keeps samples independent of the batch.
    """
    n = len(sigmas) - 1
    x = noise
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= float(s_cur) <= S_max else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            x = x + (s_hat**2 - s_cur**2).sqrt().to(x.dtype) * S_noise * randn_like(x)
        d = _d(denoise, x, s_hat)
        x_next = x + (s_next - s_hat).to(x.dtype) * d
        if s_next > 0:  # second-order correction, except on the final step to sigma = 0
            d_next = _d(denoise, x_next, s_next)
            x_next = x + (s_next - s_hat).to(x.dtype) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


@dataclass(frozen=True)
class SamplerInfo:
    """What the rest of the library needs to know of a sampler besides its function."""
    fn: Callable[..., torch.Tensor]
    nfe: Callable[[int], int]           # network calls for a number of steps (guidance doubles their batch)
    description: str


# The one registry of sampler names: the CLI's choices, the config's check and the NFE counts all read it.
SAMPLERS: dict[str, SamplerInfo] = {
    "heun": SamplerInfo(sample_heun, lambda n: 2 * n - 1, "EDM's deterministic 2nd-order sampler (Alg. 1)"),
    "euler": SamplerInfo(sample_euler, lambda n: n, "1st-order Euler steps"),
    "edm": SamplerInfo(sample_edm_stochastic, lambda n: 2 * n - 1, "EDM's stochastic sampler with churn (Alg. 2)"),
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        from .config import ConfigError
        raise ConfigError(f"unknown sampler {name!r}; choose from: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations of a sampler run without guidance; that many network calls with it too, as
    `DiscoDiff.make_denoiser` batches the guided passes (the evaluations double: cli.sample.model_passes)."""
    return get_sampler(sampler).nfe(num_steps)


def takes_noise_source(sampler: Callable) -> bool:
    """Whether a sampler draws noise of its own (a `randn_like` argument), which the caller must then seed."""
    return "randn_like" in inspect.signature(sampler).parameters


def guided(denoise_cond: Denoise, denoise_uncond: Denoise, w: float) -> Denoise:
    """Classifier-free guidance, D~ = (1 + w) D(x, sigma, z) - w D(x, sigma, null); w = 0 is conditional.

    The two-pass form over any pair of denoisers. `DiscoDiff.make_denoiser` computes the same in one network call
    on the stacked batch."""
    if w == 0:
        return denoise_cond

    def denoise(x, sigma):
        d_cond = denoise_cond(x, sigma)
        return d_cond + w * (d_cond - denoise_uncond(x, sigma))

    return denoise


class StackedGenerator:
    """One torch.Generator per sample, so that each sample depends on its own seed only (EDM's convention)."""

    def __init__(self, seeds: Sequence[int], device="cpu"):
        self.device = torch.device(device)
        bad = [s for s in seeds if not 0 <= int(s) < 1 << 63]
        if bad:  # torch would wrap them round and silently repeat other seeds' samples
            raise ValueError(f"seeds must lie in [0, 2**63), got {bad[0]}")
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def rand(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        return torch.stack([torch.rand(tuple(shape), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:], dtype=x.dtype)


def trajectory_recorder():
    """A callback that keeps every point a sampler visits: (callback, list of points).

    `pipeline.generate` calls it with step -1 and the initial noise first, so the list ends up [steps + 1, ...]."""
    points: list[torch.Tensor] = []
    return (lambda i, x: points.append(x.detach().clone())), points
