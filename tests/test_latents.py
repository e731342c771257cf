import math

import pytest
import torch

from discodiff.config import ConfigError, ModelConfig, preset_config
from discodiff.edm import EDMLoss
from discodiff.latents import (LatentEmbedding, codebook_usage, disagreement, gumbel_softmax, moved_copies,
                              noise_level_focus, one_hot, posterior_entropy, scale_gradient, usage_penalty)
from discodiff.model import DiscoDiff
from discodiff.runs import resolve_run


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


def test_training_loss_adds_the_weighted_usage_penalty_to_every_sample():
    y = torch.randn(8, 2)
    plain = _tiny_discrete().training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    model = _tiny_discrete(usage_weight=0.3)
    loss = model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, plain + 0.3 * usage_penalty(model.encoder(y)))
    both = _tiny_discrete(usage_weight=0.3, confidence_weight=0.2)
    loss_both = both.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    logits = both.encoder(y)
    torch.testing.assert_close(loss_both, plain + 0.3 * usage_penalty(logits) + 0.2 * posterior_entropy(logits))
    loss.sum().backward()  # and its gradient reaches the encoder
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_scale_gradient_is_the_identity_forward_and_weighs_each_sample_backward():
    x = torch.randn(3, 2, 4, requires_grad=True)
    y = scale_gradient(x, torch.tensor([0.0, 1.0, 2.5]))
    assert torch.equal(y, x)
    (y * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 3.0, 7.5]).view(3, 1, 1).expand(3, 2, 4))


def test_noise_level_focus_rises_with_sigma_and_averages_one():
    w = noise_level_focus(torch.tensor([0.05, 0.5, 5.0]), 0.5)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    raw = torch.tensor([0.0025 / 0.2525, 0.5, 25 / 25.25])  # sigma^2 / (sigma^2 + 0.25)
    torch.testing.assert_close(w, raw / raw.mean())


def _gradients(model, y, seed=4):
    model.zero_grad()
    model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(seed)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_latent_sigma_focus_changes_what_the_encoder_learns_and_nothing_else():
    y = torch.randn(16, 2)
    plain, focused = _tiny_discrete(), _tiny_discrete(latent_sigma_focus=0.5)
    loss_plain = plain.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    loss_focused = focused.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss_focused, loss_plain)  # the same noise levels, noise and latents
    g_plain, g_focused = _gradients(plain, y), _gradients(focused, y)
    assert g_plain.keys() == g_focused.keys()
    for name in g_plain:
        if name.startswith("encoder."):
            assert not torch.allclose(g_focused[name], g_plain[name]), name
        else:
            torch.testing.assert_close(g_focused[name], g_plain[name])


def test_moved_copies_move_each_image_by_its_own_offset_and_repeat_the_edges():
    y = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    assert torch.equal(moved_copies(y, 0), y)
    out = moved_copies(y, 2, generator=torch.Generator().manual_seed(3))
    dy, dx = torch.randint(-2, 3, (2, 2), generator=torch.Generator().manual_seed(3))
    for b in range(2):
        for i in range(5):
            for j in range(6):
                src = y[b, :, min(max(i + dy[b], 0), 4), min(max(j + dx[b], 0), 5)]
                assert torch.equal(out[b, :, i, j], src)
    mirrored = moved_copies(y, 0, flip=True, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(mirrored[b], y[b]) or torch.equal(mirrored[b], y[b].flip(-1)) for b in range(2))


def test_disagreement_is_low_only_when_both_views_are_sure_of_the_same_code():
    sure = torch.tensor([[[20.0, 0.0, 0.0]]])
    other = torch.tensor([[[0.0, 20.0, 0.0]]])
    unsure = torch.zeros(1, 1, 3)
    assert disagreement(sure, sure) < 1e-6
    torch.testing.assert_close(disagreement(unsure, unsure), torch.tensor(math.log(3)))
    assert disagreement(sure, other) > 10


def test_the_invariance_term_trains_the_encoder_on_images_and_is_refused_elsewhere(tmp_path):
    cfg = preset_config("digits", {"model": {"data_shape": [1, 8, 8], "num_latents": 2, "invariance_weight": 0.5,
                                             "invariance_shift": 1, "invariance_flip": True}})
    torch.manual_seed(0)
    model = DiscoDiff(cfg.model)
    y = torch.randn(4, *cfg.model.data_shape)
    model.training_loss(y, loss_fn=EDMLoss(), generator=torch.Generator().manual_seed(0)).sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert "invariance 0.5" in cfg.model.latent_summary()
    with pytest.raises(ConfigError, match="are not images"):
        resolve_run(tmp_path / "run", preset="toy2d", overrides={"model": {"invariance_weight": 0.1}})


def test_the_penalties_in_force_are_named_in_the_log_lines():
    assert ModelConfig(num_latents=2, codebook_size=3).latent_summary() == "m=2 k=3"
    assert ModelConfig(num_latents=2, codebook_size=3, usage_weight=0.1, confidence_weight=0.1).latent_summary() == \
        "m=2 k=3 (against collapse: usage 0.1, confidence 0.1)"
    assert ModelConfig(num_latents=2, codebook_size=3, latent_sigma_focus=0.5).latent_summary() == \
        "m=2 k=3, encoder focused on sigma > 0.5"


@pytest.mark.parametrize("model,needle", [
    ({"usage_weight": -0.1}, "model.usage_weight must be >= 0"),
    ({"confidence_weight": -1}, "model.confidence_weight must be >= 0"),
    ({"latent_sigma_focus": -0.5}, "model.latent_sigma_focus must be >= 0"),
    ({"invariance_weight": -1}, "model.invariance_weight must be >= 0"),
    ({"usage_weight": 0.1, "latent_type": "continuous"}, "model.usage_weight acts on a discrete latent's codes"),
    ({"confidence_weight": 0.1, "latent_type": "continuous"}, "continuous latents have none"),
])
def test_bad_usage_weights_are_refused(model, needle):
    with pytest.raises(ConfigError) as e:
        preset_config("digits", {"model": model})
    assert needle in str(e.value)
