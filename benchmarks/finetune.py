"""Benchmark: is fine-tuning a trained plain EDM model the cheaper way to DisCo-Diff's latents?

    .venv/bin/python benchmarks/finetune.py --preset digits [--base-kimg N] [--extra-kimg E] [--num 2000]
                                            [--device cuda] [--out DIR] [--features inception|classifier|both]
                                            [--quick]

From one finished plain baseline B (m = 0, --base-kimg, the preset's budget by default), at equal extra training
images E (--extra-kimg, half of B's by default):
  (a) "plain+": B trained further as plain EDM, E more images (B's folder copied and resumed: its optimizer state,
      learning rate and EMA go on);
  (b) "finetuned": B fine-tuned into DisCo-Diff for E images (`discodiff train --init-from B`: B's EMA weights, the
      latent path silent at the start, a fresh encoder), then its prior;
  (c) "scratch": DisCo-Diff from scratch for B's total budget, base + E images, then its prior.
All runs go through the library's own functions (resolve_run, train_stage1, train_prior: what `discodiff train` /
`train-prior` run) in DIR/base, DIR/plain+, DIR/finetuned and DIR/scratch; finished work is reused and interrupted
work resumed, so the benchmark can be re-run. The default DIR names the budget, so another budget gets new runs.

Measured, all with the same --num samples and noise seeds against one reference (the preset's training images, their
detector features cached in DIR): FID ± bootstrap std and KID at 4, 8 and 18 Heun steps (--steps) for B, (a), (b)
and (c), no guidance; how much (b) and (c) use their latents (the loss at sigma >= 2 given the encoder's latents
over the loss given the null latent: benchmarks/common.py's latent_information, at the noise levels of `discodiff
analyze loss-vs-sigma` within [2, 20]; the report in benchmarks/results/ was measured before, at sigma 2, 5, 10 and
20); and the seconds each route spent training. The FID detector runs on --device;
the models are trained where the library trains them (the GPU when there is one) and sampled there. Prints a table
and writes benchmarks/results/finetune-<preset>.json. `--quick` is a smoke check of the whole pipeline on a tiny network
(minutes on a CPU; its numbers mean nothing, and its report goes to DIR, not to benchmarks/results).

--features classifier measures the FIDs in the hidden features of the data set's own classifier instead of Inception
(its Fréchet distance in place of the FID, docs/fid.md; report finetune-<preset>-classifier.json, the reference
features and FID cache in their own files of DIR); --features both in each (samples drawn once per space; the
classifier's results go to "results_classifier" and a second table).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (QUICK_MODEL, RESULTS, add_features_option, add_run_options,  # noqa: E402
                               balance_text, differ, feature_detectors, features_suffix, fid_cache, fid_text,
                               high_sigmas, join_tables, latent_information, log, log_timed, reference_and_floor,
                               second_space, space_suffix, train_both, write_report)

ROUTES = {"plain+": "(a) B + E as plain EDM", "finetuned": "(b) B fine-tuned + E", "scratch": "(c) scratch, B + E"}
# --quick: the tiny digits U-Net of the tests on 32 images, 8 samples per FID (the detector dominates on a CPU)
QUICK = {"model": QUICK_MODEL, "data": {"options": {"max_images": 32}},
         "train": {"batch": 32, "tick_kimg": 0.128, "lr_rampup_kimg": 0}, "prior_train": {"batch": 64}}


def copy_run(src: Path, dst: Path) -> None:
    """A finished run's folder copied (through a temporary name, so a copy is whole or absent), to train further."""
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".lock"))
    os.replace(tmp, dst)


def resolve_routes(out: Path, args, overrides: dict, base_cfg) -> tuple[dict, object]:
    """The configs of (a), (b) and (c) (after B is finished: (b) checks it) and the data; an existing run must be
    the same run, and the fine-tuned one must have started from B's current weights."""
    from discodiff.config import merge
    from discodiff.errors import ConfigError
    from discodiff.runs import file_sha256, resolve_run

    total = args.base_kimg + args.extra_kimg
    if not (out / "plain+").exists():
        copy_run(out / "base", out / "plain+")
    a, data = resolve_run(out / "plain+", preset=args.preset,
                          overrides=merge(overrides, {"model": {"num_latents": 0}, "train": {"kimg": total}}))
    b, _ = resolve_run(out / "finetuned", preset=args.preset, init_from=out / "base",
                       overrides=merge(merge(overrides, {"train": {"kimg": args.extra_kimg}}), args.finetune_sets))
    if b.train.init_from["sha256"] != file_sha256(out / "base" / "model.safetensors"):
        raise ConfigError(f"{out / 'finetuned'} started from other weights of B than {out / 'base'} holds now; use "
                          f"another --out")
    c, _ = resolve_run(out / "scratch", preset=args.preset, overrides=merge(overrides, {"train": {"kimg": total}}))
    if c.model.num_latents == 0:
        raise ConfigError(f"preset {args.preset!r} has no latents (m = 0): nothing to fine-tune into")
    return {"plain+": a, "finetuned": b, "scratch": c}, data


def _route_seconds(seconds: dict) -> dict:
    """Training seconds of each route (priors included): {"after_b": what a user who has B pays, "total": with B's
    own training}; (c) has no B."""
    def s(*keys):
        return round(sum(seconds.get(k) or 0.0 for k in keys), 1)
    return {"plain+": {"after_b": s("stage1_plain+"), "total": s("stage1_base", "stage1_plain+")},
            "finetuned": {"after_b": s("stage1_finetuned", "prior_finetuned"),
                          "total": s("stage1_base", "stage1_finetuned", "prior_finetuned")},
            "scratch": {"after_b": None, "total": s("stage1_scratch", "prior_scratch")}}


def measure(out: Path, models: dict, images, det, args, seconds: dict) -> dict:
    """FID ± bootstrap std and KID of every model at each step count, in one feature space (its own reference and
    FID cache)."""
    from discodiff.analysis.nfe import quality_vs_steps

    suffix = space_suffix(det)  # "" for Inception: the cache files and timings of before keep their names
    ref, floor, ref_reused = log_timed(seconds, f"fid_reference{suffix}", reference_and_floor, images, det, out,
                                       args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, models, args.num, f"fid-cache{suffix}.json")
    seeds = list(range(args.seed, args.seed + args.num))
    nfe = log_timed(seconds, f"fid{suffix}", quality_vs_steps, models, args.steps, seeds, ref, det, sampler="heun",
                    batch=args.batch, progress=True, cache=cache, bootstrap=args.bootstrap)
    return {"nfe": nfe, "data_floor": floor, "reference_reused": ref_reused, "reference_num": len(images)}


def format_table(res: dict, args, route_seconds: dict, use: dict) -> str:
    rows = res["nfe"]["rows"]
    fl = res["data_floor"]
    clf = "class_tv" in fl  # the classifier's features: each route's class TV / confidence at the last step count
    names = ["base", *ROUTES]
    head = {"base": f"B ({args.base_kimg:g} kimg)", **ROUTES}
    lines = [f"{args.preset}: B = plain EDM after {args.base_kimg:g} kimg; every route then ends at "
             f"{args.base_kimg + args.extra_kimg:g} kimg of stage-I images. FID ± bootstrap std ({args.bootstrap} "
             f"resamples) over {args.num} samples, Heun, no guidance; data floor: {fl['num']} training images score "
             f"FID {fid_text(fl)}", "",
             f"{'steps':>5} {'NFE':>4} " + " ".join(f"{head[n]:>22}" for n in names) + f" {'(b) vs (a)':>11}"
             f" {'(b) vs (c)':>11}"]
    by = {n: {r["steps"]: r for r in rows[n]} for n in names}
    for steps in res["nfe"]["steps"]:
        r = {n: by[n][steps] for n in names}
        lines.append(f"{steps:>5} {r['base']['nfe']:>4} " + " ".join(f"{fid_text(r[n]):>22}" for n in names)
                     + f" {_verdict(r['finetuned'], r['plain+']):>11} {_verdict(r['finetuned'], r['scratch']):>11}")
    cost = [f"{ROUTES[n]} {t['total']:.0f} s" + (f" ({t['after_b']:.0f} s after B)" if t["after_b"] is not None else "")
            for n, t in route_seconds.items()]
    lines += ["", "(b) vs (x): 'better' / 'worse' when the FIDs differ by more than twice their combined bootstrap "
                  "std, else 'same'", "training seconds, priors included: " + ", ".join(cost),
              f"how much the latents are used: loss given the encoder's latents / given the null latent, mean over "
              f"sigma {[round(s, 2) for s in high_sigmas()]} (1: ignored): "
              + ", ".join(f"{ROUTES[n]} {u['loss_ratio']:.3f}" for n, u in use.items())]
    if clf:
        last = max(res["nfe"]["steps"])
        lines.append(f"class TV / mean confidence at {last} steps (classifier; data "
                     f"{fl['data_confidence']:.2f}): " + ", ".join(f"{head[n]} {balance_text(by[n][last])}"
                                                                     for n in names))
    return "\n".join(lines)


def _verdict(b: dict, other: dict) -> str:
    d = differ(b, other)
    if not d:
        return "?" if d is None else "same"
    return "better" if b["fid"] < other["fid"] else "worse"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits", help="an image preset (digits, fashion16, ...)")
    ap.add_argument("--base-kimg", type=float, default=None, help="B's training images, thousands (default: the "
                                                                   "preset's)")
    ap.add_argument("--extra-kimg", type=float, default=None, help="the extra images E of (a) and (b), thousands "
                                                                    "(default: half of --base-kimg)")
    ap.add_argument("--prior-kimg", type=float, default=None, help="stage-II kimg of (b) and (c) (default: the "
                                                                    "preset's)")
    ap.add_argument("--num", type=int, default=2000, help="samples per FID")
    ap.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for each FID's std")
    ap.add_argument("--steps", default="4,8,18", help="Heun step counts, comma-separated")
    ap.add_argument("--seed", type=int, default=0, help="training seed and first sampling seed")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, as `discodiff train --set`")
    ap.add_argument("--finetune-set", dest="finetune_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the fine-tuned run (b) only, e.g. train.new_parts_lr=0.003")
    ap.add_argument("--device", default=None, help="the FID detector's device, cpu or cuda (default: cuda when "
                                                    "available)")
    add_features_option(ap)
    add_run_options(ap, batch=128, results="benchmarks/results/finetune-<preset>.json (with --features classifier: "
                                           "finetune-<preset>-classifier.json)",
                    out="a folder under the system's temporary directory named by preset and budget")
    ap.add_argument("--quick", action="store_true", help="smoke check: a tiny network, budgets of a few hundred "
                                                         "images, 8 samples per FID")
    args = ap.parse_args(argv)

    from discodiff import dist
    from discodiff.cli.options import parse_key_values, parse_list, resolve_device
    from discodiff.config import merge, preset_config
    from discodiff.data import to_uint8
    from discodiff.errors import ConfigError
    from discodiff.fileio import check_writable
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    start, seconds = time.perf_counter(), {}
    try:
        overrides = merge(QUICK if args.quick else {}, parse_key_values(args.sets))
        args.finetune_sets = parse_key_values(args.finetune_sets, "--finetune-set")
        preset = preset_config(args.preset, overrides)
        if args.quick:
            args.base_kimg = args.base_kimg or 0.256
            args.prior_kimg = args.prior_kimg or 0.256
            args.num, args.bootstrap = min(args.num, 8), min(args.bootstrap, 5)
        args.base_kimg = preset.train.kimg if args.base_kimg is None else args.base_kimg
        args.extra_kimg = args.base_kimg / 2 if args.extra_kimg is None else args.extra_kimg
        if args.base_kimg <= 0 or args.extra_kimg <= 0:
            raise ConfigError("--base-kimg and --extra-kimg must be positive")
        if args.num < 2:
            raise ConfigError("--num must be at least 2")
        args.steps = sorted(set(parse_list(args.steps, int, "--steps")))
        if min(args.steps) < 1:
            raise ConfigError(f"--steps must be positive, got {args.steps}")
        if args.prior_kimg is not None:
            overrides = merge(overrides, {"prior_train": {"kimg": args.prior_kimg}})
        overrides = merge(overrides, {"train": {"seed": args.seed}, "prior_train": {"seed": args.seed}})
        quick = "-quick" if args.quick else ""
        out = args.out or (Path(tempfile.gettempdir()) /
                           f"discodiff-finetune-{args.preset}-{args.base_kimg:g}+{args.extra_kimg:g}{quick}")
        suffix = features_suffix(args.features)
        path = args.results or (out / f"finetune-{args.preset}-quick{suffix}.json" if args.quick
                                else RESULTS / f"finetune-{args.preset}{suffix}.json")
        check_writable(out, folder=True)
        check_writable(path)
        device = resolve_device(args.device)

        base_cfg, data = resolve_run(out / "base", preset=args.preset,
                                     overrides=merge(overrides, {"model": {"num_latents": 0},
                                                                 "train": {"kimg": args.base_kimg}}))
        if data.kind != "image":
            raise ConfigError(f"preset {args.preset!r} is not an image preset")
        # the detectors before any training: data without labels are refused here for the classifier's features
        dets = feature_detectors(args.features, base_cfg.data, detector=args.detector, device=device)
        det = next(iter(dets.values()))
        log(f"fine-tuning benchmark: preset {args.preset}, B {args.base_kimg:g} kimg, E {args.extra_kimg:g} kimg, "
            f"{args.num} samples per FID ({args.bootstrap} bootstrap resamples), Heun steps {args.steps}; training "
            f"on {dist.device()}, features {' and '.join(dets)} on {device} ({det.backend}); runs in {out}")
        models, reused = train_both(out, {"base": base_cfg}, data, seconds, dist.device())
        cfgs, _ = resolve_routes(out, args, overrides, base_cfg)
        more, more_reused = train_both(out, cfgs, data, seconds, dist.device())
        models.update(more)
        reused.update(more_reused)

        images = to_uint8(data.x)
        results = {space: measure(out, models, images, d, args, seconds) for space, d in dets.items()}
        use = {n: latent_information(m, data.x, data.labels, seed=args.seed) for n, (m, _) in models.items()
               if m.num_latents}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {**results[next(iter(results))], "latent_use": use}
    wall = time.perf_counter() - start
    seconds["total"] = round(wall, 1)
    route_seconds = _route_seconds(seconds)
    tables = {space: format_table(r, args, route_seconds, use) for space, r in results.items()}
    table = join_tables(tables)
    log("\n" + table + "\n\nseconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items() if v is not None)
        + (" (reused: " + ", ".join(k for k, v in reused.items() if v) + ")" if any(reused.values()) else ""))
    cfg = cfgs["finetuned"]
    report = {
        "preset": args.preset, "quick": args.quick,
        "wall_s": round(wall, 1), "seconds": seconds, "route_seconds": route_seconds, "reused": reused,
        "overrides": args.sets, "finetune_overrides": args.finetune_sets, "num": args.num, "seed": args.seed,
        "bootstrap": args.bootstrap, "steps": args.steps, "detector_backend": det.backend, "features": list(dets),
        "budget": {"base_kimg": args.base_kimg, "extra_kimg": args.extra_kimg,
                   "total_kimg": args.base_kimg + args.extra_kimg, "prior_kimg": cfg.prior_train.kimg,
                   "batch": cfg.train.batch, "lr": cfg.train.lr, "new_parts_lr": cfg.train.new_parts_lr},
        "routes": {"base": "B: plain EDM", **ROUTES},
        "models": {n: {"num_latents": m.num_latents, "parameters_stage1": sum(p.numel() for p in m.parameters())}
                   for n, (m, _) in models.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": args.threads, "train_device": str(dist.device()), "detector_device": device,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "note": f"FID over {args.num} samples against the {len(data)} training images: biased upward relative to "
                f"FID-50k; compare only at equal N",
        "table": table, "results": res, **second_space(results, tables), "out": str(out),
    }
    write_report(report, path)
    log(f"wrote {path}; runs and caches in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
