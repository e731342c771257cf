"""How well a prior reproduces the encoder's latents: marginals, pairs, whole tuples; and the prior's report."""
import json
import shutil

import pytest
import torch
from conftest import run_cli, train_tiny_toy

from discodiff.analysis.codebook import pairwise_tv, prior_fit, unseen_share
from discodiff.cli import main


def test_pairwise_tv_sees_a_dependence_the_marginals_cannot():
    """z_1 = z_0 against z_1 independent of z_0, both uniform over k codes: equal marginals, and joint distributions
    k cells (mass 1/k each) against k^2 cells (1/k^2 each), whose total variation is exactly 1 - 1/k."""
    k = 4
    a = torch.arange(k).repeat_interleave(k)  # every (i, j) pair once: independent uniforms
    b = torch.arange(k).repeat(k)
    independent = torch.stack([a, b], 1)
    copied = torch.stack([a, a], 1)
    fit = prior_fit(independent, copied, copied, k)
    assert fit["prior"]["marginal_tv"] == pytest.approx([0.0, 0.0])
    assert pairwise_tv(independent, copied, k) == pytest.approx([1 - 1 / k])
    assert fit["prior"]["pairwise_tv_max"] == pytest.approx(1 - 1 / k)
    assert fit["floor"]["pairwise_tv_mean"] == 0.0 and fit["floor"]["unseen_share"] == 0.0
    # the tuples (i, j != i) never occur in the copied data: k(k-1) of k^2
    assert fit["prior"]["unseen_share"] == pytest.approx((k - 1) / k)
    assert fit["prior"]["distinct_tuples"] == k * k and fit["data_distinct_tuples"] == k


def test_unseen_share_counts_whole_tuples():
    ref = torch.tensor([[0, 1, 2], [3, 3, 3]])
    z = torch.tensor([[0, 1, 2], [0, 1, 3], [3, 3, 3], [2, 1, 0]])
    assert unseen_share(z, ref) == 0.5


@pytest.fixture(scope="module")
def toy_stage1(tmp_path_factory):
    run = tmp_path_factory.mktemp("prior-fit") / "run"
    train_tiny_toy(run)
    return run


def _prior(run, tmp_path, name, *extra):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    main(["train-prior", "--run-dir", str(dst), "--kimg", "1", "--batch", "64", "--quiet", *extra])
    return dst


def test_the_prior_report_holds_its_fit_against_a_floor(toy_stage1, tmp_path):
    run = _prior(toy_stage1, tmp_path, "plain")
    fit = json.loads((run / "prior_report.json").read_text())["fit"]
    assert set(fit) == {"prior", "floor", "num", "data_distinct_tuples"}
    for side in ("prior", "floor"):
        assert 0 <= fit[side]["unseen_share"] <= 1 and all(0 <= v <= 1 for v in fit[side]["marginal_tv"])
    assert "fit over" in (run / "log.txt").read_text()


def test_a_removed_option_is_refused_in_one_line_naming_the_commit_it_ran_at(toy_stage1, tmp_path, capsys):
    run = _prior(toy_stage1, tmp_path, "plain")
    code, _, err = run_cli(["train-prior", "--run-dir", str(run), "--set", "prior_train.ema_halflife_kimg=0.2",
                            "--quiet"], capsys)
    assert code == 2 and "prior_train.ema_halflife_kimg was removed" in err and "8b0f46c" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a config written before the removal, with the option at its neutral value, still loads
    cfg = json.loads((run / "config.json").read_text())
    cfg["prior_train"]["ema_halflife_kimg"] = 0.0
    cfg["model"]["usage_weight"] = cfg["model"]["confidence_weight"] = 0.0
    (run / "config.json").write_text(json.dumps(cfg))
    main(["train-prior", "--run-dir", str(run), "--kimg", "1.5", "--quiet"])
    assert "resuming the prior" in (run / "log.txt").read_text()


def test_another_prior_is_fitted_in_place_without_a_copy_of_the_stage_one_folder(toy_stage1, tmp_path, capsys):
    from discodiff.runs import Run
    run = _prior(toy_stage1, tmp_path, "plain")
    first = (run / "prior.safetensors").read_bytes()
    # another prior network on the same run: stage II's section may change, and the prior is fitted afresh
    main(["train-prior", "--run-dir", str(run), "--kimg", "1", "--batch", "64", "--quiet",
          "--set", "prior_train.network.depth=2"])
    assert "of another network (prior_train.network): fitting the prior afresh" in (run / "log.txt").read_text()
    assert (run / "prior.safetensors").read_bytes() != first
    assert Run(run).config.prior_train.network["depth"] == 2 and Run(run).prior_status() == "ok"
    assert len(Run(run).load_prior().blocks) == 2
    # a config that names another network than the prior was fitted with is refused in one line
    cfg = json.loads((run / "config.json").read_text())
    cfg["prior_train"]["network"]["depth"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["sample", "--run-dir", str(run), "--num", "2", "--out", str(tmp_path / "s.npz")], capsys)
    assert code == 2 and "not of the network prior_train.network names" in err and "Traceback" not in err, err
