"""`discodiff train`: stage I, the denoiser and the encoder trained jointly; an existing run is resumed; with
`--init-from`, a new run fine-tunes a finished plain run into DisCo-Diff (finetune.py)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click

from ..checkpoint import CONFIG
from ..config import PRESETS, DataConfig, merge, preset_config
from ..errors import ConfigError
from .options import RUN_DIR, SEED, parse_key_values


def _needs_user_data(run_dir, preset, overrides) -> bool:
    """A new run of a preset whose data are the user's own (data.name "path") and no path is given."""
    if preset not in PRESETS or (Path(run_dir) / CONFIG).exists():
        return False
    data = merge(PRESETS[preset].get("data", {}), overrides.get("data", {}))
    return data.get("name") == "path" and not data.get("path")


@click.command()
@click.option("--preset", type=str, default=None, help=f"Named configuration: {', '.join(sorted(PRESETS))}.")
@click.option("--run-dir", type=RUN_DIR, required=True, help="Where the run lives. An existing run directory is resumed.")
@click.option("--latents", "num_latents", type=int, default=None, help="m, the number of discrete latents (0: plain EDM baseline).")
@click.option("--codebook", "codebook_size", type=int, default=None, help="k, the codebook size of each latent.")
@click.option("--latent-type", type=click.Choice(["discrete", "continuous"]), default=None,
              help="discrete: DisCo-Diff's m categorical latents (the default). continuous: a Gaussian latent vector "
                   "with a KL penalty, cut into m tokens, and a diffusion prior (the paper's Table 3 ablation).")
@click.option("--latent-dim", type=int, default=None,
              help="D, the size of a continuous latent, a multiple of m (default: m * k, as the paper matches them).")
@click.option("--kl-weight", type=float, default=None,
              help="beta, the weight of a continuous latent's KL to N(0, I) per data entry (default: 1).")
@click.option("--kimg", type=float, default=None, help="Training duration in thousands of examples.")
@click.option("--seed", type=SEED, default=None, help="Seed of the weights and of every random draw in training.")
@click.option("--batch", type=int, default=None, help="Total batch size.")
@click.option("--batch-gpu", type=int, default=None, help="Per-process micro-batch (gradient accumulation).")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--data", "data_path", type=str, default=None, help="A folder, zip or .npz of images to train on instead of the preset's data.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where a folder or zip of images is decoded once, as a memory-mapped uint8 .npy that every process "
                   "on the machine shares (default: $DISCODIFF_CACHE_DIR, else .discodiff-cache beside the data).")
@click.option("--cond/--uncond", "cond", default=None, help="Condition on the dataset's class labels (default: the preset's choice).")
@click.option("--init-from", "init_from", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="Fine-tune a finished plain run (m = 0) with the same backbone into DisCo-Diff: the denoiser and "
                   "its EMA start from RUN's EMA weights, the encoder and latent path fresh, with no effect at first. "
                   "--kimg counts this run's own images; --set train.new_parts_lr=LR gives the new parts their own "
                   "learning rate. Without --preset the new run takes RUN's own config (network, encoder, training "
                   "settings), as for a run of `discodiff import-edm`.")
@click.option("--encoder-from", "encoder_from", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="Train autoguidance's weak model of the DisCo-Diff run RUN: this run takes RUN's encoder weights "
                   "(checked by sha256), frozen, and its latents and data, so that the two models read z alike "
                   "(sample --autoguide-run THIS_RUN). --weak-of does this and sizes the run down in one go.")
@click.option("--weak-of", "weak_of", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="A cheap weak run for autoguidance, built from RUN's config: the denoiser's width times "
                   "--width-scale, RUN's kimg times --kimg-scale, the same data, latents and (frozen) encoder as "
                   "--encoder-from RUN; with --latents 0 a plain EDM weak model. Other options apply on top.")
@click.option("--width-scale", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="With --weak-of: the weak denoiser's width (model_channels) over RUN's (default 0.5).")
@click.option("--kimg-scale", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="With --weak-of: the weak run's training images over RUN's (default 0.25).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config entry, e.g. --set model.tau=0.5.")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved config (stdout) and each part's parameter count (stderr; counted on the meta "
                   "device, no weights allocated), then exit. A preset that trains on your own data needs no --data "
                   "here: its declared image shape and classes are used.")
@click.option("--quiet", is_flag=True, help="No status lines (log.txt and stats.jsonl are still written).")
def train(preset, run_dir, num_latents, codebook_size, latent_type, latent_dim, kl_weight, kimg, seed, batch, batch_gpu,
          lr, data_path, cache_dir, cond, init_from, encoder_from, weak_of, width_scale, kimg_scale, sets, dry_run,
          quiet):
    """Stage I: train the denoiser and the encoder jointly (resumes an existing run directory)."""
    from .. import dist
    from ..runs import Run, resolve_run, run_lock
    from ..train.stage1 import train_stage1

    model_o = {k: v for k, v in {"num_latents": num_latents, "codebook_size": codebook_size, "latent_type": latent_type,
                                 "latent_dim": latent_dim, "kl_weight": kl_weight}.items() if v is not None}
    train_o = {k: v for k, v in {"kimg": kimg, "seed": seed, "batch": batch, "batch_gpu": batch_gpu, "lr": lr}.items()
               if v is not None}
    overrides = merge({"model": model_o, "train": train_o}, parse_key_values(sets))
    if weak_of is not None or width_scale is not None or kimg_scale is not None:
        preset, overrides, encoder_from, cond, weak_data = weak_run_settings(
            run_dir, weak_of, width_scale, kimg_scale, preset, overrides, encoder_from, init_from, data_path, cond)
    if cache_dir is not None:  # (not part of the run's config: a resumed run may decode elsewhere)
        os.environ["DISCODIFF_CACHE_DIR"] = str(cache_dir)
    overrides = fit_encoder_to_latent_type(run_dir, preset, overrides)
    data = weak_data if weak_of is not None else None
    if data_path is not None:
        path = Path(data_path)  # resolved, so that the run resumes from any working directory
        data = DataConfig(name="path", path=str(path.resolve()) if path.exists() else data_path, options={})
    if data is None and _needs_user_data(run_dir, preset, overrides):
        if not dry_run:
            raise ConfigError(f"preset {preset} trains on your own copy of its data: pass the folder or zip of its "
                              f"images with --data PATH (e.g. EDM's dataset_tool output, labels in dataset.json)")
        cfg = preset_config(preset, overrides)  # the preset's declared data shape and classes stand in for the data
        if cond is not None and not cond:
            cfg.model.num_classes = 0
    else:
        cfg, dataset = resolve_run(run_dir, preset=preset, overrides=overrides, data=data, cond=cond,
                                   init_from=init_from, encoder_from=encoder_from)
    if dry_run:
        from ..sizes import describe, parameter_counts
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        click.echo("parameters (counted on the meta device):\n" + "\n".join(describe(parameter_counts(cfg.model, cfg.prior_train.network))),
                   err=True)
        return
    dist.init()
    try:
        with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():  # before anything is written
            if dist.is_main():
                Run.create(run_dir, cfg)
            dist.barrier()
            if dataset.kind == "sets":  # conditioning sets of varying size (dock3d): their own path
                from ..variants.docking import train_set_stage1
                train_set_stage1(run_dir, cfg, dataset, quiet=quiet)
            else:
                train_stage1(run_dir, cfg, dataset, quiet=quiet)
        dist.barrier()  # every rank done with the collective calls before any leaves the group
    finally:
        dist.shutdown()
    dist.exit_worker()


def weak_run_settings(run_dir, weak_of, width_scale, kimg_scale, preset, overrides: dict, encoder_from, init_from,
                      data_path, cond):
    """(preset, overrides, encoder_from, cond, data) for `train --weak-of RUN`: a new run's whole config from RUN's
    (autoguidance.weak_overrides: width times --width-scale, kimg times --kimg-scale, RUN's data), on RUN's frozen
    encoder unless --latents 0 asks for a plain weak model (a plain RUN's is plain); the command's other options on
    top. An existing run
    resumes, provided it was made from RUN."""
    from ..autoguidance import encoder_record, weak_kimg_note, weak_overrides
    from ..runs import Run
    from .options import info

    if weak_of is None:
        raise ConfigError("--width-scale and --kimg-scale apply to --weak-of RUN")
    clash = [flag for flag, v in (("--preset", preset), ("--encoder-from", encoder_from), ("--init-from", init_from),
                                  ("--data", data_path)) if v is not None]
    if clash:
        raise ConfigError(f"--weak-of takes the preset, data and encoder from {weak_of}; drop {', '.join(clash)}")
    strong = Run(weak_of).config
    if not strong.model.num_latents and overrides.get("model", {}).get("num_latents"):
        raise ConfigError(f"--weak-of: {weak_of} is a plain run (m = 0); its weak run is plain too (drop --latents)")
    plain = overrides.get("model", {}).get("num_latents") == 0 or not strong.model.num_latents  # (EDM's weak: EDM)
    if (Path(run_dir) / CONFIG).exists():  # resume: the run must be a weak run of RUN
        record = Run(run_dir).config.train.encoder_from
        if record is not None and Path(record["run"]) != Path(weak_of).resolve():
            raise ConfigError(f"{run_dir} takes its encoder from {record['run']}, not {weak_of}; use a new --run-dir")
        if width_scale is not None or kimg_scale is not None:
            raise ConfigError(f"{run_dir} already holds a run: --width-scale and --kimg-scale size a new one; resume "
                              f"it with --kimg to train it longer")
        return None, {k: v for k, v in overrides.items() if k != "model" or v}, None, cond, None
    if "kimg" in overrides.get("train", {}) and kimg_scale is not None:
        raise ConfigError("--kimg and --kimg-scale both set the weak run's budget; give one")
    if not plain:
        encoder_record(weak_of)  # (a plain RUN has no encoder to share: refused here, in one line)
    base = weak_overrides(strong, width_scale=0.5 if width_scale is None else width_scale,
                          kimg_scale=0.25 if kimg_scale is None else kimg_scale, plain=plain)
    if not plain:  # the latents and the encoder come from RUN (resolve_run with encoder_from), not as overrides
        base["model"] = {k: v for k, v in base["model"].items() if k != "regularisers"}
    merged = merge(base, overrides)
    network = merged["model"]["network"]
    width = ", ".join(f"{k} {network[k]}" for k in ("model_channels", "hidden") if k in network)
    info(f"weak run of {weak_of}: {width}, {weak_kimg_note(strong, merged['train']['kimg'])}, "
         + ("a plain EDM model (m = 0)" if plain else "on its frozen encoder"))
    data = DataConfig(strong.data.name, strong.data.path, dict(strong.data.options))
    return (strong.preset, merged, None if plain else weak_of,
            bool(strong.model.num_classes) if cond is None else cond, data)


def fit_encoder_to_latent_type(run_dir, preset: str | None, overrides: dict) -> dict:
    """`overrides` for a new run with continuous latents (--latent-type continuous) on a preset whose encoder
    options fit discrete latents only (toy2d's mlp encoder with prototypes=true): those options get the values that
    fit continuous latents, with a line saying so (even with --quiet: the run differs from its preset). Options the
    user set (--set model.encoder.KEY=...) are kept, and refused when the model is built; a resumed run keeps its
    own config."""
    from ..checkpoint import CONFIG
    from ..config import RunConfig, merge_overrides
    from ..networks import continuous_encoder_fixes
    from .options import info

    model = overrides.get("model", {})
    if model.get("latent_type") != "continuous" or preset not in PRESETS or (Path(run_dir) / CONFIG).exists():
        return overrides
    encoder = merge_overrides(merge(RunConfig(preset=preset).to_dict(), PRESETS[preset]), overrides)["model"]["encoder"]
    given = model.get("encoder", {}) if isinstance(model.get("encoder"), dict) else {}
    fixes = {k: v for k, v in continuous_encoder_fixes(encoder).items() if k not in given}
    if not fixes:
        return overrides
    dropped = ", ".join(f"{k}={json.dumps(encoder[k])}" for k in fixes)
    now = ", ".join(f"model.encoder.{k}={json.dumps(v)}" for k, v in fixes.items())
    info(f"--latent-type continuous: the {preset} preset's {encoder.get('name')} encoder option {dropped} fits "
         f"discrete latents only; this run has {now}")
    return merge(overrides, {"model": {"encoder": fixes}})
