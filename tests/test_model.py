"""The DisCo-Diff model object: guidance, seeding, save/load and resume, all on tiny toy runs."""
import pickle

import pytest
import torch
from conftest import TINY_TOY

from discodiff.checkpoint import CheckpointError, load_tensors
from discodiff.cli import main
from discodiff.config import preset_config
from discodiff.model import DiscoDiff
from discodiff.pipeline import generate, sample_latents, sampler_from_name, shared_latents
from discodiff.runs import Run
from discodiff.sampling import karras_sigmas


def _load(run_dir):
    """(model, prior) as `discodiff sample` loads them."""
    run = Run(run_dir)
    return run.load_model(), run.load_prior()


def _generate(model, prior, seeds, steps, **kw):
    return generate(model, list(seeds), karras_sigmas(steps), prior=prior, **kw)


def _train(run_dir, overrides_args=(), kimg=2):
    main(["train", "--preset", "toy2d", "--run-dir", str(run_dir), "--kimg", str(kimg),
          *TINY_TOY, *overrides_args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    _train(run)
    main(["train-prior", "--run-dir", str(run), "--kimg", "1", "--batch", "64", "--quiet"])
    return run


def test_guidance_zero_is_conditional_and_guidance_changes_output(trained_run):
    model, _ = _load(trained_run)
    x, sigma, z = torch.randn(8, 2), torch.full((8,), 2.0), torch.randint(8, (8, 1))
    cond = model.denoise(x, sigma, z=z)
    torch.testing.assert_close(model.make_denoiser(z, guidance=0.0)(x, sigma), cond)
    uncond = model.denoise(x, sigma)  # no z: the learned null latent
    torch.testing.assert_close(model.make_denoiser(z, guidance=1.5)(x, sigma), 2.5 * cond - 1.5 * uncond)


def test_same_seed_same_samples_whatever_the_batch(trained_run):
    model, prior = _load(trained_run)
    x_all, z_all = _generate(model, prior, range(10, 22), 8)
    x_a, z_a = _generate(model, prior, range(10, 15), 8)
    x_b, z_b = _generate(model, prior, range(15, 22), 8)
    torch.testing.assert_close(torch.cat([x_a, x_b]), x_all, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.cat([z_a, z_b]), z_all)
    x_one, _ = _generate(model, prior, [17], 8)  # any sample can be drawn again alone
    torch.testing.assert_close(x_one[0], x_all[7], rtol=1e-5, atol=1e-5)
    churn = sampler_from_name("edm", S_churn=10)
    x_churn1, _ = _generate(model, prior, range(10, 14), 8, sampler=churn)
    x_churn2, _ = _generate(model, prior, range(12, 14), 8, sampler=churn)
    torch.testing.assert_close(x_churn1[2:], x_churn2, rtol=1e-5, atol=1e-5)


def test_load_model_equals_the_model_training_returned(tmp_path, tiny_toy_overrides):
    """Run.load_model / load_prior read back bit for bit the EMA model train_stage1 returned and the prior
    train_prior fitted."""
    from discodiff.runs import resolve_run
    from discodiff.train.prior import train_prior
    from discodiff.train.stage1 import train_stage1

    over = {**tiny_toy_overrides, "train": {**tiny_toy_overrides["train"], "kimg": 0.256, "tick_kimg": 0.128,
                                             "snapshot_ticks": 1}, "prior_train": {"kimg": 0.256, "batch": 64}}
    run = tmp_path / "run"
    cfg, data = resolve_run(run, preset="toy2d", overrides=over)
    Run.create(run, cfg)
    trained = train_stage1(run, cfg, data, quiet=True).eval()
    x, sigma, z = torch.randn(16, 2), torch.rand(16) * 3 + 0.01, torch.randint(8, (16, 1))
    fresh = DiscoDiff(cfg.model).eval()  # untrained weights of the same seed differ: the comparison can fail
    with torch.no_grad():
        assert not torch.equal(fresh.denoise(x, sigma, z=z), trained.denoise(x, sigma, z=z))
        loaded = Run(run).load_model()
        assert torch.equal(loaded.denoise(x, sigma, z=z), trained.denoise(x, sigma, z=z))
        assert torch.equal(loaded.denoise(x, sigma), trained.denoise(x, sigma))  # the learned null latent
        assert torch.equal(loaded.encode_logits(x), trained.encode_logits(x))
    prior = train_prior(run, cfg, data, trained, quiet=True)
    loaded, loaded_prior = _load(run)
    assert torch.equal(sample_latents(loaded, loaded_prior, range(64)), sample_latents(trained, prior, range(64)))
    assert torch.equal(_generate(loaded, loaded_prior, range(4), 4)[0], _generate(trained, prior, range(4), 4)[0])


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(straight, kimg=2)
    _train(resumed, kimg=1)
    _train(resumed, kimg=2)  # same command with a longer duration continues from the saved state
    a, b = load_tensors(straight / "model.safetensors"), load_tensors(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (resumed / "log.txt").read_text()
    assert "resuming stage I from 1.0 kimg" in log


def test_baseline_has_no_latent_modules(tmp_path):
    cfg = preset_config("toy2d", {"model": {"num_latents": 0}})
    model = DiscoDiff(cfg.model)
    assert model.encoder is None
    assert not any("latent" in k or "centre_table" in k for k in model.state_dict())
    x, _ = _generate(model, None, range(3), 3)
    assert x.shape == (3, 2) and torch.isfinite(x).all()


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


@pytest.mark.parametrize("target", ["model.safetensors", "prior.safetensors", "state"])
def test_pickled_files_are_refused_without_running_them(trained_run, tmp_path, monkeypatch, target):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.chdir(tmp_path)
    if target == "state":
        path = sorted((run / "state").glob("stage1-*"))[-1] / "weights.safetensors"
    else:
        path = run / target
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        if target == "state":
            from discodiff.checkpoint import latest_training_state
            latest_training_state(run, "stage1")
        else:
            _load(run)
    torch_save = run / "model.safetensors"
    torch.save({"x": _Evil()}, torch_save)
    with pytest.raises(CheckpointError):
        Run(run).load_model()
    assert not (tmp_path / "PWNED").exists()


def test_sample_latents_match_generate(trained_run):
    model, prior = _load(trained_run)
    _, z = _generate(model, prior, range(30, 40), 2)
    assert torch.equal(sample_latents(model, prior, range(30, 40)), z)
    x_given, z_given = _generate(model, prior, range(30, 40), 2, z=z)  # passing the same z changes nothing
    assert torch.equal(z_given, z)
    torch.testing.assert_close(x_given, _generate(model, prior, range(30, 40), 2)[0])


def test_shared_latents_give_each_row_its_first_seeds_draw(trained_run):
    model, prior = _load(trained_run)
    seeds = list(range(20, 27))  # 7 seeds in rows of 3: the last row is cut short
    z = shared_latents(model, prior, seeds, 3)
    assert z.shape == (7, model.num_latents)
    own = sample_latents(model, prior, seeds)
    for start in (0, 3, 6):
        assert torch.equal(z[start:start + 3], own[start].expand_as(z[start:start + 3]))
