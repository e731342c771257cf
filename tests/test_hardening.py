"""Failures a user meets: each gives one line (exit status 2, no traceback) and loses nothing already saved."""
import errno
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_TOY, one_line_error, run_cli, train_tiny_toy

from discodiff.checkpoint import load_tensors
from discodiff.cli import main
from discodiff.runs import Run




def _snapshot(run_dir, *, config=True):
    """Every file of a run folder but its logs (and config.json, whose training duration a resume may change), as
    bytes."""
    skip = {"log.txt", "stats.jsonl", ".lock"} | (set() if config else {"config.json"})
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny toy run with its prior: 2 kimg of stage I, states at 1 and 2 kimg."""
    run = tmp_path_factory.mktemp("hardening") / "run"
    train_tiny_toy(run, "--set", "train.state_ticks=1", "--set", "train.snapshot_ticks=1")
    main(["train-prior", "--run-dir", str(run), "--kimg", "0.5", "--batch", "64", "--quiet"])
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ---- config.json ------------------------------------------------------------------------------------------

def test_config_json_survives_a_failed_rewrite(toy_run, tmp_path, monkeypatch, capsys):
    run = _copy(toy_run, tmp_path)
    before = (run / "config.json").read_bytes()
    real_write = type(run).write_text

    def half_write(self, text, *a, **kw):  # a full disk: half the text, then the error
        real_write(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(type(run), "write_text", half_write)
    code, _, err = run_cli(["train-prior", "--run-dir", str(run), "--kimg", "0.6", "--quiet"], capsys)
    monkeypatch.undo()
    one_line_error(code, err, "config.json", "No space left")
    assert (run / "config.json").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# ---- a stale prior ------------------------------------------------------------------------------------------

def test_prior_of_older_stage1_weights_is_refused_then_retrained(toy_run, tmp_path, capsys):
    run = _copy(toy_run, tmp_path)
    out = tmp_path / "s.npz"
    assert run_cli(["sample", "--run-dir", str(run), "--num", "4", "--out", str(out), "--steps", "2"], capsys)[0] == 0
    train_tiny_toy(run, kimg=3)  # stage I continues: model.safetensors changes, the prior does not
    assert Run(run).prior_status() == "stale"
    for cmd in (["sample", "--run-dir", str(run), "--num", "4", "--out", str(out), "--steps", "2"],
                ["analyze", "switching", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "a")]):
        code, _, err = run_cli(cmd, capsys)
        one_line_error(code, err, "discodiff train-prior")
    code, out_text, _ = run_cli(["train-prior", "--run-dir", str(run), "--quiet"], capsys)
    assert code == 0
    assert "fitting the prior afresh" in (run / "log.txt").read_text()
    assert Run(run).prior_status() == "ok"
    assert run_cli(["sample", "--run-dir", str(run), "--num", "4", "--out", str(out), "--steps", "2"], capsys)[0] == 0


# ---- NaN training -----------------------------------------------------------------------------------------------

def test_nan_loss_stops_training_and_keeps_the_last_good_state(toy_run, tmp_path, monkeypatch, capsys):
    from discodiff.edm import EDMLoss
    run = _copy(toy_run, tmp_path)
    before = _snapshot(run, config=False)
    real = EDMLoss.__call__
    monkeypatch.setattr(EDMLoss, "__call__", lambda self, *a, **kw: real(self, *a, **kw) * float("nan"))
    code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "6", "--quiet"], capsys)
    one_line_error(code, err, "diverged", "loss stayed non-finite", "kept")
    assert _snapshot(run, config=False) == before  # neither the snapshot nor a training state was overwritten


def test_nan_weights_stop_training_at_once(toy_run, tmp_path, monkeypatch, capsys):
    run = _copy(toy_run, tmp_path)
    before = _snapshot(run, config=False)
    real_step = torch.optim.Adam.step

    def poisoned_step(self, *a, **kw):
        out = real_step(self, *a, **kw)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "4", "--quiet"], capsys)
    one_line_error(code, err, "diverged at kimg 3", "weights became NaN")
    assert _snapshot(run, config=False) == before


# ---- a corrupt training state ----------------------------------------------------------------------------------

def test_corrupt_newest_state_falls_back_to_the_older_one_bit_identically(toy_run, tmp_path, capsys):
    straight = tmp_path / "straight"
    train_tiny_toy(straight, "--set", "train.state_ticks=1", "--set", "train.snapshot_ticks=1", kimg=3)
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    newest = sorted((run / "state").glob("stage1-*"))[-1]
    (newest / "weights.safetensors").write_bytes(b"\x00" * 100)  # a torn write
    code, out, err = run_cli(["train", "--run-dir", str(run), "--kimg", "3", *TINY_TOY[-1:]], capsys)
    assert code == 0, err
    log = (run / "log.txt").read_text().splitlines()
    resumed = [line for line in log if "resuming stage I" in line]
    assert len(resumed) == 1 and "from 1.0 kimg" in resumed[0] and newest.name in resumed[0], log
    a, b = load_tensors(straight / "model.safetensors"), load_tensors(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- one-line errors, before any work --------------------------------------------------------------------------

def test_weights_of_another_network_are_refused(toy_run, tmp_path, capsys):
    other = tmp_path / "other"
    train_tiny_toy(other, "--set", "model.network.hidden=24", kimg=1)
    run = _copy(toy_run, tmp_path)
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    code, _, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "x.npz")], capsys)
    one_line_error(code, err, "model.safetensors", "shape")


@pytest.mark.parametrize("args,needles", [
    (["--set", "train.no_such_key=1"], ["unknown key", "no_such_key"]),
    (["--set", "model.num_latents=abc"], ["model.num_latents must be int", "abc"]),
    (["--set", "train.snapshot_ticks=0"], ["train.snapshot_ticks must be >= 1"]),
    (["--lr", "-0.1"], ["learning rate", "positive"]),
    (["--set", "train.batch=2.5"], ["train.batch must be int"]),
])
def test_bad_values_on_resume_are_one_line(toy_run, tmp_path, capsys, args, needles):
    run = _copy(toy_run, tmp_path)
    before = _snapshot(run)
    code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "3", *args], capsys)
    one_line_error(code, err, *needles)
    assert _snapshot(run) == before


def test_bad_values_on_a_new_run_leave_no_folder(tmp_path, capsys):
    for args in (["--set", "model.num_latents=abc"], ["--set", "model.network.widht=3"], ["--lr", "-1"]):
        code, _, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "r"), *args], capsys)
        one_line_error(code, err)
        assert not (tmp_path / "r").exists(), args
    train_tiny_toy(tmp_path / "r", kimg=0.5)  # the retry of a failed first build works
    assert (tmp_path / "r" / "model.safetensors").is_file()


@pytest.mark.parametrize("args,needles", [
    (["--prior-temperature", "0"], ["--prior-temperature"]),
    (["--seed", str(2**63)], ["--seed"]),
    (["--seed", str(2**63 - 2), "--num", "4"], ["2**63"]),
    (["--churn", "5"], ["--churn", "edm"]),
])
def test_bad_sampling_options_are_one_line(toy_run, tmp_path, capsys, args, needles):
    num = [] if "--num" in args else ["--num", "2"]
    out = tmp_path / "x.npz"
    code, _, err = run_cli(["sample", "--run-dir", str(toy_run), "--out", str(out), *num, *args], capsys)
    assert code == 2 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


def _labelled_npz(path, num_classes):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    np.savez(path, x=x, labels=np.arange(64) % num_classes)


def test_class_labels_that_change_on_resume_are_refused(tmp_path, capsys):
    data = tmp_path / "data.npz"
    _labelled_npz(data, 3)
    run = tmp_path / "run"
    tiny_unet = ["--set", "model.network.model_channels=8", "--set", "model.network.channels_per_head=8",
                 "--set", "model.network.latent_dim=16", "--set", "model.encoder.width=16",
                 "--set", "train.batch=16", "--set", "train.tick_kimg=0.032", "--quiet"]
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(run), "--data", str(data), "--cond",
                            "--kimg", "0.032", *tiny_unet], capsys)
    assert code == 0, err
    assert Run(run).config.model.num_classes == 3
    _labelled_npz(data, 5)
    code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "0.064", "--quiet"], capsys)
    one_line_error(code, err, "3 classes", "5")
    _labelled_npz(data, 3)
    code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "0.064", "--uncond", "--quiet"], capsys)
    one_line_error(code, err, "--uncond")


# ---- outputs -------------------------------------------------------------------------------------------------------

def test_unwritable_outputs_fail_before_any_work(toy_run, tmp_path, monkeypatch, capsys):
    import discodiff.pipeline as pipeline
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(pipeline, "generate", lambda *a, **kw: pytest.fail("sampled before checking --out"))
    code, _, err = run_cli(["sample", "--run-dir", str(toy_run), "--num", "2", "--out", str(blocker / "x.npz")],
                           capsys)
    one_line_error(code, err, str(blocker))
    code, _, err = run_cli(["analyze", "switching", "--run-dir", str(toy_run), "--num", "2",
                            "--out", str(blocker / "out")], capsys)
    one_line_error(code, err, str(blocker))


def test_sample_streams_to_an_npz_equal_to_in_memory_generation(toy_run, tmp_path, capsys):
    from discodiff.pipeline import generate
    from discodiff.sampling import karras_sigmas
    out = tmp_path / "s.npz"
    code, _, err = run_cli(["sample", "--run-dir", str(toy_run), "--num", "7", "--batch", "3", "--out", str(out),
                            "--steps", "3", "--trajectory"], capsys)
    assert code == 0, err
    run = Run(toy_run)
    x, z = generate(run.load_model(), list(range(7)), karras_sigmas(3), prior=run.load_prior())
    with np.load(out) as f:
        assert sorted(f.files) == ["seeds", "traj", "x", "z"]
        np.testing.assert_allclose(f["x"], x.numpy(), rtol=1e-4, atol=1e-4)  # batches of 3 against one of 7
        assert np.array_equal(f["z"], z.numpy()) and np.array_equal(f["seeds"], np.arange(7))
        assert f["traj"].shape == (4, 7, 2)
        np.testing.assert_allclose(f["traj"][-1], f["x"], rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary files left


def test_disk_full_is_one_line_and_leaves_no_temporary_files(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    import discodiff.checkpoint as ckpt
    monkeypatch.setattr(ckpt, "save_file", full)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "1", *TINY_TOY], capsys)
    one_line_error(code, err, "No space left on device", str(run))
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".stage1-")]
    assert not leftovers


def test_a_second_training_process_is_refused(toy_run, tmp_path, capsys):
    import subprocess
    import sys
    run = _copy(toy_run, tmp_path)
    before = _snapshot(run)
    holder = subprocess.Popen(  # another process that holds the run, as a training `discodiff train` would
        [sys.executable, "-c", "import sys, time\nfrom discodiff.runs import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
         str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(["train", "--run-dir", str(run), "--kimg", "3", "--quiet"], capsys)
        one_line_error(code, err, "another discodiff process", f"pid {holder.pid}", "is training in")
        code, _, err = run_cli(["train-prior", "--run-dir", str(run), "--quiet"], capsys)
        one_line_error(code, err, "another discodiff process")
    finally:
        holder.kill()
        holder.wait()
    assert _snapshot(run) == before
    train_tiny_toy(run, kimg=3)  # once the holder is gone, the run continues


# ---- the core install ----------------------------------------------------------------------------------------------

def test_commands_that_need_an_extra_refuse_before_any_work(toy_run, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--kimg", "0.1"], capsys)
    one_line_error(code, err, "matplotlib", "discodiff[plots]")
    assert not (tmp_path / "d").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # FID needs no extra, but its onnxruntime backend does
    code, _, err = run_cli(["fid", "calc", "--images", str(tmp_path), "--ref", str(tmp_path / "r.npz"),
                            "--detector-backend", "onnxruntime"], capsys)
    one_line_error(code, err, "onnxruntime", "discodiff[fast-fid]")


def test_safetensors_whose_header_length_starts_with_the_pickle_byte_load(tmp_path):
    """A safetensors file begins with its header's length (little-endian); one file in 256 therefore begins with
    0x80, pickle's protocol marker. Such a file is valid and must load, not be refused as a pickle."""
    from discodiff.checkpoint import save_tensors
    path = tmp_path / "w.safetensors"
    tensors = {"weight": torch.arange(6.0).reshape(2, 3)}
    for pad in range(512):  # the header grows with the metadata; find a length whose low byte is 0x80
        save_tensors(tensors, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert torch.equal(load_tensors(path)["weight"], tensors["weight"])
