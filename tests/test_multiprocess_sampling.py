"""`sample` and `fid gen` under torchrun (gloo, 2 processes on the CPU): the processes share the seeds and rank 0
gathers them in seed order, so the output equals one process's (the seed contract); and --bf16."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_TOY_ARGS

from discodiff.cli import main
from discodiff.pipeline import generate_batches, generate_sharded, own_share

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TOY = ["--preset", "toy2d", "--latents", "0", *TINY_TOY_ARGS[:-1], "--set", "train.batch=64",
       "--set", "train.tick_kimg=0.5", "--quiet"]
DIGITS = ["--preset", "digits", "--latents", "0", "--set", 'data={"name": "digits", "options": {"max_images": 64}}',
          "--set", 'model.network={"model_channels": 8, "channels_per_head": 8, "dropout": 0.0}',
          "--set", "train.batch=32", "--set", "train.tick_kimg=0.064", "--quiet"]


def cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, None), err
    return out


def torchrun(args, port):
    """2 processes; the `--` keeps torchrun from reading --num as its --numa-binding."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "discodiff", "--", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_own_share_counts_each_ranks_samples_and_batches():
    # 10 seeds, batch 3, 2 ranks: rounds [0:3 | 3:6], [6:9 | 9:10]
    assert own_share(10, 3, 2, 0) == (6, 2) and own_share(10, 3, 2, 1) == (4, 2)
    # 7 seeds: rank 1 has none in the last round and draws one seed it drops
    assert own_share(7, 3, 2, 0) == (4, 2) and own_share(7, 3, 2, 1) == (4, 2)
    assert own_share(5, 2, 1, 0) == (5, 3)


def test_one_process_shards_nothing(tmp_path, capsys):
    from discodiff.runs import Run
    from discodiff.sampling import karras_sigmas

    cli(["train", "--run-dir", str(tmp_path / "toy"), "--kimg", "0.128", *TOY], capsys)
    model = Run(tmp_path / "toy").load_model()
    sigmas = karras_sigmas(3)
    a = [(s, x) for s, x, _ in generate_batches(model, range(7), sigmas, batch=3)]
    b = [(s, x) for s, x, _ in generate_sharded(model, range(7), sigmas, batch=3)]
    assert [s for s, _ in a] == [s for s, _ in b] and all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    # bf16 autocast (a CPU can run it in the library; the command refuses it there): close, and seeded
    x32, _ = next(iter(generate_batches(model, range(4), sigmas, batch=4)))[1:]
    x16 = next(iter(generate_batches(model, range(4), sigmas, batch=4, bf16=True)))[1]
    again = next(iter(generate_batches(model, range(4), sigmas, batch=4, bf16=True)))[1]
    assert x16.dtype == torch.float32 and torch.equal(x16, again)
    assert 0 < float((x16 - x32).abs().max()) < 0.1 * float(x32.abs().max())


def test_bf16_is_refused_on_a_cpu(tmp_path, capsys):
    cli(["train", "--run-dir", str(tmp_path / "toy"), "--kimg", "0.064", *TOY], capsys)
    with pytest.raises(SystemExit) as e:
        main(["sample", "--run-dir", str(tmp_path / "toy"), "--num", "2", "--out", str(tmp_path / "s.npz"), "--bf16",
              "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "--bf16 needs a GPU" in err and len(err.strip().splitlines()) == 1


def test_help_names_the_torchrun_form(capsys):
    for cmd in (["sample", "--help"], ["fid", "gen", "--help"]):
        out = cli(cmd, capsys)
        assert "-m discodiff --" in out and "--numa-binding" in out


@pytest.mark.slow
def test_two_processes_write_the_same_samples_as_one(tmp_path, capsys):
    run = tmp_path / "toy"
    cli(["train", "--run-dir", str(run), "--kimg", "0.5", *TOY], capsys)
    common = ["--run-dir", str(run), "--num", "7", "--batch", "2", "--steps", "3", "--sampler", "edm", "--churn", "5"]
    cli(["sample", *common, "--out", str(tmp_path / "one.npz")], capsys)
    out = torchrun(["sample", *common, "--out", str(tmp_path / "two.npz")], 29631)
    assert "wrote 7 samples (edm, churn 5, 3 steps = 5 network evaluations per sample" in out
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one.files == two.files and all(np.array_equal(one[k], two[k]) for k in one.files)


@pytest.mark.slow
def test_two_processes_measure_the_same_fid_as_one(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from conftest import save_tiny_detector

    det = save_tiny_detector(tmp_path / "det.pt")
    run = tmp_path / "digits"
    cli(["train", "--run-dir", str(run), "--kimg", "0.064", *DIGITS], capsys)
    common = ["fid", "gen", "--run-dir", str(run), "--num", "9", "--batch", "2", "--steps", "2",
              "--detector", str(det)]
    cli([*common, "--out", str(tmp_path / "one.json")], capsys)  # (also writes the run's reference, then reused)
    torchrun([*common, "--out", str(tmp_path / "two.json")], 29633)
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["fid"] == one["fid"] and two["num"] == one["num"] == 9


def test_the_detector_gets_256_images_a_call_on_a_gpu():
    from types import SimpleNamespace

    from discodiff.metrics.fid import GPU_DETECTOR_BATCH, detector_batches, rebatch

    pieces = [torch.full((n, 1, 2, 2), i, dtype=torch.uint8) for i, n in enumerate([3, 5, 1, 4])]
    out = list(rebatch(iter(pieces), 4))
    assert [len(b) for b in out] == [4, 4, 4, 1] and torch.equal(torch.cat(out), torch.cat(pieces))
    gpu, cpu = SimpleNamespace(device=torch.device("cuda")), SimpleNamespace(device=torch.device("cpu"))
    many = [torch.zeros(32, 3, 8, 8, dtype=torch.uint8)] * 20
    assert [len(b) for b in detector_batches(many, gpu)] == [GPU_DETECTOR_BATCH, GPU_DETECTOR_BATCH, 128]
    assert [len(b) for b in detector_batches(many, cpu)] == [32] * 20  # a CPU's figures stay as they were
