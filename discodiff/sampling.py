"""Samplers for the EDM probability-flow ODE and SDE, as pure functions (k-diffusion style).

Every sampler takes a `denoise(x, sigma) -> D` callable, the initial `noise` (already drawn at sigmas[0])
and a decreasing tensor of `sigmas` ending in 0, and returns the final sample. With sigma(t) = t the ODE
is dx/dt = (x - D(x, t)) / t (EDM eq. 1 with beta = 0). PFGM++ (model.process = "pfgmpp") solves the same ODE in
sigma from another initial draw (`process.py`); the churn and restart noise stay Gaussian.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import ConfigError
from .process import standard_gamma

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


def _denoised(denoise: Denoise, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x, sigma) with sigma broadcast to the batch in x's dtype (float32 for models, float64 is kept)."""
    return denoise(x, sigma.to(x.dtype).expand(x.shape[0]))


def _d(denoise: Denoise, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma, evaluated in float32 (float64 is kept)."""
    return (x - _denoised(denoise, x, sigma)) / sigma.to(x.dtype)


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


def _edm_step(denoise: Denoise, x: torch.Tensor, s_cur: torch.Tensor, s_next: torch.Tensor, gamma: float = 0.0,
              S_noise: float = 1.0, randn_like=torch.randn_like) -> torch.Tensor:
    """One step of EDM Algorithm 2: raise the noise level from s_cur to s_hat = (1 + gamma) s_cur by adding fresh
    noise (churn), then a Heun step from s_hat to s_next, plain Euler when s_next = 0. NFE: 2, or 1 to sigma = 0."""
    s_hat = s_cur * (1 + gamma)
    if gamma > 0:
        x = x + (s_hat**2 - s_cur**2).sqrt().to(x.dtype) * S_noise * randn_like(x)
    d = _d(denoise, x, s_hat)
    x_next = x + (s_next - s_hat).to(x.dtype) * d
    if s_next > 0:  # second-order correction, except on the final step to sigma = 0
        d_next = _d(denoise, x_next, s_next)
        x_next = x + (s_next - s_hat).to(x.dtype) * (0.5 * d + 0.5 * d_next)
    return x_next


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
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= float(sigmas[i]) <= S_max else 0.0
        x = _edm_step(denoise, x, sigmas[i], sigmas[i + 1], gamma, S_noise, randn_like)
        if callback is not None:
            callback(i, x)
    return x


def sample_dpmpp_2m(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), the update of k-diffusion's `sample_dpmpp_2m` (NFE = number of steps).

    In t = -log(sigma) the ODE's exact solution over a step of length h = t_next - t, with D frozen at D^, is
        x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D^       (sigma_next / sigma = exp(-h)).
    With D^ = D(x, sigma) this is exactly an Euler step, and it is taken on the first step and on the last step to
    sigma = 0 (where it gives x = D). Between them the previous step's D extrapolates it linearly in t, to second
    order: D^ = (1 + 1 / 2r) D_i - (1 / 2r) D_{i-1}, with r = h_{i-1} / h_i the ratio of the two step lengths.
    """
    x, D_prev = noise, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        D = _denoised(denoise, x, s)
        D_hat = D
        if D_prev is not None and s_next > 0:
            h, h_last = (s / s_next).log(), (sigmas[i - 1] / s).log()
            c = (1 / (2 * h_last / h)).to(x.dtype)  # 1 / 2r
            D_hat = (1 + c) * D - c * D_prev
        ratio = (s_next / s).to(x.dtype)
        x = ratio * x + (1 - ratio) * D_hat
        D_prev = D
        if callback is not None:
            callback(i, x)
    return x


# ---- Restart sampling (Xu et al. 2023) ----------------------------------------------------------------------------

RestartInterval = tuple[int, int, float, float]  # (n_levels, k_repeats, t_min, t_max)

# The settings of the Restart paper's ImageNet-64 EDM run that DisCo-Diff used for its stochastic result
# (paper App. D.2; Restart's params_imagenet_edm.txt and README): 623 network evaluations.
RESTART_PRESETS: dict[str, dict] = {
    "imagenet64-623": {
        "num_steps": 36,
        "intervals": [(10, 3, 19.35, 40.79), (10, 3, 1.09, 1.92), (7, 6, 0.59, 1.09), (7, 6, 0.30, 0.59),
                      (7, 25, 0.06, 0.30)],
        "S_noise": 1.003, "S_min": 0.01, "S_max": 1.0, "restart_gamma": 0.05,
    },
}


def restart_points(sigmas: torch.Tensor, intervals: Sequence[RestartInterval]) -> dict[int, tuple[int, int, float]]:
    """Where the restarts happen: {index i of the main grid: (n_levels, k_repeats, t_max)}.

    As in the reference code, an interval starts at the grid point nearest its t_min (so a restart's lower end is
    always a point the main pass visits). Refuses, with one line each, intervals that cannot be run on this grid.
    """
    grid = [float(s) for s in sigmas]
    points: dict[int, tuple[int, int, float]] = {}
    for iv in intervals:
        n_levels, k_repeats, t_min, t_max = _checked_interval(iv, grid[0])
        i = min(range(len(grid)), key=lambda j: abs(grid[j] - t_min))  # the first of two equally near points
        where = f"restart interval {_show(iv)}"
        if i == 0:
            raise ConfigError(f"{where}: t_min is nearest sigma_max {grid[0]:g}, where the main pass starts; "
                              f"a restart needs a t_min below it")
        if i == len(grid) - 1:
            raise ConfigError(f"{where}: t_min is nearest the final sigma = 0; use a t_min nearer sigma_min "
                              f"{grid[-2]:g}")
        if grid[i] >= t_max:
            raise ConfigError(f"{where}: the main grid's point nearest t_min is {grid[i]:.4g}, not below t_max; "
                              f"widen the interval or use more steps")
        if i in points:
            raise ConfigError(f"{where}: another interval starts at the same grid point ({grid[i]:.4g}); "
                              f"merge them or use more steps")
        points[i] = (n_levels, k_repeats, t_max)
    return points


def _show(iv) -> str:
    return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in iv) + "]"


def _checked_interval(iv, sigma_max: float) -> RestartInterval:
    """(n_levels, k_repeats, t_min, t_max) of one interval, or a ConfigError naming it."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (isinstance(iv, (list, tuple)) and len(iv) == 4 and all(number(v) for v in iv)):
        raise ConfigError(f"a restart interval is [n_levels, k_repeats, t_min, t_max] (four numbers), got {iv!r}")
    n_levels, k_repeats, t_min, t_max = iv
    where = f"restart interval {_show(iv)}"
    if not (isinstance(n_levels, int) and n_levels >= 2):
        raise ConfigError(f"{where}: n_levels must be an integer >= 2 (the restart grid runs from t_max to t_min)")
    if not (isinstance(k_repeats, int) and k_repeats >= 1):
        raise ConfigError(f"{where}: k_repeats must be an integer >= 1")
    if not 0 < t_min < t_max:
        raise ConfigError(f"{where}: it needs 0 < t_min < t_max")
    if t_max > sigma_max:
        raise ConfigError(f"{where}: t_max lies beyond sigma_max {sigma_max:g}")
    return int(n_levels), int(k_repeats), float(t_min), float(t_max)


def restart_nfe(num_steps: int, intervals: Sequence[RestartInterval], sigma_min: float = 0.002,
                sigma_max: float = 80.0) -> int:
    """Network evaluations of `sample_restart` on `karras_sigmas(num_steps)`: 2 N - 1 for the main Heun pass, plus,
    for each interval, k_repeats times the n_levels - 1 Heun steps down its restart grid, at 2 each (no restart
    step ends at sigma = 0, so none is a 1-evaluation Euler step).

    The "imagenet64-623" preset: 71 + 3*2*9 + 3*2*9 + 6*2*6 + 6*2*6 + 25*2*6 = 71 + 54 + 54 + 72 + 72 + 300 = 623.
    """
    points = restart_points(karras_sigmas(num_steps, sigma_min, sigma_max), intervals)
    return 2 * num_steps - 1 + sum(k * 2 * (n - 1) for n, k, _ in points.values())


def sample_restart(denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor, intervals: Sequence[RestartInterval],
                   *, S_noise: float = 1.0, S_min: float = 0.0, S_max: float = float("inf"),
                   restart_gamma: float = 0.0, randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
                   callback: Callback | None = None) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023), EDM variant, after its reference code (Newbeeer/diffusion_restart_sampling).

    A Heun pass down `sigmas` (Euler on its last step, as `sample_heun`). Each interval (n_levels, k_repeats, t_min,
    t_max) starts at the grid point t_cur nearest t_min (`restart_points`): right after the main pass reaches it,
    k_repeats times, x is pushed up to t_max by the forward process, x += N(0, (t_max^2 - t_cur^2) S_noise^2 I), and
    solved back down to t_cur by Heun steps over a Karras grid (rho = 7) of n_levels levels from t_max to t_cur,
    with EDM churn gamma = `restart_gamma` on the restart steps whose sigma lies in [S_min, S_max]. The added noise
    contracts the errors accumulated above t_min, which the ODE alone carries to the end.

    NFE: `restart_nfe`. `callback(i, x)` follows main step i and any restarts after it, so a trajectory has
    len(sigmas) points as with Heun. `randn_like` draws all the noise (see `StackedGenerator.randn_like`).
    """
    restarts = restart_points(sigmas, intervals)
    x = noise
    for i in range(len(sigmas) - 1):
        x = _edm_step(denoise, x, sigmas[i], sigmas[i + 1])
        if i + 1 in restarts:
            n_levels, k_repeats, t_max = restarts[i + 1]
            for _ in range(k_repeats):
                x = _restart(denoise, x, sigmas[i + 1], n_levels, t_max, S_noise=S_noise, S_min=S_min, S_max=S_max,
                             gamma=restart_gamma, randn_like=randn_like)
        if callback is not None:
            callback(i, x)
    return x


def _restart(denoise: Denoise, x: torch.Tensor, t_cur: torch.Tensor, n_levels: int, t_max: float, *,
             S_noise: float, S_min: float, S_max: float, gamma: float, randn_like) -> torch.Tensor:
    """One restart: forward from t_cur up to t_max, then Heun steps back down n_levels Karras levels to t_cur."""
    t_max = t_cur.new_tensor(t_max)
    levels = karras_sigmas(n_levels, float(t_cur), float(t_max), device=t_cur.device, dtype=t_cur.dtype)[:-1]
    levels[0], levels[-1] = t_max, t_cur  # exactly the ends (the formula gives them to round-off)
    x = x + randn_like(x) * ((t_max**2 - t_cur**2).sqrt() * S_noise).to(x.dtype)
    for s_cur, s_next in zip(levels[:-1], levels[1:]):
        x = _edm_step(denoise, x, s_cur, s_next, gamma if S_min <= float(s_cur) <= S_max else 0.0, S_noise,
                      randn_like)
    return x


@dataclass(frozen=True)
class SamplerInfo:
    """What the rest of the library needs to know of a sampler besides its function."""
    fn: Callable[..., torch.Tensor]
    nfe: Callable[..., int]  # network calls: nfe(num_steps, **options) (guidance batches its passes into them)
    description: str
    multistep: bool = False  # a step uses earlier steps' evaluations too, so a run cannot be resumed mid-way


# The one registry of sampler names: the CLI's choices, the config's check and the NFE counts all read it.
# An `nfe` takes the sampler's options as keywords and ignores those that do not change the count.
SAMPLERS: dict[str, SamplerInfo] = {
    "heun": SamplerInfo(sample_heun, lambda n, **_: 2 * n - 1, "EDM's deterministic 2nd-order sampler (Alg. 1)"),
    "euler": SamplerInfo(sample_euler, lambda n, **_: n, "1st-order Euler steps"),
    "edm": SamplerInfo(sample_edm_stochastic, lambda n, **_: 2 * n - 1, "EDM's stochastic sampler with churn (Alg. 2)"),
    "dpmpp-2m": SamplerInfo(sample_dpmpp_2m, lambda n, **_: n, "DPM-Solver++(2M), 2nd-order multistep",
                            multistep=True),
    "restart": SamplerInfo(sample_restart, lambda n, intervals, **_: restart_nfe(n, intervals),
                           "Restart sampling (Heun, plus repeated noise-and-solve over intervals)"),
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose from: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def required_options(name: str) -> list[str]:
    """The options a sampler cannot run without (restart's `intervals`): what its name alone does not give."""
    params = list(inspect.signature(get_sampler(name).fn).parameters.values())[3:]  # after denoise, noise, sigmas
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# The samplers that run on their name alone: what a run's config and the analyses can name.
NAMED_SAMPLERS = tuple(name for name in SAMPLERS if not required_options(name))


def nfe(sampler: str, num_steps: int, **options) -> int:
    """Network evaluations of a sampler run with these options, without guidance; that many network calls with it
    too, as `DiscoDiff.make_denoiser` batches the guided passes (the evaluations double or triple)."""
    missing = [o for o in required_options(sampler) if o not in options]
    if missing:
        raise ConfigError(f"sampler {sampler!r} needs {', '.join(missing)}")
    return get_sampler(sampler).nfe(num_steps, **options)


def takes_noise_source(sampler: Callable) -> bool:
    """Whether a sampler draws noise of its own (a `randn_like` argument), which the caller must then seed."""
    return "randn_like" in inspect.signature(sampler).parameters


def guide(d_cond: torch.Tensor, d_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance on two denoiser outputs: D~ = (1 + w) D_cond - w D_uncond."""
    return d_cond + w * (d_cond - d_uncond)


def guided(denoise_cond: Denoise, denoise_uncond: Denoise, w: float) -> Denoise:
    """Classifier-free guidance, D~ = (1 + w) D(x, sigma, z) - w D(x, sigma, null); w = 0 is conditional.

    The two-pass form over any pair of denoisers. `DiscoDiff.make_denoiser` computes the same in one network call
    on the stacked batch."""
    if w == 0:
        return denoise_cond

    def denoise(x, sigma):
        return guide(denoise_cond(x, sigma), denoise_uncond(x, sigma), w)

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

    def standard_gamma(self, alpha: float) -> torch.Tensor:
        """One Gamma(alpha, 1) draw per sample, float64 [B] (the radius of PFGM++'s kernel, `process.perturbation`)."""
        return torch.cat([standard_gamma(alpha, 1, generator=g, device=self.device) for g in self.generators])


def trajectory_recorder():
    """A callback that keeps every point a sampler visits: (callback, list of points).

    `pipeline.generate` calls it with step -1 and the initial noise first, so the list ends up [steps + 1, ...]."""
    points: list[torch.Tensor] = []
    return (lambda i, x: points.append(x.detach().clone())), points
