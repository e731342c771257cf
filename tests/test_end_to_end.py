"""Whole runs through the `discodiff` command line on tiny image models: train, train-prior and sample on digits
(unconditional and class-conditional), training on a user's folder of PNG files, and the demo."""
import json

import numpy as np
import pytest
from conftest import FEW_DIGITS, TINY_DIGITS_ARGS, one_line_error, run_cli
import torch

from discodiff.cli import main

# A digits U-Net small enough to train a few steps in about a second (the sizes test_analysis uses), with no
# learning-rate ramp-up so that the few steps move the weights, and 3 sampler steps.
TINY_DIGITS = TINY_DIGITS_ARGS


pytestmark = [pytest.mark.usefixtures("one_thread")]


def _train_run(run, *extra, kimg="0.128", prior_kimg="0.256"):
    main(["train", "--run-dir", str(run), "--kimg", kimg, "--lr", "0.005", *TINY_DIGITS, *extra])
    main(["train-prior", "--run-dir", str(run), "--kimg", prior_kimg, "--batch", "64", "--lr", "0.01", "--quiet"])
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return _train_run(tmp_path_factory.mktemp("e2e") / "digits", "--preset", "digits", *FEW_DIGITS)


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """Class-conditional digits, with class dropout so that guidance on the class has an unconditional model."""
    return _train_run(tmp_path_factory.mktemp("e2e") / "cond", "--preset", "digits", "--cond", *FEW_DIGITS,
                      "--set", "model.p_class_drop=0.2", prior_kimg="1")


def _sample(run, out, capsys, *args):
    code, stdout, err = run_cli(["sample", "--run-dir", str(run), "--out", str(out), *args], capsys)
    assert code in (0, None), err
    return dict(np.load(out)), stdout




# ---- sample on an image run ---------------------------------------------------------------------------------

def test_sample_writes_uint8_images_and_the_png_grid(digits_run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "s.npz"
    d, stdout = _sample(digits_run, out, capsys, "--num", "6", "--seed", "5", "--cols", "4")
    assert set(d) == {"x", "z", "seeds"}
    assert d["x"].dtype == np.uint8 and d["x"].shape == (6, 8, 8, 1)
    assert d["z"].dtype == np.int64 and d["z"].shape == (6, 4) and ((0 <= d["z"]) & (d["z"] < 16)).all()
    assert d["seeds"].tolist() == [5, 6, 7, 8, 9, 10]
    assert "3 steps" in stdout and str(out.with_suffix(".png")) in stdout
    png = Image.open(out.with_suffix(".png"))
    # 8x8 cells enlarged 4x to 32x32, 2-pixel borders: 4 columns and 2 rows
    assert png.mode == "L" and png.size == (2 + 4 * 34, 2 + 2 * 34)
    sheet = np.asarray(png)
    for i in range(6):
        top, left = 2 + (i // 4) * 34, 2 + (i % 4) * 34
        cell = d["x"][i, :, :, 0].repeat(4, 0).repeat(4, 1)
        assert np.array_equal(sheet[top:top + 32, left:left + 32], cell), i
    # the same seeds drawn in other batches give the same samples
    again, _ = _sample(digits_run, tmp_path / "b.npz", capsys, "--num", "6", "--seed", "5", "--batch", "4")
    assert np.array_equal(again["x"], d["x"]) and np.array_equal(again["z"], d["z"])


def test_sample_grid_by_latent_rows_share_the_first_seeds_z(digits_run, tmp_path, capsys):
    plain, _ = _sample(digits_run, tmp_path / "p.npz", capsys, "--num", "7", "--seed", "3")
    grid, stdout = _sample(digits_run, tmp_path / "g.npz", capsys, "--num", "7", "--seed", "3", "--cols", "3",
                           "--grid-by-latent")
    assert "each row shares one z" in stdout
    for start in (0, 3, 6):  # rows of 3 (the last cut short) share the prior's z of their first seed
        assert (grid["z"][start:start + 3] == plain["z"][start]).all(), grid["z"]
    assert len({tuple(r) for r in grid["z"].tolist()}) > 1
    assert np.array_equal(grid["x"][[0, 3, 6]], plain["x"][[0, 3, 6]])  # same seed and z: the same image


def test_sample_guidance_changes_the_samples(digits_run, tmp_path, capsys):
    w0, _ = _sample(digits_run, tmp_path / "w0.npz", capsys, "--num", "6", "--trajectory")
    w1, stdout = _sample(digits_run, tmp_path / "w1.npz", capsys, "--num", "6", "--guidance", "1", "--trajectory")
    assert "guidance 1" in stdout
    assert np.array_equal(w0["z"], w1["z"])  # same seeds: same latents and noise, only the guidance differs
    assert np.array_equal(w0["traj"][0], w1["traj"][0])
    assert np.abs(w0["traj"][-1] - w1["traj"][-1]).max() > 1e-3
    assert not np.array_equal(w0["x"], w1["x"])


def test_sample_class_on_an_unconditional_run_is_refused(digits_run, tmp_path, capsys):
    code, _, err = run_cli(["sample", "--run-dir", str(digits_run), "--num", "2", "--class", "0",
                            "--out", str(tmp_path / "s.npz")], capsys)
    one_line_error(code, err, "--class 0", "0 classes")
    assert not (tmp_path / "s.npz").exists()


# ---- class-conditional runs -----------------------------------------------------------------------------------

def test_class_conditional_run_end_to_end(cond_run, tmp_path, capsys):
    cfg = json.loads((cond_run / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 10 and cfg["model"]["data_shape"] == [1, 8, 8]
    c3, _ = _sample(cond_run, tmp_path / "c3.npz", capsys, "--num", "16", "--class", "3", "--trajectory")
    assert c3["labels"].dtype == np.int64 and c3["labels"].tolist() == [3] * 16
    assert c3["x"].shape == (16, 8, 8, 1) and c3["z"].shape == (16, 4)
    c7, _ = _sample(cond_run, tmp_path / "c7.npz", capsys, "--num", "16", "--class", "7", "--trajectory")
    assert c7["labels"].tolist() == [7] * 16
    assert np.array_equal(c3["traj"][0], c7["traj"][0])  # same seeds, same initial noise
    assert np.abs(c3["traj"][-1] - c7["traj"][-1]).max() > 1e-3  # the class reaches the denoiser ...
    assert not np.array_equal(c3["z"], c7["z"])  # ... and the prior's latents
    g, stdout = _sample(cond_run, tmp_path / "g.npz", capsys, "--num", "16", "--class", "3", "--class-guidance", "2",
                        "--trajectory")
    assert np.array_equal(g["z"], c3["z"]) and g["labels"].tolist() == [3] * 16
    assert np.abs(g["traj"][-1] - c3["traj"][-1]).max() > 1e-3
    unconditional, _ = _sample(cond_run, tmp_path / "u.npz", capsys, "--num", "4")  # no --class: class dropped
    assert "labels" not in unconditional and unconditional["x"].shape == (4, 8, 8, 1)


@pytest.mark.parametrize("label", ["10", "-1"])
def test_class_out_of_range(cond_run, tmp_path, capsys, label):
    code, _, err = run_cli(["sample", "--run-dir", str(cond_run), "--num", "2", "--class", label,
                            "--out", str(tmp_path / "s.npz")], capsys)
    one_line_error(code, err, f"--class {label}", "10 classes")
    assert not (tmp_path / "s.npz").exists()


# ---- a user's folder of images ----------------------------------------------------------------------------------

def _write_pngs(folder, n=32):
    """n grey 8x8 PNGs in two kinds (a bright top half or a bright left half, with noise) and dataset.json labels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = []
    for i in range(n):
        img = rng.integers(0, 40, (8, 8)).astype(np.uint8)
        if i % 2:
            img[:, :4] += 200
        else:
            img[:4] += 200
        name = f"{i // 10:05d}/img{i:08d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / name)
        labels.append([name, i % 2])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))


def test_train_on_a_folder_of_pngs_and_sample(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "my images"
    _write_pngs(folder)
    monkeypatch.chdir(tmp_path)  # a relative --data is stored resolved, so the run resumes from anywhere
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(run), "--data", "my images", "--cond",
                            "--kimg", "0.064", *TINY_DIGITS], capsys)
    assert code in (0, None), err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == {"name": "path", "path": str(folder.resolve()), "options": {}}
    assert cfg["model"]["data_shape"] == [1, 8, 8] and cfg["model"]["num_classes"] == 2
    assert "32 examples" in (run / "log.txt").read_text()
    code, _, err = run_cli(["train-prior", "--run-dir", str(run), "--kimg", "0.128", "--quiet"], capsys)
    assert code in (0, None), err
    d, _ = _sample(run, tmp_path / "s.npz", capsys, "--num", "4", "--class", "1")
    assert d["x"].dtype == np.uint8 and d["x"].shape == (4, 8, 8, 1) and d["labels"].tolist() == [1] * 4
    assert (tmp_path / "s.png").is_file()
    # the samples load back as a dataset (the .npz layout), with their labels
    from discodiff.config import DataConfig
    from discodiff.data import load_dataset
    back = load_dataset(DataConfig(name="path", path=str(tmp_path / "s.npz")))
    assert back.shape == [1, 8, 8] and back.labels.tolist() == [1] * 4
    assert torch.equal(back.x, torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    # resuming the same run with the same --data is accepted; other data are refused
    code, _, err = run_cli(["train", "--run-dir", str(run), "--data", str(folder), "--kimg", "0.096", *TINY_DIGITS],
                           capsys)
    assert code in (0, None), err
    code, _, err = run_cli(["train", "--run-dir", str(run), "--data", "digits", "--kimg", "0.2", *TINY_DIGITS],
                           capsys)
    one_line_error(code, err, "other data")


@pytest.mark.parametrize("with_folder", [True, False])
def test_data_options_from_set(tmp_path, capsys, with_folder):
    """docs/datasets.md: `--data PATH --set data.options.max_images=N` (and the same for a preset's own data)."""
    folder = tmp_path / "imgs"
    _write_pngs(folder, n=8)
    data = ["--data", str(folder)] if with_folder else []
    code, out, err = run_cli(["train", "--preset", "digits", "--run-dir", str(tmp_path / "r"), *data,
                              "--set", "data.options.max_images=4", "--dry-run"], capsys)
    assert code in (0, None), err
    cfg = json.loads(out)["data"]
    assert cfg["options"] == {"max_images": 4} and cfg["name"] == ("path" if with_folder else "digits")


# ---- the demo ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_at_a_tiny_budget(tmp_path, capsys):
    """20-40 s on two busy cores: the toy prior trains for its preset's 400 kimg whatever --kimg says, and the digits
    stage I is the full-size preset U-Net."""
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--out", str(out), "--kimg", "0.05", "--num", "16", "--digits-kimg", "0.05",
                                "--digits-prior-kimg", "10"],
                                capsys)
    assert code in (0, None), err
    said = [out / "metrics.json", out / "samples.png", out / "curvature.png", out / "digits_samples.png",
            out / "digits_by_latent.png"]  # the files its "wrote:" lines name
    for f in said:
        assert str(f) in stdout and f.is_file() and f.stat().st_size > 0, f
    for run in ("baseline", "discodiff", "digits"):
        assert (out / run / "model.safetensors").is_file() and (out / run / "config.json").is_file()
    assert (out / "discodiff" / "prior.safetensors").is_file() and (out / "digits" / "prior.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"baseline", "discodiff"} and metrics["num_eval"] == 16
    assert set(metrics["models"]["baseline"]) == {"50", "10"}
    assert all(np.isfinite(metrics["models"][m]["50"]["w2"]) for m in ("baseline", "discodiff"))
    digits = json.loads((out / "digits.json").read_text())
    assert digits["kimg"] == 0.05 and len(digits["codes_used"]) == 4
    from PIL import Image
    assert Image.open(out / "digits_samples.png").size == (2 + 8 * 34, 2 + 8 * 34)  # 8 x 8 samples
    # the run folders it names are usable by `discodiff sample`
    d, _ = _sample(out / "digits", tmp_path / "s.npz", capsys, "--num", "2", "--steps", "2")
    assert d["x"].shape == (2, 8, 8, 1)
