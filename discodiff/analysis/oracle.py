"""Oracle latents against latents from the prior (paper Table 3).

The same denoiser is sampled twice from the same noise seeds: once with "oracle" latents, the encoder's argmax
z = E(y) of real images (training images here, as in the paper's table, unless the data given are a held-out split),
and once with latents drawn from the second-stage prior. The FID gap measures how well the prior models the
encoder's latent distribution: the paper finds it small for discrete latents (1.65 oracle against 1.81 from the
prior, without guidance, on ImageNet-64), while a continuous 1000-d latent's prior fails badly (1.67 against 11.12).
For a model with continuous latents (latent_type continuous), the oracle latents are the posterior means.
"""
from __future__ import annotations

import torch

from ..pipeline import sample_latents
from .codebook import encoder_latents
from .common import pick_images, require_image_model, require_latents, require_prior
from .quality import FIDCache, sample_fid


def oracle_vs_prior(model, prior, x: torch.Tensor, labels: torch.Tensor | None, ref, detector, *, num: int,
                    seed: int = 0, steps: int = 18, sampler: str = "heun", guidance: float = 0.0, batch: int = 128,
                    progress: bool = False, cache: FIDCache | None = None, bootstrap: int = 0, model_key=None,
                    sampling: dict | None = None) -> dict:
    """FID of `num` samples with oracle latents of `num` images of `x` (a seeded random subset) and of `num` samples
    with latents from `prior`, both from noise seeds seed .. seed + num - 1. A class-conditional model gets each
    image's class in both rows, so only the latents differ. Also reports how many of the prior's tuples z occur among
    the encoder's tuples of all of `x` (1: the prior only replays latents it has seen); for continuous latents, which
    have no tuples to count, that and the agreement with the oracle latents are None. `sampling`: further keywords
    of `sample_fid` for both rows (sampler_options, guidance_interval, prior_temperature, hybrid)."""
    require_latents(model, "oracle against prior latents")
    require_prior(model, prior, "oracle against prior latents")
    require_image_model(model, "oracle against prior latents")
    idx = pick_images(len(x), num, seed)
    use_labels = labels if (labels is not None and model.config.num_classes) else None
    cls = None if use_labels is None else use_labels[idx]
    z_oracle = encoder_latents(model, x[idx], batch=512)
    seeds = list(range(seed, seed + num))
    common = dict(steps=steps, sampler=sampler, guidance=guidance, batch=batch, progress=progress, cache=cache,
                  model_key=model_key, class_labels=cls, bootstrap=bootstrap, **(sampling or {}))
    oracle = sample_fid(model, prior, seeds, ref, detector, z=z_oracle, latents=f"oracle (images seed {seed})",
                        desc="oracle latents", **common)
    from_prior = sample_fid(model, prior, seeds, ref, detector, latents="prior", desc="prior latents", **common)
    seen = agreement = None
    if not model.config.continuous:
        z_prior = sample_latents(model, prior, seeds, class_labels=cls,
                                 temperature=(sampling or {}).get("prior_temperature", 1.0)).cpu()
        tuples = {tuple(r) for r in encoder_latents(model, x, batch=512).tolist()}
        seen = sum(tuple(r) in tuples for r in z_prior.tolist()) / num
        agreement = float((z_prior == z_oracle).float().mean())
    return {"oracle": oracle, "prior": from_prior, "gap": from_prior["fid"] - oracle["fid"],
            "ratio": from_prior["fid"] / oracle["fid"] if oracle["fid"] > 0 else float("nan"),
            "prior_tuples_seen_in_data": seen, "oracle_prior_agreement": agreement,
            "num": num, "seed": seed, "steps": steps, "sampler": sampler, "guidance": guidance,
            "num_data": len(x)}
