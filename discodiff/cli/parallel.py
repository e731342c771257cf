"""What makes a sampling command torchrun-aware (`sample`, `fid gen`): each process's device, the --bf16 option,
a writer that only rank 0 really has, and the orderly end of the process group.

Under torchrun the processes share the seeds (pipeline.generate_sharded) and rank 0 writes; the results are the
same as one process's. torchrun parses options before the program's own, and one that abbreviates an option of
torchrun's (--num: --numa-binding) must follow a `--`:

    torchrun --standalone --nproc_per_node=8 -m discodiff -- sample --run-dir R --num 50000 --out s.npz
"""
from __future__ import annotations

import functools

import click

from ..errors import ConfigError

def bf16_option(f):
    return click.option("--bf16", is_flag=True, default=False,
                        help="Run the network under bfloat16 autocast (GPU only; the samples differ from float32 by "
                             "the network's rounding). Off by default.")(f)


def sampling_device(device: str | None, bf16: bool = False) -> str:
    """The device this process samples on; joins torchrun's process group first when launched by it (each rank
    then takes its own GPU, cuda:LOCAL_RANK, for --device cuda or none). --bf16 on a CPU is refused."""
    import torch

    from .. import dist
    from .options import resolve_device

    dist.init()
    if dist.world_size() > 1 and device in (None, "cuda") and torch.cuda.is_available():
        device = str(dist.device())
    device = resolve_device(device)
    if bf16 and torch.device(device).type != "cuda":
        raise ConfigError(f"--bf16 needs a GPU (bfloat16 autocast is for CUDA); this command samples on {device}: "
                          f"leave out --bf16")
    return device


def torchrun_aware(fn):
    """Ends a command run under torchrun in order: every rank meets at a barrier, leaves the group and exits
    (dist.exit_worker). A plain process returns as usual."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        from .. import dist

        try:
            result = fn(*args, **kwargs)
            dist.barrier()
        finally:
            dist.shutdown()
        dist.exit_worker()
        return result
    return wrapped


class NullWriter:
    """Stands in for NpzStreamWriter on the ranks other than 0: every array accepts writes and keeps nothing."""

    class _Sink:
        def __setitem__(self, key, value):
            pass

        def __getitem__(self, key):
            import numpy as np
            return np.zeros(0)

    def __init__(self, arrays: dict):
        self.arrays = {k: self._Sink() for k in arrays}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
