"""`discodiff demo`: the paper's 2D experiment end to end (baseline DM against DisCo-Diff) in a few minutes on a CPU."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              help="Output folder: run directories baseline/ and discodiff/, metrics.json and the figures.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stage-I training duration of each model, in thousands of examples (default: the toy2d preset's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of training and sampling.")
@click.option("--num", "num_eval", type=click.IntRange(min=16), default=4000,
              help="Samples drawn per model and step count.")
@click.option("--threads", type=click.IntRange(min=1), default=1,
              help="torch CPU threads. One is fastest for this small MLP: a second thread that shares a core with "
                   "another process stalls both (measured 500 against 20,000 examples/s).")
@click.option("--digits-kimg", type=click.FloatRange(min=0), default=48.0,
              help="Training duration of the digits model (the digits preset's own default is 96); 0 skips digits.")
@click.option("--digits-prior-kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training duration of the digits prior (default: the digits preset's).")
def demo(out_dir, kimg, seed, num_eval, threads, digits_kimg, digits_prior_kimg):
    """Train a plain EDM model and DisCo-Diff on 8 Gaussians, sample both, compare them and plot (paper Fig. 3/4);
    then train DisCo-Diff on 8x8 digits and draw sample grids."""
    from .options import require_module

    # what the demo needs beyond the core install, refused now rather than after minutes of training: matplotlib
    # for the figures, scipy for the toy metrics (exact W2), scikit-learn for the digits data
    require_module("matplotlib", "plots", "discodiff demo")
    require_module("scipy", "metrics", "discodiff demo")
    if digits_kimg > 0:
        require_module("sklearn", "data", "the digits part of discodiff demo (--digits-kimg 0 leaves it out)")
    import torch

    from ..experiments.toy2d import run_toy2d
    from ..fileio import check_writable

    check_writable(out_dir, folder=True)
    torch.set_num_threads(threads)
    click.echo(f"discodiff demo: toy 2D experiment into {out_dir}/")
    results = run_toy2d(out_dir, kimg=kimg, seed=seed, num_eval=num_eval)
    files = results["files"]
    click.echo(f"\nwrote:\n  {files['metrics']}\n  {files['samples']}  (samples and ODE trajectories)\n"
               f"  {files['ode']}  (curvature and Jacobian norm against t)\n"
               f"  {out_dir / 'baseline'}/ and {out_dir / 'discodiff'}/  "
               f"(run directories: `discodiff sample --run-dir ...`)")
    if digits_kimg > 0:
        import os

        from ..experiments.digits import run_digits

        torch.set_num_threads(max(threads, min(2, os.cpu_count() or 1)))  # the U-Net gains from a second core
        click.echo(f"\ndiscodiff demo: DisCo-Diff on 8x8 digits ({digits_kimg:g} kimg) into {out_dir}/digits/")
        d = run_digits(out_dir, kimg=digits_kimg, prior_kimg=digits_prior_kimg, seed=seed)
        s = d["seconds"]
        click.echo(f"digits: stage I {s['stage1']:.0f} s, prior {s['prior']:.0f} s, sampling {s['sampling']:.0f} s; "
                   f"codes in use per latent {d['codes_used']}, prior perplexity {d['prior_perplexity']:.2f} "
                   f"vs marginal {d['marginal_perplexity']:.2f}")
        click.echo(f"wrote:\n  {d['files']['samples']}  (latents from the prior)\n"
                   f"  {d['files']['by_latent']}  (each row shares one z)")
