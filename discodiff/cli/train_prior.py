"""`discodiff train-prior`: stage II, the prior fitted to the trained encoder's latents (autoregressive for discrete
latents, a diffusion model for continuous ones)."""
from __future__ import annotations

import click

from ..config import merge
from .options import RUN_DIR, device_option, parse_key_values


@click.command("train-prior")
@click.option("--run-dir", type=RUN_DIR, required=True, help="A run trained by `discodiff train`.")
@click.option("--kimg", type=float, default=None, help="Prior training duration in thousands of latent sequences.")
@click.option("--batch", type=int, default=None, help="Batch size.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a prior_train entry, e.g. --set prior_train.tau=0.1 (only prior_train.* and sample.*).")
@click.option("--quiet", is_flag=True, help="No status lines.")
@device_option
def train_prior(run_dir, kimg, batch, lr, sets, quiet, device):
    """Stage II: fit the prior to the latents of the trained (EMA) encoder: autoregressive over discrete latents, a
    diffusion model over continuous ones.

    A prior fitted to older stage-I weights (training continued since) is fitted again from scratch."""
    import os

    from .. import dist
    from ..errors import ConfigError
    from ..analysis.prior_report import write_prior_report
    from ..runs import Run, resolve_run, run_lock
    from ..train.common import RunLog
    from ..train.prior import train_prior as fit_prior
    from .options import resolve_device

    if dist.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train-prior runs as one process (the prior is small); start it without torchrun, "
                          "with --device to choose the GPU")
    run = Run(run_dir)
    if run.config.model.num_latents == 0:
        click.echo(f"{run_dir} is a plain diffusion model (m = 0): it has no latents and needs no prior; nothing to do.")
        return
    overrides = parse_key_values(sets)
    if set(overrides) - {"prior_train", "sample"}:
        raise ConfigError(f"train-prior --set changes only prior_train.* and sample.*, not "
                          f"{', '.join(sorted(set(overrides) - {'prior_train', 'sample'}))}")
    given = {k: v for k, v in {"kimg": kimg, "batch": batch, "lr": lr}.items() if v is not None}
    cfg, dataset = resolve_run(run_dir, overrides=merge(overrides, {"prior_train": given}))
    model = Run(run_dir, cfg).load_model(resolve_device(device))  # the encoding and the prior's training run there
    with run_lock(run_dir):  # before anything is written
        Run.create(run_dir, cfg)  # the prior's settings as used, atomically
        if dataset.kind == "sets":  # conditioning sets of varying size (dock3d): their own path, no prior report
            from ..variants.docking import train_set_prior
            train_set_prior(run_dir, cfg, dataset, model, quiet=quiet)
            return
        prior = fit_prior(run_dir, cfg, dataset, model, quiet=quiet)
        _, summary = write_prior_report(run_dir, cfg, dataset, model, prior)
        RunLog(run_dir, quiet).line(f"prior report (prior_report.json): {summary}")
