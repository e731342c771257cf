"""Analyses of trained runs: the paper's section 7 figures and its Table 3 ablations, at laptop scale.

One small module per analysis, each a set of pure functions that take models (with their priors, where they
sample) and data and return plain dicts (and tensors, for pictures); `discodiff analyze ...` (discodiff/cli/analyze.py)
wraps them, writes the JSON and the figures, and docs/analysis.md says what each one measures and what the paper found.

- `loss_sigma`: the weighted denoising loss at fixed noise levels, oracle latents against the baseline (Fig. 7a);
- `switching`: swap z for another one late in sampling and measure how much the output moves (Fig. 7b);
- `codebook`: how many codes each latent uses, and pictures of what a code means;
- `quality`: FID of generated samples against one cached reference, used by the three below;
- `oracle`: encoder latents of real images against latents drawn from the prior (Table 3);
- `guidance`: FID (and feature diversity) against the guidance weight w on the latents;
- `nfe`: FID against the number of sampler steps.

The figures are drawn by `discodiff.plots.analysis`, which imports matplotlib lazily, so the core library does not
need it.
"""
from .common import AnalysisError, jsonable, pick_images, require_image_model, require_latents, require_prior

__all__ = ["AnalysisError", "jsonable", "pick_images", "require_image_model", "require_latents", "require_prior"]
