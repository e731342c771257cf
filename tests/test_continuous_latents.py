"""Continuous latents (the paper's Table 3 ablation): the Gaussian posterior and its KL, the latent in the denoiser,
the null latent and latent dropout, the diffusion prior, seeding, the command line, and the discrete default."""
import json
import math

import numpy as np
import pytest
from conftest import FEW_DIGITS, TINY_DIGITS_ARGS, run_cli
import torch

from discodiff.cli import main
from discodiff.config import ConfigError, ModelConfig, preset_config
from discodiff.variants.diffusion_prior import DiffusionPrior
from discodiff.edm import EDMLoss
from discodiff.latents import gumbel_softmax, null_mask
from discodiff.variants.continuous import gaussian_kl, reparameterise, split_posterior
from discodiff.model import DiscoDiff
from discodiff.pipeline import generate, sample_latents
from discodiff.runs import Run
from discodiff.sampling import karras_sigmas


pytestmark = [pytest.mark.usefixtures("one_thread")]


TINY_UNET = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
             "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2, "latent_depth": 1, "dropout": 0.0}
TINY_VIT = {"name": "vit", "patch_size": 4, "width": 16, "heads": 2, "depth": 1}


def _image_config(injection="embedding", **model) -> ModelConfig:
    """A continuous-latent model on 8x8 grey images: m = 2 tokens of a D = 8 latent."""
    cfg = ModelConfig(data_shape=[1, 8, 8], num_latents=2, codebook_size=4, latent_type="continuous", latent_dim=8,
                      network={**TINY_UNET, "latent_injection": injection}, encoder=dict(TINY_VIT))
    for key, value in model.items():
        setattr(cfg, key, value)
    return cfg


def _vector_config(**model) -> ModelConfig:
    """A continuous-latent model on 2-D vectors (MLP denoiser and encoder, no dropout anywhere)."""
    cfg = ModelConfig(data_shape=[2], num_latents=2, codebook_size=3, latent_type="continuous",
                      network={"name": "mlp", "hidden": 16, "depth": 3, "emb_dim": 8},
                      encoder={"name": "mlp", "hidden": 16, "depth": 2})
    for key, value in model.items():
        setattr(cfg, key, value)
    return cfg


# ---- the posterior and its KL ---------------------------------------------------------------------------------

def test_gaussian_kl_is_the_closed_form_summed_over_coordinates():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)
    assert torch.equal(gaussian_kl(torch.zeros(2, 6), torch.zeros(2, 6)), torch.zeros(2))  # q = p: no KL
    # one coordinate with mean 1 and variance e: (1 + e - 1 - 1) / 2
    assert float(gaussian_kl(torch.ones(1, 1), torch.ones(1, 1))) == pytest.approx((math.e - 1) / 2)


def test_split_posterior_and_reparameterised_samples():
    encoded = torch.randn(3, 2, 10)
    mean, logvar = split_posterior(encoded)
    assert mean.shape == logvar.shape == (3, 2, 5)
    assert torch.equal(mean, encoded[..., :5]) and torch.equal(logvar, encoded[..., 5:])
    assert float(split_posterior(torch.full((1, 1, 2), 1e4))[1].max()) == 20.0  # clamped: exp() stays finite

    mean = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25)], requires_grad=True)
    z = reparameterise(mean.expand(40000, 2), logvar.expand(40000, 2), generator=torch.Generator().manual_seed(0))
    assert z.shape == (40000, 2)
    torch.testing.assert_close(z.mean(0), mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.02, rtol=0)
    z.sum().backward()  # the sample is differentiable in the posterior's parameters
    assert mean.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0
    a = reparameterise(torch.zeros(4, 3), torch.zeros(4, 3), generator=torch.Generator().manual_seed(5))
    b = reparameterise(torch.zeros(4, 3), torch.zeros(4, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# ---- the model ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("injection", ["embedding", "cross_attention"])
def test_continuous_model_shapes_and_the_latent_reaching_the_denoiser(injection):
    torch.manual_seed(0)
    cfg = _image_config(injection)
    model = DiscoDiff(cfg).eval()
    with torch.no_grad():  # open the zero-initialised layers (as training would), so that z can change the output
        for p in model.denoiser.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    y = torch.randn(3, 1, 8, 8) * 0.5
    encoded = model.encoder(y)
    assert encoded.shape == (3, 2, 8)  # m tokens, mean and log-variance of D / m = 4 coordinates each
    z = model.encode(y)
    assert z.shape == (3, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z, split_posterior(encoded)[0].flatten(1))  # the oracle latent: the posterior mean
    drawn = model.encode(y, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 8) and not torch.equal(drawn, z)
    assert model.latent_input(z).shape == (3, 2, 4)

    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 2.0)
    with torch.no_grad():
        d_z, d_other = model.denoise(x, sigma, z=z), model.denoise(x, sigma, z=z + 1)
        d_null = model.denoise(x, sigma)
        d_mixed = model.denoise(x, sigma, z=z, null_latent=torch.tensor([False, True, False]))
        d_guided = model.make_denoiser(z, guidance=1.0)(x, sigma)
    assert not torch.allclose(d_z, d_other) and not torch.allclose(d_z, d_null)
    torch.testing.assert_close(d_mixed[1], d_null[1])  # a dropped row gets the learned null latent
    torch.testing.assert_close(d_mixed[0], d_z[0])
    torch.testing.assert_close(d_guided, 2 * d_z - d_null, atol=1e-5, rtol=1e-4)


def test_training_loss_adds_beta_times_the_kl_per_data_entry():
    torch.manual_seed(0)
    y = torch.randn(16, 2)
    losses = {}
    for beta in (0.0, 2.5):
        torch.manual_seed(0)
        model = DiscoDiff(_vector_config(kl_weight=beta))
        losses[beta] = model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(3))
    kl = gaussian_kl(*split_posterior(model.encoder(y)))
    assert losses[0.0].shape == (16,)
    torch.testing.assert_close(losses[2.5] - losses[0.0], 2.5 * kl / 2)  # d = 2 data entries
    assert _vector_config().beta == 1.0  # the default: the ELBO's balance


def test_latent_dropout_cuts_the_encoder_off_the_denoising_loss():
    y = torch.randn(32, 2)

    def encoder_grad(p_null, beta):
        torch.manual_seed(0)
        model = DiscoDiff(_vector_config(p_null=p_null, kl_weight=beta))
        g = torch.Generator().manual_seed(1)
        model.training_loss(y, loss_fn=EDMLoss(), generator=g).sum().backward()
        return sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)

    # p_null = 0.999999 drops every row of this batch (see the mask below): only the KL reaches the encoder
    assert bool(null_mask(32, 0.999999, generator=torch.Generator().manual_seed(0)).all())
    assert encoder_grad(0.999999, beta=0.0) == 0.0
    assert encoder_grad(0.999999, beta=1.0) > 0
    assert encoder_grad(0.0, beta=0.0) > 0


# ---- the discrete default -------------------------------------------------------------------------------------

def test_the_discrete_path_is_the_default_and_unchanged():
    cfg = preset_config("digits").model
    assert cfg.latent_type == "discrete" and not cfg.continuous and cfg.beta == 0.0
    assert cfg.latent_size == cfg.num_latents and cfg.token_width == cfg.codebook_size
    torch.manual_seed(0)
    model = DiscoDiff(ModelConfig(data_shape=[2], num_latents=2, codebook_size=3,
                                  network={"name": "mlp", "hidden": 16, "depth": 3, "emb_dim": 8},
                                  encoder={"name": "mlp", "hidden": 16, "depth": 2}))
    y = torch.randn(8, 2)
    assert model.encoder(y).shape == (8, 2, 3)
    loss = model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    # stage I's discrete loss, written out: Gumbel sample, then the dropout mask, then the EDM loss, one generator
    g = torch.Generator().manual_seed(4)
    latents = gumbel_softmax(model.encoder(y), 1.0, hard=True, generator=g)
    drop = null_mask(8, 0.1, generator=g)
    expected = EDMLoss()(model.denoiser, y, generator=g, latents=latents, null_latent=drop, class_labels=None)
    assert torch.equal(loss, expected)
    z = model.encode(y)
    assert z.dtype == torch.long and z.shape == (8, 2)


# ---- configuration errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,needle", [
    ({"latent_dim": 16}, "--latent-dim (model.latent_dim) applies to --latent-type continuous"),
    ({"kl_weight": 0.5}, "--kl-weight (model.kl_weight) applies to --latent-type continuous"),
    ({"latent_type": "continuous", "kl_weight": -0.1}, "--kl-weight (model.kl_weight) must be >= 0"),
    ({"latent_type": "continuous", "latent_dim": 10}, "must be a multiple of the 4 latent tokens"),
    ({"latent_type": "continuous", "latent_dim": 0}, "must be positive"),
    ({"latent_type": "continuous", "num_latents": 0}, "needs m >= 1"),
    ({"latent_type": "gaussian"}, "--latent-type (model.latent_type) must be one of discrete, continuous"),
])
def test_bad_latent_settings_are_refused(model, needle):
    with pytest.raises(ConfigError, match=None) as e:
        preset_config("digits", {"model": model})
    assert needle in str(e.value)


@pytest.mark.parametrize("args,needle", [
    (["--latent-dim", "8"], "--latent-dim (model.latent_dim) applies to --latent-type continuous"),
    (["--latent-type", "continuous", "--kl-weight", "-1"], "--kl-weight (model.kl_weight) must be >= 0"),
    (["--set", "model.latent_type=continuous", "--latent-dim", "6"], "multiple of the 4 latent tokens"),
])
def test_bad_latent_flags_give_one_line_before_anything_is_written(tmp_path, capsys, args, needle):
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(tmp_path / "r"), *args], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not (tmp_path / "r").exists()


# ---- the diffusion prior --------------------------------------------------------------------------------------

def test_standardisation_is_the_aggregate_posteriors_moments():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(50, 2, 3, generator=g) * 3 + 1, torch.randn(50, 2, 3, generator=g)
    prior = DiffusionPrior(6, 2, depth=1, width=16, heads=2)
    prior.fit_standardisation(mean, logvar)
    z = reparameterise(mean.repeat(4000, 1, 1), logvar.repeat(4000, 1, 1), generator=g).flatten(1)
    torch.testing.assert_close(prior.shift, z.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(prior.scale, z.std(0), atol=0.05, rtol=0.02)


def test_diffusion_prior_learns_a_correlated_gaussian_and_samples_by_seed():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0], [0.0, 0.0, -0.3, 0.3]])
    b = torch.tensor([3.0, -1.0, 0.5, 0.0])

    def data(n):
        return torch.randn(n, 4, generator=g) @ A.T + b

    prior = DiffusionPrior(4, 2, depth=1, width=32, heads=2, steps=16)
    ref = data(20000)
    prior.fit_standardisation(ref[:, None], torch.full((20000, 1, 4), -30.0))  # point posteriors: the data
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(400):
        loss = prior.training_loss(data(256), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    z = prior.sample(torch.randn(4000, 4, generator=g))
    torch.testing.assert_close(z.mean(0), b, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), A @ A.T, atol=0.3, rtol=0.1)
    corr = torch.corrcoef(z.T)[0, 1]
    assert float(corr) > 0.9  # the dependency between the coordinates, not only their scales
    noise = torch.randn(7, 4, generator=g)  # each row is its own sample, whatever the batch
    torch.testing.assert_close(prior.sample(noise), torch.cat([prior.sample(noise[:3]), prior.sample(noise[3:])]),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        prior.sample(noise, temperature=0)


def test_generate_draws_each_seeds_latent_and_image_from_that_seed_alone():
    torch.manual_seed(0)
    cfg = _image_config()
    model = DiscoDiff(cfg).eval()
    prior = DiffusionPrior.for_model(cfg, {"depth": 1, "width": 16, "heads": 2}).eval()
    sigmas = karras_sigmas(3)
    x, z = generate(model, range(5), sigmas, prior=prior)
    assert x.shape == (5, 1, 8, 8) and z.shape == (5, 8) and z.dtype == torch.float32
    x2, z2 = generate(model, [3, 4], sigmas, prior=prior)
    torch.testing.assert_close(z2, z[3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x2, x[3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sample_latents(model, prior, range(5)), z, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z[0], z[1])


# ---- the command line, end to end ----------------------------------------------------------------------------

TINY_DIGITS = (TINY_DIGITS_ARGS[:-1] + FEW_DIGITS
               + ["--set", 'prior_train.network={"depth": 1, "width": 16, "heads": 2, "steps": 4}', "--quiet"])


@pytest.fixture(scope="module")
def continuous_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("continuous") / "digits"
    main(["train", "--preset", "digits", "--run-dir", str(run), "--kimg", "0.128", "--lr", "0.005", "--latents", "2",
          "--latent-type", "continuous", "--latent-dim", "8", "--kl-weight", "0.5", *TINY_DIGITS])
    main(["train-prior", "--run-dir", str(run), "--kimg", "0.256", "--batch", "64", "--lr", "0.01", "--quiet"])
    return run


def test_train_prior_and_sample_round_trip(continuous_run, tmp_path, capsys):
    run = Run(continuous_run)
    m = run.config.model
    assert (m.latent_type, m.latent_dim, m.kl_weight, m.num_latents) == ("continuous", 8, 0.5, 2)
    assert isinstance(run.load_prior(), DiffusionPrior)
    report = json.loads((continuous_run / "prior_report.json").read_text())
    assert report["latent_fd"] >= 0 and report["latent_fd_floor"] >= 0 and report["posterior_kl_nats"] >= 0
    out = tmp_path / "s.npz"
    code, stdout, err = run_cli(["sample", "--run-dir", str(continuous_run), "--num", "5", "--seed", "3",
                                 "--out", str(out), "--batch", "2"], capsys)
    assert code in (0, None), err
    a = dict(np.load(out))
    assert a["z"].dtype == np.float32 and a["z"].shape == (5, 8)
    assert a["x"].dtype == np.uint8 and a["x"].shape == (5, 8, 8, 1)
    code, _, err = run_cli(["sample", "--run-dir", str(continuous_run), "--num", "2", "--seed", "6",
                            "--out", str(tmp_path / "t.npz")], capsys)
    assert code in (0, None), err
    b = dict(np.load(tmp_path / "t.npz"))  # seeds 6 and 7 drawn in another batch: the same samples
    np.testing.assert_allclose(b["z"], a["z"][3:], atol=1e-5, rtol=1e-5)
    assert np.abs(b["x"].astype(int) - a["x"][3:].astype(int)).max() <= 1


def test_codebook_analysis_refuses_a_continuous_run(continuous_run, tmp_path, capsys):
    code, _, err = run_cli(["analyze", "codebook", "--run-dir", str(continuous_run), "--out", str(tmp_path / "cb")],
                           capsys)
    assert code == 2 and "needs discrete latents" in err, err


def test_oracle_and_switching_analyses_run_on_a_continuous_run(continuous_run, tmp_path, capsys):
    from conftest import save_tiny_detector

    detector = save_tiny_detector(tmp_path / "tiny.pt", kernel=13)
    out = tmp_path / "fid"
    code, stdout, err = run_cli(["analyze", "oracle", "--run-dir", str(continuous_run), "--steps", "2", "--out",
                                 str(out), "--num", "4", "--detector", str(detector)], capsys)
    assert code == 0, err
    res = json.loads((out / "oracle.json").read_text())
    assert res["oracle"]["num"] == 4 and res["prior_tuples_seen_in_data"] is None and "gap (prior - oracle)" in stdout
    code, _, err = run_cli(["analyze", "switching", "--run-dir", str(continuous_run), "--out", str(tmp_path / "sw"),
                            "--num", "4", "--steps", "3", "--fractions", "0.5"], capsys)
    assert code == 0, err
