"""Datasets. Each loader returns an `ArrayDataset`: the whole dataset as one tensor in model space."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError  # noqa: F401


@dataclass
class ArrayDataset:
    """`x`: float32 [N, *shape] in model space (images in [-1, 1], vectors as they are); `labels`: int64 [N] or None."""

    x: torch.Tensor
    labels: torch.Tensor | None = None
    num_classes: int = 0
    kind: str = "vector"  # "vector" or "image"
    name: str = ""

    def __post_init__(self):
        if self.x.ndim < 2 or self.x.shape[0] == 0:
            raise DataError(f"dataset {self.name!r} is empty or has no feature axis (shape {tuple(self.x.shape)})")
        if not torch.isfinite(self.x).all():
            bad = int((~torch.isfinite(self.x.flatten(1))).any(1).nonzero()[0])
            raise DataError(f"dataset {self.name!r} contains NaN or infinite values (first at row {bad})")
        if self.labels is not None and self.num_classes <= 0:
            self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> list[int]:
        return list(self.x.shape[1:])

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples to what `sample` writes: float32 [N, D] vectors or uint8 [N, H, W, C] images."""
        return to_output(x, self.kind)


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


from . import digits, mnist, emoji, files, toy  # noqa: E402,F401  (registers the built-in loaders, in this order)
