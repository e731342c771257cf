"""A user's data (`--data`): a folder or .zip of images with an optional dataset.json, or a .npz as `sample`
writes it. A dataset name in place of the path (`--data mnist`) loads that built-in dataset. A folder or zip is
decoded once into a memory-mapped uint8 cache (cache.py); a .npz is read into memory as uint8."""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from . import ArrayDataset, DataError, load_dataset, register
from .cache import cached_pixels
from .common import finish, image_dataset, import_optional, one_line, open_image, options, take

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABELS_FILE = "dataset.json"
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
    o = options(cfg)
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
            raise DataError(f"cannot read {self.where(name)}: {one_line(e)}") from None

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
            raise DataError(f"cannot open {path} as a zip file: {one_line(e)}") from None
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
            raise DataError(f"cannot read {self.where(name)}: {one_line(e)}") from None

    def labels_text(self) -> str | None:
        return self.read(LABELS_FILE).decode("utf-8", "replace") if LABELS_FILE in self.members else None


def _load_image_files(source: _Source, o: dict, name: str) -> ArrayDataset:
    import_optional("PIL.Image", "loading a folder or zip of images")
    names = source.names
    if not names:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source.origin}")
    if o["max_images"] is not None:
        names = names[: o["max_images"]]
    labels = _read_labels(source, names) if o["use_labels"] else None
    files = [source.root / n for n in source.names] if isinstance(source, _FolderSource) else None
    pixels = cached_pixels(source.origin, files, len(names), f"{len(names)} images from {source.origin}",
                           lambda alloc: _decode_all(source, names, alloc))
    return finish(None, labels, o, name, 0, pixels=torch.from_numpy(pixels))


def _decode_all(source: _Source, names: list[str], alloc) -> np.ndarray:
    """Decodes every image into uint8 [N, C, H, W] from `alloc(shape)`, in order. A colour dataset with some grey
    images (e.g. a few scans) is treated as colour throughout: grey so far and then colour widens the array."""
    out, first = None, None
    for i, (n, size, a) in enumerate(_decoded(source, names)):
        if first is None:
            first = (n, size)
            out = alloc((len(names), a.shape[2], size[1], size[0]))
        elif size != first[1]:
            (w0, h0), (w, h) = first[1], size
            raise DataError(f"{source.where(n)} is {w}x{h} but {source.where(first[0])} is {w0}x{h0}; "
                            f"all images must have the same size")
        if a.shape[2] > out.shape[1]:
            wider = alloc((out.shape[0], a.shape[2], *out.shape[2:]))
            for j in range(0, i, 4096):
                wider[j:min(j + 4096, i)] = out[j:min(j + 4096, i)]  # grey repeated into every channel
            out = wider
        out[i] = a.transpose(2, 0, 1)  # (a grey image in a colour set broadcasts to every channel)
    return out


def _decoded(source: _Source, names: list[str]):
    """(name, (width, height), uint8 [H, W, C]) for each name, in order, decoded by a few threads (Pillow's
    decoders release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(n):
        im = open_image(source.read(n), source.where(n))
        return n, im.size, _pixels(im, source.where(n))

    workers = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    if workers == 1 or len(names) < 64:
        yield from map(one, names)
        return
    with ThreadPoolExecutor(workers) as ex:
        window = workers * 64
        for s in range(0, len(names), window):
            yield from ex.map(one, names[s:s + window])


def _read_labels(source: _Source, names: list[str]) -> np.ndarray | None:
    """Labels from dataset.json in EDM's dataset_tool layout, or None where there is none or it says null."""
    text = source.labels_text()
    if text is None:
        return None
    where = source.where(LABELS_FILE)
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where} is not valid JSON: {one_line(e)}") from None
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
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
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
    x = take(x, o)
    if x.shape[3] in (2, 4):
        x = composite_on_white(x)
    return image_dataset(x, labels, o, path.name)
