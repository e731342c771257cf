"""Two processes with torchrun + gloo on the CPU: replicas stay identical and the run resumes."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_TOY_ARGS

from discodiff.checkpoint import load_tensors

pytestmark = pytest.mark.slow

TINY = TINY_TOY_ARGS[:-1] + ["--set", "train.tick_kimg=0.5", "--quiet"]


def _torchrun(args, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "discodiff", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _errors(proc) -> str:
    """stderr without DDP's per-rank warnings, so that a failure shows its cause (and faulthandler's stacks)."""
    noise = ("UserWarning", "grad.sizes()", "bucket_view.sizes()", "return Variable._execution_engine")
    return "\n".join(line for line in proc.stderr.splitlines() if not any(n in line for n in noise))[-6000:]


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    run = tmp_path / "ddp"
    proc = _torchrun(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "1", "--batch", "64",
                      "--batch-gpu", "16", *TINY], 29517)
    assert proc.returncode == 0, _errors(proc)
    log = (run / "log.txt").read_text()
    assert "batch 64 = 16 x 2 x 2" in log  # 16 per process, 2 accumulation rounds, 2 processes
    assert "replicas identical on all 2 processes" in log
    weights = load_tensors(run / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    # resuming under torchrun continues from the saved state
    proc = _torchrun(["train", "--run-dir", str(run), "--kimg", "1.5", *TINY], 29518)
    assert proc.returncode == 0, _errors(proc)
    assert "resuming stage I from 1.0 kimg" in (run / "log.txt").read_text()


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_a_run_resumes_under_another_world_size(tmp_path, first, second):
    """The training state holds no per-rank piece: a run started on 2 processes resumes on 1, and the other way."""
    run = tmp_path / "run"
    args = ["train", "--preset", "toy2d", "--run-dir", str(run), "--batch", "64", *TINY]

    def train(world, kimg, port):
        if world == 1:
            proc = subprocess.run([sys.executable, "-m", "discodiff", *args, "--kimg", kimg], capture_output=True,
                                  text=True, timeout=300)
        else:
            proc = _torchrun([*args, "--kimg", kimg], port)
        assert proc.returncode == 0, _errors(proc)

    train(first, "0.5", 29521 + first)
    train(second, "1", 29531 + second)
    log = (run / "log.txt").read_text()
    assert "resuming stage I from 0.5 kimg" in log
    assert f"batch 64 = {64 // second} x 1 x {second}" in log
    assert all(torch.isfinite(v).all() for v in load_tensors(run / "model.safetensors").values())
