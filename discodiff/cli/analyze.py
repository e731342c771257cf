"""`discodiff analyze ...`: the paper's analyses of trained runs (docs/analysis.md).

Every command writes <name>.json and <name>.png (plus picture grids where they help) into --out, prints a short
table and the paths, and fails with one line (an AnalysisError, exit status 2) on input it cannot use.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..analysis.common import ODE_SAMPLERS, SWITCHING_SAMPLERS
from ..config import DataConfig
from ..metrics.fid import BACKENDS
from .fid import DETECTOR_HELP, FEATURES, FEATURES_HELP, reference_file
from .options import (SEED, info, load_sampling_hybrid, parse_key_values, parse_list, resolve_device, resolve_sampling,
                      sampling_options, seed_range, table)

FID_NOTE = ("FID over {num} samples: biased upward against the standard 50k-sample FID; compare only numbers measured "
            "at the same number of samples and against the same reference")
# Switching continues a sampled trajectory and `nfe` measures the ODE's discretisation error (paper section 3.2):
# both need a deterministic sampler, so they offer the registry's ODE solvers only (switching the one-step ones); the
# others take any sampler that runs on its name alone.
ODE_SAMPLER_CHOICE = click.Choice(list(ODE_SAMPLERS))
SWITCHING_SAMPLER_CHOICE = click.Choice(list(SWITCHING_SAMPLERS))


# ---- shared pieces ------------------------------------------------------------------------------------------

def _load(run_dir: Path, what: str, *, latents: bool = False, prior: bool = False, device: str = "cpu"):
    """(Run, model, prior) with the checks an analysis needs, named after the run directory. With `prior`, a
    missing or stale prior is refused here, before any work (Run.load_prior); without it, the prior is None."""
    from ..analysis import require_latents
    from ..runs import Run

    run = Run(run_dir)  # the clear errors for a missing or foreign folder come first
    model = run.load_model(device)
    if latents:
        require_latents(model, what, str(run_dir))
    return run, model, run.load_prior(device) if prior else None


def _data(cfg, data_options=()):
    """The run's dataset, with --data-option overrides (e.g. split=test for held-out MNIST images)."""
    from ..data import load_dataset

    options = {**(cfg.data.options or {}), **parse_key_values(data_options, "--data-option", nested=False)}
    data_cfg = DataConfig(name=cfg.data.name, path=cfg.data.path, options=options)
    data = load_dataset(data_cfg)
    if list(data.shape) != list(cfg.model.data_shape):
        from ..analysis import AnalysisError
        raise AnalysisError(f"the data have shape {data.shape}, the model {cfg.model.data_shape}")
    return data, data_cfg


def _run_names(run_dirs) -> list[str]:
    """Folder names as labels, made unique ('a', 'a (2)')."""
    names, seen = [], {}
    for d in run_dirs:
        base = Path(d).resolve().name or str(d)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base} ({seen[base]})")
    return names


def _sampling(cfg, steps, sampler, guidance):
    s = cfg.sample
    return steps or s.steps, sampler or s.sampler, s.guidance if guidance is None else guidance


def _needs_plots(command: str) -> None:
    """The analyses that draw figures need matplotlib (the plots extra): refused before any work without it."""
    from .options import require_module
    require_module("matplotlib", "plots", f"discodiff analyze {command}")


def _check_out(out: Path) -> Path:
    """--out must be a writable folder (made if needed), checked before any work."""
    from ..fileio import check_writable
    return check_writable(out, folder=True)


def _finish(out: Path, name: str, result: dict, files: list[Path]) -> None:
    from ..analysis import jsonable
    from ..fileio import write_json
    path = out / f"{name}.json"
    write_json(jsonable(result), path)
    click.echo("wrote " + ", ".join(str(p) for p in [path, *files]))


def _detector(detector, device, backend="auto", features="inception", data_cfg=None):
    """Inception (the standard FID), or with features "classifier" the classifier of `data_cfg`, the run's data
    set (trained once and cached; metrics/classifier.py)."""
    from .fid import _check_features, _features_detector
    _check_features(features, detector, backend)
    return _features_detector(features, data_cfg, detector, device, backend)


def _reference(cfg, det, out: Path, ref_path: Path | None):
    """(FIDStats, where they came from): --ref, or the run's training images, cached as OUT/fid-ref.npz
    (OUT/fid-ref-classifier.npz in the classifier's features)."""
    from ..analysis.quality import cached_reference, reference_stats
    from ..data import to_uint8
    from ..metrics.fid import FIDStats

    if ref_path is not None:
        from ..metrics.fid import check_provenance
        from .fid import run_provenance

        ref = FIDStats.load(ref_path)
        check_provenance(ref, ref_path, run_provenance(cfg, det), notice=info)
        return ref, str(ref_path)
    data, _ = _data(cfg)
    cache = reference_file(out, det)
    describe = {"data": {"name": cfg.data.name, "path": cfg.data.path, "options": cfg.data.options},
                "detector_sha256": det.sha256}
    stats = cached_reference(cache, {"num": len(data), **describe})
    if stats is not None:
        info(f"reusing the reference statistics in {cache}")
    else:
        info(f"reference statistics of the {len(data)} training images of {cfg.data.name} (saved as {cache})")
        stats, _ = reference_stats(to_uint8(data.x), det, cache=cache, describe=describe, progress=True)
    return stats, str(cache)


def _common(f):
    f = click.option("--device", type=str, default=None, help="cpu, cuda, ... (default: cuda when available).")(f)
    f = click.option("--seed", type=SEED, default=0,
                     help="Seed of the images picked and of the sampling noise (seeds seed, seed+1, ...).")(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output folder for the JSON and the figures.")(f)
    return f


def _batch_option(f):
    return click.option("--batch", type=click.IntRange(min=1), default=128, help="Samples per batch.")(f)


def _switching_sampler_options(f):
    """--steps, --sampler (the one-step ODE solvers only: latent switching resumes a trajectory mid-way) and --batch.
    The analyses that sample otherwise take the sampling options of `sample` (options.sampling_options)."""
    f = click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's).")(f)
    f = click.option("--sampler", type=SWITCHING_SAMPLER_CHOICE, default=None,
                     help="ODE solver (default: the run's).")(f)
    return _batch_option(f)


def _fid_options(f):
    f = click.option("--num", type=click.IntRange(min=2), default=500,
                     help="Samples per FID (small N biases FID upward: compare only at equal N).")(f)
    f = click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Reference statistics .npz (default: the run's training images, cached as "
                          "OUT/fid-ref.npz).")(f)
    f = click.option("--detector", type=click.Path(path_type=Path), default=None, help=DETECTOR_HELP)(f)
    f = click.option("--detector-backend", type=click.Choice(BACKENDS), default="auto",
                     help="onnxruntime, eager or torchscript (the same features; auto: the fastest available).")(f)
    f = click.option("--bootstrap", type=click.IntRange(min=0), default=20, metavar="B",
                     help="Bootstrap resamples for each FID's standard deviation (0: none).")(f)
    f = click.option("--features", type=click.Choice(FEATURES), default="inception", help=FEATURES_HELP)(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def analyze():
    """Analyses of trained runs, after the paper's section 7 and Table 3 (see docs/analysis.md).

    loss-vs-sigma and nfe compare runs (the baseline, m = 0, against DisCo-Diff); switching, codebook, oracle and
    guidance look inside one DisCo-Diff run. FID-based ones (oracle, guidance, nfe) take --num samples per FID and
    one reference for all (--ref, or the training images, cached in --out).
    """


# ---- loss against sigma ---------------------------------------------------------------------------------------

@analyze.command("loss-vs-sigma")
@click.option("--run-dir", "run_dirs", type=click.Path(file_okay=False, path_type=Path), multiple=True, required=True,
              help="A trained run (give it twice or more: typically the baseline and DisCo-Diff).")
@click.option("--num", type=click.IntRange(min=2), default=512, help="Images the loss is averaged over.")
@click.option("--sigmas", "num_sigmas", type=click.IntRange(min=2), default=16,
              help="Number of log-spaced noise levels in [0.002, 80].")
@click.option("--no-null", is_flag=True, help="Leave out the curves of DisCo-Diff given the null latent.")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, e.g. split=test for held-out MNIST images (default: the training data).")
@click.option("--batch", type=click.IntRange(min=1), default=256, help="Images per batch.")
@_common
def loss_vs_sigma_cmd(run_dirs, num, num_sigmas, no_null, data_options, batch, out, seed, device):
    """Each run's own stage-I loss at fixed sigmas, same images and noise draws for every run (paper Fig. 7a).

    The loss is the one the run trained with (EDMLoss.for_model): EDM's Gaussian kernel, or PFGM++'s for a run with
    model.process=pfgmpp. DisCo-Diff is given the encoder's argmax latents of each image (oracle z); a baseline
    gets none."""
    from ..analysis.common import pick_images
    from ..analysis.loss_sigma import loss_ratios, loss_vs_sigma
    from ..plots.analysis import plot_loss_vs_sigma

    _needs_plots("loss-vs-sigma")
    _check_out(out)
    device = resolve_device(device)
    names = _run_names(run_dirs)
    loaded = [_load(d, "loss against sigma", device=device) for d in run_dirs]
    cfg0 = loaded[0][0].config
    data, data_cfg = _data(cfg0, data_options)
    idx = pick_images(len(data), min(num, len(data)), seed)
    y = data.x[idx]
    labels = data.labels[idx] if data.labels is not None and cfg0.model.num_classes else None
    models = {n: m for n, (_, m, _) in zip(names, loaded)}
    info(f"loss against sigma: {len(y)} images of {data.name or data_cfg.name}, {num_sigmas} noise levels, "
          f"runs {', '.join(names)}")
    result = loss_vs_sigma(models, y, class_labels=labels, num_sigmas=num_sigmas, seed=seed, batch=batch,
                           null_curves=not no_null, progress=info)
    baselines = [n for n, m in models.items() if m.num_latents == 0]
    reference = baselines[0] if baselines else names[0]
    if len(result["curves"]) > 1:
        result["ratio_to"] = reference
        result["ratios"] = loss_ratios(result, reference)
    result.update(runs=dict(zip(names, map(str, run_dirs))), data={"name": data_cfg.name, "options": data_cfg.options})
    png = plot_loss_vs_sigma(result, out / "loss_vs_sigma.png", reference if len(result["curves"]) > 1 else None)
    labels_ = list(result["curves"])
    rows = [[f"{s:.3g}", *[result["curves"][lab]["loss"][j] for lab in labels_]] for j, s in enumerate(result["sigma"])]
    table(["sigma", *labels_], rows)
    _finish(out, "loss_vs_sigma", result, [png])


# ---- latent switching -------------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A DisCo-Diff run with a trained prior.")
@click.option("--num", type=click.IntRange(min=1), default=128, help="Samples (seeds).")
@click.option("--fractions", default="0,0.1,0.25,0.5,0.75,0.9,1",
              help="Fractions f of the last steps sampled with the other latent.")
@click.option("--guidance", type=float, default=None, help="Guidance weight on the latents (default: the run's).")
@click.option("--grid", "grid_num", type=click.IntRange(min=0), default=8, help="Samples shown in the picture grid.")
@_switching_sampler_options
@_common
def switching(run_dir, num, fractions, guidance, grid_num, steps, sampler, batch, out, seed, device):
    """Switch z to another latent for the last fraction f of the steps, same noise; how much does the output move?
    (paper Fig. 7b)"""
    from ..analysis.switching import latent_switching
    from ..data import to_uint8
    from ..plots.analysis import plot_switching, save_grid

    _needs_plots("switching")
    fr = parse_list(fractions, float, "--fractions")
    seeds = seed_range(seed, num)
    _check_out(out)
    device = resolve_device(device)
    run, model, prior = _load(run_dir, "latent switching", latents=True, prior=True, device=device)
    cfg = run.config
    steps, sampler, guidance = _sampling(cfg, steps, sampler, guidance)
    info(f"latent switching: {num} samples, {steps} {sampler} steps, guidance {guidance:g}")
    result = latent_switching(model, prior, seeds, fractions=fr, steps=steps, sampler=sampler,
                              guidance=guidance, batch=batch, keep=grid_num, progress=info)
    result["run_dir"] = str(run_dir)
    files = [plot_switching(result, out / "switching.png")]
    samples = result["samples"]
    if len(cfg.model.data_shape) == 3 and samples.shape[1]:
        # rows = seeds, columns = fractions (f = 0: the z_a sample ... f = 1: the z_b sample)
        grid = samples.transpose(0, 1).reshape(-1, *samples.shape[2:])
        files.append(save_grid(to_uint8(grid).cpu(), out / "switching_grid.png", len(result["fractions"])))
    table(["f", "switch step", "sigma", "rms", "rms ratio", "nearer z_b"],
           [[f, s, sg, r, q, c] for f, s, sg, r, q, c in zip(result["fractions"], result["switch_step"],
                                                           result["switch_sigma"], result["rms"],
                                                           result["rms_ratio"], result["closer_to_b"])])
    click.echo(f"z_b equals z_a for {100 * result['same_latent_fraction']:.1f}% of the seeds "
               f"(left out of 'nearer z_b')")
    _finish(out, "switching", result, files)


# ---- codebook usage ---------------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="A DisCo-Diff run.")
@click.option("--prior-samples", type=click.IntRange(min=0), default=10000,
              help="Latents drawn from the prior to compare its marginals with the encoder's (0: none).")
@click.option("--rows", type=click.IntRange(min=1), default=8, help="Rows (latents / codes) in the picture grids.")
@click.option("--cols", type=click.IntRange(min=1), default=8, help="Images per row in the picture grids.")
@click.option("--positions", type=click.IntRange(min=0), default=4,
              help="Latent positions to draw dataset grids for (one PNG each).")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE", help="Dataset option.")
@sampling_options
@_batch_option
@_common
def codebook(run_dir, prior_samples, rows, cols, positions, data_options, sampling, batch, out, seed, device):
    """Per-latent perplexity, dead codes and counts over the dataset's encoder latents, with picture grids:
    samples sharing one z per row, and dataset images grouped by code. On labelled data, also what the latents say
    about the class: each latent's mutual information with it, and a linear probe's held-out accuracy."""
    from ..analysis.codebook import codebook_analysis, images_by_code, samples_by_latent
    from ..analysis.common import require_discrete
    from ..data import to_uint8
    from ..plots.analysis import plot_codebook, save_grid

    _needs_plots("codebook")
    _check_out(out)
    device = resolve_device(device)
    run, model, _ = _load(run_dir, "codebook usage", latents=True, device=device)
    require_discrete(model, "codebook usage", str(run_dir))
    cfg = run.config
    status = run.prior_status()  # the prior is optional here: without a usable one, its rows and grid are left out
    prior = run.load_prior(device) if status == "ok" else None
    if prior is None:
        why = {"missing": "no trained prior", "stale": "a prior fitted to older stage-I weights"}.get(
            status, "a prior of another network than prior_train.network")
        info(f"{run_dir} has {why}: no prior rows and no grid of samples by latent (run `discodiff train-prior "
             f"--run-dir {run_dir}` for them)")
    settings = load_sampling_hybrid(resolve_sampling(sampling, cfg.sample), run, device)
    data, _ = _data(cfg, data_options)
    info(f"codebook usage over {len(data)} images of {data.name}")
    result = codebook_analysis(model, prior, data.x, prior_samples=prior_samples, seed=seed, labels=data.labels)
    result["run_dir"] = str(run_dir)
    rep = result["encoder"]
    files = [plot_codebook(rep, out / "codebook.png", result.get("prior"), result["encoder_sampled"])]
    if len(cfg.model.data_shape) == 3:
        images = to_uint8(data.x)
        for i in range(min(positions, rep["num_latents"])):
            grid, codes = images_by_code(images, result["z"], i, cols, rows)
            files.append(save_grid(grid, out / f"data_by_code_z{i}.png", cols))
            result.setdefault("grid_codes", {})[f"z{i}"] = codes
        if prior is not None:
            info(f"sampling {rows} x {cols} images, one latent per row ({settings.describe()})")
            samples, z_rows = samples_by_latent(model, prior, rows, cols, seed=seed, steps=settings.steps,
                                                sampler=settings.sampler, guidance=settings.guidance, batch=batch,
                                                **settings.extra_options())
            files.append(save_grid(samples, out / "samples_by_latent.png", cols))
            result["samples_by_latent_z"] = z_rows.tolist()
            result["samples_by_latent_sampling"] = settings.record()
    has_prior = "prior" in result
    rows_ = [[f"z{i}", rep["perplexity"][i], rep["codes_used"][i], rep["dead_codes"][i], result["confidence"][i],
              result["encoder_sampled"]["perplexity"][i]]
             + ([result["prior"]["perplexity"][i], result["prior_vs_encoder_tv"][i]] if has_prior else [])
             for i in range(rep["num_latents"])]
    table(["latent", "perplexity", "used", "dead", "confidence", "sampled perplexity"]
          + (["prior perplexity", "TV(prior, sampled)"] if has_prior else []), rows_)
    click.echo(f"{rep['distinct_tuples']} distinct tuples z over {rep['num']} images (tuple perplexity "
               f"{rep['tuple_perplexity']:.1f}, codebook size {rep['codebook_size']})")
    if "class" in result:
        c = result["class"]
        click.echo(f"class information: I(class; z_i) = {', '.join(f'{v:.2f}' for v in c['mutual_information_bits'])} "
                   f"bits of H(class) = {c['class_entropy_bits']:.2f}; a linear probe on the whole tuple reads the "
                   f"class of {c['probe_accuracy']:.1%} of {c['num_test']} held-out images (commonest class: "
                   f"{c['majority_accuracy']:.1%})")
    _finish(out, "codebook", result, files)


# ---- oracle against prior latents -------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A DisCo-Diff run with a trained prior.")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option for the images whose latents are the oracle's, e.g. split=test (default: the "
                   "training images, as in the paper).")
@_fid_options
@sampling_options
@_batch_option
@_common
def oracle(run_dir, data_options, num, ref_path, detector, detector_backend, bootstrap, features, sampling, batch, out,
           seed, device):
    """FID with the encoder's latents of real images (oracle) against latents from the prior, same noise
    (paper Table 3)."""
    import torch

    from ..analysis.codebook import encoder_latents
    from ..analysis.common import pick_images
    from ..analysis.oracle import oracle_vs_prior
    from ..analysis.quality import sample_batches
    from ..data import to_uint8
    from ..plots.analysis import save_grid

    seed_range(seed, num)
    cfg, model, prior, settings, det, ref, ref_where = _fid_run(
        run_dir, "oracle against prior latents", sampling, detector, ref_path, out, device, detector_backend, features)
    steps, sampler, guidance = settings.steps, settings.sampler, settings.guidance
    data, data_cfg = _data(cfg, data_options)
    info(f"oracle against prior latents: {num} samples each, {settings.describe()}, guidance {guidance:g}")
    result = oracle_vs_prior(model, prior, data.x, data.labels, ref, det, num=num, seed=seed, steps=steps,
                             sampler=sampler, guidance=guidance, batch=batch, progress=True, bootstrap=bootstrap,
                             sampling=settings.extra_options())
    result.update(run_dir=str(run_dir), ref=ref_where, note=FID_NOTE.format(num=num),
                  data={"name": data_cfg.name, "options": data_cfg.options})
    # the picture: real images | samples with their oracle latents | samples with prior latents (same seeds)
    k = min(8, num)
    idx = pick_images(len(data), num, seed)[:k]
    z = encoder_latents(model, data.x[idx])
    cls = data.labels[idx] if data.labels is not None and cfg.model.num_classes else None
    seeds = list(range(seed, seed + k))
    row_o = next(sample_batches(model, prior, seeds, z=z, class_labels=cls, **settings.batch_options()))
    row_p = next(sample_batches(model, prior, seeds, class_labels=cls, **settings.batch_options()))
    png = save_grid(torch.cat([to_uint8(data.x[idx]).cpu(), row_o, row_p]), out / "oracle.png", k)
    rows = [["oracle (encoder)", result["oracle"]], ["prior", result["prior"]]]
    if features == "classifier":  # the class balance too: which latents make the classes in the wrong mix
        table(["latents", "FD", "at the data's class mix", "class TV", "diversity", "N"],
              [[name, r["fid"], r["fid_class_matched"], r["class_tv"], r["diversity"], num] for name, r in rows])
    else:
        table(["latents", "FID", "diversity", "N"], [[name, r["fid"], r["diversity"], num] for name, r in rows])
    seen = result["prior_tuples_seen_in_data"]  # (None for continuous latents: no tuples)
    click.echo(f"gap (prior - oracle) {result['gap']:.4g}"
               + ("" if seen is None else f"; {100 * seen:.1f}% of the prior's tuples occur in the data")
               + f". {FID_NOTE.format(num=num)}.")
    click.echo(f"{png}: rows = images, samples with their oracle latents, samples with prior latents")
    _finish(out, "oracle", result, [png])


def _fid_run(run_dir, what, sampling, detector, ref_path, out, device, backend="auto", features="inception"):
    """The set-up shared by the FID analyses of one DisCo-Diff run: --out checked, the model (with latents) and
    its prior, its sampling settings (options.Sampling, from the sampling options), the detector and the reference
    statistics. Returns (cfg, model, prior, settings, detector, reference, where the reference came from)."""
    from ..analysis import require_image_model

    _check_out(out)
    device = resolve_device(device)
    run, model, prior = _load(run_dir, what, latents=True, prior=True, device=device)
    require_image_model(model, "FID", str(run_dir))
    settings = load_sampling_hybrid(resolve_sampling(sampling, run.config.sample), run, device)
    det = _detector(detector, device, backend, features, run.config.data)
    ref, ref_where = _reference(run.config, det, out, ref_path)
    return run.config, model, prior, settings, det, ref, ref_where


# ---- guidance sweep -----------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A DisCo-Diff run with a trained prior.")
@click.option("--weights", default="0,0.5,1,2", help="Guidance weights w on the latents (0: no guidance).")
@_fid_options
@sampling_options(guidance=False)
@_batch_option
@_common
def guidance(run_dir, weights, num, ref_path, detector, detector_backend, bootstrap, features, sampling, batch, out,
             seed, device):
    """FID and feature diversity against the guidance weight w on the latents (paper Table 3)."""
    import torch

    from ..analysis.guidance import guidance_sweep
    from ..analysis.quality import sample_batches
    from ..plots.analysis import plot_fid_curves, save_grid

    _needs_plots("guidance")
    ws = parse_list(weights, float, "--weights")
    seeds = seed_range(seed, num)
    _, model, prior, settings, det, ref, ref_where = _fid_run(run_dir, "the guidance sweep", sampling, detector,
                                                              ref_path, out, device, detector_backend, features)
    steps, sampler = settings.steps, settings.sampler
    info(f"guidance sweep over w = {', '.join(f'{w:g}' for w in ws)}: {num} samples each, {settings.describe()}")
    result = guidance_sweep(model, prior, ws, seeds, ref, det, steps=steps, sampler=sampler, batch=batch, progress=True,
                            bootstrap=bootstrap, sampling=settings.extra_options())
    result.update(run_dir=str(run_dir), ref=ref_where, note=FID_NOTE.format(num=num))
    xs = [r["guidance"] for r in result["rows"]]
    files = [plot_fid_curves({"DisCo-Diff": (xs, [r["fid"] for r in result["rows"]])}, out / "guidance.png",
                             xlabel="guidance weight w", title=f"FID against guidance ({num} samples, {steps} steps)",
                             extra={"diversity tr(S)/tr(S_ref)": (xs, [r["diversity"] for r in result["rows"]])},
                             extra_label="feature diversity")]
    # rows = w, columns = the same 8 seeds (same z, same noise)
    grid = torch.cat([next(sample_batches(model, prior, seeds[:8], steps=steps, sampler=sampler, guidance=w,
                                          **settings.extra_options()))
                      for w in ws])
    files.append(save_grid(grid, out / "guidance_grid.png", min(8, num)))
    table(["w", "FID", "diversity", "network passes", "N"],
           [[r["guidance"], r["fid"], r["diversity"], r["network_passes"], r["num"]] for r in result["rows"]])
    click.echo(f"best w = {result['best']['guidance']:g}. {FID_NOTE.format(num=num)}.")
    _finish(out, "guidance", result, files)


# ---- quality against steps ------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", "run_dirs", type=click.Path(file_okay=False, path_type=Path), multiple=True, required=True,
              help="A trained run (repeat it: typically the baseline and DisCo-Diff).")
@click.option("--steps", "steps_list", default="4,8,12,18", help="Sampler step counts.")
@click.option("--sampler", type=ODE_SAMPLER_CHOICE, default="heun", help="ODE solver.")
@click.option("--guidance", type=float, default=0.0, help="Guidance weight on the latents (runs with latents only).")
@click.option("--batch", type=click.IntRange(min=1), default=128, help="Samples per batch.")
@_fid_options
@_common
def nfe(run_dirs, steps_list, sampler, guidance, batch, num, ref_path, detector, detector_backend, bootstrap, features,
        out, seed, device):
    """FID against the number of sampler steps (NFE = 2 steps - 1 for Heun), for each run, same noise seeds."""
    from ..analysis import AnalysisError, require_image_model
    from ..analysis.nfe import quality_vs_steps
    from ..plots.analysis import plot_fid_curves

    _needs_plots("nfe")
    steps = parse_list(steps_list, int, "--steps")
    if min(steps) < 1:
        raise AnalysisError(f"--steps must list positive whole numbers, got {steps_list!r}")
    seeds = seed_range(seed, num)
    _check_out(out)
    device = resolve_device(device)
    names = _run_names(run_dirs)
    loaded = [_load(d, "FID against sampler steps", prior=True, device=device) for d in run_dirs]
    for (_, m, _), d in zip(loaded, run_dirs):
        require_image_model(m, "FID", str(d))
    data_names = {(r.config.data.name, r.config.data.path) for r, _, _ in loaded}
    if len(data_names) > 1:
        raise AnalysisError(f"the runs were trained on different data ({sorted(map(str, data_names))}); one FID "
                            f"reference cannot serve them all")
    det = _detector(detector, device, detector_backend, features, loaded[0][0].config.data)
    ref, ref_where = _reference(loaded[0][0].config, det, out, ref_path)
    models = {n: (m, p) for n, (_, m, p) in zip(names, loaded)}
    info(f"FID against steps {steps} ({sampler}) for {', '.join(names)}: {num} samples each")
    result = quality_vs_steps(models, steps, seeds, ref, det, sampler=sampler,
                              guidance=guidance, batch=batch, progress=True, bootstrap=bootstrap)
    result.update(runs=dict(zip(names, map(str, run_dirs))), ref=ref_where, note=FID_NOTE.format(num=num))
    # x: the network evaluations a sample really costs, so a guided run (two passes a step) sits where its cost is
    series = {n: ([r["network_passes"] for r in rows], [r["fid"] for r in rows]) for n, rows in result["rows"].items()}
    png = plot_fid_curves(series, out / "nfe.png", xlabel="network evaluations per sample", log_x=True,
                          title=f"FID against NFE ({sampler}, {num} samples)")
    table(["steps", "NFE", *names], [[n, result["rows"][names[0]][i]["nfe"], *[result["rows"][m][i]["fid"]
                                                                                 for m in names]]
                                      for i, n in enumerate(steps)])
    click.echo(FID_NOTE.format(num=num) + ".")
    _finish(out, "nfe", result, [png])
