"""The DisCo-Diff image encoder E(y): a Vision Transformer with m extra classification tokens."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Encoder, TransformerBlock


class ViTEncoder(Encoder):
    """E(y): clean images [B, C, H, W] -> logits [B, m, k]. Sees no noise level and no class label.

    The image is cut into patch_size x patch_size patches (zero-padded at the bottom/right when H or W is not a
    multiple of the patch size, e.g. 28 px with patch 8), m learnable classification tokens are prepended, and
    each of them, after the transformer, gives the logits of one latent (the paper's section 3.3).

    Heads: one linear head PER TOKEN rather than a shared one. The latents are independent categorical
    variables and the denoiser embeds each with its own table (LatentEmbedding: [m, k, dim]), so code j of
    latent 1 has nothing to do with code j of latent 2; a shared head would tie them and make the final tokens
    spend capacity on undoing that. The cost is m * width * k parameters, small next to the transformer.
    """

    def __init__(self, img_resolution: int, in_channels: int, num_latents: int, codebook_size: int,
                 patch_size: int = 4, width: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, input_scale: float = 1.0):
        super().__init__()
        if num_latents < 1 or codebook_size < 1:
            raise ValueError("a ViT encoder needs num_latents >= 1 and codebook_size >= 1")
        self.num_latents, self.codebook_size = num_latents, codebook_size
        self.patch_size, self.input_scale = patch_size, input_scale
        grid = math.ceil(img_resolution / patch_size)
        self.num_patches = grid * grid
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_tokens = nn.Parameter(torch.randn(1, num_latents, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_latents + self.num_patches, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        bound = 1 / math.sqrt(width)  # nn.Linear's default range: logits start near-uniform over codes
        self.head_weight = nn.Parameter(torch.empty(num_latents, width, codebook_size).uniform_(-bound, bound))
        self.head_bias = nn.Parameter(torch.zeros(num_latents, codebook_size))

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """The m classification tokens after the transformer and its final norm [B, m, width]."""
        x = y / self.input_scale
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, width]
        if tokens.shape[1] != self.num_patches:
            raise ValueError(f"ViT built for {self.num_patches} patches, got an image of size {tuple(y.shape[-2:])}")
        h = torch.cat([self.cls_tokens.expand(y.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.norm(h[:, :self.num_latents])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmd,mdk->bmk", self.features(y), self.head_weight) + self.head_bias
