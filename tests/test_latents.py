import pytest
import torch

from discodiff.latents import LatentEmbedding, codebook_usage, gumbel_softmax, one_hot


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
