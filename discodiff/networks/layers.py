"""Small building blocks shared by the backbones."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (here c_noise = ln(sigma)/4), as in EDM's DDPM++."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        if dim % 2:
            raise ValueError("embedding dimension must be even")
        self.dim, self.max_positions = dim, max_positions

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights and bias of a layer, so the branch it closes starts as the identity/no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def class_embedding(num_classes: int, dim: int) -> nn.Linear | None:
    """EDM's `map_label`: a one-hot (all zeros when dropped) through a bias-free linear layer."""
    if num_classes <= 0:
        return None
    layer = nn.Linear(num_classes, dim, bias=False)
    nn.init.normal_(layer.weight, std=1 / math.sqrt(num_classes))
    return layer
