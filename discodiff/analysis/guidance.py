"""Classifier-free guidance on the latents: FID and diversity against the guidance weight w (paper Table 3, App. B).

D~(x, sigma, z) = (1 + w) D(x, sigma, z) - w D(x, sigma, null), with the learned null latent as the unconditional
model; w = 0 is plain conditional sampling. On ImageNet-64 the paper finds w = 1 best (FID 1.81 at w = 0, 1.65 at
w = 1, 2.33 at w = 2): some guidance sharpens what z says, too much costs diversity. Each w uses the same seeds, so
the same latents from the prior and the same noise.
"""
from __future__ import annotations

from typing import Sequence

from .common import require_image_model, require_latents, require_prior
from .quality import FIDCache, sample_fid


def guidance_sweep(model, prior, weights: Sequence[float], seeds: Sequence[int], ref, detector, *, steps: int = 18,
                   sampler: str = "heun", batch: int = 128, progress: bool = False, cache: FIDCache | None = None,
                   model_key=None, bootstrap: int = 0, sampling: dict | None = None) -> dict:
    """One FID row per guidance weight, latents from `prior`: {"rows": [{"guidance", "fid", "diversity", "nfe",
    "network_passes", ...}], "best": the row with the lowest FID}. `sampling`: further keywords of `sample_fid`
    for every row (sampler_options, guidance_interval, prior_temperature, hybrid)."""
    require_latents(model, "the guidance sweep")
    require_prior(model, prior, "the guidance sweep")
    require_image_model(model, "the guidance sweep")
    rows = [sample_fid(model, prior, seeds, ref, detector, steps=steps, sampler=sampler, guidance=w, batch=batch,
                       progress=progress, desc=f"guidance w={w:g}", cache=cache, model_key=model_key,
                       bootstrap=bootstrap, **(sampling or {}))
            for w in weights]
    return {"rows": rows, "best": min(rows, key=lambda r: r["fid"]), "num": len(seeds), "steps": steps,
            "sampler": sampler}
