"""Small building blocks shared by the networks (backbones, encoders and the prior)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


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


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens [B, N, D].

    `mask` [N, N] (per call) is boolean, True = may attend; `causal=True` lets token i attend only to tokens <= i
    (then no mask may be given); `dropout` drops attention weights, in training only.
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer layer (attention + GELU MLP, both residual): stable without warm-up.

    Used by the ViT encoder, the U-Net's latent-token encoder and (causal) the autoregressive prior.
    `dropout` follows the MLP's output, and also its hidden layer when `hidden_dropout`; `attn_dropout` drops
    attention weights; `causal` masks attention to earlier tokens.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 causal: bool = False, attn_dropout: float = 0.0, hidden_dropout: bool = True):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal=causal, dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), *([nn.Dropout(dropout)] if hidden_dropout else []),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def kmeans_pp(u: torch.Tensor, k: int, candidates: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007): k rows of u [N, D], each new one drawn with
    probability proportional to its squared distance to those already chosen (the best of a few draws)."""
    candidates = candidates or 2 + int(math.log(k))
    chosen = [u[torch.randint(len(u), ())]]
    d2 = (u - chosen[0]).square().sum(1)
    for _ in range(k - 1):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)  # fewer distinct points than k: repeat some
        idx = torch.multinomial(weights / weights.sum(), candidates, replacement=True)
        new_d2 = torch.minimum(d2, (u[None] - u[idx][:, None]).square().sum(-1))   # [candidates, N]
        best = new_d2.sum(1).argmin()
        chosen.append(u[idx[best]])
        d2 = new_d2[best]
    return torch.stack(chosen)


class Encoder(nn.Module):
    """The base of the encoders E(y) -> [B, m, outputs]. An encoder may need the data to start from: on a fresh run's
    first training batch (`init_from_data`), or, when `needs_dataset` is True, on the whole training set
    (`init_from_dataset`). Both return whether they changed anything; here they do nothing. `frozen` marks an encoder
    copied from another run and never trained (autoguidance's weak model): it is not initialised from the data
    either."""

    needs_dataset = False
    frozen = False

    def init_from_data(self, y: torch.Tensor) -> bool:
        return False

    def init_from_dataset(self, x: torch.Tensor) -> bool:
        return False
