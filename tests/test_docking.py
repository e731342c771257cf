"""Pointer latents over a conditioning set, on the dock3d docking analogue: the data set, the masked Gumbel-Softmax,
permutation equivariance, the set prior's masks, the measures and a tiny end-to-end run (seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from discodiff.config import RunConfig, merge, preset_config
from discodiff.data import dock3d
from discodiff.latents import latent_type
from discodiff.model import DiscoDiff
from discodiff.variants import docking
from discodiff.variants.pointer import SetPrior
from discodiff.variants.sets import NEG

SMALL = {"seed": 3, "receptors": 6, "unseen_receptors": 3, "train_per_receptor": 3, "eval_per_receptor": 2}
TINY_NET = {"network": {"name": "set_transformer", "width": 16, "depth": 1, "heads": 2, "set_depth": 1},
            "encoder": {"name": "set_pointer", "width": 16, "heads": 2, "depth": 1}}


def tiny_cfg(latent_type="pointer", m=2, **model):
    return preset_config("dock3d", {"model": {**TINY_NET, "latent_type": latent_type, "num_latents": m, **model},
                                    "prior_train": {"network": {"width": 16, "heads": 2}}}).model


@pytest.fixture(scope="module")
def data():
    return dock3d.generate(**SMALL)


def test_the_data_set_is_seeded_and_documented(data, tmp_path):
    again = dock3d.generate(**SMALL)
    for name in dock3d.ARRAYS:
        assert np.array_equal(getattr(data, name), getattr(again, name)), name
    assert not np.array_equal(data.ligand_pos, dock3d.generate(**{**SMALL, "seed": 4}).ligand_pos)
    data.save(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as f:
        for name in dock3d.ARRAYS:  # every array is in the file with its documentation
            assert name in f and str(f[f"doc_{name}"])
    loaded = dock3d.Dock3D.load(tmp_path / "d.npz")
    assert np.array_equal(loaded.receptor_pos, data.receptor_pos)
    assert set(np.unique(data.receptor_split[data.complex_receptor[data.indices("unseen")]])) == {1}
    assert set(np.unique(data.receptor_split[data.complex_receptor[data.indices("train")]])) == {0}
    assert 24 <= data.receptor_size.min() and data.receptor_size.max() <= 64
    assert 2 <= data.num_pockets.min() and data.num_pockets.max() <= 4
    assert 5 <= data.shape_size.min() and data.shape_size.max() <= 12
    b = dock3d.batch(data, np.arange(len(data.complex_split)))
    m = dock3d.pose_measures(b["y"], b)  # every bound pose succeeds in its own pocket
    assert m["success"].all() and (m["pocket"].numpy() == data.complex_pocket).all()


def test_pointer_gumbel_never_picks_padding_and_passes_gradients(data):
    cfg = tiny_cfg()
    lt = latent_type(cfg)
    b = dock3d.batch(data, np.arange(8))
    raw = torch.randn(8, 2, 64, requires_grad=True)
    from discodiff.variants.sets import masked_logits
    logits = masked_logits(raw, b["rec_mask"])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        z = lt.training_sample(logits, generator=gen)
        picked = z.argmax(-1)
        assert b["rec_mask"].gather(1, picked).all()
        assert torch.allclose(z.sum(-1), torch.ones(8, 2))
    (z * torch.randn_like(z)).sum().backward()
    assert raw.grad.abs().sum() > 0
    assert (raw.grad.transpose(1, 2)[~b["rec_mask"]] == 0).all()  # nothing reaches a padded element
    # the encoder of a model puts NEG on the padded elements itself
    model = DiscoDiff(cfg)
    enc = model.encoder(b, b["y"])
    assert (enc.transpose(1, 2)[~b["rec_mask"]] == NEG).all()


def test_pointer_latents_are_permutation_equivariant(data):
    torch.manual_seed(0)
    model = DiscoDiff(tiny_cfg()).eval()
    b = dock3d.batch(data, np.arange(4))
    n = int(b["rec_mask"].sum(1).min())
    perm = torch.randperm(n)
    pb = dict(b)
    for key in ("rec_pos", "rec_type", "rec_mask"):
        v = b[key].clone()
        v[:, :n] = b[key][:, perm]
        pb[key] = v
    with torch.no_grad():
        z = model.encoder(b, b["y"]).argmax(-1)
        zp = model.encoder(pb, b["y"]).argmax(-1)
    inverse = torch.argsort(perm)
    moved = torch.where(z < n, inverse[z.clamp_max(n - 1)], z)  # element j of b sits at inverse[j] in pb
    assert torch.equal(zp, moved)


@pytest.mark.parametrize("kind", ["pointer", "set_discrete"])
def test_the_set_prior_masks_its_logits(data, kind):
    cfg = tiny_cfg(kind)
    torch.manual_seed(0)
    prior = SetPrior.for_model(cfg, {"depth": 1, "width": 16, "heads": 2, "share": True})
    prior.init_from_denoiser(DiscoDiff(cfg))
    b = dock3d.batch(data, np.arange(6))
    u = torch.rand(6, 2)
    z = prior.sample(b, u)
    lp = prior.log_probs(b, z)
    assert torch.isfinite(prior.log_prob(b, z)).all()
    if kind == "pointer":
        assert b["rec_mask"].gather(1, z).all()
        assert (lp.exp().transpose(1, 2)[~b["rec_mask"]] == 0).all()
        assert torch.allclose(lp.exp().sum(-1), torch.ones(6, 2), atol=1e-5)
        hot = prior.sample(b, u, temperature=50.0)  # even flattened, padding keeps probability 0
        assert b["rec_mask"].gather(1, hot).all()
    else:
        assert lp.shape == (6, 2, cfg.codebook_size)
    with pytest.raises(ValueError):
        SetPrior.for_model(cfg, {"width": 32})


def test_measures_on_hand_made_poses(data):
    b = dock3d.batch(data, np.arange(3))
    exact = dock3d.pose_measures(b["y"], b)
    assert exact["success"].all() and exact["rmsd"].max() < 1e-5
    shifted = b["y"] + torch.tensor([1.5, 0.0, 0.0]) * b["lig_mask"].unsqueeze(-1)
    assert not dock3d.pose_measures(shifted, b)["success"].any()
    rot = torch.from_numpy(dock3d.random_rotation(np.random.default_rng(1))).float()
    turned = (b["lig_ref"] @ rot.T + torch.tensor([10.0, -3.0, 2.0])) * b["lig_mask"].unsqueeze(-1)
    assert dock3d.rmsd_aligned(turned, b["lig_ref"], b["lig_mask"]).max() < 1e-5
    bent = b["y"].clone()
    bent[:, 0] += 1.0
    assert (dock3d.rmsd_aligned(bent, b["lig_ref"], b["lig_mask"]) > 0.1).all()
    tv = dock3d.coverage_tv(np.array([0, 1, 0, 1, 0, 0]), np.array([0, 0, 0, 0, 1, 1]), np.array([2] * 6))
    assert tv == pytest.approx(0.25)  # receptor 0 covers both pockets evenly (0), receptor 1 one of two (0.5)


def test_tiny_train_and_sample_end_to_end(tmp_path):
    from click.testing import CliRunner

    from discodiff.cli import cli
    run = tmp_path / "run"
    opts = ["--set", "data.options.receptors=4", "--set", "data.options.unseen_receptors=2",
            "--set", "data.options.train_per_receptor=2", "--set", "data.options.eval_per_receptor=2",
            "--set", "model.network.width=16", "--set", "model.network.heads=2", "--set", "model.network.depth=1",
            "--set", "model.network.set_depth=1", "--set", "model.encoder.width=16", "--set", "model.encoder.heads=2",
            "--set", "model.encoder.depth=1", "--set", "prior_train.network.width=16",
            "--set", "prior_train.network.heads=2", "--set", "train.tick_kimg=0.05"]
    r = CliRunner().invoke(cli, ["train", "--preset", "dock3d", "--run-dir", str(run), "--kimg", "0.1", "--batch",
                                 "8", "--quiet", *opts], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["train-prior", "--run-dir", str(run), "--kimg", "0.05", "--batch", "8", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "poses.npz"
    r = CliRunner().invoke(cli, ["sample", "--run-dir", str(run), "--num", "2", "--steps", "3", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with np.load(out) as f:
        assert f["x"].shape == (8, 12, 3) and f["z"].shape == (8, 2)
        assert list(f["complex"]) == [c for c in f["complex"][::2] for _ in range(2)]
        data = dock3d.generate(seed=0, receptors=4, unseen_receptors=2, train_per_receptor=2, eval_per_receptor=2)
        assert set(f["complex"]) == set(data.indices("unseen"))
        assert (f["x"][~f["atom_mask"]] == 0).all()
    # the same seeds give the same poses; a plain model's samples work too
    out2 = tmp_path / "again.npz"
    CliRunner().invoke(cli, ["sample", "--run-dir", str(run), "--num", "2", "--steps", "3", "--out", str(out2),
                             "--batch", "3"], catch_exceptions=False)
    with np.load(out) as a, np.load(out2) as b:
        assert np.allclose(a["x"], b["x"], atol=1e-5) and np.array_equal(a["z"], b["z"])
    r = CliRunner().invoke(cli, ["sample", "--run-dir", str(run), "--num", "1", "--out", str(out2),
                                 "--complexes", "nope"])
    assert r.exit_code != 0 and "--complexes" in str(r.exception or r.output)


def test_stopped_docking_runs_resume_to_the_same_weights(tmp_path, monkeypatch):
    """Both stages of a docking run write training states at every tick; a run stopped half-way and started again
    ends with the weights of a run that was never stopped (bit for bit: one generator, its state saved)."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from discodiff.cli import cli
    opts = ["--set", "data.options.receptors=4", "--set", "data.options.unseen_receptors=2",
            "--set", "data.options.train_per_receptor=2", "--set", "data.options.eval_per_receptor=2",
            "--set", "model.network.width=16", "--set", "model.network.heads=2", "--set", "model.network.depth=1",
            "--set", "model.network.set_depth=1", "--set", "model.encoder.width=16", "--set", "model.encoder.heads=2",
            "--set", "model.encoder.depth=1", "--set", "prior_train.network.width=16",
            "--set", "prior_train.network.heads=2", "--set", "train.tick_kimg=0.04", "--batch", "8", "--quiet"]

    def invoke(*args):
        r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert r.exit_code == 0, r.output

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    invoke("train", "--preset", "dock3d", "--run-dir", str(whole), "--kimg", "0.08", *opts)
    invoke("train", "--preset", "dock3d", "--run-dir", str(stopped), "--kimg", "0.04", *opts)
    assert (stopped / "state").is_dir()
    invoke("train", "--preset", "dock3d", "--run-dir", str(stopped), "--kimg", "0.08", *opts)
    assert "resuming stage I" in (stopped / "log.txt").read_text()
    a, b = load_file(whole / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the prior: 8 steps of 8 with a tick every 2 steps; its set encoder unfreezes after the first 2 steps, so the
    # run stopped at its first tick resumes on the step that unfreezes it
    prior_opts = ["--kimg", "0.064", "--batch", "8", "--set", "prior_train.tick_kimg=0.016", "--quiet"]
    invoke("train-prior", "--run-dir", str(whole), *prior_opts)

    class Stopped(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        save_state(*args, **kwargs)
        raise Stopped

    save_state = docking.save_state
    monkeypatch.setattr(docking, "save_state", save_then_stop)
    with pytest.raises(Stopped):
        invoke("train-prior", "--run-dir", str(stopped), *prior_opts)
    monkeypatch.setattr(docking, "save_state", save_state)
    invoke("train-prior", "--run-dir", str(stopped), *prior_opts)
    assert "resuming the prior" in (stopped / "log.txt").read_text()
    a, b = load_file(whole / "prior.safetensors"), load_file(stopped / "prior.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
