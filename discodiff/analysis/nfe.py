"""Sample quality against the number of sampler steps (NFE = 2 steps - 1 for Heun, steps for Euler).

The paper's argument (section 3.2, Fig. 4) is that conditioning on z makes each mode's probability-flow ODE less
curved, so DisCo-Diff should lose less quality than a plain DM when the ODE is solved with few steps. This analysis
measures FID at several step counts for any number of runs (typically the baseline, m = 0, and DisCo-Diff), with
the same noise seeds everywhere.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .common import AnalysisError, require_image_model, require_prior
from .quality import FIDCache, sample_fid


def quality_vs_steps(models: Mapping[str, tuple], steps: Sequence[int], seeds: Sequence[int], ref, detector, *,
                     sampler: str = "heun", guidance: float = 0.0, batch: int = 128, progress: bool = False,
                     cache: FIDCache | None = None, bootstrap: int = 0) -> dict:
    """{"rows": {name: [{"steps", "nfe", "fid", "diversity", ...} per step count]}, ...} for `models`
    {name: (model, prior)} (prior None for a baseline, m = 0). The guidance weight applies to models with latents
    only (a baseline has nothing to guide)."""
    if not models:
        raise AnalysisError("quality against steps needs at least one run")
    if not steps or min(steps) < 1:
        raise AnalysisError(f"sampler step counts must be positive whole numbers, got {list(steps)}")
    for name, (model, prior) in models.items():
        require_image_model(model, "FID against sampler steps", name)
        require_prior(model, prior, "FID against sampler steps", name)
    rows = {name: [sample_fid(model, prior, seeds, ref, detector, steps=n, sampler=sampler,
                              guidance=guidance if model.num_latents else 0.0, batch=batch, progress=progress,
                              desc=f"{name}, {n} steps", cache=cache, model_key=name,
                              bootstrap=bootstrap)
                   for n in steps]
            for name, (model, prior) in models.items()}
    return {"rows": rows, "steps": list(steps), "sampler": sampler, "guidance": guidance, "num": len(seeds)}
