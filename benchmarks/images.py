"""Benchmark: the plain EDM baseline (m = 0) against DisCo-Diff on an image preset, by FID.

    .venv/bin/python benchmarks/images.py --preset digits [--kimg N] [--num 2000] [--bootstrap 50] [--out DIR]

1. trains the baseline and DisCo-Diff with the preset's network and the same number of training images, through
   the library's own functions (train_stage1, train_prior: what `discodiff train` / `train-prior` run), in
   DIR/baseline and DIR/discodiff; finished runs are reused, interrupted ones resumed, so it can be re-run;
2. trains DisCo-Diff's prior (stage II);
3. measures, all with the same --num samples and noise seeds against one reference (the preset's training images,
   their features cached in DIR): FID ± its bootstrap std (--bootstrap resamples of the generated features) and KID
   ± std at several Heun step counts for both models, the oracle / prior latent gap (paper Table 3), and the
   guidance sweep over w;
4. prints a table, the seconds of each stage and PASS / FAIL for the issue's targets, and writes
   benchmarks/results/images-<preset>.json.

--features classifier measures step 3 in the hidden features of the data set's own classifier instead of Inception
(discodiff.metrics.classifier, docs/fid.md; report images-<preset>-classifier.json), --features both in each (the
samples are drawn once per feature space; the classifier's results go to "results_classifier"). The two spaces keep
their reference features and FID caches in separate files of DIR.

Targets: DisCo-Diff's FID at most 0.8x the baseline's with the ODE sampler (Heun, the preset's step
count, no guidance) at equal training budget, and a clear advantage at low NFE (here: at most 0.8x the baseline's
FID at every step count below the preset's). FID at a few thousand samples is biased upward (KID is not);
the report gives the FID of that many real training images against the same reference as a floor for scale (at most
half the data set, so that the floor is not the reference itself: 898 images on digits). Ratios carry the
propagated bootstrap error, and a row is marked as a real difference when the two FIDs differ by more than twice
their combined std.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (RESULTS, add_features_option, add_run_options, differ_word,  # noqa: E402
                               feature_detectors, feature_space_name, features_suffix, fid_cache, fid_text,
                               floor_num, join_tables, kid_text, log, log_timed, ratio_text, reference_and_floor,
                               run_overrides, second_space, space_suffix, train_both, write_report)

TARGET_RATIO = 0.8


def measure(out: Path, models: dict, data, det, args, seconds: dict) -> dict:
    from discodiff.analysis.guidance import guidance_sweep
    from discodiff.analysis.nfe import quality_vs_steps
    from discodiff.analysis.oracle import oracle_vs_prior
    from discodiff.data import to_uint8

    images = to_uint8(data.x)
    suffix = space_suffix(det)  # "" for Inception: the cache files and timings of before keep their names
    log(f"[images] FID reference ({feature_space_name(det)} features): the {len(images)} training images (features "
        f"cached in {out}); floor: {floor_num(args.num, len(images))} of them against it")
    ref, floor, reused = log_timed(seconds, f"fid_reference{suffix}", reference_and_floor, images, det, out,
                                   args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, models, args.num, f"fid-cache{suffix}.json")
    seeds = list(range(args.seed, args.seed + args.num))
    common = dict(batch=args.batch, progress=True, cache=cache, bootstrap=args.bootstrap)
    res = {"reference_reused": reused, "reference_num": len(images), "data_floor": floor,
           "data_floor_fid": floor["fid"]}

    log(f"[images] FID against steps {args.steps} (Heun), {args.num} samples per FID")
    res["nfe"] = log_timed(seconds, f"fid_nfe{suffix}", quality_vs_steps, models, args.steps, seeds, ref, det, sampler="heun",
                           **common)
    disco, prior = models["discodiff"]
    log(f"[images] oracle against prior latents ({args.default_steps} steps)")
    res["oracle"] = log_timed(seconds, f"fid_oracle{suffix}", oracle_vs_prior, disco, prior, data.x, data.labels, ref, det,
                              num=args.num, seed=args.seed, steps=args.default_steps, model_key="discodiff", **common)
    log(f"[images] guidance sweep w = {args.weights} ({args.default_steps} steps)")
    res["guidance"] = log_timed(seconds, f"fid_guidance{suffix}", guidance_sweep, disco, prior, args.weights, seeds, ref, det,
                                steps=args.default_steps, model_key="discodiff", **common)
    return res


# ---- report ------------------------------------------------------------------------------------------------------

def targets(res: dict, default_steps: int) -> list[tuple[str, bool, str]]:
    rows = res["nfe"]["rows"]
    by = {name: {r["steps"]: r for r in rows[name]} for name in rows}
    b, d = by["baseline"][default_steps], by["discodiff"][default_steps]
    out = [(f"FID <= {TARGET_RATIO}x baseline at {default_steps} Heun steps (NFE {b['nfe']}), w = 0",
            d["fid"] <= TARGET_RATIO * b["fid"], f"{fid_text(d)} vs {fid_text(b)} (ratio {ratio_text(d, b)})")]
    low = [s for s in sorted(by["baseline"]) if s < default_steps]
    if low:
        ratios = {s: by["discodiff"][s]["fid"] / by["baseline"][s]["fid"] for s in low}
        out.append((f"clear advantage at low NFE: FID <= {TARGET_RATIO}x baseline at every NFE below "
                    f"{b['nfe']}", all(r <= TARGET_RATIO for r in ratios.values()),
                    ", ".join(f"NFE {by['baseline'][s]['nfe']}: {fid_text(by['discodiff'][s])} vs "
                              f"{fid_text(by['baseline'][s])} "
                              f"(ratio {ratio_text(by['discodiff'][s], by['baseline'][s])})" for s in low)))
    return out


def format_table(res: dict, args) -> str:
    rows = res["nfe"]["rows"]
    fl = res["data_floor"]
    lines = [f"FID ± bootstrap std ({args.bootstrap} resamples) and KID x 1000 ± std (100 subsets of 1,000) over "
             f"{args.num} samples; data floor: {fl['num']} training images score FID {fid_text(fl)}, KID x 1000 "
             f"{kid_text(fl)}; Heun, no guidance unless stated", "",
             f"{'steps':>5} {'NFE':>4} {'baseline FID':>17} {'DisCo-Diff FID':>17} {'ratio':>15} {'differ':>6} "
             f"{'baseline KID':>14} {'DisCo KID':>14}"]
    for rb, rd in zip(rows["baseline"], rows["discodiff"]):
        lines.append(f"{rb['steps']:>5} {rb['nfe']:>4} {fid_text(rb):>17} {fid_text(rd):>17} {ratio_text(rd, rb):>15} "
                     f"{differ_word(rd, rb):>6} {kid_text(rb):>14} {kid_text(rd):>14}")
    o = res["oracle"]
    lines += ["", f"DisCo-Diff latents ({args.default_steps} steps): oracle {fid_text(o['oracle'])} "
                  f"(KID {kid_text(o['oracle'])}), prior {fid_text(o['prior'])} (KID {kid_text(o['prior'])}); "
                  f"{100 * o['prior_tuples_seen_in_data']:.0f}% of prior tuples occur in the data",
              "", f"{'w':>5} {'FID':>17} {'KID x 1000':>14} {'diversity':>10} {'passes':>7}"]
    for r in res["guidance"]["rows"]:
        lines.append(f"{r['guidance']:>5g} {fid_text(r):>17} {kid_text(r):>14} {r['diversity']:>10.3f} "
                     f"{r['network_passes']:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--kimg", type=float, default=None, help="stage-I training images (thousands) per model "
                                                              "(default: the preset's)")
    ap.add_argument("--prior-kimg", type=float, default=None, help="stage-II kimg (default: the preset's)")
    ap.add_argument("--num", type=int, default=2000, help="samples per FID (and training images in the floor, at "
                                                           "most half the data)")
    ap.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for each FID's std")
    ap.add_argument("--steps", default=None, help="Heun step counts, comma-separated (default: 4, 8 and the preset's)")
    ap.add_argument("--weights", default="0,1,2", help="guidance weights, comma-separated")
    ap.add_argument("--seed", type=int, default=0, help="training seed and first sampling seed")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both runs, as `discodiff train --set` (e.g. "
                         "model.network.model_channels=8 for a quick trial)")
    add_features_option(ap)
    add_run_options(ap, batch=128, results="benchmarks/results/images-<preset>.json (with --features classifier: "
                                           "images-<preset>-classifier.json)")
    args = ap.parse_args(argv)
    if args.num < 2:
        ap.error("--num must be at least 2")

    from discodiff.cli.options import parse_key_values, parse_list
    from discodiff.errors import ConfigError
    from discodiff.fileio import check_writable
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-images-{args.preset}"
    path = args.results or RESULTS / f"images-{args.preset}{features_suffix(args.features)}.json"
    start = time.perf_counter()
    seconds: dict = {}
    try:
        args.steps = None if args.steps is None else parse_list(args.steps, int, "--steps")
        args.weights = parse_list(args.weights, float, "--weights")
        if args.steps is not None and min(args.steps) < 1:
            raise ConfigError(f"--steps must be positive, got {args.steps}")
        check_writable(out, folder=True)
        check_writable(path)
        overrides = run_overrides(args.preset, kimg=args.kimg, prior_kimg=args.prior_kimg, seed=args.seed,
                                  overrides=parse_key_values(args.sets))
        # both runs resolved (an existing one checked to be the same run) before anything is written
        resolved = {name: resolve_run(out / name, preset=args.preset, overrides=o) for name, o in overrides.items()}
        cfgs = {name: cfg for name, (cfg, _) in resolved.items()}
        data = resolved["discodiff"][1]
        if data.kind != "image":
            raise ConfigError(f"preset {args.preset!r} is not an image preset")
        if cfgs["discodiff"].model.num_latents == 0:
            raise ConfigError(f"preset {args.preset!r} has no latents (m = 0): nothing to compare")
        args.default_steps = cfgs["discodiff"].sample.steps
        args.steps = sorted(set(args.steps or [4, 8, args.default_steps]) | {args.default_steps})
        # the detectors before any training: data without labels are refused here for the classifier's features
        dets = feature_detectors(args.features, cfgs["discodiff"].data, detector=args.detector)
        spaces = list(dets)
        det = dets[spaces[0]]
        log(f"images benchmark: preset {args.preset}, {cfgs['discodiff'].train.kimg:g} kimg per model, {args.num} "
             f"samples per FID ({args.bootstrap} bootstrap resamples), steps {args.steps}, w {args.weights}, "
             f"{args.threads} threads, features {' and '.join(spaces)} (detector backend {det.backend}); runs in "
             f"{out}")
        models, reused = train_both(out, cfgs, data, seconds)
        results = {space: measure(out, models, data, d, args, seconds) for space, d in dets.items()}
        res = results[spaces[0]]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    seconds["total"] = round(wall, 1)
    checks = [(("" if space == "inception" else f"[{space} features: FD for FID] ") + n, ok, f)
              for space, r in results.items() for n, ok, f in targets(r, args.default_steps)]
    tables = {space: format_table(r, args) for space, r in results.items()}
    table, extra = join_tables(tables), second_space(results, tables)
    log("\n" + table + "\n\nseconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items())
         + (" (reused: " + ", ".join(k for k, v in reused.items() if v) + ")" if any(reused.values()) else ""))
    log("targets:")
    for name, ok, figures in checks:
        log(f"  [{'PASS' if ok else 'FAIL'}] {name}: {figures}")
    cfg = cfgs["discodiff"]
    report = {
        "preset": args.preset, "wall_s": round(wall, 1),
        "seconds": seconds, "reused": reused, "overrides": args.sets, "num": args.num, "seed": args.seed,
        "bootstrap": args.bootstrap, "detector_backend": det.backend, "features": spaces,
        "steps": args.steps,
        "default_steps": args.default_steps, "weights": args.weights,
        "budget": {"kimg_per_model": cfg.train.kimg, "prior_kimg": cfg.prior_train.kimg, "batch": cfg.train.batch},
        "models": {name: {"num_latents": c.model.num_latents, "codebook_size": c.model.codebook_size,
                          "parameters_stage1": sum(p.numel() for p in models[name][0].parameters())}
                   for name, c in cfgs.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": args.threads, "device": "cpu"},
        "note": f"FID over {args.num} samples against the {len(data)} training images: biased upward relative to "
                f"FID-50k; compare only at equal N. KID is unbiased. Ratio errors propagate the two bootstrap stds",
        "targets": [{"target": n, "pass": ok, "measured": f} for n, ok, f in checks],
        "table": table, "results": res, **extra, "out": str(out),
    }
    write_report(report, path)
    log(f"wrote {path}; runs and caches in {out}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
