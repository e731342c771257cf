"""Latent switching (paper Fig. 7b): which part of sampling do the latents steer?

Each seed is sampled twice from the same initial noise: once with z_a for all N steps, giving x_a, and once with
z_a for the first N - n steps and another latent z_b (the prior's draw for another seed) for the last n = f N steps,
giving x_f. If the latents mattered only at low noise, switching late would move the output all the way to x_b
(the sample with z_b throughout); the paper finds that switching for the last quarter of the steps hardly changes
the image: the latents act at high noise and fix the global layout early.

The trajectory with z_a is computed once; each x_f continues it from step N - n with z_b, so the cost is one full
run plus the switched tails.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..pipeline import generate, sample_latents
from ..sampling import SAMPLERS, karras_sigmas, trajectory_recorder
from .common import SWITCHING_SAMPLERS, AnalysisError, chunks, generation_labels, require_latents, require_prior, rms

DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
OTHER_SEED_OFFSET = 1_000_000_007  # z_b for seed s is the prior's draw for seed s + this


def switch_step(fraction: float, steps: int) -> int:
    """The step from which z_b is used: the last round(f * steps) steps are switched."""
    if not 0.0 <= fraction <= 1.0:
        raise AnalysisError(f"switching fractions must lie in [0, 1], got {fraction}")
    return steps - int(round(fraction * steps))


@torch.no_grad()
def switched_samples(model, seeds: Sequence[int], z_a: torch.Tensor, z_b: torch.Tensor, fractions: Sequence[float],
                     *, steps: int, sampler: str = "heun", guidance: float = 0.0, class_labels=None) -> torch.Tensor:
    """Samples [F, N, *shape]: for each fraction f, z_a for the first steps and z_b for the last f of them."""
    if sampler not in SWITCHING_SAMPLERS:  # a switched tail continues the z_a trajectory: only a one-step ODE
        # solver reproduces it
        raise AnalysisError(f"latent switching needs a deterministic one-step sampler "
                            f"({' or '.join(SWITCHING_SAMPLERS)}), got {sampler!r}")
    fn = SAMPLERS[sampler].fn
    device = next(model.parameters()).device
    sigmas = karras_sigmas(steps, device=device)
    callback, points = trajectory_recorder()  # points[i] is the state after i steps (points[0]: the noise)
    x_a, _ = generate(model, seeds, sigmas, sampler=fn, z=z_a, guidance=guidance, class_labels=class_labels,
                      callback=callback)
    labels = None if class_labels is None else torch.as_tensor(class_labels, device=device)
    denoise_b = model.make_denoiser(z_b.to(device), labels, guidance=guidance)
    out = []
    for f in fractions:
        s = switch_step(f, steps)
        out.append(x_a if s == steps else fn(denoise_b, points[s], sigmas[s:]))
    return torch.stack(out)


def latent_switching(model, prior, seeds: Sequence[int], *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     steps: int = 18, sampler: str = "heun", guidance: float = 0.0, batch: int = 128,
                     keep: int = 8, progress=None) -> dict:
    """How far the output moves when the latent is switched for the last fraction f of the steps.

    z_a is `prior`'s draw for each seed (what `generate` would use), z_b its draw for another seed.
    Per fraction: "rms", the mean over samples of the RMS distance ||x_f - x_a|| (model space, images in [-1, 1]);
    "rms_ratio", that divided by the same at f = 1 (0: nothing moves, 1: it is the z_b sample); "closer_to_b", the
    fraction of samples nearer x_b than x_a, among the seeds whose z_b differs from z_a ("same_latent_fraction" says
    how many do not). "samples" [F, keep, *shape] holds the first `keep` seeds' outputs.
    """
    require_latents(model, "latent switching")
    require_prior(model, prior, "latent switching")
    fractions = sorted({float(f) for f in fractions} | {0.0, 1.0})
    idx_a, idx_b = fractions.index(0.0), fractions.index(1.0)
    dist_a, dist_b, same_z, kept = [], [], [], []
    for i, chunk in chunks(list(seeds), batch):
        labels = generation_labels(model, chunk)
        z_a = sample_latents(model, prior, chunk, class_labels=labels)
        z_b = sample_latents(model, prior, [s + OTHER_SEED_OFFSET for s in chunk], class_labels=labels)
        xs = switched_samples(model, chunk, z_a, z_b, fractions, steps=steps, sampler=sampler, guidance=guidance,
                              class_labels=labels)
        dist_a.append(torch.stack([rms(x, xs[idx_a]) for x in xs]).cpu())  # [F, n]
        dist_b.append(torch.stack([rms(x, xs[idx_b]) for x in xs]).cpu())
        same_z.append((z_a == z_b).all(1).cpu())
        kept.append(xs[:, :max(keep - sum(k.shape[1] for k in kept), 0)].cpu())
        if progress is not None:
            progress(f"switching: {i + len(chunk)}/{len(seeds)} seeds")
    da, db = torch.cat(dist_a, 1), torch.cat(dist_b, 1)
    same = torch.cat(same_z)
    full = float(da[idx_b].mean())
    differ = ~same if (~same).any() else torch.ones_like(same)  # a seed whose z_b is z_a cannot move
    return {
        "fractions": fractions,
        "switch_step": [switch_step(f, steps) for f in fractions],
        "switch_sigma": [float(karras_sigmas(steps)[switch_step(f, steps)]) for f in fractions],
        "rms": da.mean(1).tolist(),
        "rms_ratio": [float(v) / full if full > 0 else float("nan") for v in da.mean(1)],
        "closer_to_b": (db < da)[:, differ].float().mean(1).tolist(),
        "num": len(seeds), "steps": steps, "sampler": sampler, "guidance": guidance,
        "same_latent_fraction": float(same.float().mean()),
        "samples": torch.cat(kept, 1),
    }
