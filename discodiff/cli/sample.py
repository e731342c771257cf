"""`discodiff sample`: latents from the prior, then the diffusion ODE/SDE conditioned on them, streamed to an .npz."""
from __future__ import annotations

import click

from .options import RUN_DIR, SAMPLER_CHOICE, SEED, device_option, seed_range

MAX_GRID_IMAGES = 256  # the PNG grid shows at most this many samples, whatever --num is


@click.command()
@click.option("--run-dir", type=RUN_DIR, required=True, help="A trained run directory.")
@click.option("--num", type=click.IntRange(min=1), required=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .npz file.")
@click.option("--seed", type=SEED, default=0, help="Samples use seeds seed, seed+1, ..., seed+num-1.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's config).")
@click.option("--sampler", type=SAMPLER_CHOICE, default=None, help="ODE solver, or 'edm' for the stochastic sampler.")
@click.option("--guidance", type=float, default=None, help="Guidance weight w on the latents (0: conditional sampling).")
@click.option("--class", "class_label", type=int, default=None, help="Class label for class-conditional models.")
@click.option("--class-guidance", type=float, default=0.0, help="Guidance weight on the class.")
@click.option("--prior-temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Temperature of the prior's categorical draws (> 0).")
@click.option("--churn", type=click.FloatRange(min=0), default=0.0, help="S_churn of the stochastic sampler (--sampler edm).")
@click.option("--trajectory", is_flag=True, help="Also store every point the sampler visited as `traj`.")
@click.option("--grid-by-latent", is_flag=True, help="Rows of --cols samples that share one z (drawn with the row's first seed).")
@click.option("--cols", type=click.IntRange(min=1), default=8, help="Samples per row of the PNG grid.")
@click.option("--batch", type=click.IntRange(min=1), default=256, help="Samples per batch (results do not depend on it).")
@device_option
def sample(run_dir, num, out, seed, steps, sampler, guidance, class_label, class_guidance, prior_temperature, churn,
           trajectory, grid_by_latent, cols, batch, device):
    """Draw samples: latents from the prior, then the diffusion ODE/SDE conditioned on them.

    Writes OUT (.npz: `x`, `z`, `seeds`, and `labels` / `traj` when asked) in bounded memory, whatever --num, and
    for image models a PNG grid of the first samples beside it."""
    from pathlib import Path

    import numpy as np

    from ..config import ConfigError
    from ..data import to_output
    from ..fileio import NpzStreamWriter, check_writable
    from ..pipeline import generate_batches, sampler_from_name, shared_latents
    from ..runs import Run
    from ..sampling import karras_sigmas, trajectory_recorder
    from .options import resolve_device

    out = check_writable(Path(out))
    seeds = seed_range(seed, num)
    run = Run(run_dir)
    cfg, s = run.config, run.config.sample
    steps, sampler = steps or s.steps, sampler or s.sampler
    guidance = s.guidance if guidance is None else guidance
    prior_temperature = s.prior_temperature if prior_temperature is None else prior_temperature
    if class_label is not None and not 0 <= class_label < cfg.model.num_classes:
        raise ConfigError(f"--class {class_label} is out of range: this model has {cfg.model.num_classes} classes")
    if churn and sampler != "edm":
        raise ConfigError(f"--churn applies to the stochastic sampler (--sampler edm), not {sampler}")
    if grid_by_latent and cfg.model.num_latents == 0:
        raise ConfigError("--grid-by-latent needs a model with latents (this one has m = 0)")
    device = resolve_device(device)
    model, prior = run.load_model(device), run.load_prior(device)
    kind = "image" if len(cfg.model.data_shape) == 3 else "vector"
    row_z = (shared_latents(model, prior, seeds, cols, class_labels=class_label, temperature=prior_temperature,
                            device=device) if grid_by_latent else None)
    sampler_fn = sampler_from_name(sampler, **({"S_churn": churn} if sampler == "edm" else {}))
    sigmas = karras_sigmas(steps, device=device)

    shape = cfg.model.data_shape
    out_shape = [shape[1], shape[2], shape[0]] if kind == "image" else shape
    arrays = {"x": ([num, *out_shape], np.uint8 if kind == "image" else np.float32),
              "z": ([num, cfg.model.num_latents], np.int64), "seeds": ([num], np.int64)}
    if class_label is not None:
        arrays["labels"] = ([num], np.int64)
    if trajectory:
        arrays["traj"] = ([steps + 1, num, *shape], np.float32)
    with NpzStreamWriter(out, arrays) as writer:
        a = writer.arrays
        a["seeds"][:] = seeds
        if class_label is not None:
            a["labels"][:] = class_label
        i = 0
        callback, points = trajectory_recorder() if trajectory else (None, None)
        for chunk, x, z in generate_batches(model, seeds, sigmas, batch=batch, sampler=sampler_fn, prior=prior,
                                            z=row_z, class_labels=class_label, guidance=guidance,
                                            class_guidance=class_guidance, prior_temperature=prior_temperature,
                                            callback=callback, progress=True):
            a["x"][i:i + len(chunk)] = to_output(x, kind)
            a["z"][i:i + len(chunk)] = z.cpu().numpy()
            if trajectory:
                a["traj"][:, i:i + len(chunk)] = np.stack([p.float().cpu().numpy() for p in points])
                points.clear()
            i += len(chunk)
        grid_images = np.array(a["x"][:MAX_GRID_IMAGES]) if kind == "image" else None
    w_latent, w_class = model.guidance_weights(guidance, class_guidance, class_label)
    weights = f"guidance {guidance:g}" + (f", class guidance {class_guidance:g}" if w_class else "")
    click.echo(f"wrote {num} samples ({sampler}, {describe_passes(sampler, steps, w_latent, w_class)}, "
               f"{weights}) to {out}")
    if grid_images is not None:
        from ..data.grid import write_image_grid
        grid = write_image_grid(grid_images, out.with_suffix(".png"), cols)
        shown = f"the first {len(grid_images)} of {num} samples" if num > len(grid_images) else "all samples"
        click.echo(f"wrote the image grid to {grid} ({shown}" + ("; each row shares one z)" if grid_by_latent else ")"))


def model_passes(sampler: str, steps: int, guidance: float, class_guidance: float) -> int:
    """Network evaluations per sample, the paper's NFE count with guidance: each step's denoiser evaluates the network
    on the conditional input, plus once on the unconditional one for each kind of guidance in use
    (model.make_denoiser; pass the weights it applies, `DiscoDiff.guidance_weights`). The guided evaluations of
    a step run as one network call on a batch 2 or 3 times larger (`network_calls`)."""
    return network_calls(sampler, steps) * (1 + bool(guidance) + bool(class_guidance))


def network_calls(sampler: str, steps: int) -> int:
    """Calls of the network per sample: one per denoiser evaluation, guided or not (guidance batches its passes)."""
    from ..sampling import nfe
    return nfe(sampler, steps)


def describe_passes(sampler: str, steps: int, guidance: float, class_guidance: float) -> str:
    """The cost line `sample` prints, e.g. "18 steps = 35 network calls on a doubled batch (guidance) = 70 network
    evaluations per sample"; without guidance calls and evaluations coincide."""
    calls, evaluations = network_calls(sampler, steps), model_passes(sampler, steps, guidance, class_guidance)
    if evaluations == calls:
        return f"{steps} steps = {evaluations} network evaluations per sample"
    size = {2: "doubled", 3: "tripled"}[evaluations // calls]
    return (f"{steps} steps = {calls} network calls on a {size} batch (guidance) = {evaluations} network evaluations "
            f"per sample")
