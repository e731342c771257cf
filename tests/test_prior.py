import math

import pytest
import torch

from discodiff.prior import ARPrior


def test_prior_is_causal():
    torch.manual_seed(0)
    prior = ARPrior(5, 7, depth=2, width=32, heads=4).eval()
    z = torch.randint(7, (3, 5))
    logits, _ = prior(z)
    for j in range(5):
        z2 = z.clone()
        z2[:, j] = (z2[:, j] + 1) % 7
        logits2, _ = prior(z2)
        # the logits that predict z_0..z_j never see z_j
        torch.testing.assert_close(logits[:, : j + 1], logits2[:, : j + 1])
        if j < 4:
            assert not torch.allclose(logits[:, j + 1:], logits2[:, j + 1:])


def _known_sequences(n, gen):
    """z_0 ~ Cat(0.6, 0.3, 0.1, 0, ...), z_1 = (z_0 + 1) mod k: entropy H(z_0) per sequence."""
    z0 = torch.multinomial(torch.tensor([0.6, 0.3, 0.1, 0.0]), n, replacement=True, generator=gen)
    return torch.stack([z0, (z0 + 1) % 4], 1)


def test_prior_learns_a_known_distribution_and_samples_it():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    prior = ARPrior(2, 4, depth=1, width=32, heads=2)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = prior(_known_sequences(256, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    entropy = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / 2  # per token
    assert float(prior.nll(_known_sequences(4096, gen))) == pytest.approx(entropy, abs=0.03)
    z = prior.eval().sample(torch.rand(4000, 2, generator=gen))
    assert z.min() >= 0 and z.max() < 4
    assert float((z[:, 1] == (z[:, 0] + 1) % 4).float().mean()) > 0.99  # the learned dependency
    learned = prior(torch.zeros(1, 0, dtype=torch.long))[0][0, 0].softmax(-1)
    torch.testing.assert_close(learned, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.06, rtol=0)
    freq = torch.bincount(z[:, 0], minlength=4).float() / 4000  # the sampler draws from what was learned
    torch.testing.assert_close(freq, learned, atol=0.025, rtol=0)


def test_single_latent_and_class_conditioning():
    torch.manual_seed(0)
    prior = ARPrior(1, 3, num_classes=2, depth=1, width=16, heads=2).eval()
    logits, loss = prior(torch.tensor([[1], [2]]), torch.tensor([0, 1]))
    assert logits.shape == (2, 1, 3) and torch.isfinite(loss)
    assert not torch.allclose(logits[0], logits[1])  # the class token matters
    z = prior.sample(torch.rand(10, 1), torch.zeros(10, dtype=torch.long))
    assert z.shape == (10, 1) and z.max() < 3


def test_samples_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    prior = ARPrior(4, 16, depth=1, width=32, heads=2).eval()
    u = torch.rand(12, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(prior.sample(u), torch.cat([prior.sample(u[:5]), prior.sample(u[5:])]))


def test_prior_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ARPrior(0, 4)
    with pytest.raises(ValueError):
        ARPrior(2, 4, width=30, heads=4)
    with pytest.raises(ValueError):
        ARPrior(2, 4).sample(torch.rand(1, 2), temperature=0)
