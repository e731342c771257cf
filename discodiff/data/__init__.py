"""Datasets. Each loader returns an `ArrayDataset`: vectors as one float tensor in model space, images as uint8
pixels (in memory, or memory-mapped from the decode cache, cache.py) that become model space a batch at a time
on the training device (`ArrayDataset.reader`)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError  # noqa: F401


class ArrayDataset:
    """A dataset held whole. Give `x`, float [N, ...] in model space (vectors, or images already in [-1, 1]), or
    `pixels`, uint8 images [N, C, H, W] (e.g. a memory-mapped cache), which map to [-1, 1] as x / 127.5 - 1.
    `labels`: int64 [N] or None. `xflip`: training mirrors each drawn image left-right with probability 1/2.

    `x` is always the model-space float32 tensor; for uint8 pixels it is made on first use and kept (analyses and
    FID use it on small sets). Training does not touch it: `reader(device)` converts each batch on the device."""

    def __init__(self, x: torch.Tensor | None = None, labels: torch.Tensor | None = None, num_classes: int = 0,
                 kind: str = "vector", name: str = "", *, pixels: torch.Tensor | None = None, xflip: bool = False):
        if (x is None) == (pixels is None):
            raise ValueError("ArrayDataset takes x (model space) or pixels (uint8 images), one of them")
        if pixels is not None and (pixels.dtype != torch.uint8 or pixels.ndim != 4):
            raise ValueError(f"pixels must be uint8 [N, C, H, W], got {pixels.dtype} {list(pixels.shape)}")
        self._x, self.pixels = x, pixels
        self.labels, self.num_classes, self.name, self.xflip = labels, num_classes, name, bool(xflip)
        self.kind = "image" if pixels is not None else kind
        stored = self.stored
        if stored.ndim < 2 or stored.shape[0] == 0:
            raise DataError(f"dataset {self.name!r} is empty or has no feature axis (shape {tuple(stored.shape)})")
        bad = None if x is None else _first_nonfinite_row(x)  # (uint8 pixels are always finite)
        if bad is not None:
            raise DataError(f"dataset {self.name!r} contains NaN or infinite values (first at row {bad})")
        if self.labels is not None and self.num_classes <= 0:
            self.num_classes = int(self.labels.max()) + 1

    @property
    def stored(self) -> torch.Tensor:
        """What the dataset holds: the uint8 pixels of an image set, else x."""
        return self.pixels if self.pixels is not None else self._x

    @property
    def x(self) -> torch.Tensor:
        """The whole dataset in model space, float32 (images in [-1, 1]); made from the pixels on first use."""
        if self._x is None:
            self._x = to_model(self.pixels)
        return self._x

    def __len__(self) -> int:
        return self.stored.shape[0]

    @property
    def shape(self) -> list[int]:
        return list(self.stored.shape[1:])

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples to what `sample` writes: float32 [N, D] vectors or uint8 [N, H, W, C] images."""
        return to_output(x, self.kind)

    def reader(self, device, *, labels: bool = True, max_device_fraction: float = 0.15) -> "BatchReader":
        """Batches of this dataset on `device` (see BatchReader)."""
        return BatchReader(self, torch.device(device), labels=labels, max_device_fraction=max_device_fraction)


def _first_nonfinite_row(x: torch.Tensor, rows_per_chunk: int = 4096) -> int | None:
    """The first row of x holding a NaN or an infinity, or None; in chunks, so that the check's temporaries stay
    small (isfinite makes a float copy and a mask of what it checks)."""
    for i in range(0, x.shape[0], rows_per_chunk):
        finite = torch.isfinite(x[i:i + rows_per_chunk].flatten(1)).all(1)
        if not finite.all():
            return i + int((~finite).nonzero()[0])
    return None


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 model space [-1, 1] on the same device: x / 127.5 - 1, the exact inverse of
    `to_uint8` on the 256 levels."""
    return pixels.float().div_(127.5).sub_(1.0)


class BatchReader:
    """Rows of a dataset, by index, as float32 model space on `device`.

    Vectors are moved to the device whole. uint8 images go to a GPU whole, as uint8, when they take at most
    `max_device_fraction` of its memory (4x less than float32: ImageNet-64's 15.7 GB go on a 141 GB H200 but not
    on an 80 GB GPU, whose memory the paper's model needs for activations); otherwise they stay in host memory (or
    the memory-mapped cache) and each batch's rows are gathered there, pinned and copied. The environment variable
    DISCODIFF_DATA_ON_DEVICE=1 (or 0) overrides that choice when the fraction is not 0. On a CPU they stay where
    they are (a memory map is read a batch at a time). Either way the conversion to [-1, 1]
    happens per batch, on the device, and gives the same floats as `ArrayDataset.x`."""

    def __init__(self, data: ArrayDataset, device: torch.device, *, labels: bool = True,
                 max_device_fraction: float = 0.15):
        self.data, self.device, self.xflip = data, device, data.xflip and data.kind == "image"
        self.is_images = data.pixels is not None
        self.on_host = False
        if not self.is_images:
            self.store = data.x.to(device)
        elif device.type == "cpu":
            self.store = data.pixels
        else:
            size = data.pixels.numel()
            total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else float("inf")
            self.on_host = size > max_device_fraction * total
            force = os.environ.get("DISCODIFF_DATA_ON_DEVICE", "").strip().lower()
            if max_device_fraction > 0 and force in ("0", "1", "true", "false", "yes", "no"):
                self.on_host = force in ("0", "false", "no")
            self.store = data.pixels if self.on_host else data.pixels.to(device)
        self.label_store = data.labels.to(device) if (labels and data.labels is not None) else None

    def images(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 rows `idx` in model space on the device; with xflip, each mirrored with probability 1/2 by a
        draw from `generator` (only then: without xflip the generator is left as it was)."""
        if self.on_host:
            rows = self.store[idx.cpu()]
            rows = rows.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else \
                rows.to(self.device)
        else:
            rows = self.store[idx]
        y = to_model(rows) if self.is_images else rows
        if self.xflip:
            flip = torch.rand(len(y), generator=generator, device=y.device) < 0.5
            y = torch.where(flip.view(-1, *[1] * (y.ndim - 1)), y.flip(-1), y)
        return y

    def labels(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.label_store is None else self.label_store[idx.to(self.label_store.device)]

    def whole(self) -> torch.Tensor:
        """The whole dataset in model space on the device (for data-dependent initialisations that need it all,
        e.g. the k-means encoder): float32, so 4 bytes a pixel; avoid at scale."""
        return self.data.x.to(self.device)

    def batches(self, batch: int):
        """(start, float32 model-space batch) over the whole dataset in order, without xflip."""
        flip, self.xflip = self.xflip, False
        try:
            for i in range(0, len(self.data), batch):
                idx = torch.arange(i, min(i + batch, len(self.data)),
                                   device="cpu" if self.on_host else self.store.device)
                yield i, self.images(idx)
        finally:
            self.xflip = flip


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] (e.g. [N, C, H, W]) to uint8 of the same shape on x's device, exactly as
    `discodiff sample` writes them: ((x + 1) * 127.5) rounded, the exact inverse of the loaders' uint8 scaling."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_output(x: torch.Tensor, kind: str) -> np.ndarray:
    if kind == "image":
        return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
    return x.float().cpu().numpy().astype(np.float32)


LOADERS: dict[str, Callable[[DataConfig], ArrayDataset]] = {}


def register(name: str):
    def deco(fn):
        LOADERS[name] = fn
        return fn
    return deco


def load_dataset(cfg: DataConfig) -> ArrayDataset:
    if cfg.name not in LOADERS:
        raise DataError(f"unknown dataset {cfg.name!r}; choose from: {', '.join(sorted(LOADERS))}")
    return LOADERS[cfg.name](cfg)


from . import digits, mnist, emoji, files, toy, dock3d  # noqa: E402,F401  (registers the built-in loaders, in this order)
