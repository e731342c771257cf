"""Writing files so that a kill, a full disk or a read-only folder never leaves a torn or half-written file.

Every writer goes through `atomic_path`: the content is written to a temporary name beside the target and moved
into place only once complete; on any failure the temporary file is removed and the error becomes one line that
names the path (`OutputError`, shown by the CLI without a traceback).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import ConfigError, OutputError


def describe_os_error(e: OSError, path) -> str:
    reason = e.strerror or str(e)
    return f"cannot write {path}: {reason}"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise OutputError(describe_os_error(e, path)) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj, path) -> None:
    """`obj` as indented JSON, atomically; missing parent folders are created."""
    path = Path(path)
    ensure_parent(path)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def ensure_parent(path) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(describe_os_error(e, Path(path).parent)) from None


def check_writable(path, *, folder: bool = False) -> Path:
    """Fails now, with one line, if `path` (a file, or a folder with `folder=True`) cannot be written, so that a
    long job does not find out at its end. Creates the folder (or the file's parent folder) if needed."""
    path = Path(path)
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(describe_os_error(e, path)) from None
    return path


class NpzStreamWriter:
    """Writes an .npz of known array shapes batch by batch, in bounded memory: each array is filled on disk (a
    .npy memory map in a temporary folder beside the target), and `close` packs them into the .npz atomically,
    exactly as `numpy.savez` lays it out. On any failure nothing is left behind."""

    def __init__(self, path, arrays: dict):
        """`arrays`: name -> (shape, dtype)."""
        import numpy as np

        self.path = Path(path)
        ensure_parent(self.path)
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            self.arrays = {name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype,
                                                           shape=tuple(shape))
                           for name, (shape, dtype) in arrays.items()}
        except OSError as e:
            self.abort()
            raise OutputError(describe_os_error(e, self.path)) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        import zipfile
        try:
            for a in self.arrays.values():
                a.flush()
            with atomic_path(self.path) as tmp:
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name in self.arrays:
                        zf.write(self.folder / f"{name}.npy", arcname=f"{name}.npy")
        finally:
            self.abort()

    def abort(self) -> None:
        import shutil
        self.arrays = {}
        if getattr(self, "folder", None) is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
