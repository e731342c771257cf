"""The skeleton that both training stages run (fine-tuning is stage I started from other weights):

- `locked(run)`: one training process per run folder at a time (rank 0 holds the lock);
- `restore` and `save_state`: a resumable state of named parts (model, EMA, prior), the optimizer and, for a
  trainer that draws from running generators, their states;
- `Ticks`: the images seen, in steps of one batch, with a tick every tick_kimg (the status line, the stats row and
  the saves happen there) and the progress bar.
What differs between the stages, the step itself and what a tick writes, stays in stage1.py and prior.py.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .. import dist
from ..checkpoint import (load_state_into, optimizer_from_flat, optimizer_to_flat, prefixed, save_training_state,
                          with_prefix)
from ..errors import CheckpointError
from .common import Timer, progress_bar


@contextlib.contextmanager
def locked(run):
    """Holds the run folder's lock on rank 0 while the body trains (see runs.run_lock)."""
    with run.lock() if dist.is_main() else contextlib.nullcontext():
        yield


def restore(state, parts: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
            generators: dict[str, torch.Generator] | None = None) -> int:
    """Loads a training state (checkpoint.latest_training_state) into the named parts, the optimizer and the named
    generators (for a trainer that draws from one running generator rather than `step_generator`); returns the
    images it had seen."""
    for name, module in parts.items():
        load_state_into(module, prefixed(state.tensors, f"{name}."), state.path)
    optimizer_from_flat(opt, prefixed(state.tensors, "optim."), state.meta["optimizer"])
    for name, gen in (generators or {}).items():
        key = f"generator.{name}"
        if key not in state.tensors:
            raise CheckpointError(f"{state.path}: the training state has no {key}")
        gen.set_state(state.tensors[key])
    return state.nimg


def save_state(run_dir: Path, stage: str, nimg: int, parts: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               meta: dict | None = None, generators: dict[str, torch.Generator] | None = None) -> None:
    """Writes the resumable state of the named parts, the optimizer and the named generators (what `restore`
    reads), with `meta`."""
    optim_tensors, optim_meta = optimizer_to_flat(opt)
    tensors = {k: v for name, module in parts.items() for k, v in with_prefix(module.state_dict(), f"{name}.").items()}
    tensors.update({f"generator.{name}": gen.get_state() for name, gen in (generators or {}).items()})
    save_training_state(run_dir, stage, nimg, {**tensors, **with_prefix(optim_tensors, "optim.")},
                        {"optimizer": optim_meta, **(meta or {})})


class Ticks:
    """The images seen, from `start` to `total` in steps of `batch`, and the ticks every `tick_kimg` thousand of
    them (and at the end), with a progress bar on a terminal."""

    def __init__(self, desc: str, start: int, total: int, batch: int, tick_kimg: float):
        self.nimg, self.total, self.batch = start, total, batch
        self.tick_nimg = max(int(tick_kimg * 1000), 1)
        self.index = start // self.tick_nimg
        self.timer, self.bar = Timer(), progress_bar(total, min(start, total), desc)
        self.tick_start = start

    def running(self) -> bool:
        return self.nimg < self.total

    @property
    def done(self) -> bool:
        return self.nimg >= self.total

    def step(self) -> bool:
        """Counts one step's images; True when they end a tick (or the run)."""
        self.nimg += self.batch
        self.bar.update(self.batch)
        if not (self.done or self.nimg // self.tick_nimg > self.index):
            return False
        self.index = self.nimg // self.tick_nimg
        self.bar.clear()
        return True

    def lap(self) -> tuple[float, float]:
        """(seconds, images per second) since the previous tick."""
        seconds = self.timer.lap()
        rate = (self.nimg - self.tick_start) / max(seconds, 1e-9)
        self.tick_start = self.nimg
        return seconds, rate

    def close(self) -> None:
        self.bar.close()
