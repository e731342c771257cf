"""Generation: latents from the prior, then a sampler over the conditional denoiser (paper Alg. 3).

`generate` is the one place that turns seeds into samples. It takes a sampler function and its noise levels, in
the style of EDM's and k-diffusion's samplers: `generate(model, seeds, karras_sigmas(18), prior=prior)` draws
with Heun, `sampler=partial(sample_edm_stochastic, S_churn=40)` with churn. `generate_batches` runs it over many
seeds in batches. `sampler_from_name` turns the names of the CLI and the config into a sampler function.
`hybrid=(second_model, switch_sigma)` hands the low-noise part of the ODE to a second model (paper App. D);
`autoguide=(weak_model, w)` guides the model with a weak version of itself (autoguidance.py).

Each seed drives its own generator, in this order: the prior's randomness (`prior_noise`: m uniforms for the
autoregressive prior, D Gaussians for the diffusion prior of continuous latents), the initial noise (for PFGM++,
model.process = "pfgmpp", its Gaussian and then its one Gamma draw), then any noise the sampler draws. A sample
therefore depends on its seed only, never on the batch it is drawn in.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import torch

from .autoguidance import as_autoguide
from .autoguidance import make_denoiser as autoguided_make_denoiser
from .errors import ConfigError
from .model import DiscoDiff
from .prior import ARPrior
from .process import process_of
from .sampling import Denoise, StackedGenerator, get_sampler, required_options, sample_heun, takes_noise_source


def sampler_from_name(name: str, **options) -> Callable:
    """The registered sampler `name` with keyword `options` bound (e.g. S_churn for "edm", intervals for "restart")."""
    fn = get_sampler(name).fn
    missing = [o for o in required_options(name) if o not in options]
    if missing:
        raise ConfigError(f"sampler {name!r} needs {', '.join(missing)}")
    return functools.partial(fn, **options) if options else fn


def hybrid_denoiser(first: Denoise, second: Denoise, switch_sigma: float) -> Denoise:
    """`first` at the noise levels sigma >= switch_sigma, `second` below them (paper App. D: DisCo-Diff solves the
    ODE at high noise, where its latents help, and a plain model takes over at low noise). switch_sigma = 0 is
    `first` alone; above sigma_max it is `second` alone. Each call goes to one model: the samplers evaluate one
    sigma per batch."""
    def denoise(x, sigma):
        high = sigma >= switch_sigma
        if bool(high.all()):
            return first(x, sigma)
        if not bool(high.any()):
            return second(x, sigma)
        raise ValueError("a hybrid denoiser takes one noise level per batch, got sigmas on both sides of the switch")

    return denoise


def check_hybrid_pair(model: DiscoDiff, second: DiscoDiff) -> None:
    """A second model must draw the same kind of data as the first (shape, and class count when classes are used)."""
    a, b = model.config, second.config
    if list(a.data_shape) != list(b.data_shape):
        raise ConfigError(f"the hybrid's second model has data shape {b.data_shape}, the first {a.data_shape}")
    if a.num_classes != b.num_classes:
        raise ConfigError(f"the hybrid's second model has {b.num_classes} classes, the first {a.num_classes}")


class PassCounter:
    """Counts the samples that go through models' denoiser networks (forward hooks) while it is open: over the
    number of samples drawn, the real network evaluations per sample, guidance, restarts, hybrids and autoguidance
    included: `total` counts every model's passes (an autoguided sample's evaluations are the model's plus the weak
    model's). `calls` counts the network calls themselves (a guided call on a stacked batch is one);
    `samples_of[i]` and `calls_of[i]` count those of the i-th model alone. A model given twice is counted once."""

    def __init__(self, *models: DiscoDiff):
        unique = []
        for m in models:
            if all(m is not u for u in unique):
                unique.append(m)
        self.models, self.total, self.calls, self.hooks = tuple(unique), 0, 0, []
        self.samples_of, self.calls_of = [0] * len(unique), [0] * len(unique)

    def _count(self, i, module, args, output):
        self.total += output.shape[0]
        self.calls += 1
        self.samples_of[i] += output.shape[0]
        self.calls_of[i] += 1

    def __enter__(self) -> "PassCounter":
        self.hooks = [m.denoiser.register_forward_hook(functools.partial(self._count, i))
                      for i, m in enumerate(self.models)]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []


def _labels(class_labels, n: int, device) -> torch.Tensor | None:
    """None, one label for all, or one label per sample, as int64 [n]."""
    if class_labels is None:
        return None
    return torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(n)


def _device_of(model: torch.nn.Module, device):
    return torch.device(device) if device is not None else next(model.parameters()).device


def prior_noise(model: DiscoDiff, gen: StackedGenerator) -> torch.Tensor:
    """Each seed's first draw, what the prior turns into z: m uniforms [N, m] for the autoregressive prior, the
    initial noise [N, D] of the diffusion prior for continuous latents, [N, 0] for a plain model (m = 0)."""
    if model.config.continuous:
        return gen.randn([model.config.latent_size])
    m = model.num_latents
    return gen.rand([max(m, 1)])[:, :m]  # (a plain model draws one too, so that its noise stays as it was)


def draw_latents(prior: ARPrior | None, uniforms: torch.Tensor, class_labels=None,
                 temperature: float = 1.0) -> torch.Tensor:
    """z from the prior's randomness (`prior_noise`): [N, m] by inverse-CDF sampling of m uniforms, or [N, D]
    from D Gaussians by the diffusion prior; [N, 0] for a plain model (m = 0)."""
    if uniforms.shape[1] == 0:
        return torch.zeros(len(uniforms), 0, dtype=torch.long, device=uniforms.device)
    if prior is None:
        raise ValueError("this model has latents: sampling needs its prior (or explicit z)")
    return prior.sample(uniforms, class_labels, temperature=temperature)


@torch.no_grad()
def sample_latents(model: DiscoDiff, prior: ARPrior | None, seeds: Sequence[int], *, class_labels=None,
                   temperature: float = 1.0, device=None) -> torch.Tensor:
    """z from the prior: exactly the latents `generate` draws for the same seeds (from their first draws)."""
    device = _device_of(model, device)
    noise = prior_noise(model, StackedGenerator(seeds, device))
    return draw_latents(prior, noise, _labels(class_labels, len(seeds), device), temperature)


@torch.no_grad()
def shared_latents(model: DiscoDiff, prior: ARPrior | None, seeds: Sequence[int], per_row: int, *,
                   class_labels=None, temperature: float = 1.0, device=None) -> torch.Tensor:
    """z for grids whose rows share one latent (paper Fig. 2b): each run of `per_row` consecutive seeds
    gets the prior's draw for the first seed of its run. `class_labels`: one label, or one per row."""
    row_seeds = list(seeds)[::per_row]
    z_rows = sample_latents(model, prior, row_seeds, class_labels=class_labels, temperature=temperature,
                            device=device)
    return z_rows.repeat_interleave(per_row, dim=0)[:len(seeds)]


@torch.no_grad()
def generate(model: DiscoDiff, seeds: Sequence[int], sigmas: torch.Tensor, *, sampler: Callable = sample_heun,
             prior: ARPrior | None = None, z: torch.Tensor | None = None, class_labels=None,
             guidance: float = 0.0, class_guidance: float = 0.0, guidance_interval: tuple[float, float] | None = None,
             prior_temperature: float = 1.0, hybrid: tuple[DiscoDiff, float] | None = None, autoguide=None,
             callback=None, device=None, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per seed: (x in model space [N, *shape], z [N, m], or [N, D] for continuous latents).

    `sigmas`: the decreasing noise levels ending in 0 (e.g. `karras_sigmas(steps)`); `sampler(denoise, noise,
    sigmas, callback=...)` is any sampler function, and one that draws noise of its own (a `randn_like` argument)
    gets each seed's generator. `z` fixes the latents, else `prior` draws them; `guidance` w weights the latents,
    `class_guidance` the class (paper eq. 6): the guided passes run as one network call on a batch 2x (3x with
    both) the size of `seeds`, and z's latent tokens are computed once for the whole trajectory
    (`DiscoDiff.make_denoiser`); `guidance_interval=(lo, hi)` guides only at lo < sigma <= hi. `callback(i, x)` is called with i = -1 and the initial noise, then after every step.

    `hybrid=(second, switch_sigma)`: `second` denoises below switch_sigma (`hybrid_denoiser`). It gets no latents
    of its own: none for a plain model (m = 0, the usual case), the null latent for a DisCo-Diff model (so no
    latent guidance either); the class and its guidance are the same. The seeds' noise is the first model's, so
    a hybrid sample starts where `model`'s own sample for that seed starts.

    `autoguide=(weak, w)`, `(weak, w, (lo, hi))` or an `autoguidance.Autoguide`: autoguidance (Karras et al. 2024)
    by the weak model, D~ = G + w (D - D_weak), added to the latent/class-guided G on the conditional D, inside its
    own noise interval (lo, hi] when given; the weak model gets z (if it shares the model's encoder), the null
    latent or, plain, nothing (autoguidance.py). One extra network call of the weak model per denoiser call; w = 0
    is exactly the sampler without it. Not with `hybrid`. The weak model draws no noise: seeds fix the samples.

    `bf16`: the denoiser networks run under bfloat16 autocast (the latents, the noise and the sampler's own
    arithmetic stay float32, so z is the same as without it and the images differ by the network's rounding).
    """
    device = _device_of(model, device)
    gen = StackedGenerator(seeds, device)
    m = model.num_latents
    prior_input = prior_noise(model, gen)  # drawn even when z is given, so the noise stays the same
    class_labels = _labels(class_labels, len(seeds), device)
    z = draw_latents(prior, prior_input, class_labels, prior_temperature) if z is None else z.to(device)
    sigmas = sigmas.to(device)
    # the initial sample at sigma_max, from the model's kernel: sigma_max g for EDM (process.Process.perturbation)
    noise = process_of(model.config).perturbation(gen.randn(model.config.data_shape), sigmas[0].float(),
                                                  gen.standard_gamma)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    guide = as_autoguide(autoguide)
    if guide is not None and hybrid is not None:
        raise ConfigError("autoguidance and a hybrid do not go together: the hybrid's second model would go unguided")
    with autocast:
        if guide is not None:
            denoise = autoguided_make_denoiser(model, guide, z if m else None, class_labels, guidance=guidance,
                                               class_guidance=class_guidance, guidance_interval=guidance_interval)
        else:
            denoise = model.make_denoiser(z if m else None, class_labels, guidance=guidance,
                                          class_guidance=class_guidance, guidance_interval=guidance_interval)
        if hybrid is not None:
            second, switch_sigma = hybrid
            check_hybrid_pair(model, second)
            denoise = hybrid_denoiser(denoise, second.make_denoiser(None, class_labels, class_guidance=class_guidance),
                                      switch_sigma)
    if bf16:
        denoise = _autocast_calls(denoise, device.type)
    if callback is not None:
        callback(-1, noise)
    if takes_noise_source(sampler):
        sampler = functools.partial(sampler, randn_like=gen.randn_like)
    return sampler(denoise, noise, sigmas, callback=callback), z


def _autocast_calls(denoise: Denoise, device_type: str) -> Denoise:
    """`denoise` with each call under bfloat16 autocast and its output back in float32: the sampler's steps
    between calls stay float32."""
    def wrapped(x, sigma):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return denoise(x, sigma).float()
    return wrapped


def generate_batches(model: DiscoDiff, seeds: Sequence[int], sigmas: torch.Tensor, *, batch: int = 256,
                     z: torch.Tensor | None = None, class_labels=None, progress: bool = False,
                     **options) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor]]:
    """`generate` over many seeds, `batch` at a time: yields (seeds of the batch, x, z). `z` ([N, m] or [N, D]) and
    `class_labels` ([N] or one label) are split alongside the seeds. The samples do not depend on `batch`."""
    import sys

    from tqdm import tqdm

    seeds = list(seeds)
    per_sample = class_labels is not None and torch.as_tensor(class_labels).numel() > 1
    with tqdm(total=len(seeds), desc="sampling", unit="img", leave=False,
              disable=not (progress and sys.stderr.isatty())) as bar:
        for i in range(0, len(seeds), batch):
            chunk = seeds[i:i + batch]
            x, z_chunk = generate(model, chunk, sigmas, z=None if z is None else z[i:i + batch],
                                  class_labels=class_labels[i:i + batch] if per_sample else class_labels, **options)
            bar.update(len(chunk))
            yield chunk, x, z_chunk



def generate_sharded(model: DiscoDiff, seeds: Sequence[int], sigmas: torch.Tensor, *, batch: int = 256,
                     z: torch.Tensor | None = None, class_labels=None, progress: bool = False,
                     **options) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor]]:
    """`generate_batches` shared among the processes of torchrun: the seeds go out `batch` per process in turn (the
    k-th batch of `batch` seeds to rank k % world), and rank 0 gathers the results and yields exactly the batches
    that `generate_batches` yields for the same arguments, in seed order; the other ranks yield nothing. Every rank
    must iterate it to the end (it makes collective calls). A single process is `generate_batches` itself.

    Since a sample depends on its seed only, the output is the same as a single process's, whatever the number of
    processes (the seed contract). The gathered tensors are on rank 0's device. Every round gathers before it
    yields, so rank 0 may stop at its last batch without resuming the generator (nothing collective follows)."""
    from . import dist

    world, rank = dist.world_size(), dist.rank()
    if world == 1:
        yield from generate_batches(model, seeds, sigmas, batch=batch, z=z, class_labels=class_labels,
                                    progress=progress, **options)
        return
    import sys

    from tqdm import tqdm

    seeds = list(seeds)
    per_sample = class_labels is not None and torch.as_tensor(class_labels).numel() > 1
    step = batch * world
    with tqdm(total=len(seeds), desc="sampling", unit="img", leave=False,
              disable=not (progress and rank == 0 and sys.stderr.isatty())) as bar:
        for start in range(0, len(seeds), step):
            spans = [(min(start + r * batch, len(seeds)), min(start + (r + 1) * batch, len(seeds)))
                     for r in range(world)]
            lo, hi = spans[rank]
            if hi == lo:  # the last round may leave a rank without seeds: it draws one it then drops
                lo, hi = start, start + 1
            x, z_mine = generate(model, seeds[lo:hi], sigmas, z=None if z is None else z[lo:hi],
                                 class_labels=class_labels[lo:hi] if per_sample else class_labels, **options)
            xs, zs = _gather_padded(x, batch, world), _gather_padded(z_mine, batch, world)
            for r, (a, b) in enumerate(spans):
                if rank == 0 and b > a:
                    bar.update(b - a)
                    yield seeds[a:b], xs[r][:b - a], zs[r][:b - a]


def own_share(num: int, batch: int, world: int, rank: int) -> tuple[int, int]:
    """(samples, batches) that rank `rank` generates in `generate_sharded` for `num` seeds, the one-seed batch
    of a rank left without seeds in the last round included."""
    samples = batches = 0
    for start in range(0, num, batch * world):
        lo, hi = min(start + rank * batch, num), min(start + (rank + 1) * batch, num)
        samples, batches = samples + max(hi - lo, 1), batches + 1
    return samples, batches


def _gather_padded(t: torch.Tensor, rows: int, world: int) -> list[torch.Tensor]:
    """Every rank's `t` (at most `rows` rows, the same trailing shape and dtype on every rank), padded to `rows`
    for all_gather (NCCL needs equal sizes) and returned padded; the caller knows each rank's count."""
    import torch.distributed as td

    if t[:0].flatten(1).shape[1] == 0:  # nothing to send (the [N, 0] latents of a plain model)
        return [t.new_zeros((rows, *t.shape[1:])) for _ in range(world)]
    padded = t.new_zeros((rows, *t.shape[1:]))
    padded[:len(t)] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    td.all_gather(out, padded.contiguous())
    return out
