"""The classifier feature space (metrics/classifier.py, `discodiff fid ... --features classifier`): its Fréchet
distance against an independent implementation, the cache and its provenance, the refusals (another feature space,
data without labels) and the class balance. On the digits (1,797 8x8 images), with a shortened training."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import FlatMLP, run_cli_args, save_tiny_detector, write_untrained_run
from safetensors.numpy import load_file as load_numpy

from discodiff.config import DataConfig, ModelConfig, RunConfig
from discodiff.data import load_dataset, to_uint8
from discodiff.errors import CheckpointError, FIDError
from discodiff.metrics import classifier as C
from discodiff.metrics.fid import FIDStats, fid_from_stats, stats_of_images

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]

STEPS = 300  # training steps of the test classifiers (the library's 2,000 take ~10 s on the digits)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the module (the digits classifier trains once), a short training, and the environment
    variable that the commands read."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setattr(C, "MIN_STEPS", STEPS)
    mp.setenv("DISCODIFF_CACHE_DIR", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def digits():
    """(uint8 images [N, 1, 8, 8], labels) of the digits."""
    ds = load_dataset(DataConfig(name="digits"))
    return to_uint8(ds.x), ds.labels


def _nhwc(images):
    return images.permute(0, 2, 3, 1).numpy()


# ---- the distance, against an independent implementation -----------------------------------------------------

def _numpy_features(folder, images_uint8):
    """The hidden features by hand: the safetensors weights read with numpy, the MLP in float64."""
    w = load_numpy(str(folder / C.WEIGHTS_FILE))
    x = images_uint8.reshape(len(images_uint8), -1).astype(np.float64) / 127.5 - 1
    h = np.maximum(x @ w["features.1.weight"].T.astype(np.float64) + w["features.1.bias"], 0)
    return np.maximum(h @ w["features.3.weight"].T.astype(np.float64) + w["features.3.bias"], 0)


def _independent_fd(a, b):
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), with numpy's covariance and scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular covariances
def test_the_distance_agrees_with_an_independent_implementation(cache, digits, tmp_path, capsys):
    images, _ = digits
    ref = tmp_path / "ref.npz"
    code, out, err = run_cli_args(capsys, "fid", "ref", "--data", "digits", "--features", "classifier", "--num", "900",
                              "--out", str(ref))
    assert code == 0, err
    assert "training the classifier of digits" in err and "128-d features" in out
    st = FIDStats.load(ref)
    assert st.provenance["features"] == "classifier" and st.provenance["classifier"]["data"]["name"] == "digits"
    folder = cache / "classifiers" / C.folder_name(DataConfig(name="digits"))
    assert st.provenance["detector_sha256"] == json.loads((folder / C.CONFIG_FILE).read_text())["weights_sha256"]

    # the other 897 images, and the same ones made brighter (a clearly positive distance)
    other = _nhwc(images[900:])
    brighter = np.clip(other.astype(np.int64) + 40, 0, 255).astype(np.uint8)
    independent_ref = _numpy_features(folder, _nhwc(images[:900]))
    for name, x in (("other", other), ("brighter", brighter)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=x)
        res = tmp_path / f"{name}.json"
        code, out, err = run_cli_args(capsys, "fid", "calc", "--features", "classifier", "--images", str(path),
                                  "--ref", str(ref), "--out", str(res))
        assert code == 0, err
        assert "using the classifier of digits" in err and "FD (classifier features)" in out
        d = json.loads(res.read_text())
        expected = _independent_fd(_numpy_features(folder, x), independent_ref)
        assert d["features"] == "classifier" and d["num"] == len(x)
        assert d["fid"] == pytest.approx(expected, rel=0.01), name
        assert d["kid"] is not None and 0 <= d["class_tv"] <= 1 and 0 < d["confidence"] <= 1
    assert json.loads((tmp_path / "brighter.json").read_text())["fid"] > 3 * json.loads(
        (tmp_path / "other.json").read_text())["fid"]


# ---- the cache -----------------------------------------------------------------------------------------------

def test_the_cache_is_reused_and_its_provenance_checked(cache, tmp_path):
    notes = []
    first = C.classifier_features(DataConfig(name="digits"), notice=notes.append)
    weights = first.folder / C.WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns
    again = C.classifier_features(DataConfig(name="digits", options={"xflip": True, "use_labels": False}),
                                  notice=notes.append)
    assert not again.trained and again.folder == first.folder and weights.stat().st_mtime_ns == stamp
    assert again.sha256 == first.sha256 and "using the classifier of digits" in notes[-1]
    config = json.loads((first.folder / C.CONFIG_FILE).read_text())
    assert config["held_out_accuracy"] > 0.8 and config["recipe"]["seed"] == 0 and config["resolution"] == [8, 8]
    assert config["data"] == {"name": "digits", "path": None, "options": {}}

    # another data option: another folder, trained on its own images
    fewer = C.classifier_features(DataConfig(name="digits", options={"max_images": 600}), notice=notes.append)
    assert fewer.trained and fewer.folder != first.folder and fewer.config["num_train"] == 540
    assert fewer.config["data"]["options"] == {"max_images": 600}

    # a folder whose config records other images (the data changed on disk): trained again, with a notice
    config_path = fewer.folder / C.CONFIG_FILE
    stale = json.loads(config_path.read_text())
    stale["images_sha256"] = "0" * 64
    config_path.write_text(json.dumps(stale))
    retrained = C.classifier_features(DataConfig(name="digits", options={"max_images": 600}), notice=notes.append)
    assert retrained.trained and any("records other images_sha256" in n for n in notes)
    assert json.loads(config_path.read_text())["images_sha256"] != "0" * 64

    # weights that are not the ones config.json records: refused in one line
    w = bytearray((fewer.folder / C.WEIGHTS_FILE).read_bytes())
    w[-1] ^= 1
    (fewer.folder / C.WEIGHTS_FILE).write_bytes(bytes(w))
    with pytest.raises(CheckpointError, match="not the file its config.json records") as e:
        C.classifier_features(DataConfig(name="digits", options={"max_images": 600}), notice=notes.append)
    assert "\n" not in str(e.value)


# ---- refusals ------------------------------------------------------------------------------------------------

def test_a_reference_of_another_feature_space_is_refused(cache, tmp_path, capsys, digits):
    images, _ = digits
    det = save_tiny_detector(tmp_path / "tiny.pt")
    np.savez(tmp_path / "x.npz", x=_nhwc(images[:40]))
    inception_ref, classifier_ref, edm_ref = tmp_path / "inc.npz", tmp_path / "cls.npz", tmp_path / "edm.npz"
    code, _, err = run_cli_args(capsys, "fid", "ref", "--data", "digits", "--num", "40", "--detector", str(det),
                            "--out", str(inception_ref))
    assert code == 0, err
    code, _, err = run_cli_args(capsys, "fid", "ref", "--data", "digits", "--num", "40", "--features", "classifier",
                            "--out", str(classifier_ref))
    assert code == 0, err
    FIDStats(np.zeros(128), np.eye(128), 2).save(edm_ref)  # EDM's layout: no provenance

    cases = [(["--features", "classifier", "--ref", str(inception_ref)], "holds inception features"),
             (["--features", "classifier", "--ref", str(inception_ref), "--allow-mismatch"], "holds inception"),
             (["--detector", str(det), "--ref", str(classifier_ref), "--allow-mismatch"], "holds classifier features"),
             (["--features", "classifier", "--ref", str(edm_ref)], "records no feature space")]
    for args, message in cases:
        code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(tmp_path / "x.npz"), *args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    code, _, err = run_cli_args(capsys, "fid", "calc", "--images", str(tmp_path / "x.npz"), "--features", "classifier",
                            "--detector", str(det), "--ref", str(classifier_ref))
    assert code == 2 and "--detector names an Inception file" in err and err.count("\n") == 1


def test_data_without_labels_are_refused_in_one_line(cache, tmp_path, capsys, monkeypatch, digits):
    from discodiff.data import LOADERS, ArrayDataset

    images, _ = digits
    monkeypatch.setitem(LOADERS, "no-labels", lambda cfg: ArrayDataset(pixels=images[:20], name="no-labels"))
    code, _, err = run_cli_args(capsys, "fid", "ref", "--data", "no-labels", "--features", "classifier",
                            "--out", str(tmp_path / "r.npz"))
    assert code == 2 and "has no class labels" in err and "--features inception" in err and err.count("\n") == 1
    assert not any(p.name.startswith("no-labels") for p in (cache / "classifiers").glob("*"))
    with pytest.raises(FIDError, match="no class labels"):
        C.classifier_features(DataConfig(name="no-labels"))


# ---- the class balance ---------------------------------------------------------------------------------------

def test_class_tv_is_zero_for_the_data_and_high_for_one_class(cache, digits):
    images, labels = digits
    clf = C.classifier_features(DataConfig(name="digits"), notice=lambda *_: None)
    data = stats_of_images(images, clf, batch=512).features
    same = clf.class_balance(data, data)
    assert same["class_tv"] == 0.0 and same["confidence"] == same["data_confidence"]
    assert sum(same["class_frequencies"]) == pytest.approx(1.0)
    threes = clf(images[labels == 3]).numpy()
    one = clf.class_balance(threes, data)
    assert one["class_tv"] > 0.8 and np.argmax(one["class_frequencies"]) == 3
    # the class frequencies the classifier reads off the data are close to the labels' (accuracy well above 0.8)
    label_freq = np.bincount(labels.numpy(), minlength=10) / len(labels)
    assert 0.5 * np.abs(np.array(same["data_class_frequencies"]) - label_freq).sum() < 0.1
    # a wrong image size is refused in one line
    with pytest.raises(FIDError, match="takes 1x8x8 images"):
        clf(np.zeros((2, 16, 16, 1), np.uint8))


def test_the_class_matched_distance_removes_the_class_mix_and_only_that(cache, digits):
    images, labels = digits
    clf = C.classifier_features(DataConfig(name="digits"), notice=lambda *_: None)
    ref = stats_of_images(images, clf, batch=512)
    predicted = clf.probabilities(ref.features).argmax(1).numpy()
    # real images in the wrong mix: every image the classifier calls 0-4 three times, 5-9 once
    skewed = np.concatenate([ref.features] + [ref.features[predicted < 5]] * 2)
    res = clf.class_balance(skewed, ref.features, ref)
    assert res["class_tv"] > 0.15 and fid_from_stats(FIDStats.from_features(skewed), ref) > 1.0
    # reweighted to the data's mix, each row counts as often as in the data: the data's own mean and covariance
    assert res["fid_class_matched"] < 1e-3
    half = ref.features[: len(ref.features) // 2]   # a mix close to the data's: the reweighting changes little
    near = clf.class_balance(half, ref.features, ref)
    plain = fid_from_stats(FIDStats.from_features(half), ref)
    assert abs(near["fid_class_matched"] - plain) < 0.5 * plain


# ---- fid gen in the classifier's features ---------------------------------------------------------------------

def test_fid_gen_with_classifier_features(cache, tmp_path, capsys, monkeypatch, digits):
    """`fid gen --features classifier` on a tiny untrained run over the digits: the run's own classifier reference
    is made (beside, not in place of, the Inception one) and the class balance is reported."""
    from discodiff.networks import BACKBONES
    monkeypatch.setitem(BACKBONES, "cls-test-flat", FlatMLP)
    cfg = RunConfig(preset="cls-test", data=DataConfig(name="digits", options={"max_images": 200}),
                    model=ModelConfig(data_shape=[1, 8, 8], num_latents=0,
                                      network={"name": "cls-test-flat", "hidden": 16, "depth": 2, "emb_dim": 8}))
    run = write_untrained_run(tmp_path / "run", cfg)
    res = tmp_path / "gen.json"
    args = ["fid", "gen", "--run-dir", str(run), "--num", "20", "--batch", "10", "--steps", "2", "--sampler", "euler",
            "--features", "classifier", "--out", str(res)]
    code, out, err = run_cli_args(capsys, *args)
    assert code == 0, err
    assert (run / "fid-ref-classifier.npz").is_file() and not (run / "fid-ref.npz").exists()
    d = json.loads(res.read_text())
    assert d["features"] == "classifier" and d["ref_num"] == 200 and np.isfinite(d["fid"])
    assert 0 <= d["class_tv"] <= 1 and len(d["class_frequencies"]) == 10
    code, out, err = run_cli_args(capsys, *args)  # the second time, both the classifier and the reference are reused
    assert code == 0, err
    assert "using the classifier" in err and "reusing the reference statistics" in err
    assert json.loads(res.read_text())["fid"] == pytest.approx(d["fid"], rel=1e-6)
