"""Noto Color Emoji: 3,926 colour 136x128 RGBA bitmaps in the font's CBDT table; a small CIFAR-like RGB set."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from . import ArrayDataset, DataError, register
from .common import image_dataset, import_optional, needs, one_line, open_image, options

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


@register("emoji")
def load_emoji(cfg: DataConfig) -> ArrayDataset:
    o = options(cfg, {"resolution": 32})
    res = o["resolution"]
    if isinstance(res, bool) or not isinstance(res, int) or not 4 <= res <= 512:
        raise DataError(f"option resolution must be an integer between 4 and 512, got {res!r}")
    font_path = Path(cfg.path).expanduser() if cfg.path else EMOJI_FONT
    if not font_path.is_file():
        hint = "" if cfg.path else "; " + needs("the emoji dataset", "fonts-noto-color-emoji")
        raise DataError(f"{font_path} not found{hint}")
    ttlib = import_optional("fontTools.ttLib", "the emoji dataset")
    import_optional("PIL.Image", "the emoji dataset")
    try:
        font = ttlib.TTFont(str(font_path))
        has_bitmaps = "CBDT" in font
    except Exception as e:  # fontTools raises a variety of types on a damaged file
        raise DataError(f"cannot read the font {font_path}: {one_line(e)}") from None
    with font:  # TTFont keeps the file open until closed
        if not has_bitmaps:
            raise DataError(f"{font_path} has no colour bitmaps (CBDT table)")
        strike = font["CBDT"].strikeData[0]
        names = sorted(strike, key=font.getGlyphID)  # glyph order: stable, and keeps related emoji together
        if o["max_images"] is not None:
            names = names[: o["max_images"]]
        pixels = np.stack([_emoji_pixels(strike[n].imageData, res, f"{font_path}:{n}") for n in names])
    return image_dataset(pixels, None, o, "emoji", 0)


def _emoji_pixels(png: bytes, res: int, where: str) -> np.ndarray:
    """Composite on white, pad to a square (the bitmaps are 136x128) and shrink; compositing first keeps the
    transparent pixels' arbitrary colours out of the filter."""
    from PIL import Image

    im = open_image(png, where).convert("RGBA")
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, dest=((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas.convert("RGB").resize((res, res), Image.Resampling.LANCZOS))
