"""`discodiff sample`: latents from the prior, then the diffusion ODE/SDE conditioned on them, streamed to an .npz."""
from __future__ import annotations

import click

from .options import RUN_DIR, SEED, device_option, sampling_options, seed_range
from .parallel import bf16_option, torchrun_aware

MAX_GRID_IMAGES = 256  # the PNG grid shows at most this many samples, whatever --num is


@click.command()
@click.option("--run-dir", type=RUN_DIR, required=True, help="A trained run directory.")
@click.option("--num", type=click.IntRange(min=1), required=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .npz file.")
@click.option("--seed", type=SEED, default=0, help="Samples use seeds seed, seed+1, ..., seed+num-1.")
@sampling_options
@click.option("--class", "class_label", type=int, default=None, help="Class label for class-conditional models.")
@click.option("--class-guidance", type=float, default=0.0, help="Guidance weight on the class.")
@click.option("--trajectory", is_flag=True, help="Also store every point the sampler visited as `traj`.")
@click.option("--grid-by-latent", is_flag=True, help="Rows of --cols samples that share one z (drawn with the row's first seed).")
@click.option("--cols", type=click.IntRange(min=1), default=8, help="Samples per row of the PNG grid.")
@click.option("--batch", type=click.IntRange(min=1), default=256, help="Samples per batch (results do not depend on it).")
@click.option("--complexes", default=None, help="Set-conditioned runs (dock3d) only: the complexes to dock, a split "
              "(train, seen, unseen) or indices like 0-9,12 (default: unseen, the held-out receptors); --num poses each.")
@bf16_option
@device_option
@torchrun_aware
def sample(run_dir, num, out, seed, sampling, class_label, class_guidance, trajectory, grid_by_latent, cols, batch,
           complexes, bf16, device):
    """Draw samples: latents from the prior, then the diffusion ODE/SDE conditioned on them.

    Writes OUT (.npz: `x`, `z` (int64 [N, m], or float32 [N, D] for continuous latents), `seeds`, and `labels` /
    `traj` when asked, `hybrid_run` / `switch_sigma` for a hybrid, `autoguide_run` / `autoguidance` with
    autoguidance) in bounded memory, whatever --num, and for image
    models a PNG grid of the first samples beside it.

    Several GPUs: torchrun --standalone --nproc_per_node=8 -m discodiff -- sample --run-dir R --num 50000 --out
    s.npz (the `--` keeps torchrun from taking --num for its --numa-binding). The processes share the seeds and
    rank 0 writes: the file is the same as one process's."""
    from pathlib import Path

    import numpy as np

    from ..errors import ConfigError
    from ..data import to_output
    from ..fileio import NpzStreamWriter, check_writable
    from .. import dist
    from ..pipeline import PassCounter, generate_sharded, own_share, shared_latents
    from ..runs import Run
    from ..sampling import karras_sigmas, trajectory_recorder
    from .options import describe_guidance_interval, load_sampling_hybrid, resolve_sampling
    from .parallel import NullWriter, sampling_device

    out = check_writable(Path(out))
    seeds = seed_range(seed, num)
    run = Run(run_dir)
    cfg, s = run.config, run.config.sample
    resolved = resolve_sampling(sampling, s)  # the shared sampling options, checked before any work
    sampler, steps, guidance, interval = resolved.sampler, resolved.steps, resolved.guidance, resolved.guidance_interval
    prior_temperature, restart_preset = resolved.prior_temperature, resolved.restart_preset
    hybrid_run, switch_sigma = resolved.hybrid_run, resolved.switch_sigma
    from ..variants.docking import is_set_run
    if is_set_run(cfg):  # a conditioning set per example (dock3d): poses per complex, variants/docking.py
        from ..variants.docking import sample_command
        from .options import resolve_device
        if hybrid_run is not None or interval is not None or class_label is not None or grid_by_latent or bf16:
            raise ConfigError("a set-conditioned run samples without --hybrid-run, --guidance-interval, --class, "
                              "--grid-by-latent and --bf16")
        click.echo(sample_command(run, num=num, out=out, seed=seed, complexes=complexes, steps=steps,
                                  sampler=resolved.sampler_fn(), guidance=guidance,
                                  prior_temperature=prior_temperature, trajectory=trajectory, batch=batch,
                                  device=resolve_device(device)))
        return
    if complexes is not None:
        raise ConfigError("--complexes applies to set-conditioned runs (dock3d) only")
    if class_label is not None and not 0 <= class_label < cfg.model.num_classes:
        raise ConfigError(f"--class {class_label} is out of range: this model has {cfg.model.num_classes} classes")
    if grid_by_latent and cfg.model.num_latents == 0:
        raise ConfigError("--grid-by-latent needs a model with latents (this one has m = 0)")
    device = sampling_device(device, bf16)  # under torchrun: joins the group, and each rank takes its own GPU
    if trajectory and dist.world_size() > 1:
        raise ConfigError("--trajectory records one process's sampler steps: run it without torchrun")
    hybrid = load_sampling_hybrid(resolved, run, device).hybrid
    model, prior = run.load_model(device), run.load_prior(device)
    kind = "image" if len(cfg.model.data_shape) == 3 else "vector"
    row_z = (shared_latents(model, prior, seeds, cols, class_labels=class_label, temperature=prior_temperature,
                            device=device) if grid_by_latent else None)
    sampler_fn = resolved.sampler_fn()
    sigmas = karras_sigmas(steps, device=device)

    shape = cfg.model.data_shape
    out_shape = [shape[1], shape[2], shape[0]] if kind == "image" else shape
    arrays = {"x": ([num, *out_shape], np.uint8 if kind == "image" else np.float32),
              "z": ([num, cfg.model.latent_size], np.float32 if cfg.model.continuous else np.int64),
              "seeds": ([num], np.int64)}
    if class_label is not None:
        arrays["labels"] = ([num], np.int64)
    if trajectory:
        arrays["traj"] = ([steps + 1, num, *shape], np.float32)
    if hybrid is not None:
        arrays["hybrid_run"], arrays["switch_sigma"] = ([], f"<U{max(len(str(hybrid_run)), 1)}"), ([], np.float64)
    if resolved.autoguide is not None:
        arrays["autoguide_run"] = ([], f"<U{max(len(str(resolved.autoguide_run)), 1)}")
        arrays["autoguidance"] = ([], np.float64)
    writer = NpzStreamWriter(out, arrays) if dist.is_main() else NullWriter(arrays)  # rank 0 writes
    weak = resolved.autoguide.model if resolved.autoguide is not None else None
    with writer, PassCounter(model, *(hybrid[:1] if hybrid else ()), *((weak,) if weak is not None else ())) as passes:
        a = writer.arrays
        a["seeds"][:] = seeds
        if class_label is not None:
            a["labels"][:] = class_label
        if hybrid is not None:
            a["hybrid_run"][...], a["switch_sigma"][...] = str(hybrid_run), switch_sigma
        if resolved.autoguide is not None:
            a["autoguide_run"][...], a["autoguidance"][...] = str(resolved.autoguide_run), resolved.autoguidance
        i = 0
        callback, points = trajectory_recorder() if trajectory else (None, None)
        for chunk, x, z in generate_sharded(model, seeds, sigmas, batch=batch, sampler=sampler_fn, prior=prior,
                                            z=row_z, class_labels=class_label, guidance=guidance,
                                            class_guidance=class_guidance, guidance_interval=interval,
                                            prior_temperature=prior_temperature, hybrid=hybrid,
                                            autoguide=resolved.autoguide, callback=callback, progress=True,
                                            bf16=bf16):
            a["x"][i:i + len(chunk)] = to_output(x, kind)
            a["z"][i:i + len(chunk)] = z.cpu().numpy()
            if trajectory:
                a["traj"][:, i:i + len(chunk)] = np.stack([p.float().cpu().numpy() for p in points])
                points.clear()
            i += len(chunk)
        grid_images = np.array(a["x"][:MAX_GRID_IMAGES]) if kind == "image" else None
    if not dist.is_main():
        return
    own_samples, own_batches = own_share(num, batch, dist.world_size(), 0)  # what this process sampled itself
    settings = (f"restart {restart_preset or 'intervals'}, " if sampler == "restart" else
                f"churn {resolved.churn:g}, " if sampler == "edm" else "")
    batched = 1 if hybrid is not None else model.guidance_passes(guidance, class_guidance, class_label)
    w_class = model.guidance_weights(guidance, class_guidance, class_label)[1]
    weights = f"guidance {guidance:g}" + (f", class guidance {class_guidance:g}" if w_class else "")
    calls = None
    if interval is not None and batched > 1:  # only some calls are guided: count them per trajectory
        weights += describe_guidance_interval(interval)
        calls = passes.calls_of[0] // own_batches  # (the model's own calls, the weak model's apart)
    weak_calls = passes.calls_of[-1] // own_batches if weak is not None else 0
    if weak is not None:
        weights += ", " + resolved.describe_autoguidance()
    cost = describe_passes(steps, passes.total // own_samples, batched, calls, weak_calls)
    click.echo(f"wrote {num} samples ({sampler}, {settings}{cost}, {weights}) to {out}")
    if hybrid is not None:
        click.echo(f"hybrid: {run_dir}'s model for sigma >= {switch_sigma:g}, {hybrid_run}'s below it")
    if grid_images is not None:
        from ..data.grid import write_image_grid
        grid = write_image_grid(grid_images, out.with_suffix(".png"), cols)
        shown = f"the first {len(grid_images)} of {num} samples" if num > len(grid_images) else "all samples"
        click.echo(f"wrote the image grid to {grid} ({shown}" + ("; each row shares one z)" if grid_by_latent else ")"))



def describe_passes(steps: int, evaluations: int, batched: int = 1, calls: int | None = None, weak: int = 0) -> str:
    """The cost line `sample` prints: "18 steps = 35 network evaluations per sample", and with guidance, whose
    passes run as one network call on a batch `batched` times larger (DiscoDiff.make_denoiser), "18 steps = 70
    network evaluations per sample (35 network calls on a doubled batch: guidance)". With a guidance interval only
    some of the `calls` are guided: "(35 network calls, those in the guidance interval on a doubled batch)".
    Autoguidance's `weak` calls of the weak model per sample (one sample each) are part of `evaluations` and named
    apart: "18 steps = 70 network evaluations per sample (35 of the model; 35 of the weak model: autoguidance)"."""
    line = f"{steps} steps = {evaluations} network evaluations per sample"
    own, parts = evaluations - weak, []
    if batched > 1:
        size = {2: "doubled", 3: "tripled"}.get(batched, f"{batched}x")
        parts.append(f"{own // batched} network calls on a {size} batch: guidance" if calls is None else
                     f"{calls} network calls, those in the guidance interval on a {size} batch")
    if weak:
        parts = (parts or [f"{own} of the model"]) + [f"{weak} of the weak model: autoguidance"]
    return line + (f" ({'; '.join(parts)})" if parts else "")
