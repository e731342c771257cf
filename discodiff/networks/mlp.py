"""Networks for vector data [B, D]: a conditional MLP denoiser backbone and an MLP encoder."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..latents import LatentEmbedding
from .layers import PositionalEmbedding, class_embedding


class MLPDenoiser(nn.Module):
    """F(x_in, c_noise, z, c): an MLP whose every hidden layer receives an embedding of sigma, z and class.

    With `centred=True` it also names a learned centre mu(z) and scale s(z) per latent value; `edm.Denoiser`
    then preconditions around them, D = mu(z) + EDM_s(x - mu(z)), which makes the exact denoiser of one
    Gaussian component the network's zero point. Without latents (m = 0) mu and s are single learned values,
    so the baseline has the same parameterisation.
    """

    def __init__(self, dim: int, num_latents: int = 0, codebook_size: int = 0, num_classes: int = 0,
                 hidden: int = 128, depth: int = 4, emb_dim: int = 64, centred: bool = False,
                 sigma_data: float = 0.5, centre_init_std: float = 1.0):
        super().__init__()
        if depth < 2:
            raise ValueError("an MLP denoiser needs depth >= 2")
        self.dim, self.num_latents, self.codebook_size = dim, num_latents, codebook_size
        self.noise_embed = nn.Sequential(PositionalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                                         nn.Linear(emb_dim, emb_dim))
        self.latent_embed = LatentEmbedding(num_latents, codebook_size, emb_dim) if num_latents else None
        self.class_embed = class_embedding(num_classes, emb_dim)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 2))
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()
        self.has_centre = centred
        if centred:
            log_s = math.log(sigma_data)
            m = max(num_latents, 1)
            if num_latents:
                self.centre_table = nn.Parameter(torch.randn(num_latents, codebook_size, dim) * centre_init_std)
                self.log_scale_table = nn.Parameter(torch.full((num_latents, codebook_size), log_s / m))
            self.null_centre = nn.Parameter(torch.zeros(dim))
            self.null_log_scale = nn.Parameter(torch.tensor(log_s))

    def _embedding(self, c_noise, class_labels, latents, null_latent):
        emb = self.noise_embed(c_noise)
        if self.latent_embed is not None:
            emb = emb + self.latent_embed(latents, null_latent, c_noise.shape[0]).sum(1)
        if self.class_embed is not None and class_labels is not None:
            emb = emb + self.class_embed(class_labels.to(emb.dtype))
        return self.act(emb)

    def forward(self, x, c_noise, *, class_labels=None, latents=None, null_latent=None):
        emb = self._embedding(c_noise, class_labels, latents, null_latent)
        h = self.act(self.inp(x) + self.emb_proj[0](emb))
        for layer, proj in zip(self.hidden, self.emb_proj[1:]):
            h = self.act(layer(h) + proj(emb))
        return self.out(h)

    def centre(self, latents, null_latent):
        """(mu [B, D], log_scale [B]) for each sample; only defined when built with `centred=True`."""
        if latents is None:
            return self.null_centre.unsqueeze(0), self.null_log_scale.reshape(1)
        mu = torch.einsum("bmk,mkd->bd", latents.float(), self.centre_table)
        log_s = torch.einsum("bmk,mk->b", latents.float(), self.log_scale_table)
        if null_latent is not None:
            mu = torch.where(null_latent.view(-1, 1), self.null_centre, mu)
            log_s = torch.where(null_latent, self.null_log_scale, log_s)
        return mu, log_s


class MLPEncoder(nn.Module):
    """E(y): clean vector data [B, D] -> logits [B, m, k]. Sees no noise level and no class label."""

    def __init__(self, dim: int, num_latents: int, codebook_size: int, hidden: int = 128, depth: int = 3,
                 input_scale: float = 1.0):
        super().__init__()
        self.num_latents, self.codebook_size, self.input_scale = num_latents, codebook_size, input_scale
        layers, width = [], dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, num_latents * codebook_size))
        self.net = nn.Sequential(*layers)

    def forward(self, y):
        return self.net(y.flatten(1) / self.input_scale).view(-1, self.num_latents, self.codebook_size)
