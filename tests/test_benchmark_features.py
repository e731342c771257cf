"""The comparison benchmarks' --features option (benchmarks/common.py): the detectors it gives, the refusal of data
without labels before any training, the names of the report and cache files, the second space's table and report
entries, sample_fid's class balance in the classifier's features and its samples kept for a second space; the
autoguidance benchmark's family filter and the weak runs it trains. In seconds (a shortened classifier training)."""
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


def test_sample_fid_samples_once_for_two_feature_spaces(cache, monkeypatch):
    """With a `samples` dict, a second call under the same settings and another detector draws nothing, and
    scores the same images: its result is that of a call that samples afresh."""
    from discodiff.analysis import quality
    from discodiff.data import load_dataset, to_uint8
    from discodiff.metrics.fid import FIDStats
    from discodiff.model import DiscoDiff
    from discodiff.networks import BACKBONES

    monkeypatch.setitem(BACKBONES, "bench-test-flat", FlatMLP)
    torch.manual_seed(0)
    model = DiscoDiff(ModelConfig(data_shape=[1, 8, 8], num_latents=0,
                                  network={"name": "bench-test-flat", "hidden": 16, "depth": 2, "emb_dim": 8}))
    clf = common.feature_detector("classifier", DataConfig(name="digits"))
    images = to_uint8(load_dataset(DataConfig(name="digits")).x[:200])
    ref = FIDStats.from_features(clf(images))
    pixels = lambda x: x.reshape(len(x), -1).float()  # a second "feature space": the pixels themselves  # noqa: E731
    pixel_ref = FIDStats.from_features(pixels(images))
    calls = []
    real = quality.sample_batches
    monkeypatch.setattr(quality, "sample_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    seeds, drawn = list(range(12)), {}
    a = quality.sample_fid(model, None, seeds, ref, clf, steps=2, sampler="euler", batch=5, samples=drawn)
    b = quality.sample_fid(model, None, seeds, pixel_ref, pixels, steps=2, sampler="euler", batch=5, samples=drawn,
                           bootstrap=3)  # (the bootstrap count does not decide the samples)
    assert len(calls) == 1 and len(drawn) == 1
    fresh = quality.sample_fid(model, None, seeds, pixel_ref, pixels, steps=2, sampler="euler", batch=5, bootstrap=3)
    assert len(calls) == 2 and b["fid"] == pytest.approx(fresh["fid"], rel=1e-6) and np.isfinite(a["fid"])
    quality.sample_fid(model, None, seeds, ref, clf, steps=3, sampler="euler", batch=5, samples=drawn)
    assert len(calls) == 3 and len(drawn) == 2  # other settings: sampled afresh, kept beside


def test_the_autoguidance_benchmark_selects_families_and_trains_only_the_weak_runs_it_samples(tmp_path, monkeypatch):
    from benchmarks import autoguidance as A

    args = argparse.Namespace(
        weights=[0.5], width_scales=[0.5], kimg_scales=[0.25], latent_guidance=[(1.0, (0.0, 1.0))],
        families="EDM + AG,DisCo + LG,DisCo + AG (z)", quick=False, seeds=[0], preset="digits", base_sets=[],
        prior_sets=[])
    rows = A.rows_of(args)
    assert sorted({r["family"] for r in rows}) == ["DisCo", "DisCo + AG (z)", "DisCo + LG", "EDM", "EDM + AG"]
    args.families = "DisCo + AG,DisCo + LG + AG (z)"  # a family without its form keeps every form
    assert sorted({r["family"] for r in A.rows_of(args)}) == [
        "DisCo", "DisCo + AG (null)", "DisCo + AG (plain)", "DisCo + AG (z)", "DisCo + LG + AG (z)", "EDM"]
    trained = []
    monkeypatch.setattr(A, "train", lambda run_dir, *a: trained.append(run_dir.name))
    args.families = "EDM + AG,DisCo + AG (z)"
    runs = A.train_all(tmp_path, args)
    assert trained == ["s0-edm", "s0-disco", "s0-edm-weak-w0.5-k0.25", "s0-disco-weak-w0.5-k0.25"]
    assert sorted(runs[0]) == ["disco", "disco-weak-w0.5-k0.25", "edm", "edm-weak-w0.5-k0.25"]


def test_the_autoguidance_plot_of_one_budget_draws_each_row_per_seed(tmp_path):
    """With one budget a line per family would be single points: the plot gives each row a bar per seed instead."""
    pytest.importorskip("matplotlib")
    from benchmarks import autoguidance as A

    rows = [{"seed": s, "sampler": "heun", "budget": 70, "family": f, "fid": 1.0 + s + i, "fid_std": 0.1,
             "evaluations": 70.0, **({"w": 0.25, "weak": "edm-weak-w0.5-k0.25"} if "AG" in f else {})}
            for s in (0, 1) for i, f in enumerate(("EDM", "EDM + AG"))]
    assert A.row_label(rows[1]) == "EDM + AG, w 0.25, weak w0.5-k0.25"
    A.plot(rows, tmp_path / "one.png", "classifier")
    A.plot([*rows, *({**r, "budget": 36, "evaluations": 35.0} for r in rows)], tmp_path / "two.png", "classifier")
    assert (tmp_path / "one.png").stat().st_size > 0 and (tmp_path / "two.png").stat().st_size > 0
