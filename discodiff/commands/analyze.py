"""`discodiff analyze ...`: the paper's analyses of trained runs (docs/analysis.md).

Every command writes <name>.json and <name>.png (plus picture grids where they help) into --out, prints a short
table and the paths, and fails with one line (an AnalysisError, exit status 2) on input it cannot use.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..config import DataConfig
from .fid import DETECTOR_HELP, _device, _info, _parse_options, _write_json

FID_NOTE = ("FID over {num} samples: biased upward against the standard 50k-sample FID; compare only numbers measured "
            "at the same number of samples and against the same reference")


# ---- shared pieces ------------------------------------------------------------------------------------------

def _load(run_dir: Path, what: str, *, latents: bool = False, prior: bool = False, device: str = "cpu"):
    """(RunConfig, model) with the checks an analysis needs, named after the run directory."""
    from ..analysis import require_latents, require_prior
    from ..checkpoint import load_model, load_run_config

    load_run_config(run_dir)  # the clear errors for a missing or foreign folder come first
    cfg, model = load_model(run_dir, need_prior=False, device=device)
    if latents:
        require_latents(model, what, str(run_dir))
    if prior:
        require_prior(model, what, str(run_dir))
    return cfg, model


def _data(cfg, data_options=()):
    """The run's dataset, with --data-option overrides (e.g. split=test for held-out MNIST images)."""
    from ..data import load_dataset

    options = {**(cfg.data.options or {}), **_parse_options(data_options)}
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


def _prepare_out(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(out: Path, name: str, result: dict, files: list[Path]) -> None:
    from ..analysis import jsonable
    path = out / f"{name}.json"
    _write_json(jsonable(result), path)
    click.echo("wrote " + ", ".join(str(p) for p in [path, *files]))


def _detector(detector, device):
    from ..metrics.fid import InceptionDetector
    return InceptionDetector.from_file(detector, device=device)


def _reference(cfg, det, out: Path, ref_path: Path | None):
    """(FIDStats, where they came from): --ref, or the run's training images, cached as OUT/fid-ref.npz."""
    from ..analysis.quality import cached_reference, reference_stats
    from ..data import to_uint8
    from ..metrics.fid import FIDStats

    if ref_path is not None:
        return FIDStats.load(ref_path), str(ref_path)
    data, _ = _data(cfg)
    cache = out / "fid-ref.npz"
    describe = {"data": {"name": cfg.data.name, "path": cfg.data.path, "options": cfg.data.options},
                "detector": str(det.source)}
    stats = cached_reference(cache, {"num": len(data), **describe})
    if stats is not None:
        _info(f"reusing the reference statistics in {cache}")
    else:
        _info(f"reference statistics of the {len(data)} training images of {cfg.data.name} (saved as {cache})")
        stats, _ = reference_stats(to_uint8(data.x), det, cache=cache, describe=describe, progress=True)
    return stats, str(cache)


def _common(f):
    f = click.option("--device", type=str, default=None, help="cpu, cuda, ... (default: cuda when available).")(f)
    f = click.option("--seed", type=click.IntRange(min=0), default=0,
                     help="Seed of the images picked and of the sampling noise (seeds seed, seed+1, ...).")(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output folder for the JSON and the figures.")(f)
    return f


def _sampling_options(f):
    f = click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's).")(f)
    f = click.option("--sampler", type=click.Choice(["heun", "euler"]), default=None,
                     help="ODE solver (default: the run's).")(f)
    f = click.option("--batch", type=click.IntRange(min=1), default=128, help="Samples per batch.")(f)
    return f


def _fid_options(f):
    f = click.option("--num", type=click.IntRange(min=2), default=500,
                     help="Samples per FID (small N biases FID upward: compare only at equal N).")(f)
    f = click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Reference statistics .npz (default: the run's training images, cached as "
                          "OUT/fid-ref.npz).")(f)
    f = click.option("--detector", type=click.Path(path_type=Path), default=None, help=DETECTOR_HELP)(f)
    return f


def _table(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(_cell(r[i])) for r in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r in rows:
        click.echo("  ".join(f"{_cell(c):>{w}}" for c, w in zip(r, widths)))


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
    """EDM-weighted denoising loss at fixed sigmas, same images and noise for every run (paper Fig. 7a).

    DisCo-Diff is given the encoder's argmax latents of each image (oracle z); a baseline gets none."""
    from ..analysis.common import pick_images
    from ..analysis.loss_sigma import loss_ratios, loss_vs_sigma
    from ..plots.analysis import plot_loss_vs_sigma

    device = _device(device)
    names = _run_names(run_dirs)
    loaded = [_load(d, "loss against sigma", device=device) for d in run_dirs]
    cfg0 = loaded[0][0]
    data, data_cfg = _data(cfg0, data_options)
    idx = pick_images(len(data), min(num, len(data)), seed)
    y = data.x[idx]
    labels = data.labels[idx] if data.labels is not None and cfg0.model.num_classes else None
    models = {n: m for n, (_, m) in zip(names, loaded)}
    _info(f"loss against sigma: {len(y)} images of {data.name or data_cfg.name}, {num_sigmas} noise levels, "
          f"runs {', '.join(names)}")
    result = loss_vs_sigma(models, y, class_labels=labels, num_sigmas=num_sigmas, seed=seed, batch=batch,
                           null_curves=not no_null, progress=_info)
    baselines = [n for n, m in models.items() if m.num_latents == 0]
    reference = baselines[0] if baselines else names[0]
    if len(result["curves"]) > 1:
        result["ratio_to"] = reference
        result["ratios"] = loss_ratios(result, reference)
    result.update(runs=dict(zip(names, map(str, run_dirs))), data={"name": data_cfg.name, "options": data_cfg.options})
    _prepare_out(out)
    png = plot_loss_vs_sigma(result, out / "loss_vs_sigma.png", reference if len(result["curves"]) > 1 else None)
    labels_ = list(result["curves"])
    rows = [[f"{s:.3g}", *[result["curves"][lab]["loss"][j] for lab in labels_]] for j, s in enumerate(result["sigma"])]
    _table(["sigma", *labels_], rows)
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
@_sampling_options
@_common
def switching(run_dir, num, fractions, guidance, grid_num, steps, sampler, batch, out, seed, device):
    """Switch z to another latent for the last fraction f of the steps, same noise; how much does the output move?
    (paper Fig. 7b)"""
    from ..analysis.guidance import parse_floats
    from ..analysis.switching import latent_switching
    from ..data import to_uint8
    from ..plots.analysis import plot_switching, save_grid

    device = _device(device)
    cfg, model = _load(run_dir, "latent switching", latents=True, prior=True, device=device)
    steps, sampler, guidance = _sampling(cfg, steps, sampler, guidance)
    fr = parse_floats(fractions, "--fractions")
    _info(f"latent switching: {num} samples, {steps} {sampler} steps, guidance {guidance:g}")
    result = latent_switching(model, list(range(seed, seed + num)), fractions=fr, steps=steps, sampler=sampler,
                              guidance=guidance, batch=batch, keep=grid_num, progress=_info)
    result["run_dir"] = str(run_dir)
    _prepare_out(out)
    files = [plot_switching(result, out / "switching.png")]
    samples = result["samples"]
    if len(cfg.model.data_shape) == 3 and samples.shape[1]:
        # rows = seeds, columns = fractions (f = 0: the z_a sample ... f = 1: the z_b sample)
        grid = samples.transpose(0, 1).reshape(-1, *samples.shape[2:])
        files.append(save_grid(to_uint8(grid).cpu(), out / "switching_grid.png", len(result["fractions"])))
    _table(["f", "switch step", "sigma", "rms", "rms ratio", "nearer z_b"],
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
@_sampling_options
@_common
def codebook(run_dir, prior_samples, rows, cols, positions, data_options, steps, sampler, batch, out, seed, device):
    """Per-latent perplexity, dead codes and counts over the dataset's encoder latents, with picture grids:
    samples sharing one z per row, and dataset images grouped by code."""
    from ..analysis.codebook import codebook_analysis, images_by_code, samples_by_latent
    from ..data import to_uint8
    from ..plots.analysis import plot_codebook, save_grid

    device = _device(device)
    cfg, model = _load(run_dir, "codebook usage", latents=True, device=device)
    steps, sampler, guidance = _sampling(cfg, steps, sampler, None)
    data, _ = _data(cfg, data_options)
    _info(f"codebook usage over {len(data)} images of {data.name}")
    result = codebook_analysis(model, data.x, prior_samples=prior_samples, seed=seed)
    result["run_dir"] = str(run_dir)
    _prepare_out(out)
    rep = result["encoder"]
    files = [plot_codebook(rep, out / "codebook.png", result.get("prior"), result["encoder_sampled"])]
    if len(cfg.model.data_shape) == 3:
        images = to_uint8(data.x)
        for i in range(min(positions, rep["num_latents"])):
            grid, codes = images_by_code(images, result["z"], i, cols, rows)
            files.append(save_grid(grid, out / f"data_by_code_z{i}.png", cols))
            result.setdefault("grid_codes", {})[f"z{i}"] = codes
        if model.prior is not None:
            _info(f"sampling {rows} x {cols} images, one latent per row")
            samples, z_rows = samples_by_latent(model, rows, cols, seed=seed, steps=steps, sampler=sampler,
                                                guidance=guidance, batch=batch)
            files.append(save_grid(samples, out / "samples_by_latent.png", cols))
            result["samples_by_latent_z"] = z_rows.tolist()
        else:
            _info(f"{run_dir} has no prior: no grid of samples by latent (run `discodiff train-prior` for it)")
    has_prior = "prior" in result
    table = [[f"z{i}", rep["perplexity"][i], rep["codes_used"][i], rep["dead_codes"][i], result["confidence"][i],
              result["encoder_sampled"]["perplexity"][i]]
             + ([result["prior"]["perplexity"][i], result["prior_vs_encoder_tv"][i]] if has_prior else [])
             for i in range(rep["num_latents"])]
    _table(["latent", "perplexity", "used", "dead", "confidence", "sampled perplexity"]
           + (["prior perplexity", "TV(prior, sampled)"] if has_prior else []), table)
    click.echo(f"{rep['distinct_tuples']} distinct tuples z over {rep['num']} images (tuple perplexity "
               f"{rep['tuple_perplexity']:.1f}, codebook size {rep['codebook_size']})")
    _finish(out, "codebook", result, files)


# ---- oracle against prior latents -------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A DisCo-Diff run with a trained prior.")
@click.option("--guidance", type=float, default=0.0, help="Guidance weight on the latents, for both rows.")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option for the images whose latents are the oracle's, e.g. split=test (default: the "
                   "training images, as in the paper).")
@_fid_options
@_sampling_options
@_common
def oracle(run_dir, guidance, data_options, num, ref_path, detector, steps, sampler, batch, out, seed, device):
    """FID with the encoder's latents of real images (oracle) against latents from the prior, same noise
    (paper Table 3)."""
    import torch

    from ..analysis.codebook import encoder_latents
    from ..analysis.common import pick_images
    from ..analysis.oracle import oracle_vs_prior
    from ..analysis.quality import sample_batches
    from ..data import to_uint8
    from ..plots.analysis import save_grid

    cfg, model, steps, sampler, det, ref, ref_where = _fid_run(run_dir, "oracle against prior latents", steps,
                                                               sampler, detector, ref_path, out, device)
    data, data_cfg = _data(cfg, data_options)
    _info(f"oracle against prior latents: {num} samples each, {steps} {sampler} steps, guidance {guidance:g}")
    result = oracle_vs_prior(model, data.x, data.labels, ref, det, num=num, seed=seed, steps=steps, sampler=sampler,
                             guidance=guidance, batch=batch, progress=True)
    result.update(run_dir=str(run_dir), ref=ref_where, note=FID_NOTE.format(num=num),
                  data={"name": data_cfg.name, "options": data_cfg.options})
    # the picture: real images | samples with their oracle latents | samples with prior latents (same seeds)
    k = min(8, num)
    idx = pick_images(len(data), num, seed)[:k]
    z = encoder_latents(model, data.x[idx])
    cls = data.labels[idx] if data.labels is not None and cfg.model.num_classes else None
    seeds = list(range(seed, seed + k))
    row_o = next(sample_batches(model, seeds, z=z, class_labels=cls, steps=steps, sampler=sampler, guidance=guidance))
    row_p = next(sample_batches(model, seeds, class_labels=cls, steps=steps, sampler=sampler, guidance=guidance))
    png = save_grid(torch.cat([to_uint8(data.x[idx]).cpu(), row_o, row_p]), out / "oracle.png", k)
    _table(["latents", "FID", "diversity", "N"],
           [["oracle (encoder)", result["oracle"]["fid"], result["oracle"]["diversity"], num],
            ["prior", result["prior"]["fid"], result["prior"]["diversity"], num]])
    click.echo(f"gap (prior - oracle) {result['gap']:.4g}; {100 * result['prior_tuples_seen_in_data']:.1f}% of the "
               f"prior's tuples occur in the data. {FID_NOTE.format(num=num)}.")
    click.echo(f"{png}: rows = images, samples with their oracle latents, samples with prior latents")
    _finish(out, "oracle", result, [png])


def _fid_run(run_dir, what, steps, sampler, detector, ref_path, out, device):
    """The set-up shared by the FID analyses of one DisCo-Diff run: the model (with latents and a prior), its
    sampler settings, the detector and the reference statistics.
    Returns (cfg, model, steps, sampler, detector, reference, where the reference came from)."""
    from ..analysis import require_image_model

    device = _device(device)
    cfg, model = _load(run_dir, what, latents=True, prior=True, device=device)
    require_image_model(model, "FID", str(run_dir))
    steps, sampler, _ = _sampling(cfg, steps, sampler, None)
    det = _detector(detector, device)
    _prepare_out(out)
    ref, ref_where = _reference(cfg, det, out, ref_path)
    return cfg, model, steps, sampler, det, ref, ref_where


# ---- guidance sweep -----------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A DisCo-Diff run with a trained prior.")
@click.option("--weights", default="0,0.5,1,2", help="Guidance weights w on the latents (0: no guidance).")
@_fid_options
@_sampling_options
@_common
def guidance(run_dir, weights, num, ref_path, detector, steps, sampler, batch, out, seed, device):
    """FID and feature diversity against the guidance weight w on the latents (paper Table 3)."""
    import torch

    from ..analysis.guidance import guidance_sweep, parse_floats
    from ..analysis.quality import sample_batches
    from ..plots.analysis import plot_fid_curves, save_grid

    ws = parse_floats(weights, "--weights")
    _, model, steps, sampler, det, ref, ref_where = _fid_run(run_dir, "the guidance sweep", steps, sampler,
                                                             detector, ref_path, out, device)
    seeds = list(range(seed, seed + num))
    _info(f"guidance sweep over w = {', '.join(f'{w:g}' for w in ws)}: {num} samples each, {steps} {sampler} steps")
    result = guidance_sweep(model, ws, seeds, ref, det, steps=steps, sampler=sampler, batch=batch, progress=True)
    result.update(run_dir=str(run_dir), ref=ref_where, note=FID_NOTE.format(num=num))
    xs = [r["guidance"] for r in result["rows"]]
    files = [plot_fid_curves({"DisCo-Diff": (xs, [r["fid"] for r in result["rows"]])}, out / "guidance.png",
                             xlabel="guidance weight w", title=f"FID against guidance ({num} samples, {steps} steps)",
                             extra={"diversity tr(S)/tr(S_ref)": (xs, [r["diversity"] for r in result["rows"]])},
                             extra_label="feature diversity")]
    # rows = w, columns = the same 8 seeds (same z, same noise)
    grid = torch.cat([next(sample_batches(model, seeds[:8], steps=steps, sampler=sampler, guidance=w)) for w in ws])
    files.append(save_grid(grid, out / "guidance_grid.png", min(8, num)))
    _table(["w", "FID", "diversity", "network passes", "N"],
           [[r["guidance"], r["fid"], r["diversity"], r["network_passes"], r["num"]] for r in result["rows"]])
    click.echo(f"best w = {result['best']['guidance']:g}. {FID_NOTE.format(num=num)}.")
    _finish(out, "guidance", result, files)


# ---- quality against steps ------------------------------------------------------------------------------------

@analyze.command()
@click.option("--run-dir", "run_dirs", type=click.Path(file_okay=False, path_type=Path), multiple=True, required=True,
              help="A trained run (repeat it: typically the baseline and DisCo-Diff).")
@click.option("--steps", "steps_list", default="4,8,12,18", help="Sampler step counts.")
@click.option("--sampler", type=click.Choice(["heun", "euler"]), default="heun", help="ODE solver.")
@click.option("--guidance", type=float, default=0.0, help="Guidance weight on the latents (runs with latents only).")
@click.option("--batch", type=click.IntRange(min=1), default=128, help="Samples per batch.")
@_fid_options
@_common
def nfe(run_dirs, steps_list, sampler, guidance, batch, num, ref_path, detector, out, seed, device):
    """FID against the number of sampler steps (NFE = 2 steps - 1 for Heun), for each run, same noise seeds."""
    from ..analysis import require_image_model
    from ..analysis.nfe import parse_ints, quality_vs_steps
    from ..plots.analysis import plot_fid_curves

    steps = parse_ints(steps_list, "--steps")
    device = _device(device)
    names = _run_names(run_dirs)
    loaded = [_load(d, "FID against sampler steps", prior=True, device=device) for d in run_dirs]
    for (_, m), d in zip(loaded, run_dirs):
        require_image_model(m, "FID", str(d))
    data_names = {(c.data.name, c.data.path) for c, _ in loaded}
    if len(data_names) > 1:
        from ..analysis import AnalysisError
        raise AnalysisError(f"the runs were trained on different data ({sorted(map(str, data_names))}); one FID "
                            f"reference cannot serve them all")
    det = _detector(detector, device)
    _prepare_out(out)
    ref, ref_where = _reference(loaded[0][0], det, out, ref_path)
    models = {n: m for n, (_, m) in zip(names, loaded)}
    _info(f"FID against steps {steps} ({sampler}) for {', '.join(names)}: {num} samples each")
    result = quality_vs_steps(models, steps, list(range(seed, seed + num)), ref, det, sampler=sampler,
                              guidance=guidance, batch=batch, progress=True)
    result.update(runs=dict(zip(names, map(str, run_dirs))), ref=ref_where, note=FID_NOTE.format(num=num))
    series = {n: ([r["nfe"] for r in rows], [r["fid"] for r in rows]) for n, rows in result["rows"].items()}
    png = plot_fid_curves(series, out / "nfe.png", xlabel="NFE (network evaluations per sample)", log_x=True,
                          title=f"FID against NFE ({sampler}, {num} samples)")
    _table(["steps", "NFE", *names], [[n, result["rows"][names[0]][i]["nfe"], *[result["rows"][m][i]["fid"]
                                                                                 for m in names]]
                                      for i, n in enumerate(steps)])
    click.echo(FID_NOTE.format(num=num) + ".")
    _finish(out, "nfe", result, [png])
