"""Pieces shared by the two training stages: seeding, ticks, logging."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..errors import ConfigError
from ..errors import TrainingDivergedError  # noqa: F401


def step_seed(*keys: int) -> int:
    """A seed below 2**63 made from (seed, rank, images seen, ...) by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def step_generator(device, *keys: int) -> torch.Generator:
    """A generator seeded by (seed, rank, images seen, ...): a resumed run draws exactly what it would have."""
    return torch.Generator(device).manual_seed(step_seed(*keys))


DROPOUT_STREAM = 1  # a key that keeps the dropout seeds apart from the batch generators' (step_generator) seeds


def seed_dropout(seed: int, rank: int, nimg: int, round_: int) -> None:
    """Reseeds torch's global generators, which dropout draws from, for this step, rank and accumulation round:
    every rank draws its own masks, and a resumed run draws the masks an uninterrupted one would have (EDM2 does
    likewise). Nothing else in a training step draws from them: the batch, the latents and the noise come from
    `step_generator`."""
    torch.manual_seed(step_seed(seed, rank, nimg, round_, DROPOUT_STREAM))


def configure_backends(device: torch.device, tf32: bool) -> None:
    """The GPU kernels' settings for training: cuDNN picks its fastest convolution algorithms for the shapes it sees
    (cudnn.benchmark), and TF32 matmuls and convolutions (faster, 10 bits of mantissa) only when asked for:
    EDM turns them off, and the bf16 autocast covers the bulk of the work anyway. A no-op on the CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def neutralise_nonfinite(params) -> torch.Tensor | int:
    """Zeroes the NaN and infinite entries of the parameters' gradients, in place, and returns how many there were
    (a tensor on their device).

    Zeroing only the bad entries (as EDM does) keeps one bad batch element from throwing away a whole step. The
    check is one fused kernel, the norms of all gradients (a NaN or infinite entry makes its tensor's norm
    non-finite), and one host sync; the per-tensor pass that counts and zeroes the entries runs only after a bad
    batch. (A per-tensor pass every step launches two kernels a tensor: about 2,800 a step at the paper's size.)"""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0
    norms = torch.stack(torch._foreach_norm(grads))
    if bool(norms.isfinite().all()):
        return torch.zeros((), dtype=torch.long, device=grads[0].device)
    count = torch.stack([torch.isfinite(g).logical_not_().sum() for g in grads]).sum()
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    return count


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every weight of `module` is finite (one host sync)."""
    return bool(torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all())


class DivergenceGuard:
    """Decides at each tick whether training is still sound. Non-finite weights stop it at once; a non-finite loss
    stops it when it lasts `patience` ticks (a single bad batch is survivable: its gradients were zeroed). A tick
    that is not sound saves nothing, so the last good snapshot and training state stay as they were."""

    def __init__(self, what: str, last_saved_nimg: int | None, patience: int = 2):
        self.what, self.last_saved, self.patience, self.bad_ticks = what, last_saved_nimg, patience, 0

    def saved(self, nimg: int) -> None:
        self.last_saved = nimg

    def healthy(self, nimg: int, mean_loss: float, *modules: torch.nn.Module) -> bool:
        weights_ok = all(all_finite(m) for m in modules)
        self.bad_ticks = 0 if np.isfinite(mean_loss) else self.bad_ticks + 1
        if weights_ok and self.bad_ticks == 0:
            return True
        if weights_ok and self.bad_ticks < self.patience:
            return False
        problem = ("the weights became NaN or infinite" if not weights_ok
                   else f"the loss stayed non-finite ({mean_loss}) for {self.bad_ticks} ticks")
        kept = (f"the last good training state (kimg {self.last_saved / 1000:g}) and snapshot are kept"
                if self.last_saved is not None else "nothing was saved from this run")
        raise TrainingDivergedError(f"{self.what} diverged at kimg {nimg / 1000:g}: {problem}; {kept}. Lower the "
                                    f"learning rate (--lr) and run the same command again to resume")


def resume_line(what: str, state) -> str:
    """The log line of a resumed stage, naming the newer states that could not be read and were passed over."""
    line = f"resuming {what} from {state.nimg / 1000:.1f} kimg"
    if state.skipped:
        line += f" ({state.path.name}; passed over: {'; '.join(state.skipped)})"
    return line


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
