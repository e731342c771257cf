"""Benchmark: continuous latents against discrete ones, the paper's Table 3 ablation.

    .venv/bin/python benchmarks/continuous_latents.py --preset digits [--betas 0.01,0.1,0.3,1] [--device cuda]
                                                      [--num 2000] [--out DIR]
                                                      [--features inception|classifier|both]
    .venv/bin/python benchmarks/continuous_latents.py --quick          # a tiny end-to-end check, about 2 minutes

Trains, with the preset's network, data, seed and number of training images (through benchmarks/common.py's
train_both: the library's own train_stage1 and train_prior), in DIR/<row>:
- baseline: the plain EDM model (m = 0);
- continuous, KL weight beta in --betas (default 0.1, 0.3, 1): a Gaussian latent of D = m * k entries, cut into the
  preset's m tokens, with a diffusion prior (the paper matches its 1000-d latent to m * k = 10 * 100 the same way);
- DisCo-Diff: the preset's m discrete latents with k codes, with the autoregressive prior.
Every prior gets the same budget (--prior-kimg, --prior-batch), at the learning rate that served each kind best:
--prior-lr 1e-4 for the autoregressive prior (the digits' longer fit, README), --diffusion-prior-lr 1e-3 for the
diffusion prior (in a trial on digits latents at beta = 0.01, 1,000 kimg at 1e-4 left its draws at a latent Frechet
distance of 4.9 from the posterior samples, against a floor of 0.9; at 1e-3 it came to 1.1). The preset's sampler
and step count.

For each row, over --num samples against the training images (one cached reference, the same noise seeds):
- FID with oracle latents (the encoder on training images: argmax codes, or posterior means), and from the prior at
  w = 0 and w = 1 (guidance on the latents);
- how much the denoiser uses the latent: the weighted loss given the oracle latents over the loss given the null
  latent (1: the latent is ignored), and the gap null - oracle, at the noise levels of `discodiff analyze
  loss-vs-sigma` within [2, 20] (benchmarks/common.py's latent_information; the report in benchmarks/results/ was
  measured before, at sigma 2, 5, 10 and 20);
- for continuous latents, the rate: the posteriors' mean KL to N(0, I) in nats per image and the active coordinates
  (mean KL above 0.01 nats), and the diffusion prior's Frechet distance to the posterior samples (prior_report.json).
  A discrete latent carries at most m ln k nats.

The paper's two failure modes, as they would show here: memorisation (small beta) as a good oracle FID with a much
worse FID from the prior, and a large rate; collapse (large beta) as oracle = prior = baseline FID, a loss ratio near
1 and a rate near 0. Writes benchmarks/results/continuous-latents-<preset>.json (--quick: into DIR).

--features classifier measures the FIDs in the hidden features of the data set's own classifier instead of Inception
(its Fréchet distance in place of the FID, docs/fid.md; report continuous-latents-<preset>-classifier.json, the
reference features and FID cache in their own files of DIR); --features both in each (samples drawn once per space;
the classifier's FIDs go to "results_classifier" and a second table). The loss ratios and rates do not depend on it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (QUICK_MODEL, RESULTS, add_features_option, add_run_options,  # noqa: E402
                               balance_text, feature_detectors, features_suffix, fid_cache, fid_text, high_sigmas,
                               join_tables, latent_information, log, log_timed, reference_and_floor, run_overrides,
                               second_space, space_suffix, train_both, write_report)

ACTIVE_NATS = 0.01  # a coordinate whose mean KL is below this carries (almost) nothing
# --quick: tiny networks, 128 training images, 16 samples per FID: it checks the pipeline, not the paper.
QUICK = {"model": QUICK_MODEL, "data": {"options": {"max_images": 128}},
         "train": {"batch": 32, "tick_kimg": 0.256, "lr_rampup_kimg": 0}, "sample": {"steps": 4}}


def row_overrides(preset: str, betas, *, kimg=None, prior_kimg=None, prior_batch=None, prior_lr=None,
                  diffusion_prior_lr=None, seed=0, overrides=None) -> dict:
    """{row name: run overrides}: the baseline and DisCo-Diff of benchmarks/images.py (common.run_overrides), and
    one continuous-latent run per beta; every prior with the same budget, the diffusion priors at their own learning
    rate. (Keep --out apart from images.py's folder: its DisCo-Diff prior would be refitted to this budget.)"""
    from discodiff.config import merge

    prior = {k: v for k, v in {"batch": prior_batch, "lr": prior_lr}.items() if v is not None}
    base = run_overrides(preset, kimg=kimg, prior_kimg=prior_kimg, seed=seed, overrides=overrides)
    base = {name: merge(o, {"prior_train": prior}) for name, o in base.items()}
    rows = {"baseline": base["baseline"]}
    lr = {} if diffusion_prior_lr is None else {"lr": diffusion_prior_lr}
    for beta in betas:
        rows[f"continuous-kl{beta:g}"] = merge(base["discodiff"], {"model": {"latent_type": "continuous",
                                                                          "kl_weight": beta}, "prior_train": lr})
    rows["discodiff"] = base["discodiff"]
    return rows


def rate(model, x: torch.Tensor) -> dict:
    """What the latent carries: for continuous latents the posteriors' mean KL to N(0, I) (nats per image) and the
    coordinates whose mean KL exceeds ACTIVE_NATS; for discrete ones the capacity m ln k."""
    import math

    from discodiff.analysis.codebook import encoder_logits
    from discodiff.variants.continuous import split_posterior

    cfg = model.config
    if not cfg.continuous:
        return {"max_nats": cfg.num_latents * math.log(cfg.codebook_size)}
    mean, logvar = split_posterior(encoder_logits(model, x))
    per_coordinate = (0.5 * (mean.square() + logvar.exp() - 1 - logvar)).flatten(1).mean(0)
    return {"kl_nats": float(per_coordinate.sum()), "active_dims": int((per_coordinate > ACTIVE_NATS).sum()),
            "latent_dim": cfg.latent_size, "posterior_std": float((0.5 * logvar).exp().mean())}


def measure(name: str, model, prior, data, ref, det, cache, args, extras: bool = True) -> dict:
    """One row in one feature space: the FIDs and (with `extras`, in the first space only) the latent's use and its
    rate, which do not depend on the space."""
    from discodiff.analysis.oracle import oracle_vs_prior
    from discodiff.analysis.quality import sample_fid

    seeds = list(range(args.seed, args.seed + args.num))
    common = dict(steps=args.steps, batch=args.batch, progress=True, cache=cache, bootstrap=args.bootstrap,
                  model_key=name)
    if not model.num_latents:
        return {"prior_w0": sample_fid(model, None, seeds, ref, det, desc=f"{name}", **common)}
    row = oracle_vs_prior(model, prior, data.x, data.labels, ref, det, num=args.num, seed=args.seed, **common)
    row = {"oracle": row["oracle"], "prior_w0": row["prior"], "oracle_vs_prior": {k: v for k, v in row.items()
                                                                                 if k not in ("oracle", "prior")}}
    row["prior_w1"] = sample_fid(model, prior, seeds, ref, det, guidance=1.0, desc=f"{name}, prior latents, w = 1",
                                 **common)
    if extras:
        row["use"] = latent_information(model, data.x, data.labels, seed=args.seed)
        row["rate"] = rate(model, data.x)
    use = f", loss ratio (sigma >= 2) {row['use']['loss_ratio']:.3f}" if extras else ""
    log(f"[continuous] {name}: oracle {fid_text(row['oracle'])}, prior w=0 {fid_text(row['prior_w0'])}, "
        f"w=1 {fid_text(row['prior_w1'])}{use}" + (f" ({space_suffix(det)[1:]} FD)" if space_suffix(det) else ""))
    return row


def measure_space(models: dict, data, det, out: Path, args, seconds: dict, extras: bool) -> dict:
    """{"rows": {row name: measure's row}, "data_floor"} in one feature space (its own reference and FID cache)."""
    from discodiff.data import to_uint8

    suffix = space_suffix(det)  # "" for Inception: the cache files and timings of before keep their names
    ref, floor, _ = log_timed(seconds, f"fid_reference{suffix}", reference_and_floor, to_uint8(data.x), det, out,
                              args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, models, args.num, f"fid-cache-continuous{suffix}.json")
    rows = {name: log_timed(seconds, f"measure_{name}{suffix}", measure, name, model, prior, data, ref, det, cache,
                            args, extras) for name, (model, prior) in models.items()}
    return {"rows": rows, "data_floor": floor}


def format_table(rows: dict, cfgs: dict, args) -> str:
    def fid(r, key):
        return fid_text(r[key]) if key in r else "-"

    clf = any("class_tv" in r["prior_w0"] for r in rows.values())  # the classifier's: TV / confidence at w = 0

    lines = [f"{args.preset}: FID ± bootstrap std over {args.num} samples ({args.steps} Heun steps) against the "
             f"training images; loss ratio = loss given the oracle latent / given the null latent, mean over sigma "
             f"{[round(s, 2) for s in high_sigmas()]} (1: unused); rate = mean KL of the posteriors (nats per image, "
             f"active coordinates of D) or, for discrete latents, the capacity m ln k", "",
             f"{'row':>18} {'oracle FID':>16} {'prior FID, w=0':>16} {'prior FID, w=1':>16} {'loss ratio':>10} "
             f"{'loss gap':>9} {'rate':>18} {'prior latent FD':>16}" + (f" {'w=0 TV/conf':>11}" if clf else "")]
    for name, r in rows.items():
        use, rt, m = r.get("use"), r.get("rate", {}), cfgs[name].model
        if "kl_nats" in rt:
            rate_s = f"{rt['kl_nats']:.1f} ({rt['active_dims']}/{rt['latent_dim']})"
        else:
            rate_s = f"<= {rt['max_nats']:.1f}" if rt else "-"
        pr = r.get("prior_report", {})
        fd = f"{pr['latent_fd']:.3f} ({pr['latent_fd_floor']:.3f})" if "latent_fd" in pr else "-"
        label = name if m.num_latents else "baseline (m=0)"
        lines.append(f"{label:>18} {fid(r, 'oracle'):>16} {fid(r, 'prior_w0'):>16} {fid(r, 'prior_w1'):>16} "
                     f"{use['loss_ratio'] if use else float('nan'):>10.3f} "
                     f"{use['loss_gap'] if use else float('nan'):>9.4f} {rate_s:>18} {fd:>16}"
                     + (f" {balance_text(r['prior_w0']):>11}" if clf else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--betas", default="0.1,0.3,1", help="KL weights of the continuous rows, comma-separated")
    ap.add_argument("--kimg", type=float, default=None, help="stage-I kimg per run (default: the preset's)")
    ap.add_argument("--prior-kimg", type=float, default=1000, help="stage-II kimg of every prior")
    ap.add_argument("--prior-batch", type=int, default=1024, help="stage-II batch of every prior")
    ap.add_argument("--prior-lr", type=float, default=1e-4, help="stage-II learning rate of the autoregressive prior")
    ap.add_argument("--diffusion-prior-lr", type=float, default=1e-3,
                    help="stage-II learning rate of the diffusion priors (continuous latents)")
    ap.add_argument("--num", type=int, default=2000, help="samples per FID")
    ap.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for each FID's std")
    ap.add_argument("--seed", type=int, default=0, help="training seed and first sampling seed")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available): the priors, sampling "
                                                   "and the FID detector (stage I trains on the GPU whenever there "
                                                   "is one, as `discodiff train` does)")
    add_features_option(ap)
    add_run_options(ap, batch=256,
                    results="benchmarks/results/continuous-latents-<preset>.json (with --features classifier: "
                            "continuous-latents-<preset>-classifier.json); --quick: in --out")
    ap.add_argument("--quick", action="store_true", help="tiny networks and budgets, 16 samples per FID: a smoke test")
    args = ap.parse_args(argv)

    from discodiff.cli.options import parse_list, resolve_device
    from discodiff.errors import ConfigError
    from discodiff.fileio import check_writable
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides, kimg = None, args.kimg
    if args.quick:
        overrides, kimg = QUICK, 0.512 if kimg is None else kimg
        args.num, args.bootstrap, args.prior_kimg, args.prior_batch = 16, 0, 2, 256
    suffix = "-quick" if args.quick else ""
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-continuous-{args.preset}{suffix}"
    path = args.results or ((out if args.quick else RESULTS) /
                            f"continuous-latents-{args.preset}{features_suffix(args.features)}.json")
    start, seconds = time.perf_counter(), {}
    try:
        if args.num < 2:
            raise ConfigError("--num must be at least 2")
        betas = parse_list(args.betas, float, "--betas")
        check_writable(out, folder=True)
        check_writable(path)
        rows = row_overrides(args.preset, betas, kimg=kimg, prior_kimg=args.prior_kimg, prior_batch=args.prior_batch,
                             prior_lr=args.prior_lr, diffusion_prior_lr=args.diffusion_prior_lr, seed=args.seed,
                             overrides=overrides)
        resolved = {name: resolve_run(out / name, preset=args.preset, overrides=o) for name, o in rows.items()}
        cfgs = {name: cfg for name, (cfg, _) in resolved.items()}
        data = resolved["discodiff"][1]
        if data.kind != "image":
            raise ConfigError(f"preset {args.preset!r} is not an image preset")
        args.steps = cfgs["discodiff"].sample.steps
        # the detectors before any training: data without labels are refused here for the classifier's features
        dets = feature_detectors(args.features, cfgs["discodiff"].data, detector=args.detector, device=device)
        det = next(iter(dets.values()))
        log(f"continuous latents benchmark: preset {args.preset}, rows {', '.join(cfgs)}, "
            f"{cfgs['discodiff'].train.kimg:g} kimg each, priors {args.prior_kimg:g} kimg at batch "
            f"{args.prior_batch} (lr {args.prior_lr:g}, diffusion {args.diffusion_prior_lr:g}), {args.num} samples "
            f"per FID, device {device}, features {' and '.join(dets)} (detector backend {det.backend}); runs in {out}")
        models, reused = train_both(out, cfgs, data, seconds, device=device)
        spaces = {space: measure_space(models, data, d, out, args, seconds, extras=i == 0)
                  for i, (space, d) in enumerate(dets.items())}
        results, floor = spaces[next(iter(spaces))]["rows"], spaces[next(iter(spaces))]["data_floor"]
        for name, (model, _) in models.items():
            report = out / name / "prior_report.json"
            if report.is_file() and model.num_latents:
                results[name]["prior_report"] = json.loads(report.read_text())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds["total"] = round(time.perf_counter() - start, 1)
    tables = {space: format_table({n: {**results[n], **r} for n, r in m["rows"].items()}, cfgs, args) + "\n\ndata "
              f"floor: {m['data_floor']['num']} training images score FID {fid_text(m['data_floor'])}"
              for space, m in spaces.items()}
    table = join_tables(tables)
    log("\n" + table + "\nseconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items() if v is not None))
    report = {"preset": args.preset, "quick": args.quick, "betas": betas, "num": args.num, "bootstrap": args.bootstrap,
              "seed": args.seed, "steps": args.steps,
              "budget": {"kimg_per_run": cfgs["discodiff"].train.kimg, "batch": cfgs["discodiff"].train.batch,
                         "prior_kimg": args.prior_kimg, "prior_batch": args.prior_batch, "prior_lr": args.prior_lr,
                         "diffusion_prior_lr": args.diffusion_prior_lr},
              "runs": {name: {"latent": c.model.latent_summary() if c.model.num_latents else "none",
                              "parameters_stage1": sum(p.numel() for p in models[name][0].parameters())}
                       for name, c in cfgs.items()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                          "device": device, "detector_backend": det.backend}, "features": list(dets),
              "data_floor": floor, "seconds": seconds, "reused": reused, "table": table, "rows": results,
              **second_space(spaces, tables), "out": str(out)}
    write_report(report, path)
    log(f"wrote {path}; runs and caches in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
