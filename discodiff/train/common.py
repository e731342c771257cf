"""Pieces shared by the two training stages: seeding, ticks, logging."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import dist


def step_generator(device, *keys: int) -> torch.Generator:
    """A generator seeded by (seed, rank, images seen, ...): a resumed run draws exactly what it would have."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device).manual_seed(seed)


def neutralise_nonfinite(params) -> torch.Tensor | int:
    """Zeroes the NaN and infinite entries of the parameters' gradients, in place, and returns how many there were
    as a tensor on their device: no host sync in the training loop (the count is read once per tick).

    Zeroing only the bad entries (as EDM does) keeps one bad batch element from throwing away a whole step."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0
    count = torch.stack([torch.isfinite(g).logical_not_().sum() for g in grads]).sum()
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    return count


class RunLog:
    """Status lines on stdout and in log.txt, machine-readable rows in stats.jsonl (rank 0 only)."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.run_dir, self.quiet = Path(run_dir), quiet

    def line(self, text: str) -> None:
        if not dist.is_main():
            return
        if not self.quiet:
            print(text, flush=True)
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(text + "\n")

    def stats(self, row: dict) -> None:
        if dist.is_main():
            with open(self.run_dir / "stats.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def progress_bar(total: int, initial: int, desc: str, enabled: bool | None = None):
    """A tqdm bar over images when stderr is a terminal (the tick lines carry progress otherwise)."""
    from tqdm import tqdm
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="img", unit_scale=True, desc=desc,
                disable=not (enabled and dist.is_main()), leave=False, dynamic_ncols=True)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover (non-POSIX)
        return float("nan")


class Timer:
    def __init__(self):
        self.start = self.tick = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.tick = now - self.tick, now
        return dt

    def total(self) -> float:
        return time.perf_counter() - self.start
