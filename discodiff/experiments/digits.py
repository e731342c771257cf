"""The demo's image part: DisCo-Diff on scikit-learn's 8x8 digits, trained, its prior fitted, and sampled.

It goes through the same functions as `discodiff train`, `train-prior` and `sample --grid-by-latent`.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint import load_model, write_json
from ..config import preset_config
from ..data import load_dataset
from ..data.grid import write_image_grid
from ..train.prior import train_prior
from ..train.stage1 import train_stage1
from .toy2d import prepare_run_dir


def run_digits(out_dir: Path, *, kimg: float | None = None, prior_kimg: float | None = None, seed: int = 0,
               rows: int = 8, cols: int = 8, quiet: bool = False) -> dict:
    """Trains the `digits` preset in out_dir/digits and writes two grids: samples with latents from the prior,
    and rows of samples that share one z (paper Fig. 2b). Returns the timings and the files written."""
    out_dir = Path(out_dir)
    run_dir = out_dir / "digits"
    overrides = {"train": {"seed": seed, **({"kimg": kimg} if kimg else {})},
                 "prior_train": {"seed": seed, **({"kimg": prior_kimg} if prior_kimg else {})}}
    cfg = preset_config("digits", overrides)
    data = load_dataset(cfg.data)
    cfg.model.data_shape = data.shape
    prepare_run_dir(run_dir, cfg)
    t0 = time.perf_counter()
    train_stage1(run_dir, cfg, data, quiet=quiet)
    t1 = time.perf_counter()
    _, model = load_model(run_dir)
    report = train_prior(run_dir, cfg, data, model, quiet=quiet)
    t2 = time.perf_counter()
    seeds = list(range(seed, seed + rows * cols))
    with torch.no_grad():
        x, _ = model.generate(seeds, steps=cfg.sample.steps)
        shared = model.shared_latents(seeds, cols)
        x_shared, _ = model.generate(seeds, z=shared, steps=cfg.sample.steps)
    files = {"samples": write_image_grid(data.to_output(x), out_dir / "digits_samples.png", cols),
             "by_latent": write_image_grid(data.to_output(x_shared), out_dir / "digits_by_latent.png", cols),
             "run_dir": run_dir}
    t3 = time.perf_counter()
    result = {"seconds": {"stage1": t1 - t0, "prior": t2 - t1, "sampling": t3 - t2},
              "prior_perplexity": report["prior_perplexity"], "marginal_perplexity": report["marginal_perplexity"],
              "codes_used": report["codebook"]["codes_used"], "kimg": cfg.train.kimg,
              "files": {k: str(v) for k, v in files.items()}}
    write_json(result, out_dir / "digits.json")
    return result
