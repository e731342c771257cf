"""Generation: latents from the prior, then a sampler over the conditional denoiser (paper Alg. 3).

`generate` is the one place that turns seeds into samples. It takes a sampler function and its noise levels, in
the style of EDM's and k-diffusion's samplers: `generate(model, seeds, karras_sigmas(18), prior=prior)` draws
with Heun, `sampler=partial(sample_edm_stochastic, S_churn=40)` with churn. `generate_batches` runs it over many
seeds in batches. `sampler_from_name` turns the names of the CLI and the config into a sampler function.

Each seed drives its own generator, in this order: the m uniforms for the prior, the initial noise, then any
noise the sampler draws. A sample therefore depends on its seed only, never on the batch it is drawn in.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterator, Sequence

import torch

from .model import DiscoDiff
from .prior import ARPrior
from .sampling import StackedGenerator, get_sampler, sample_heun, takes_noise_source


def sampler_from_name(name: str, **options) -> Callable:
    """The registered sampler `name` with keyword `options` bound (e.g. S_churn for "edm")."""
    fn = get_sampler(name).fn
    return functools.partial(fn, **options) if options else fn


def _labels(class_labels, n: int, device) -> torch.Tensor | None:
    """None, one label for all, or one label per sample, as int64 [n]."""
    if class_labels is None:
        return None
    return torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(n)


def _device_of(model: torch.nn.Module, device):
    return torch.device(device) if device is not None else next(model.parameters()).device


def draw_latents(prior: ARPrior | None, uniforms: torch.Tensor, class_labels=None,
                 temperature: float = 1.0) -> torch.Tensor:
    """z [N, m] from the prior by inverse-CDF sampling of `uniforms` [N, m]; [N, 0] for a plain model (m = 0)."""
    if uniforms.shape[1] == 0:
        return torch.zeros(len(uniforms), 0, dtype=torch.long, device=uniforms.device)
    if prior is None:
        raise ValueError("this model has latents: sampling needs its prior (or explicit z)")
    return prior.sample(uniforms, class_labels, temperature=temperature)


@torch.no_grad()
def sample_latents(model: DiscoDiff, prior: ARPrior | None, seeds: Sequence[int], *, class_labels=None,
                   temperature: float = 1.0, device=None) -> torch.Tensor:
    """z [N, m] from the prior: exactly the latents `generate` draws for the same seeds (their first m uniforms)."""
    device = _device_of(model, device)
    m = model.num_latents
    uniforms = StackedGenerator(seeds, device).rand([max(m, 1)])[:, :m]
    return draw_latents(prior, uniforms, _labels(class_labels, len(seeds), device), temperature)


@torch.no_grad()
def shared_latents(model: DiscoDiff, prior: ARPrior | None, seeds: Sequence[int], per_row: int, *,
                   class_labels=None, temperature: float = 1.0, device=None) -> torch.Tensor:
    """z [N, m] for grids whose rows share one latent (paper Fig. 2b): each run of `per_row` consecutive seeds
    gets the prior's draw for the first seed of its run. `class_labels`: one label, or one per row."""
    row_seeds = list(seeds)[::per_row]
    z_rows = sample_latents(model, prior, row_seeds, class_labels=class_labels, temperature=temperature,
                            device=device)
    return z_rows.repeat_interleave(per_row, dim=0)[:len(seeds)]


@torch.no_grad()
def generate(model: DiscoDiff, seeds: Sequence[int], sigmas: torch.Tensor, *, sampler: Callable = sample_heun,
             prior: ARPrior | None = None, z: torch.Tensor | None = None, class_labels=None,
             guidance: float = 0.0, class_guidance: float = 0.0, prior_temperature: float = 1.0,
             callback=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per seed: (x in model space [N, *shape], z [N, m]).

    `sigmas`: the decreasing noise levels ending in 0 (e.g. `karras_sigmas(steps)`); `sampler(denoise, noise,
    sigmas, callback=...)` is any sampler function, and one that draws noise of its own (a `randn_like` argument)
    gets each seed's generator. `z` fixes the latents, else `prior` draws them; `guidance` w weights the latents,
    `class_guidance` the class (paper eq. 6): the guided passes run as one network call on a batch 2x (3x with
    both) the size of `seeds`, and z's latent tokens are computed once for the whole trajectory
    (`DiscoDiff.make_denoiser`). `callback(i, x)` is called with i = -1 and the initial noise, then after every step.
    """
    device = _device_of(model, device)
    gen = StackedGenerator(seeds, device)
    m = model.num_latents
    uniforms = gen.rand([max(m, 1)])[:, :m]  # drawn even when z is given, so the noise stays the same
    class_labels = _labels(class_labels, len(seeds), device)
    z = draw_latents(prior, uniforms, class_labels, prior_temperature) if z is None else z.to(device)
    sigmas = sigmas.to(device)
    noise = gen.randn(model.config.data_shape) * sigmas[0].float()
    denoise = model.make_denoiser(z if m else None, class_labels, guidance=guidance, class_guidance=class_guidance)
    if callback is not None:
        callback(-1, noise)
    if takes_noise_source(sampler):
        sampler = functools.partial(sampler, randn_like=gen.randn_like)
    return sampler(denoise, noise, sigmas, callback=callback), z


def generate_batches(model: DiscoDiff, seeds: Sequence[int], sigmas: torch.Tensor, *, batch: int = 256,
                     z: torch.Tensor | None = None, class_labels=None, progress: bool = False,
                     **options) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor]]:
    """`generate` over many seeds, `batch` at a time: yields (seeds of the batch, x, z). `z` [N, m] and
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

