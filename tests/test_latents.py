import math

import pytest
import torch

from discodiff.config import ConfigError, ModelConfig, preset_config
from discodiff.edm import EDMLoss
from discodiff.latents import REGULARISERS, LatentEmbedding, codebook_usage, gumbel_softmax, one_hot
from discodiff.model import DiscoDiff
from discodiff.variants.information import posterior_entropy, usage_penalty


def test_hard_samples_are_one_hot_and_pass_gradients():
    logits = torch.randn(32, 3, 5, requires_grad=True)
    y = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y.detach().sum(-1), torch.ones(32, 3))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    (y * torch.randn(5)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_soft_samples_are_distributions():
    logits = torch.randn(8, 2, 4)
    y = gumbel_softmax(logits, 2.0, hard=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y.sum(-1), torch.ones(8, 2))
    assert ((y > 0) & (y < 1)).all()


def test_same_generator_same_sample():
    logits = torch.randn(16, 2, 7)
    a = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(5))
    b = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(5))
    c = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hard_samples_follow_the_categorical_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 1, 4)
    z = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(0)).argmax(-1).flatten()
    freq = torch.bincount(z, minlength=4).float() / len(z)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_low_temperature_concentrates():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]]).expand(1000, 1, 3)
    soft_low = gumbel_softmax(logits, 0.01, hard=False, generator=torch.Generator().manual_seed(0))
    soft_high = gumbel_softmax(logits, 5.0, hard=False, generator=torch.Generator().manual_seed(0))
    assert float(soft_low.max(-1).values.mean()) > 0.99
    assert float(soft_high.max(-1).values.mean()) < 0.7


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError):
        gumbel_softmax(torch.zeros(1, 1, 2), 0.0)


def test_latent_embedding_null_and_lookup():
    emb = LatentEmbedding(2, 4, 8)
    z = torch.tensor([[0, 3], [1, 2]])
    tokens = emb(one_hot(z, 4), torch.tensor([False, True]), 2)
    torch.testing.assert_close(tokens[0, 0], emb.table[0, 0])
    torch.testing.assert_close(tokens[0, 1], emb.table[1, 3])
    torch.testing.assert_close(tokens[1], emb.null)  # dropped row: the learned null sequence
    torch.testing.assert_close(emb(None, None, 3), emb.null.expand(3, -1, -1))


def test_codebook_usage():
    stats = codebook_usage(torch.tensor([[0], [0], [1], [1]]), 4)
    assert stats["codes_used"] == [2]
    assert stats["perplexity"][0] == pytest.approx(2.0)


# ---- the code-usage penalty -------------------------------------------------------------------------------------

def test_usage_penalty_is_log_k_for_one_code_and_zero_for_an_even_spread():
    sure = torch.full((6, 1, 4), -30.0)
    sure[..., 2] = 30.0  # every image sure of code 2
    assert usage_penalty(sure).item() == pytest.approx(math.log(4), abs=1e-5)
    spread = torch.full((8, 1, 4), -30.0)
    spread[torch.arange(8), 0, torch.arange(8) % 4] = 30.0  # each code picked by two images, with certainty
    assert usage_penalty(spread).item() == pytest.approx(0.0, abs=1e-5)
    assert usage_penalty(torch.zeros(3, 1, 4)).item() == pytest.approx(0.0, abs=1e-6)  # unsure of all: no penalty
    # two latents: the mean over them. The second splits the images between codes 0 and 1 of 4: log 4 - log 2
    halves = torch.full((6, 1, 4), -30.0)
    halves[:3, 0, 0] = halves[3:, 0, 1] = 30.0
    two = torch.cat([sure, halves], 1)
    assert usage_penalty(two).item() == pytest.approx((math.log(4) + math.log(4) - math.log(2)) / 2, abs=1e-5)


def test_posterior_entropy_tells_an_unsure_encoder_from_a_sure_one():
    spread = torch.full((8, 1, 4), -30.0)
    spread[torch.arange(8), 0, torch.arange(8) % 4] = 30.0
    unsure = torch.zeros(8, 1, 4)
    assert usage_penalty(spread).item() == pytest.approx(usage_penalty(unsure).item(), abs=1e-5)  # both 0
    assert posterior_entropy(spread).item() == pytest.approx(0.0, abs=1e-5)
    assert posterior_entropy(unsure).item() == pytest.approx(math.log(4), abs=1e-6)
    # the two together are log k - I(y; z), with I computed directly from the joint of image and code
    logits = torch.randn(16, 3, 5)
    p = logits.softmax(-1)  # q(z | y) for 16 equally likely images
    marginal = p.mean(0)
    information = (p * (p / marginal).log()).sum(-1).mean(0)  # I per latent, [3]
    total = usage_penalty(logits) + posterior_entropy(logits)
    assert total.item() == pytest.approx((math.log(5) - information).mean().item(), abs=1e-5)


def test_usage_penalty_gradient_moves_images_off_the_crowded_code():
    logits = torch.zeros(4, 1, 3)
    logits[:, 0, 0] = 2.0  # every image leans to code 0
    logits.requires_grad_(True)
    usage_penalty(logits).backward()
    assert (logits.grad[:, 0, 0] > 0).all() and (logits.grad[:, 0, 1:] < 0).all()  # descent lowers code 0


def _tiny_discrete(**model) -> DiscoDiff:
    torch.manual_seed(0)
    return DiscoDiff(ModelConfig(data_shape=[2], num_latents=2, codebook_size=3,
                                 network={"name": "mlp", "hidden": 16, "depth": 3, "emb_dim": 8},
                                 encoder={"name": "mlp", "hidden": 16, "depth": 2}, **model))


def test_training_loss_is_algorithm_1_plus_the_weighted_regularisers():
    y = torch.randn(8, 2)
    plain = _tiny_discrete().training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    model = _tiny_discrete(regularisers={"information": 0.3})
    loss = model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    logits = model.encoder(y)
    torch.testing.assert_close(loss, plain + 0.3 * (usage_penalty(logits) + posterior_entropy(logits)))
    loss.sum().backward()  # and its gradient reaches the encoder
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_algorithm_1_by_hand():
    """The loss of one sample, recomputed from the paper's Algorithm 1 with the same random draws: z by
    Gumbel-Softmax of E(y), the null mask, then sigma and the noise of the EDM loss."""
    model = _tiny_discrete(p_null=0.5)
    y = torch.randn(8, 2)
    loss = model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    z = gumbel_softmax(model.encoder(y), 1.0, hard=True, generator=g)
    null = torch.rand(8, generator=g) < 0.5
    sigma = (torch.randn(8, generator=g) * 1.2 - 1.2).exp()
    n = torch.randn(y.shape, generator=g) * sigma[:, None]
    d = model.denoiser(y + n, sigma, latents=z, null_latent=null)
    expected = (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * (d - y).square().mean(1)
    torch.testing.assert_close(loss, expected)


def test_a_model_with_a_regulariser_the_registry_does_not_know_is_refused():
    assert "information" in REGULARISERS
    with pytest.raises(ConfigError, match="unknown regulariser model.regularisers.entropy"):
        preset_config("digits", {"model": {"regularisers": {"entropy": 0.1}}})


def test_the_regularisers_in_force_are_named_in_the_log_lines():
    assert ModelConfig(num_latents=2, codebook_size=3).latent_summary() == "m=2 k=3"
    assert ModelConfig(num_latents=2, codebook_size=3, regularisers={"information": 0.1}).latent_summary() == \
        "m=2 k=3 (regularisers: information 0.1)"


@pytest.mark.parametrize("model,needle", [
    ({"regularisers": {"information": -0.1}}, "model.regularisers.information must be a weight >= 0"),
    ({"regularisers": {"information": 0.1}, "latent_type": "continuous"}, "acts on a discrete latent's codes"),
    ({"usage_weight": 0.1, "confidence_weight": 0.2}, "now one term, model.regularisers.information"),
    ({"latent_sigma_focus": 0.5}, "model.latent_sigma_focus was removed"),
    ({"invariance_weight": 1.0}, "model.invariance_weight was removed"),
])
def test_bad_regulariser_settings_are_refused(model, needle):
    with pytest.raises(ConfigError) as e:
        preset_config("digits", {"model": model})
    assert needle in str(e.value)


def test_the_old_anti_collapse_weights_at_equal_values_are_the_information_term():
    cfg = preset_config("digits", {"model": {"usage_weight": 0.2, "confidence_weight": 0.2}})
    assert cfg.model.regularisers == {"information": 0.2}
