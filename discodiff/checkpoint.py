"""Checkpoint files: safetensors weights, optimizer state as tensors + JSON, resumable training states.

Nothing is ever unpickled. Every file is written to a temporary name and moved into place, so a crash never leaves
a torn checkpoint. What a run folder holds, and the rules of a run, are in runs.py.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .fileio import OutputError, atomic_path, describe_os_error
from .errors import CheckpointError  # noqa: F401

CONFIG = "config.json"
MODEL = "model.safetensors"
PRIOR = "prior.safetensors"
STATE_DIR = "state"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when it has none or cannot be read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors file; anything else (a pickle, a torn file) is refused without being executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))  # safetensors only parses a JSON header and raw bytes: nothing is executed
    except (SafetensorError, OSError, ValueError) as e:
        why = f"not a valid safetensors file ({e})"
    # Sniffed only after the parse failed: a valid file starts with its header's length, whose first byte can be
    # 0x80 too (one file in 256), so these bytes alone do not tell a pickle from safetensors.
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # pickle protocol marker / torch.save zip archive
        why = "a pickle or torch.save file, not safetensors; refusing to load it"
    raise CheckpointError(f"{path} is {why}")


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    own = module.state_dict()
    missing, unexpected = set(own) - set(tensors), set(tensors) - set(own)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match this model's configuration "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict(tensors, strict=True)


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


# ---- optimizer state as tensors + JSON (no pickle) -------------------------------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{key}"] = v
            else:
                scalars[f"{pid}.{key}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---- resumable training state -------------------------------------------------------------------------

def save_training_state(run_dir: Path, stage: str, nimg: int, tensors: dict[str, torch.Tensor], meta: dict,
                        keep: int = 2) -> Path:
    """Writes R/state/<stage>-<nimg>/ atomically (built in a temporary folder, then renamed); keeps the newest `keep`."""
    root = Path(run_dir) / STATE_DIR
    final = root / f"{stage}-{nimg:012d}"
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=root))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"nimg": nimg, **meta}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(describe_os_error(e, final)) from None
    for old in sorted(root.glob(f"{stage}-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class TrainingState:
    tensors: dict[str, torch.Tensor]
    meta: dict
    path: Path
    skipped: list[str] = field(default_factory=list)  # newer states that could not be read, with the reason

    @property
    def nimg(self) -> int:
        return int(self.meta["nimg"])


def _state_dirs(run_dir: Path, stage: str) -> list[Path]:
    """The complete states of `stage`, newest first (a state folder appears only once complete)."""
    return sorted((Path(run_dir) / STATE_DIR).glob(f"{stage}-*"), reverse=True)


def _read_state(d: Path) -> TrainingState:
    try:
        meta = json.loads((d / "state.json").read_text())
        int(meta["nimg"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{d / 'state.json'}: {e}") from None
    return TrainingState(load_tensors(d / "weights.safetensors"), meta, d)


def latest_training_state(run_dir: Path, stage: str) -> TrainingState | None:
    """The newest readable state of `stage`, or None when there is none. An unreadable newer state (a torn disk
    write, a corrupt file) is passed over for the older one kept for exactly this; `skipped` says which and why."""
    skipped = []
    dirs = _state_dirs(run_dir, stage)
    for d in dirs:
        try:
            state = _read_state(d)
        except CheckpointError as e:
            skipped.append(f"{d.name} is unreadable ({e})")
            continue
        state.skipped = skipped
        return state
    if skipped:
        raise CheckpointError(f"no readable training state in {Path(run_dir) / STATE_DIR}: " + "; ".join(skipped))
    return None


def discard_training_states(run_dir: Path, stage: str) -> None:
    for d in _state_dirs(run_dir, stage):
        shutil.rmtree(d, ignore_errors=True)


def newest_training_state_nimg(run_dir: Path, stage: str) -> int:
    """Images seen by the newest training state of `stage` (0 when there is none), read from its state.json."""
    for d in _state_dirs(run_dir, stage):
        try:
            return int(json.loads((d / "state.json").read_text())["nimg"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0
