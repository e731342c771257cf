"""Exponential moving average of weights with a half-life measured in training images (EDM)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, halflife_kimg: float, rampup: float | None = 0.05):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.halflife_kimg, self.rampup = halflife_kimg, rampup

    def beta(self, batch: int, cur_nimg: int) -> float:
        """beta = 0.5 ** (batch / halflife_nimg); the ramp-up caps the half-life at rampup * images seen."""
        halflife = self.halflife_kimg * 1000
        if self.rampup is not None:
            halflife = min(halflife, cur_nimg * self.rampup)
        return 0.5 ** (batch / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, module: nn.Module, batch: int, cur_nimg: int) -> None:
        beta = self.beta(batch, cur_nimg)
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, module.parameters())]
        torch._foreach_lerp_(ema_params, params, 1 - beta)  # one call for all tensors
        for b_ema, b in zip(self.module.buffers(), module.buffers()):
            b_ema.copy_(b)
