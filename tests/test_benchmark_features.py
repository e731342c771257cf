"""The comparison benchmarks' --features option (benchmarks/common.py): the detectors it gives, the refusal of data
without labels before any training, the names of the report and cache files, the second space's table and report
entries, and sample_fid's class balance in the classifier's features. In seconds (a shortened classifier training)."""
import argparse

import numpy as np
import pytest
import torch
from conftest import FlatMLP, save_tiny_detector

from benchmarks import common
from discodiff.config import DataConfig, ModelConfig
from discodiff.errors import ConfigError, FIDError
from discodiff.metrics import classifier as C

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder of the module's own (the digits classifier trains once, shortened)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setattr(C, "MIN_STEPS", 300)
    mp.setenv("DISCODIFF_CACHE_DIR", str(root))
    yield root
    mp.undo()


def test_the_option_and_the_file_names():
    ap = argparse.ArgumentParser()
    common.add_features_option(ap)
    assert ap.parse_args([]).features == "inception"
    assert ap.parse_args(["--features", "both"]).features == "both"
    with pytest.raises(SystemExit):
        ap.parse_args(["--features", "clip"])
    # the Inception results keep their report name (with both too); the classifier's alone get a suffix
    assert [common.features_suffix(f) for f in ("inception", "both", "classifier")] == ["", "", "-classifier"]
    assert common.metric_name("inception") == "FID" and common.metric_name("classifier") == "FD (classifier)"


def test_detectors_of_each_choice_and_the_refusal_of_data_without_labels(cache, tmp_path, monkeypatch):
    det_file = save_tiny_detector(tmp_path / "tiny.pt")
    digits = DataConfig(name="digits")
    one = common.feature_detectors("inception", digits, detector=det_file)
    assert list(one) == ["inception"] and common.space_suffix(one["inception"]) == ""
    both = common.feature_detectors("both", digits, detector=det_file)
    assert list(both) == ["inception", "classifier"]  # Inception leads: its results keep the report's keys
    assert common.space_suffix(both["classifier"]) == "-classifier"

    from discodiff.data import LOADERS, ArrayDataset, load_dataset, to_uint8
    images = to_uint8(load_dataset(digits).x[:20])
    monkeypatch.setitem(LOADERS, "no-labels", lambda cfg: ArrayDataset(pixels=images, name="no-labels"))
    for features in ("classifier", "both"):
        with pytest.raises(FIDError, match="no class labels") as e:
            common.feature_detectors(features, DataConfig(name="no-labels"), detector=det_file)
        assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)  # the scripts' one-line error
    assert not any(p.name.startswith("no-labels") for p in (cache / "classifiers").glob("*"))
    assert list(common.feature_detectors("inception", DataConfig(name="no-labels"), detector=det_file)) == \
        ["inception"]


def test_the_second_space_beside_the_first():
    tables = {"inception": "T1", "classifier": "T2"}
    results = {"inception": {"a": 1}, "classifier": {"a": 2}}
    joined = common.join_tables(tables)
    assert joined.startswith("T1\n\nin the classifier's features (its Fréchet distance in place of the FID):\nT2")
    assert common.second_space(results, tables) == {"results_classifier": {"a": 2}, "table_classifier": "T2"}
    assert common.second_space(results, key="rows") == {"rows_classifier": {"a": 2}}
    assert common.second_space({"classifier": {"a": 2}}, {"classifier": "T2"}) == {}
    assert common.join_tables({"classifier": "T2"}).startswith("in the classifier's features")
    assert common.balance_text({"class_tv": 0.0312, "confidence": 0.944}) == "0.031/0.94"
    assert common.balance_text({"fid": 1.0}) == "-"


def test_sample_fid_gives_the_class_balance_in_the_classifiers_features(cache, monkeypatch):
    from discodiff.analysis.quality import sample_fid
    from discodiff.data import load_dataset, to_uint8
    from discodiff.metrics.fid import FIDStats
    from discodiff.model import DiscoDiff
    from discodiff.networks import BACKBONES

    monkeypatch.setitem(BACKBONES, "bench-test-flat", FlatMLP)
    torch.manual_seed(0)
    model = DiscoDiff(ModelConfig(data_shape=[1, 8, 8], num_latents=0,
                                  network={"name": "bench-test-flat", "hidden": 16, "depth": 2, "emb_dim": 8}))
    clf = common.feature_detector("classifier", DataConfig(name="digits"))
    ref = FIDStats.from_features(clf(to_uint8(load_dataset(DataConfig(name="digits")).x[:200])))
    r = sample_fid(model, None, list(range(12)), ref, clf, steps=1, sampler="euler")
    assert np.isfinite(r["fid"]) and 0 <= r["class_tv"] <= 1 and 0 < r["confidence"] <= 1
    assert len(r["class_frequencies"]) == 10
