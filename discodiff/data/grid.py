"""A PNG contact sheet of uint8 images, for looking at samples and datasets."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def write_image_grid(images: np.ndarray, path, nrow: int | None = None, *, padding: int = 2,
                     min_cell: int = 32, pad_value: int = 128) -> Path:
    """Write uint8 images [N, H, W, C] (C = 1, 3 or 4; [N, H, W] is grey) as one PNG grid of `nrow` images per row
    (default: a near-square grid). Images smaller than `min_cell` pixels are enlarged by an integer factor with
    nearest-neighbour sampling, so 8x8 digits stay crisp instead of turning into a blur. The padding is a mid grey
    so that it stands out from both black (MNIST) and white (emoji) backgrounds. Returns the path written."""
    from PIL import Image

    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] not in (1, 3, 4) or a.shape[0] == 0:
        raise ValueError(f"expected uint8 images [N, H, W, C] with C in 1, 3, 4; got {a.dtype} {list(a.shape)}")
    n, h, w, c = a.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    scale = max(1, math.ceil(min_cell / min(h, w)))
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    rows = math.ceil(n / nrow)
    sheet = np.full((padding + rows * (h + padding), padding + nrow * (w + padding), c), pad_value, np.uint8)
    if c == 4:
        sheet[..., 3] = 255  # opaque padding
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        sheet[top:top + h, left:left + w] = a[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet[..., 0] if c == 1 else sheet).save(path)  # mode follows the shape: L, RGB, RGBA
    return path
