"""Bad input gives one clear line on stderr and a non-zero exit status, never a traceback."""
import json
import subprocess
import sys

import pytest
from conftest import TINY_TOY_ARGS, run_cli
import torch

from discodiff.data import ArrayDataset, DataError

TINY = TINY_TOY_ARGS[:-1] + ["--set", "train.batch=32", "--set", "train.tick_kimg=0.5", "--quiet"]


def _assert_clean_error(code, err, *needles):
    assert code not in (0, None)
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, err


def test_unknown_preset(tmp_path, capsys):
    code, _, err = run_cli(["train", "--preset", "nope", "--run-dir", str(tmp_path / "r")], capsys)
    _assert_clean_error(code, err, "unknown preset 'nope'", "toy2d")


def test_train_without_preset_on_new_dir(tmp_path, capsys):
    code, _, err = run_cli(["train", "--run-dir", str(tmp_path / "r")], capsys)
    _assert_clean_error(code, err, "--preset")


@pytest.mark.parametrize("flag,value,needle", [("--latents", "-1", "--latents"), ("--latents", "9999", "--latents"),
                                               ("--codebook", "1", "--codebook")])
def test_latents_and_codebook_out_of_range(tmp_path, capsys, flag, value, needle):
    code, _, err = run_cli(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / "r"), flag, value], capsys)
    _assert_clean_error(code, err, needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["sample", "--num", "4", "--out", "x.npz"], ["train-prior"]])
def test_missing_run_dir(tmp_path, capsys, command):
    code, _, err = run_cli([command[0], "--run-dir", str(tmp_path / "missing"), *command[1:]], capsys)
    _assert_clean_error(code, err, "does not exist")


def test_foreign_run_dirs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["sample", "--run-dir", str(tmp_path / "empty"), "--num", "1", "--out", "x.npz"], capsys)
    _assert_clean_error(code, err, "not a discodiff run directory")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"lr": 1}))
    code, _, err = run_cli(["sample", "--run-dir", str(tmp_path / "other"), "--num", "1", "--out", "x.npz"], capsys)
    _assert_clean_error(code, err, "not a discodiff run config")
    code, _, err = run_cli(["train", "--run-dir", str(tmp_path / "other")], capsys)
    _assert_clean_error(code, err, "not a discodiff run config")


def test_sample_before_training_and_before_prior(tmp_path, capsys):
    run = tmp_path / "r"
    code, _, _ = run_cli(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "0", *TINY], capsys)
    assert code in (0, None)
    (run / "model.safetensors").unlink()
    code, _, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "s.npz")], capsys)
    _assert_clean_error(code, err, "no trained model yet", "discodiff train")
    code, _, _ = run_cli(["train", "--run-dir", str(run), "--kimg", "0.5", *TINY], capsys)
    assert code in (0, None)
    code, _, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "s.npz")], capsys)
    _assert_clean_error(code, err, "no trained prior yet", "train-prior")


def test_changing_the_model_of_an_existing_run_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    run_cli(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "0", *TINY], capsys)
    code, _, err = run_cli(["train", "--run-dir", str(run), "--latents", "3", *TINY], capsys)
    _assert_clean_error(code, err, "model.num_latents", "new --run-dir")


def test_baseline_train_prior_is_a_clear_no_op(tmp_path, capsys):
    run = tmp_path / "r"
    run_cli(["train", "--preset", "toy2d", "--run-dir", str(run), "--latents", "0", "--kimg", "0.5", *TINY], capsys)
    code, out, _ = run_cli(["train-prior", "--run-dir", str(run)], capsys)
    assert code in (0, None) and "needs no prior" in out
    code, out, _ = run_cli(["sample", "--run-dir", str(run), "--num", "3", "--steps", "4",
                            "--out", str(tmp_path / "s.npz")], capsys)
    assert code in (0, None) and "wrote 3 samples" in out
    assert "4 steps = 7 network evaluations per sample" in out  # m = 0: --guidance would have nothing to act on


def test_nan_in_data_is_refused():
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        ArrayDataset(x=x, name="mine")


def test_sample_writes_the_documented_arrays(tmp_path, capsys):
    import numpy as np
    run = tmp_path / "r"
    run_cli(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "0.5", *TINY], capsys)
    run_cli(["train-prior", "--run-dir", str(run), "--kimg", "0.2", "--quiet"], capsys)
    out = tmp_path / "s.npz"
    code, stdout, _ = run_cli(["sample", "--run-dir", str(run), "--num", "5", "--steps", "6", "--seed", "7",
                               "--trajectory", "--batch", "2", "--out", str(out)], capsys)
    assert code in (0, None) and str(out) in stdout
    d = np.load(out)
    assert d["x"].dtype == np.float32 and d["x"].shape == (5, 2)
    assert d["z"].dtype == np.int64 and d["z"].shape == (5, 1)
    assert d["traj"].shape == (7, 5, 2)
    np.testing.assert_allclose(d["traj"][-1], d["x"], rtol=1e-6)
    assert np.allclose(d["traj"][0].std(), 80, rtol=0.6)  # the trajectory starts from the noise at sigma_max
    assert "6 steps = 11 network evaluations per sample" in stdout
    # guidance on z: the conditional and null-latent passes share each network call, on a doubled batch
    code, stdout, _ = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--steps", "6", "--guidance", "1",
                               "--out", str(tmp_path / "g.npz")], capsys)
    assert code in (0, None)
    assert "6 steps = 22 network evaluations per sample (11 network calls on a doubled batch: guidance)" in stdout
    # guidance in an interval: of the 6-step grid's sigmas 80, 24.4, 5.84, 0.97, 0.085, 0.002 only 5.84 lies in
    # (1, 10], and Heun evaluates there twice (step 1's corrector, step 2's predictor): 11 calls, 2 of them guided
    code, stdout, _ = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--steps", "6", "--guidance", "1",
                               "--guidance-interval", "1,10", "--out", str(tmp_path / "gi.npz")], capsys)
    assert code in (0, None) and ("6 steps = 13 network evaluations per sample (11 network calls, those in the "
                                  "guidance interval on a doubled batch)") in stdout
    assert "guidance 1 at 1 < sigma <= 10" in stdout
    code, _, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--guidance-interval", "5,1",
                            "--out", str(tmp_path / "bad.npz")], capsys)
    assert code == 2 and "--guidance-interval takes LO,HI with 0 <= LO < HI" in err
    # seeds 7..11: drawing seed 9 alone gives the third sample again
    one = tmp_path / "one.npz"
    run_cli(["sample", "--run-dir", str(run), "--num", "1", "--steps", "6", "--seed", "9", "--out", str(one)], capsys)
    np.testing.assert_allclose(np.load(one)["x"][0], d["x"][2], rtol=1e-5, atol=1e-5)


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "discodiff", "sample", "--run-dir", str(tmp_path / "nope"),
                           "--num", "1", "--out", "x.npz"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "discodiff", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train-prior" in proc.stdout
