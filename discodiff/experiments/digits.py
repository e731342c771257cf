"""The demo's image part: DisCo-Diff on scikit-learn's 8x8 digits, trained, its prior fitted, and sampled.

It goes through the same functions as `discodiff train`, `train-prior` and `sample --grid-by-latent`.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import preset_config
from ..data.grid import write_image_grid
from ..fileio import check_writable, write_json
from ..pipeline import generate, shared_latents
from ..runs import Run, resolve_run
from ..sampling import karras_sigmas
from ..analysis.prior_report import write_prior_report
from ..train.prior import train_prior
from ..train.stage1 import train_stage1


def run_digits(out_dir: Path, *, kimg: float | None = None, prior_kimg: float | None = None, seed: int = 0,
               rows: int = 8, cols: int = 8, quiet: bool = False) -> dict:
    """Trains the `digits` preset in out_dir/digits and writes two grids: samples with latents from the prior,
    and rows of samples that share one z (paper Fig. 2b). Returns the timings and the files written."""
    out_dir = check_writable(Path(out_dir), folder=True)
    run_dir = out_dir / "digits"
    preset = preset_config("digits")  # the training durations are always given, so a resumed run trains to them
    overrides = {"train": {"seed": seed, "kimg": kimg or preset.train.kimg},
                 "prior_train": {"seed": seed, "kimg": prior_kimg or preset.prior_train.kimg}}
    cfg, data = resolve_run(run_dir, preset="digits", overrides=overrides)
    run = Run.create(run_dir, cfg)
    t0 = time.perf_counter()
    train_stage1(run_dir, cfg, data, quiet=quiet)
    t1 = time.perf_counter()
    model = run.load_model()  # the EMA weights, as `discodiff train-prior` loads them
    report, _ = write_prior_report(run_dir, cfg, data, model, train_prior(run_dir, cfg, data, model, quiet=quiet))
    t2 = time.perf_counter()
    prior = run.load_prior()  # as `discodiff sample` loads it
    seeds = list(range(seed, seed + rows * cols))
    sigmas = karras_sigmas(cfg.sample.steps)
    x, _ = generate(model, seeds, sigmas, prior=prior)
    x_shared, _ = generate(model, seeds, sigmas, z=shared_latents(model, prior, seeds, cols))
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
