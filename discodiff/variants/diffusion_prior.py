"""Stage II for continuous latents: a small EDM diffusion model over the latent vectors z [B, D].

The paper's continuous-latent baseline (Table 3) samples its latents with "a DiT-style DM built on the same
Transformer as the AR model"; so does this one. z is cut into the m tokens the encoder made it from (D / m
coordinates each), and the backbone is a transformer of the autoregressive prior's depth, width and heads over them
(not causal), with the noise level and the class added to every token. Around it are EDM's preconditioning and loss
(edm.Denoiser, edm.EDMLoss), and sampling solves the ODE with the project's Heun sampler on karras_sigmas: a sample
is a deterministic function of its initial noise, which pipeline.generate draws from each seed's own generator.

The model sees the latents standardised per coordinate, u = (z - shift) / scale, with the exact mean and standard
deviation of the aggregate posterior (`fit_standardisation`). So EDM's sigma_data = 1 fits whatever scale the KL
weight left the latents at: near N(0, I) for a collapsed encoder, spread far wider for one that memorises the data.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..edm import Denoiser, EDMLoss
from ..networks.layers import PositionalEmbedding, TransformerBlock, class_embedding, zero_init
from ..prior import Prior
from ..sampling import karras_sigmas, sample_heun

# EDM's training noise levels, ln sigma ~ N(-1.2, 1.2^2), are set for sigma_data = 0.5; the standardised latents have
# sigma_data = 1, so the same levels relative to the data's scale are twice as large.
P_MEAN, P_STD = -1.2 + math.log(2.0), 1.2


class TokenTransformer(nn.Module):
    """The backbone F(u_in, c_noise, c) over the m tokens of a latent vector [B, D]: a linear map of each token to
    `width` plus a learned position, the embeddings of the noise level and the class added to every token, pre-norm
    transformer layers, and a zero-initialised linear map back (so F = 0 at first, as EDM's networks start)."""

    def __init__(self, num_tokens: int, token_width: int, num_classes: int = 0, depth: int = 4, width: int = 128,
                 heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.num_tokens, self.token_width = num_tokens, token_width
        self.inp = nn.Linear(token_width, width)
        self.pos = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.noise_embed = nn.Sequential(PositionalEmbedding(width), nn.Linear(width, width), nn.SiLU(),
                                         nn.Linear(width, width))
        self.class_embed = class_embedding(num_classes, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = zero_init(nn.Linear(width, token_width))

    def forward(self, x, c_noise, *, class_labels=None, latents=None, null_latent=None):
        B = x.shape[0]
        emb = self.noise_embed(c_noise.reshape(-1).expand(B))
        if self.class_embed is not None and class_labels is not None:
            emb = emb + self.class_embed(class_labels.to(emb.dtype))
        h = self.inp(x.reshape(B, self.num_tokens, self.token_width)) + self.pos + emb[:, None]
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h)).reshape(B, -1)


class DiffusionPrior(Prior):
    """p(z [, c]) over continuous latents z [B, D] made of `num_tokens` tokens; `steps` Heun steps to sample."""

    def __init__(self, latent_dim: int, num_tokens: int, num_classes: int = 0, depth: int = 4, width: int = 128,
                 heads: int = 4, dropout: float = 0.0, steps: int = 32):
        super().__init__()
        if num_tokens < 1 or latent_dim % num_tokens:
            raise ValueError(f"a latent of {latent_dim} entries cannot be cut into {num_tokens} equal tokens")
        if steps < 1:
            raise ValueError(f"the diffusion prior needs at least one sampling step, got {steps}")
        self.latent_dim, self.num_tokens, self.num_classes, self.steps = latent_dim, num_tokens, num_classes, steps
        net = TokenTransformer(num_tokens, latent_dim // num_tokens, num_classes, depth, width, heads, dropout)
        self.denoiser = Denoiser(net, sigma_data=1.0)
        self.loss_fn = EDMLoss(P_MEAN, P_STD, sigma_data=1.0)
        self.register_buffer("shift", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    @torch.no_grad()
    def fit_standardisation(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        """shift and scale from the posteriors N(mean_n, exp(logvar_n)) of the data [N, ...]: the mean and standard
        deviation of each coordinate under their mixture, exactly (E[z] = mean of mean_n; E[z^2] = mean of
        var_n + mean_n^2), so no sample of it is needed."""
        mean, var = mean.flatten(1).double(), logvar.flatten(1).double().exp()
        mu = mean.mean(0)
        std = ((var + mean.square()).mean(0) - mu.square()).clamp_min(1e-12).sqrt()
        self.shift.copy_(mu)
        self.scale.copy_(std)

    def _class_onehot(self, class_labels, batch: int, device) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if class_labels is None:  # no class given: the all-zero input, as the denoiser's dropped class
            return torch.zeros(batch, self.num_classes, device=device)
        return nn.functional.one_hot(class_labels.long().to(device), self.num_classes).float()

    def training_loss(self, z: torch.Tensor, class_labels=None, *, generator=None) -> torch.Tensor:
        """The mean EDM loss over latents z [B, D] (posterior samples of the frozen encoder)."""
        u = (z.float() - self.shift) / self.scale
        labels = self._class_onehot(class_labels, len(z), z.device)
        return self.loss_fn(self.denoiser, u, generator=generator, class_labels=labels).mean()

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, class_labels=None, temperature: float = 1.0) -> torch.Tensor:
        """Draws z [B, D] from unit Gaussian noise [B, D], one row per sample: the probability-flow ODE from
        sigma_max = 80 to 0 by Heun. `temperature` scales the initial noise (below 1: draws nearer the modes).

        The ODE adds no randomness of its own, so each z is a function of its own row of noise, whatever the batch."""
        if temperature <= 0:
            raise ValueError(f"prior temperature must be positive, got {temperature}")
        sigmas = karras_sigmas(self.steps, device=noise.device)
        labels = self._class_onehot(class_labels, len(noise), noise.device)

        def denoise(x, sigma):
            return self.denoiser(x, sigma, class_labels=labels)

        u = sample_heun(denoise, noise.float() * temperature * sigmas[0].float(), sigmas)
        return self.shift + self.scale * u

    @classmethod
    def model_args(cls, cfg) -> tuple:
        """A continuous latent of D = latent_size entries in m tokens, and the classes (prior_train.network: the
        transformer's sizes, as the autoregressive prior takes them, plus an optional "steps")."""
        return cfg.latent_size, cfg.num_latents, cfg.num_classes
