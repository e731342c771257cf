"""Discrete latents: Gumbel-Softmax relaxation, the learned null latent, and codebook statistics."""
from __future__ import annotations

import torch
from torch import nn


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, *, hard: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot sample of Cat(softmax(logits)) over the last axis.

    Ours rather than torch's because torch's takes no generator, and seeded runs must be reproducible.
    `hard=True` returns exact one-hots in the forward pass with the soft sample's gradient (straight-through).
    """
    if tau <= 0:
        raise ValueError(f"Gumbel-Softmax temperature must be positive, got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    exp_noise = -torch.log(u.clamp_min(1e-20))  # Exp(1) noise; g = -log(Exp(1)) is Gumbel(0, 1)
    g = -torch.log(exp_noise.clamp_min(1e-20))
    y_soft = ((logits.float() + g) / tau).softmax(-1)
    if not hard:
        return y_soft
    y_hard = nn.functional.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(y_soft.dtype)
    return (y_hard - y_soft).detach() + y_soft


def one_hot(z: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Integer latents [B, m] -> float one-hots [B, m, k]."""
    return nn.functional.one_hot(z.long(), codebook_size).float()


def null_mask(batch: int, p_null: float, *, generator=None, device=None) -> torch.Tensor:
    """Per-sample latent dropout: True where the latent is replaced by the learned null latent."""
    return torch.rand(batch, generator=generator, device=device) < p_null


class LatentEmbedding(nn.Module):
    """Maps (relaxed) one-hot latents [B, m, k] to tokens [B, m, dim], one embedding table per latent position.

    The lookup is a matmul, so soft and straight-through samples pass gradients back to the encoder. Rows where
    `null_latent` is True get a learned null sequence instead: that is the unconditional model for guidance.
    """

    def __init__(self, num_latents: int, codebook_size: int, dim: int, init_std: float = 1.0):
        super().__init__()
        self.num_latents, self.codebook_size, self.dim = num_latents, codebook_size, dim
        self.table = nn.Parameter(torch.randn(num_latents, codebook_size, dim) * init_std)
        self.null = nn.Parameter(torch.randn(num_latents, dim) * init_std)

    def forward(self, latents: torch.Tensor | None, null_latent: torch.Tensor | None, batch: int) -> torch.Tensor:
        if latents is None:  # no latent given at all: the unconditional model
            return self.null.expand(batch, -1, -1)
        tokens = torch.einsum("bmk,mkd->bmd", latents.to(self.table.dtype), self.table)
        if null_latent is not None:
            tokens = torch.where(null_latent.view(-1, 1, 1), self.null.unsqueeze(0), tokens)
        return tokens


def codebook_usage(z: torch.Tensor, codebook_size: int) -> dict:
    """Per-latent perplexity of the empirical code distribution and the number of codes in use."""
    z = z.long()
    counts = torch.stack([torch.bincount(z[:, i], minlength=codebook_size) for i in range(z.shape[1])]).float()
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    return {"perplexity": entropy.exp().tolist(), "codes_used": (counts > 0).sum(1).tolist(),
            "counts": counts.long().tolist()}
