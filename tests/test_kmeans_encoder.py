"""The fixed k-means encoder (networks/kmeans.py): clusters recovered, the residual latents refining them, hard codes
through every path that reads the encoder, fitted once on the whole training set by stage I, and its config."""
import pytest
import torch
from safetensors.torch import load_file

from discodiff.cli import main
from discodiff.config import ConfigError, ModelConfig, preset_config
from discodiff.data import load_dataset
from discodiff.latents import gumbel_softmax
from discodiff.model import DiscoDiff
from discodiff.networks import build_encoder, init_encoder_from_data
from discodiff.networks.kmeans import KMeansEncoder, lloyd, nearest
from discodiff.runs import Run

pytestmark = [pytest.mark.usefixtures("one_thread")]


def separated_groups(k=4, per=100, dim=8, spread=0.05, seed=0):
    """k groups of `per` points around k far-apart centres [k, dim] (unit basis vectors times 3)."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(k, dim)
    groups = torch.arange(k).repeat_interleave(per)
    return centres[groups] + spread * torch.randn(k * per, dim, generator=g), groups, centres


def test_nearest_is_the_squared_distance_argmin():
    g = torch.Generator().manual_seed(1)
    u, c = torch.randn(300, 5, generator=g), torch.randn(7, 5, generator=g)
    assert torch.equal(nearest(u, c, chunk=64), torch.cdist(u, c).argmin(1))


def test_kmeans_recovers_separated_groups():
    u, groups, centres = separated_groups()
    found = lloyd(u, 4, iterations=10, generator=torch.Generator().manual_seed(0))
    z = nearest(u, found)
    # each group on one code of its own, and every code a group's mean
    assert all(len(z[groups == c].unique()) == 1 for c in range(4)) and len(z.unique()) == 4
    for c in range(4):
        assert torch.allclose(found[z[groups == c][0]], u[groups == c].mean(0), atol=1e-5)
        assert (found[z[groups == c][0]] - centres[c]).norm() < 0.05


def test_residual_latents_refine_the_partition():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 1, 4, 4, generator=g)
    enc = KMeansEncoder(16, num_latents=3, codebook_size=8, iterations=10)
    assert enc.init_from_dataset(x, generator=torch.Generator().manual_seed(0))
    z = enc.codes(x)
    u, errors, reconstruction = x.flatten(1), [x.flatten(1).square().sum(1).mean()], torch.zeros(600, 16)
    for i in range(3):
        reconstruction = reconstruction + enc.centroids[i][z[:, i]]
        errors.append((u - reconstruction).square().sum(1).mean())
    # each latent quantises what the ones before it left over, so the error falls with every latent
    assert all(later < earlier * 0.95 for earlier, later in zip(errors, errors[1:])), errors
    # and latent i is the nearest centroid to that residual
    residual = u - enc.centroids[0][z[:, 0]]
    assert torch.equal(z[:, 1], nearest(residual, enc.centroids[1]))


def test_logits_are_hard_codes_for_every_reader():
    u, groups, _ = separated_groups()
    x = u.reshape(-1, 2, 2, 2)
    enc = KMeansEncoder(8, num_latents=2, codebook_size=4, iterations=5)
    enc.init_from_dataset(x, generator=torch.Generator().manual_seed(0))
    logits = enc(x)
    assert logits.shape == (400, 2, 4) and torch.equal(logits.argmax(-1), enc.codes(x))
    # a Gumbel-Softmax draw (what stage I and the prior's targets use) is the code itself, at any temperature
    for tau in (0.3, 1.0, 3.0):
        draw = gumbel_softmax(logits, tau, hard=True, generator=torch.Generator().manual_seed(3)).argmax(-1)
        assert torch.equal(draw, enc.codes(x))
        soft = gumbel_softmax(logits, tau, hard=False, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(soft, torch.nn.functional.one_hot(enc.codes(x), 4).float())


def test_fitted_once_reproducibly_and_saved_with_the_weights():
    x = torch.randn(200, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    a, b = (KMeansEncoder(4, 2, 4) for _ in range(2))
    with pytest.raises(RuntimeError, match="no centroids yet"):
        a(x)
    assert a.init_from_dataset(x, generator=torch.Generator().manual_seed(5))
    assert b.init_from_dataset(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.centroids, b.centroids)
    kept = a.centroids.clone()
    assert not a.init_from_dataset(torch.randn_like(x)) and torch.equal(a.centroids, kept)  # a resumed run keeps them
    fresh = KMeansEncoder(4, 2, 4)
    fresh.load_state_dict(a.state_dict())
    assert torch.equal(fresh(x), a(x)) and not fresh.init_from_dataset(x)
    # without a generator, the global one (seeded by the training seed) fixes the partition
    c, d = KMeansEncoder(4, 2, 4), KMeansEncoder(4, 2, 4)
    torch.manual_seed(6)
    c.init_from_dataset(x)
    torch.manual_seed(6)
    d.init_from_dataset(x)
    assert torch.equal(c.centroids, d.centroids)
    with pytest.raises(ValueError, match="at least codebook_size = 4"):
        KMeansEncoder(4, 1, 4).init_from_dataset(x[:3])


def test_trainer_hook_fits_on_the_whole_dataset_not_the_batch():
    x = torch.randn(300, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    enc = KMeansEncoder(4, 1, 8)
    init_encoder_from_data(enc, x[:8], dataset=x)
    assert bool(enc.fitted) and len(enc.codes(x).unique()) == 8  # 8 codes: a batch of 8 could not have fitted them


def test_config_names_the_kmeans_encoder():
    # naming another architecture by --set drops the preset's ViT options, which the k-means encoder does not take
    cfg = preset_config("digits", {"model": {"encoder": {"name": "kmeans"}}})
    assert cfg.model.encoder == {"name": "kmeans"}
    assert preset_config("digits", {"model": {"encoder": {"width": 16}}}).model.encoder["patch_size"] == 4
    enc = build_encoder(cfg.model)
    assert isinstance(enc, KMeansEncoder) and enc.centroids.shape[:2] == (4, 16) and not list(enc.parameters())
    with pytest.raises(ConfigError, match="kmeans encoder: iterations"):
        build_encoder(ModelConfig(data_shape=[1, 8, 8], num_latents=2, encoder={"name": "kmeans", "iterations": 0}))
    with pytest.raises(ConfigError, match="continuous latents need a learned encoder"):
        build_encoder(ModelConfig(data_shape=[1, 8, 8], num_latents=2, latent_type="continuous",
                                  encoder={"name": "kmeans"}))


def test_stage1_and_prior_with_the_kmeans_encoder(tmp_path):
    from conftest import FEW_DIGITS, TINY_DIGITS_OVERRIDES, set_args

    run = tmp_path / "km"
    tiny = set_args({**TINY_DIGITS_OVERRIDES, "model": {"network": TINY_DIGITS_OVERRIDES["model"]["network"]}})
    main(["train", "--preset", "digits", "--run-dir", str(run), "--kimg", "0.064", "--quiet", *tiny, *FEW_DIGITS,
          "--set", "model.encoder.name=kmeans", "--set", "model.num_latents=2", "--set", "model.codebook_size=8"])
    weights = load_file(run / "model.safetensors")
    assert bool(weights["encoder.fitted"]) and weights["encoder.centroids"].shape == (2, 8, 64)
    cfg = Run(run).config
    model = DiscoDiff.load(run / "model.safetensors", cfg.model)
    x = load_dataset(cfg.data).x
    assert len(x) == 300
    z = model.encode(x)
    # fitted on all 300 training images: every code of the first latent holds images, and the encoder is the
    # residual k-means of those images, not of one batch of 32
    assert len(z[:, 0].unique()) == 8
    again = KMeansEncoder(64, 2, 8)
    again.load_state_dict(model.encoder.state_dict())
    assert torch.equal(again.codes(x), z)
    main(["train-prior", "--run-dir", str(run), "--kimg", "0.256", "--batch", "64", "--quiet"])
    assert (run / "prior.safetensors").exists()


def test_fashion16_kmeans_preset_is_the_swept_k_means_variant():
    """The preset is fashion16 with the overrides the k-means sweep passed (--disco-set model.encoder.name=kmeans
    model.num_latents=1 model.codebook_size=256), so its runs are the measured ones, sampled as fashion16 is (no
    guidance: the classifier's features chose it)."""
    from discodiff.config import preset_config

    preset = preset_config("fashion16-kmeans").to_dict()
    swept = preset_config("fashion16", {"model": {"encoder": {"name": "kmeans"}, "num_latents": 1,
                                                  "codebook_size": 256}}).to_dict()
    assert preset["sample"]["guidance"] == 0.0 and preset["sample"]["sampler"] == "heun"
    for key in ("model", "data", "train", "prior_train", "sample"):
        assert preset[key] == swept[key]
    assert preset["model"]["encoder"] == {"name": "kmeans"}  # no ViT options carried over
