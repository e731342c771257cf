"""Benchmark: PFGM++ against DisCo-PFGM++, next to EDM and DisCo-EDM, at equal network and budget.

    .venv/bin/python benchmarks/pfgmpp.py [--device cuda] [--D 128] [--num 2000] [--toy-only | --digits-only]
                                          [--features inception|classifier|both]
    .venv/bin/python benchmarks/pfgmpp.py --quick       # a smoke check of the whole path, in minutes

Four models per task that differ only in the forward process (model.process edm, or pfgmpp with model.pfgm_D = --D)
and in the latents (m = 0, or the preset's): EDM, DisCo-EDM, PFGM++, DisCo-PFGM++. Same network, data, seeds and
training images (the preset's budgets, or --kimg / --toy-kimg).

- toy2d: `experiments.toy2d.run_toy2d` once per process (its two models are m = 0 and m = 1): the off-mode fraction,
  the within-mode W2 (with its floor) and the mean ODE curvature at 50 and 10 Heun steps, as in docs/toy2d.md.
- digits: the image benchmarks' training (benchmarks/common.py's `train_both`) and FID (`reference_and_floor`, one
  reference of all the training images, features cached) with `analysis.nfe.quality_vs_steps`: FID ± bootstrap std
  and KID over --num samples at 8 and 18 Heun steps, the same noise seeds for every model. --features classifier
  measures them in the hidden features of the digits' own classifier instead of Inception (its Fréchet distance in
  place of the FID, with each row's class TV and confidence; docs/fid.md; report pfgmpp-classifier.json, the
  reference features and FID cache in their own files); --features both in each (samples drawn once per space; the
  classifier's rows go to digits.results_classifier and a second table).

Training runs where `discodiff train` would (the GPU when there is one; --device cpu hides it); sampling and the FID
detector run on --device. Models train in float32 unless --bf16, as the CPU results in the README did. Run folders and
caches go to --out; finished runs are reused and interrupted ones resumed, so it can be re-run. Prints a table and
writes benchmarks/results/pfgmpp.json (--quick: pfgmpp-quick.json in --out, never the real results).

D: PFGM++ recovers EDM as D -> infinity, and the paper ties a useful D to the data's dimension N (it used D = 2048 for
N = 3072). On digits (N = 64) D = 128 gives visibly heavier tails; on the toy (N = 2) D = 128 is close to Gaussian:
--toy-D sets it apart (e.g. 4, the same D/N as 128 on digits).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (QUICK_MODEL, RESULTS, add_features_option, add_run_options,  # noqa: E402
                               balance_text, feature_detectors, features_suffix, fid_cache, fid_text, join_tables,
                               kid_text, log, log_timed, reference_and_floor, run_overrides, second_space,
                               space_suffix, train_both, write_report)

REPORT = RESULTS / "pfgmpp.json"
LABELS = {"edm": "EDM", "disco-edm": "DisCo-EDM", "pfgmpp": "PFGM++", "disco-pfgmpp": "DisCo-PFGM++"}
TOY_STEPS = (50, 10)
DIGITS_STEPS = "8,18"

# --quick: tiny networks and budgets, a few samples; the numbers mean nothing, the path is what it checks
QUICK_TOY = {"model": {"network": {"hidden": 32, "emb_dim": 16}, "encoder": {"hidden": 32},
                       "prior": {"depth": 1, "width": 32, "heads": 2}},
             "train": {"batch": 64, "tick_kimg": 1}, "prior_train": {"batch": 64, "tick_kimg": 0.5}}
QUICK_DIGITS = {"model": QUICK_MODEL, "train": {"tick_kimg": 0.5}, "prior_train": {"batch": 64, "tick_kimg": 0.5}}


def processes(D: int) -> dict:
    """{process name: the model overrides}: EDM, and PFGM++ at D."""
    return {"edm": {"process": "edm"}, "pfgmpp": {"process": "pfgmpp", "pfgm_D": D}}


def folder(process: str, D: int) -> str:
    """A process's folder: PFGM++'s names its D, so that runs at another D never meet an existing one."""
    return process if process == "edm" else f"{process}-D{D}"


# ---- toy2d ---------------------------------------------------------------------------------------------------------

def run_toy(out: Path, args, overrides: dict) -> dict:
    """{process: run_toy2d's results} (their `files` left out)."""
    from discodiff.config import merge
    from discodiff.experiments.toy2d import run_toy2d

    res = {}
    for process, model in processes(args.toy_D).items():
        where = out / "toy" / folder(process, args.toy_D)
        log(f"[pfgmpp] toy2d, process {process}" + (f" (D = {args.toy_D})" if process != "edm" else "")
            + f" -> {where}")
        r = run_toy2d(where, kimg=args.toy_kimg, prior_kimg=args.toy_prior_kimg, seed=args.seed, steps=TOY_STEPS,
                      num_eval=args.toy_num, quiet=True, overrides=merge(overrides, {"model": model}))
        res[process] = {k: v for k, v in r.items() if k != "files"}
    return res


def toy_rows(toy: dict) -> dict:
    """{model label: {steps: the three measures}} from run_toy's results."""
    rows = {}
    for process, r in toy.items():
        for name, prefix in (("baseline", ""), ("discodiff", "disco-")):
            rows[prefix + process] = {n: {"off_mode": m["off_mode"], "within_mode_w2": m["within_mode_w2"],
                                          "within_mode_w2_floor": m["within_mode_w2_floor"],
                                          "mean_curvature": m["mean_curvature"]}
                                      for n, m in r["models"][name].items()}
    return rows


def toy_table(rows: dict, D: int, num: int) -> str:
    lines = [f"toy2d (8 Gaussians, N = 2), PFGM++ D = {D}; {num} samples per model and step count",
             f"{'model':<14}{'steps':>6}{'off-mode':>10}{'within-mode W2 (floor)':>25}{'mean curvature':>16}"]
    for n in map(str, TOY_STEPS):
        for key in LABELS:
            m = rows[key][n]
            w2 = f"{m['within_mode_w2']:.4f} ({m['within_mode_w2_floor']:.4f})"
            lines.append(f"{LABELS[key]:<14}{n:>6}{m['off_mode']:>10.4f}{w2:>25}{m['mean_curvature']:>16.2f}")
    return "\n".join(lines)


# ---- digits --------------------------------------------------------------------------------------------------------

def digits_configs(out: Path, args, overrides: dict) -> tuple[dict, object]:
    """({model key: resolved config}, data) of the four digits runs, checked before anything is written."""
    from discodiff.config import merge
    from discodiff.runs import resolve_run

    cfgs, data = {}, None
    for process, model in processes(args.D).items():
        pair = run_overrides("digits", kimg=args.kimg, prior_kimg=args.prior_kimg, seed=args.seed,
                                   overrides=merge(overrides, {"model": model}))
        for name, prefix in (("baseline", ""), ("discodiff", "disco-")):
            key = prefix + folder(process, args.D)
            cfgs[key], data = resolve_run(out / key, preset="digits", overrides=pair[name])
    return cfgs, data


def run_digits(out: Path, args, overrides: dict, dets: dict, seconds: dict) -> tuple[dict, dict]:
    """(what the feature spaces share: budget, parameters, reuse; {space: {"rows", "floor"}})."""
    cfgs, data = digits_configs(out, args, overrides)
    models, reused = train_both(out, cfgs, data, seconds)
    models = {key: (model.to(args.device), None if prior is None else prior.to(args.device))
              for key, (model, prior) in models.items()}
    measured = {space: measure_digits(out, args, models, data, det, seconds) for space, det in dets.items()}
    cfg = cfgs[f"disco-{folder('pfgmpp', args.D)}"]
    return {"reused": reused, "steps": args.steps, "num": args.num,
            "budget": {"kimg_per_model": cfg.train.kimg, "prior_kimg": cfg.prior_train.kimg, "batch": cfg.train.batch},
            "parameters_stage1": {label_key(k): sum(p.numel() for p in m.parameters())
                                  for k, (m, _) in models.items()}}, measured


def measure_digits(out: Path, args, models: dict, data, det, seconds: dict) -> dict:
    """{"rows": {model label: {steps: FID result}}, "floor"} in one feature space (its own reference and cache)."""
    from discodiff.analysis.nfe import quality_vs_steps
    from discodiff.data import to_uint8

    suffix = space_suffix(det)  # "" for Inception: the cache files and timings of before keep their names
    log(f"[pfgmpp] digits FID reference: the {len(data)} training images (features cached in {out})")
    ref, floor, _ = log_timed(seconds, f"fid_reference{suffix}", reference_and_floor, to_uint8(data.x), det, out,
                              args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, models, args.num, f"fid-cache{suffix}.json")
    seeds = list(range(args.seed, args.seed + args.num))
    log(f"[pfgmpp] digits FID at Heun steps {args.steps}, {args.num} samples each")
    nfe = log_timed(seconds, f"fid{suffix}", quality_vs_steps, models, args.steps, seeds, ref, det, sampler="heun",
                    batch=args.batch, progress=True, cache=cache, bootstrap=args.bootstrap)
    return {"rows": {label_key(key): {str(r["steps"]): r for r in nfe["rows"][key]} for key in models},
            "floor": floor}


def label_key(key: str) -> str:
    """A run folder's model key in LABELS ("disco-pfgmpp-D128" -> "disco-pfgmpp")."""
    return key.split("-D")[0]


def digits_table(res: dict, D: int) -> str:
    fl = res["floor"]
    clf = "class_tv" in fl  # the classifier's features: each row's class TV and mean confidence too
    lines = [f"digits (8x8, N = 64), PFGM++ D = {D}; FID ± bootstrap std and KID x 1000 ± std over {res['num']} "
             f"samples, Heun; data floor: {fl['num']} training images score FID {fid_text(fl)}",
             f"{'model':<14}{'steps':>6}{'NFE':>5}{'FID':>18}{'KID x 1000':>16}" + (f"{'TV/conf':>12}" if clf else "")]
    for n in map(str, res["steps"]):
        for key in LABELS:
            r = res["rows"][key][n]
            lines.append(f"{LABELS[key]:<14}{n:>6}{r['nfe']:>5}{fid_text(r):>18} {kid_text(r):>15}"
                         + (f"{balance_text(r):>12}" if clf else ""))
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="where sampling and the FID detector run (default: cuda when there is one)")
    ap.add_argument("--D", type=int, default=128, help="PFGM++'s D on digits (model.pfgm_D)")
    ap.add_argument("--toy-D", type=int, default=None, help="PFGM++'s D on the toy (default: --D)")
    ap.add_argument("--num", type=int, default=2000, help="samples per FID on digits")
    ap.add_argument("--toy-num", type=int, default=4000, help="samples per model and step count on the toy")
    ap.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for each FID's std")
    ap.add_argument("--steps", default=DIGITS_STEPS, help="Heun step counts on digits, comma-separated")
    ap.add_argument("--kimg", type=float, default=None, help="digits stage-I kimg per model (default: the preset's)")
    ap.add_argument("--prior-kimg", type=float, default=None, help="digits stage-II kimg (default: the preset's)")
    ap.add_argument("--toy-kimg", type=float, default=None, help="toy stage-I kimg per model (default: the preset's)")
    ap.add_argument("--toy-prior-kimg", type=float, default=None, help="toy stage-II kimg (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0, help="training seed and first sampling seed")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--toy-only", action="store_true", help="the toy alone")
    only.add_argument("--digits-only", action="store_true", help="digits alone")
    ap.add_argument("--bf16", action="store_true", help="train with bf16 autocast on the GPU (default: float32)")
    ap.add_argument("--quick", action="store_true", help="tiny networks, budgets and sample counts: a smoke check")
    add_features_option(ap)
    add_run_options(ap, batch=256, batch_help="samples per batch on digits",
                    results="benchmarks/results/pfgmpp.json (with --features classifier: pfgmpp-classifier.json)")
    args = ap.parse_args(argv)
    if args.device == "cpu":  # before torch is imported: training goes to the GPU whenever it sees one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.num < 2:
        ap.error("--num must be at least 2")

    import torch

    from discodiff.cli.options import parse_list
    from discodiff.config import merge, preset_config
    from discodiff.errors import ConfigError
    from discodiff.fileio import check_writable

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no GPU is visible")
    args.toy_D = args.D if args.toy_D is None else args.toy_D
    overrides = {"train": {"bf16": args.bf16}}
    toy_overrides, digits_overrides = overrides, overrides
    if args.quick:
        args.num, args.toy_num, args.bootstrap = min(args.num, 64), min(args.toy_num, 200), 0
        args.kimg, args.prior_kimg = args.kimg or 1, args.prior_kimg or 0.5
        args.toy_kimg, args.toy_prior_kimg = args.toy_kimg or 1, args.toy_prior_kimg or 0.5
        toy_overrides, digits_overrides = merge(overrides, QUICK_TOY), merge(overrides, QUICK_DIGITS)
    torch.set_num_threads(args.threads)
    tag = "pfgmpp-quick" if args.quick else "pfgmpp"
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-{tag}"
    suffix = "" if args.toy_only else features_suffix(args.features)  # (the toy has no FID)
    path = args.results or (out / f"pfgmpp-quick{suffix}.json" if args.quick
                            else REPORT.with_name(f"pfgmpp{suffix}.json"))
    start, seconds, report = time.perf_counter(), {}, {}
    tables = []
    try:
        args.steps = parse_list(args.steps, int, "--steps")
        if min(args.steps) < 1 or min(args.D, args.toy_D) < 1:
            raise ConfigError("--steps and --D must be positive")
        check_writable(out, folder=True)
        check_writable(path)
        # the digits' detectors before any training (data without labels would be refused here for the classifier)
        digits_data = preset_config("digits", digits_overrides).data
        dets = {} if args.toy_only else feature_detectors(args.features, digits_data, detector=args.detector,
                                                          device=args.device)
        log(f"pfgmpp benchmark: D = {args.D} (toy: {args.toy_D}), device {args.device}, {args.threads} threads"
            f"{', quick' if args.quick else ''}" + (f", digits features {' and '.join(dets)}" if dets else "")
            + f"; runs in {out}")
        if not args.digits_only:
            t0 = time.perf_counter()
            toy = run_toy(out, args, toy_overrides)
            seconds["toy"] = round(time.perf_counter() - t0, 1)
            rows = toy_rows(toy)
            tables.append(toy_table(rows, args.toy_D, args.toy_num))
            report["toy"] = {"D": args.toy_D, "num": args.toy_num, "steps": list(TOY_STEPS), "rows": rows,
                             "runs": toy}
            log("\n" + tables[-1] + "\n")
        if not args.toy_only:
            t0 = time.perf_counter()
            digits_out = out / "digits"
            check_writable(digits_out, folder=True)
            shared, measured = run_digits(digits_out, args, digits_overrides, dets, seconds)
            seconds["digits"] = round(time.perf_counter() - t0, 1)
            digits_tables = {space: digits_table({**shared, **m}, args.D) for space, m in measured.items()}
            tables.append(join_tables(digits_tables))
            first = next(iter(dets.values()))
            report["digits"] = {"D": args.D, "detector_backend": first.backend, "bootstrap": args.bootstrap,
                                "features": list(dets), **measured[next(iter(measured))], **shared,
                                **second_space(measured, digits_tables)}
            log("\n" + tables[-1] + "\n")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = round(time.perf_counter() - start, 1)
    seconds["total"] = wall
    log("seconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items() if v is not None))
    report = {"quick": args.quick, "wall_s": wall,
              "seconds": seconds, "seed": args.seed, "device": args.device, "bf16": args.bf16,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": args.threads,
                          "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
              "table": "\n\n".join(tables), **report, "out": str(out)}
    write_report(report, path)
    log(f"wrote {path}; runs and caches in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
