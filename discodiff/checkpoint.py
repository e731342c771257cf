"""Run directories: config.json + safetensors weights, and resumable training state. Nothing is ever unpickled.

Layout of a run directory R:
    R/config.json              the full RunConfig
    R/model.safetensors        EMA weights of the denoiser and encoder (stage I), written at every snapshot
    R/prior.safetensors        EMA weights of the prior (stage II)
    R/state/stage1-<nimg>/     resumable stage-I state: weights.safetensors + state.json
    R/state/prior-<nimg>/      resumable stage-II state
    R/stats.jsonl, R/log.txt   training statistics and the human log
Every file is written to a temporary name and moved into place, so a crash never leaves a torn checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, RunConfig

CONFIG = "config.json"
MODEL = "model.safetensors"
PRIOR = "prior.safetensors"
STATE_DIR = "state"


class CheckpointError(ConfigError):
    """A run directory or checkpoint that cannot be used."""


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors file; anything else (a pickle, a torn file) is refused without being executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # pickle protocol marker / torch.save zip archive
        raise CheckpointError(f"{path} is a pickle or torch.save file, not safetensors; refusing to load it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None


def write_json(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def load_run_config(run_dir: Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist; create one with `discodiff train`")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a discodiff run directory (no {CONFIG})")
    return RunConfig.load(run_dir / CONFIG)


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
    """Writes R/state/<stage>-<nimg>/ atomically (built in a temporary folder, then renamed)."""
    root = Path(run_dir) / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{stage}-{nimg:012d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=root))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"nimg": nimg, **meta}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{stage}-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_training_state(run_dir: Path, stage: str):
    """(tensors, meta) of the newest complete state of `stage`, or None."""
    root = Path(run_dir) / STATE_DIR
    for d in sorted(root.glob(f"{stage}-*"), reverse=True):
        if (d / "state.json").is_file() and (d / "weights.safetensors").is_file():
            try:
                meta = json.loads((d / "state.json").read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"corrupt training state {d / 'state.json'}: {e}") from None
            return load_tensors(d / "weights.safetensors"), meta
    return None


def load_model(run_dir: Path, *, need_prior: bool = False, device="cpu"):
    """(RunConfig, DiscoDiff in eval mode) from a run directory, with its stage-I EMA weights and, if trained, its prior."""
    from .model import DiscoDiff

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not (run_dir / MODEL).is_file():
        raise CheckpointError(f"{run_dir} has no trained model yet; run `discodiff train --run-dir {run_dir}` first")
    model = DiscoDiff(cfg.model)
    tensors = load_tensors(run_dir / MODEL)
    own = {k for k in model.state_dict() if not k.startswith("prior.")}
    if set(tensors) != own:
        raise CheckpointError(f"{run_dir / MODEL} does not match {run_dir / CONFIG}")
    model.load_state_dict(tensors, strict=False)
    if model.prior is not None:
        if (run_dir / PRIOR).is_file():
            load_state_into(model.prior, load_tensors(run_dir / PRIOR), run_dir / PRIOR)
        elif need_prior:
            raise CheckpointError(f"{run_dir} has no trained prior yet; run `discodiff train-prior --run-dir {run_dir}` "
                                  f"(or pass latents explicitly)")
        else:
            model.prior = None
    return cfg, model.to(device).eval()
