"""torch.distributed helpers that also work as a plain single process (no torchrun, no process group)."""
from __future__ import annotations

import faulthandler
import os
import sys

import torch
import torch.distributed as td


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ  # torchrun sets RANK (with WORLD_SIZE, MASTER_ADDR, ...) for every worker


def init() -> None:
    """Joins the process group when launched by torchrun (NCCL on CUDA, gloo otherwise); else does nothing."""
    if not launched_by_torchrun() or td.is_initialized():
        return
    faulthandler.enable()  # a rank killed by a signal (e.g. a C++ abort) prints every thread's Python stack
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    td.init_process_group(backend=backend)


def shutdown() -> None:
    """Leaves the process group, if any. Without it, gloo's worker threads can still be running when the
    interpreter exits, and a process then aborts ("terminate called without an active exception")."""
    if td.is_initialized():
        td.destroy_process_group()


def exit_worker() -> None:
    """Ends a torchrun worker that has finished its work and left the group: flushes the streams and exits at
    once. The interpreter's own finalization can still meet c10d's C++ threads and abort a rank now and then
    ("terminate called without an active exception") after every file is written, which would turn a finished
    run into a failed one. Does nothing outside torchrun."""
    if not launched_by_torchrun():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def world_size() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if td.is_initialized():
        t = t.clone()
        td.all_reduce(t)
        t /= world_size()
    return t


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def check_replicas_identical(module: torch.nn.Module) -> None:
    """Raises if the weights differ between processes (a DDP bug would show here first)."""
    if not td.is_initialized():
        return
    flat = torch.cat([p.detach().float().flatten() for p in module.parameters()])
    ref = flat.clone()
    td.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    td.all_reduce(diff, op=td.ReduceOp.MAX)
    if float(diff) != 0.0:
        raise RuntimeError(f"DDP replicas diverged: max weight difference {float(diff):.3g}")
