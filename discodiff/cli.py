"""The `discodiff` command line. Every error meant for the user is one line on stderr and exit status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import ConfigError, DataConfig, PRESETS, RunConfig, merge, preset_config, validate


def _parse_set(items) -> dict:
    """--set a.b=value overrides (value parsed as JSON when it can be, else kept as a string)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _load_data(cfg: RunConfig):
    from .data import load_dataset
    return load_dataset(cfg.data)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="discodiff")
def cli():
    """DisCo-Diff: diffusion models with learned discrete latents.

    Typical use: `train` (stage I: denoiser + encoder), `train-prior` (stage II), then `sample`.
    """


@cli.command()
@click.option("--preset", type=str, default=None, help=f"Named configuration: {', '.join(sorted(PRESETS))}.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the run lives. An existing run directory is resumed.")
@click.option("--latents", "num_latents", type=int, default=None, help="m, the number of discrete latents (0: plain EDM baseline).")
@click.option("--codebook", "codebook_size", type=int, default=None, help="k, the codebook size of each latent.")
@click.option("--kimg", type=float, default=None, help="Training duration in thousands of examples.")
@click.option("--seed", type=int, default=None, help="Seed of the weights and of every random draw in training.")
@click.option("--batch", type=int, default=None, help="Total batch size.")
@click.option("--batch-gpu", type=int, default=None, help="Per-process micro-batch (gradient accumulation).")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--data", "data_path", type=str, default=None, help="A folder, zip or .npz of images to train on instead of the preset's data.")
@click.option("--cond/--uncond", "cond", default=None, help="Condition on the dataset's class labels (default: the preset's choice).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config entry, e.g. --set model.tau=0.5.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No status lines (log.txt and stats.jsonl are still written).")
def train(preset, run_dir, num_latents, codebook_size, kimg, seed, batch, batch_gpu, lr, data_path, cond, sets,
          dry_run, quiet):
    """Stage I: train the denoiser and the encoder jointly (resumes an existing run directory)."""
    from . import dist
    from .checkpoint import CONFIG, load_run_config
    from .train.stage1 import train_stage1

    model_o = {k: v for k, v in {"num_latents": num_latents, "codebook_size": codebook_size}.items() if v is not None}
    train_o = {k: v for k, v in {"kimg": kimg, "seed": seed, "batch": batch, "batch_gpu": batch_gpu, "lr": lr}.items()
               if v is not None}
    overrides = merge({"model": model_o, "train": train_o}, _parse_set(sets))
    if data_path is not None:  # replaces the preset's data section whole (its options belong to its dataset)
        path = Path(data_path)
        data_path = str(path.resolve()) if path.exists() else data_path  # a run must resume from anywhere
        overrides["data"] = {"name": "path", "path": data_path, "options": {}}
    data_override = overrides.pop("data", None)
    if (run_dir / CONFIG).exists():
        cfg = load_run_config(run_dir)
        if data_override is not None and data_override != cfg.to_dict()["data"]:
            raise ConfigError(f"{run_dir} was trained on other data ({cfg.data.name} {cfg.data.path or ''}); "
                              f"use a new --run-dir")
        if preset is not None and preset != cfg.preset:
            raise ConfigError(f"{run_dir} was created with preset {cfg.preset!r}, not {preset!r}")
        old = cfg.to_dict()
        new = merge(old, overrides)
        changed = [f"{sec}.{k}" for sec in ("model", "data") for k in new[sec] if new[sec][k] != old[sec][k]]
        if changed:
            raise ConfigError(f"{run_dir} already holds a run with different {', '.join(changed)}; "
                              f"use a new --run-dir (only the training duration and schedule can change on resume)")
        cfg = RunConfig.from_dict(new)
        validate(cfg)
    else:
        if preset is None:
            raise ConfigError(f"{run_dir} is not a run directory yet: name a --preset ({', '.join(sorted(PRESETS))})")
        cfg = preset_config(preset, overrides)
        if data_override is not None:
            cfg.data = DataConfig(**data_override)
    data = _load_data(cfg)
    new_run = not (run_dir / CONFIG).exists()
    if new_run:  # the data decide the model's input shape and, when conditioning, its number of classes
        cfg.model.data_shape = data.shape
        if cond is not None:
            cfg.model.num_classes = data.num_classes if cond else 0
        if cfg.model.num_classes and data.labels is None:
            raise ConfigError(f"class conditioning needs labels, and dataset {cfg.data.name!r} has none; use --uncond")
        if cfg.model.num_classes:
            cfg.model.num_classes = data.num_classes
    elif cfg.model.data_shape != data.shape:
        raise ConfigError(f"the data now have shape {data.shape}, but {run_dir} was trained on {cfg.model.data_shape}")
    if dry_run:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    dist.init()
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
    dist.barrier()
    train_stage1(run_dir, cfg, data, quiet=quiet)


@cli.command("train-prior")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="A run trained by `discodiff train`.")
@click.option("--kimg", type=float, default=None, help="Prior training duration in thousands of latent sequences.")
@click.option("--batch", type=int, default=None, help="Batch size.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--quiet", is_flag=True, help="No status lines.")
def train_prior_cmd(run_dir, kimg, batch, lr, quiet):
    """Stage II: fit the autoregressive prior to the latents of the trained (EMA) encoder."""
    from .checkpoint import CONFIG, load_model
    from .train.prior import train_prior

    cfg, model = load_model(run_dir)
    if cfg.model.num_latents == 0:
        click.echo(f"{run_dir} is a plain diffusion model (m = 0): it has no latents and needs no prior; nothing to do.")
        return
    for key, value in {"kimg": kimg, "batch": batch, "lr": lr}.items():
        if value is not None:
            setattr(cfg.prior_train, key, value)
    cfg.save(run_dir / CONFIG)
    train_prior(run_dir, cfg, _load_data(cfg), model, quiet=quiet)


@cli.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="A trained run directory.")
@click.option("--num", type=click.IntRange(min=1), required=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .npz file.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Samples use seeds seed, seed+1, ..., seed+num-1.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's config).")
@click.option("--sampler", type=click.Choice(["heun", "euler", "edm"]), default=None, help="ODE solver, or 'edm' for the stochastic sampler.")
@click.option("--guidance", type=float, default=None, help="Guidance weight w on the latents (0: conditional sampling).")
@click.option("--class", "class_label", type=int, default=None, help="Class label for class-conditional models.")
@click.option("--class-guidance", type=float, default=0.0, help="Guidance weight on the class.")
@click.option("--prior-temperature", type=float, default=None, help="Temperature of the prior's categorical draws.")
@click.option("--churn", type=float, default=0.0, help="S_churn of the stochastic sampler.")
@click.option("--trajectory", is_flag=True, help="Also store every point the sampler visited as `traj`.")
@click.option("--grid-by-latent", is_flag=True, help="Rows of --cols samples that share one z (drawn with the row's first seed).")
@click.option("--cols", type=click.IntRange(min=1), default=8, help="Samples per row of the PNG grid.")
@click.option("--batch", type=click.IntRange(min=1), default=256, help="Samples per batch (results do not depend on it).")
@click.option("--device", type=str, default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")
def sample(run_dir, num, out, seed, steps, sampler, guidance, class_label, class_guidance, prior_temperature, churn,
           trajectory, grid_by_latent, cols, batch, device):
    """Draw samples: latents from the prior, then the diffusion ODE/SDE conditioned on them."""
    import numpy as np
    import torch

    from .checkpoint import load_model
    from .data import to_output
    from .sampling import trajectory_recorder

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_model(run_dir, need_prior=True, device=device)
    s = cfg.sample
    steps, sampler = steps or s.steps, sampler or s.sampler
    guidance = s.guidance if guidance is None else guidance
    prior_temperature = s.prior_temperature if prior_temperature is None else prior_temperature
    if class_label is not None and not 0 <= class_label < max(cfg.model.num_classes, 0):
        raise ConfigError(f"--class {class_label} is out of range: this model has {cfg.model.num_classes} classes")
    kind = "image" if len(cfg.model.data_shape) == 3 else "vector"
    xs, zs, trajs = [], [], []
    from tqdm import tqdm

    seeds = list(range(seed, seed + num))
    row_z = None
    if grid_by_latent:
        if cfg.model.num_latents == 0:
            raise ConfigError("--grid-by-latent needs a model with latents (this one has m = 0)")
        row_z = model.shared_latents(seeds, cols, class_labels=class_label, temperature=prior_temperature,
                                     device=device)
    for i in tqdm(range(0, num, batch), desc="sampling", disable=not sys.stderr.isatty(), leave=False):
        callback, points = trajectory_recorder() if trajectory else (None, None)
        x, z = model.generate(seeds[i:i + batch], class_labels=class_label, steps=steps, sampler=sampler,
                              z=None if row_z is None else row_z[i:i + batch],
                              guidance=guidance, class_guidance=class_guidance, prior_temperature=prior_temperature,
                              S_churn=churn, callback=callback, device=device)
        xs.append(to_output(x, kind))
        zs.append(z.cpu().numpy().astype(np.int64))
        if trajectory:
            trajs.append(np.stack([p.float().cpu().numpy() for p in points]))
    arrays = {"x": np.concatenate(xs), "z": np.concatenate(zs), "seeds": np.asarray(seeds, dtype=np.int64)}
    if class_label is not None:
        arrays["labels"] = np.full(num, class_label, dtype=np.int64)
    if trajectory:
        arrays["traj"] = np.concatenate(trajs, axis=1).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    click.echo(f"wrote {num} samples ({sampler}, {steps} steps, guidance {guidance:g}) to {out}")
    if kind == "image":
        from .data.grid import write_image_grid
        grid = write_image_grid(arrays["x"], out.with_suffix(".png"), cols)
        click.echo(f"wrote the image grid to {grid}" + (" (each row shares one z)" if grid_by_latent else ""))


from .commands.fid import fid  # noqa: E402
cli.add_command(fid)
from .commands.demo import demo  # noqa: E402
cli.add_command(demo)
from .commands.analyze import analyze  # noqa: E402
cli.add_command(analyze)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="discodiff", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
