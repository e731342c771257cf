"""The decode cache: a folder or zip of images is decoded once into a uint8 .npy [N, C, H, W] that every later load
(and every process on the machine) memory-maps instead of decoding again.

Where: $DISCODIFF_CACHE_DIR (or `discodiff train --cache-dir`) when set, else a `.discodiff-cache` folder next to
the data, else ~/.cache/discodiff when that folder cannot be written; DISCODIFF_CACHE_DIR=off decodes into memory
every time. The file's name is a hash of the source's resolved path, size and modification time (for a folder, of
every image file's), the number of images used and the cache format, so a changed source gets a new file; old
files are never deleted automatically.

Under torchrun, local rank 0 decodes into a temporary file and renames it into place (atomic); the other ranks
wait for the file (or for rank 0's failure note, whose message they raise too). The load happens before the
process group exists, so the wait is on the file system, not on a barrier. Processes on other machines that share
the folder may decode too; their renames replace one identical file by another.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import DataError

CACHE_ENV = "DISCODIFF_CACHE_DIR"
FOLDER_NAME = ".discodiff-cache"
FORMAT = 1  # bump when the cached layout or the decoding changes

Alloc = Callable[[tuple], np.ndarray]


def cache_root(origin: Path) -> list[Path]:
    """The folders to try, in order; [] when caching is off."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "none", "0", "false"):
        return []
    if env:
        return [Path(env).expanduser()]
    return [origin.resolve().parent / FOLDER_NAME, Path.home() / ".cache" / "discodiff"]


def source_key(origin: Path, files: list[Path] | None, count: int) -> str:
    """A hash of what decides the decoded pixels: the source's path, size and mtime (each file's, for a folder),
    the number of images used and the cache format."""
    origin = origin.resolve()
    h = hashlib.sha256(json.dumps({"format": FORMAT, "path": str(origin), "count": count}).encode())
    for f in ([origin] if files is None else files):
        st = f.stat()
        h.update(f"{f.relative_to(origin) if files is not None else ''}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _is_writer() -> bool:
    """Local rank 0 under torchrun (one writer per machine); a plain process always."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def cached_pixels(origin: Path, files: list[Path] | None, count: int, label: str,
                  build: Callable[[Alloc], np.ndarray]) -> np.ndarray:
    """uint8 [N, C, H, W]: memory-mapped from the cache, built there first by `build(alloc)` when missing.

    `build` decodes the images into arrays it asks `alloc(shape)` for (it may ask again for a wider one, e.g.
    colour after grey, and copy over); it returns the array it filled. Without a usable cache folder, `alloc` is
    np.empty and the pixels stay in memory."""
    roots = [r for r in cache_root(origin)]
    key = source_key(origin, files, count) if roots else None
    for root in roots:
        final = root / f"{origin.name}-{key}.npy"
        if final.is_file():
            return _open(final)
        if _writable(root):
            return _write_or_wait(final, label, build)
    return build(lambda shape: np.empty(shape, np.uint8))


def _open(path: Path) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="c")  # copy-on-write: writable in this process, the file never changes
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the decode cache {path} ({e}); delete it to decode again") from None
    if a.dtype != np.uint8 or a.ndim != 4:
        raise DataError(f"the decode cache {path} holds {a.dtype} {list(a.shape)}, not uint8 images; delete it")
    return a


def _failure_note(final: Path) -> Path:
    return final.with_name(final.name + ".failed")


def _write_or_wait(final: Path, label: str, build: Callable[[Alloc], np.ndarray]) -> np.ndarray:
    if not _is_writer():
        return _wait_for(final, label)
    note = _failure_note(final)
    note.unlink(missing_ok=True)
    stem = f".{final.name}.{socket.gethostname()}.{os.getpid()}"
    temps: list[Path] = []

    def alloc(shape: tuple) -> np.ndarray:
        tmp = final.with_name(f"{stem}.{len(temps)}.tmp")
        temps.append(tmp)
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))

    print(f"decoding {label} once into the cache {final}", file=sys.stderr, flush=True)
    try:
        out = build(alloc)
        out.flush()
        used = Path(out.filename)
        del out
        os.replace(used, final)
    except BaseException as e:
        if isinstance(e, DataError):
            note.write_text(str(e))
        elif not isinstance(e, KeyboardInterrupt):
            note.write_text(f"local rank 0 failed to decode {label}: {type(e).__name__}: {e}")
        raise
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return _open(final)


def _wait_for(final: Path, label: str, poll: float = 0.5) -> np.ndarray:
    """Another process (local rank 0) is decoding: wait for its file, or raise its failure."""
    start, said = time.time(), False
    note = _failure_note(final)
    while True:
        if final.is_file():
            return _open(final)
        try:
            if note.stat().st_mtime >= start - 5:  # an older note belongs to an earlier attempt
                raise DataError(note.read_text().strip() or f"local rank 0 failed to decode {label}")
        except FileNotFoundError:
            pass
        if not said and time.time() - start > 10:
            print(f"waiting for local rank 0 to decode {label} into {final}", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll)
