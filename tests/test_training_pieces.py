"""The small pieces of the training loop: non-finite gradients, EMA."""
import math

import torch
from torch import nn

from discodiff.ema import EMA
from discodiff.train.common import neutralise_nonfinite


def test_nonfinite_gradient_entries_are_zeroed_and_counted():
    a, b, c = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([1.0, float("nan"), 2.0])
    b.grad = torch.tensor([[float("inf"), 3.0], [-float("inf"), 4.0]])
    count = neutralise_nonfinite([a, b, c])  # c has no gradient
    assert int(count) == 3
    assert torch.equal(a.grad, torch.tensor([1.0, 0.0, 2.0]))
    assert torch.equal(b.grad, torch.tensor([[0.0, 3.0], [0.0, 4.0]]))
    assert int(neutralise_nonfinite([a, b])) == 0  # finite entries are left alone


def test_ema_halflife_in_images():
    net = nn.Linear(2, 2)
    ema = EMA(net, halflife_kimg=1.0, rampup=None)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    for _ in range(10):  # 10 batches of 100 images = one half-life
        ema.update(net, batch=100, cur_nimg=10**6)
    # after one half-life the EMA has moved half way to the new weights
    assert torch.allclose(ema.module.weight, start + 0.5, atol=1e-6)
    assert math.isclose(ema.beta(100, 10**6), 0.5 ** 0.1)
