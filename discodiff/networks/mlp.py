"""Networks for vector data [B, D]: a conditional MLP backbone F of the denoiser and an MLP encoder."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..edm import Denoiser, edm_scalings
from ..latents import LatentEmbedding
from .layers import Encoder, PositionalEmbedding, class_embedding, kmeans_pp


class MLPBackbone(nn.Module):
    """F(x_in, c_noise, z, c): an MLP whose every hidden layer receives an embedding of sigma, z and class.

    With `centred=True` it also names a learned centre mu(z) and scale s(z) per latent value; `CentredDenoiser`
    (which `networks.build_denoiser` puts around it) then preconditions around them, D = mu(z) + EDM_s(x - mu(z)),
    which makes the exact denoiser of one Gaussian component the network's zero point. Without latents (m = 0)
    mu and s are single learned values, so the baseline has the same parameterisation.

    `centre_gain` g stores the centre and log-scale tables divided by g and multiplies them back in `centre`:
    the function is unchanged, but Adam (whose steps are about lr in parameter units) moves the centres g times
    faster, so they reach the modes within a short toy run (see docs/toy2d.md). `latent_embedding=False`
    feeds z to the network only through mu(z) and s(z), as in the paper's toy model
    G = (F(z) - x) / (t^2 + sigma_1^2) + H(x, t), where H does not see z (the `toy2d-paper` preset).
    """

    def __init__(self, dim: int, num_latents: int = 0, codebook_size: int = 0, num_classes: int = 0,
                 hidden: int = 128, depth: int = 4, emb_dim: int = 64, centred: bool = False,
                 sigma_data: float = 0.5, centre_init_std: float = 1.0, centre_gain: float = 1.0,
                 latent_embedding: bool = True):
        super().__init__()
        if depth < 2:
            raise ValueError("an MLP backbone needs depth >= 2")
        if num_latents and not (latent_embedding or centred):
            raise ValueError("latent_embedding=False needs centred=True, or the latents would not be used at all")
        if centre_gain <= 0:
            raise ValueError(f"centre_gain must be positive, got {centre_gain}")
        self.dim, self.num_latents, self.codebook_size = dim, num_latents, codebook_size
        self.noise_embed = nn.Sequential(PositionalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                                         nn.Linear(emb_dim, emb_dim))
        self.latent_embed = (LatentEmbedding(num_latents, codebook_size, emb_dim)
                             if num_latents and latent_embedding else None)
        self.class_embed = class_embedding(num_classes, emb_dim)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 2))
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()
        self.centred = centred
        if centred:
            g, log_s = float(centre_gain), math.log(sigma_data)
            self.centre_gain = g
            m = max(num_latents, 1)
            if num_latents:
                self.centre_table = nn.Parameter(torch.randn(num_latents, codebook_size, dim) * centre_init_std / g)
                self.log_scale_table = nn.Parameter(torch.full((num_latents, codebook_size), log_s / m / g))
            self.null_centre = nn.Parameter(torch.zeros(dim))
            self.null_log_scale = nn.Parameter(torch.tensor(log_s / g))

    def silence_latents(self) -> None:
        """Zeroes the latent embedding (its tables and null sequence), which is the latents' only way in: the output
        is then the plain network's for any z. The centred variant's latents also move its centre and scale,
        which no zero makes equal to the plain network's single centre, so it is refused (ValueError)."""
        if self.centred and self.num_latents:
            raise ValueError("the centred mlp network's latents move its centre, so they cannot start with no "
                             "effect: a centred network cannot be fine-tuned from a plain run")
        if self.latent_embed is not None:
            with torch.no_grad():
                self.latent_embed.table.zero_()
                self.latent_embed.null.zero_()

    def latent_features(self, latents, null_latent, batch: int) -> torch.Tensor | None:
        """What the latents add to the embedding, [B, emb_dim], a function of z alone (None without a latent
        embedding). `forward(..., latent_features=...)` takes it precomputed, as a sampler does with its fixed z."""
        if self.latent_embed is None:
            return None
        return self.latent_embed(latents, null_latent, batch).sum(1)

    def _embedding(self, c_noise, class_labels, latents, null_latent, latent_features=None):
        # The sinusoidal features are float32; cast them to the weights' dtype so a float64 copy of the model
        # runs end to end (the ODE metrics need float64 near t = 0, see metrics/ode.py).
        pos = self.noise_embed[0](c_noise).to(self.inp.weight.dtype)
        emb = self.noise_embed[1:](pos)
        if self.latent_embed is not None:
            if latent_features is None:
                latent_features = self.latent_features(latents, null_latent, c_noise.shape[0])
            emb = emb + latent_features
        if self.class_embed is not None and class_labels is not None:
            emb = emb + self.class_embed(class_labels.to(emb.dtype))
        return self.act(emb)

    def forward(self, x, c_noise, *, class_labels=None, latents=None, null_latent=None, latent_features=None):
        emb = self._embedding(c_noise, class_labels, latents, null_latent, latent_features)
        x = x.to(self.inp.weight.dtype)
        h = self.act(self.inp(x) + self.emb_proj[0](emb))
        for layer, proj in zip(self.hidden, self.emb_proj[1:]):
            h = self.act(layer(h) + proj(emb))
        return self.out(h)

    def centre(self, latents, null_latent):
        """(mu [B, D], log_scale [B]) for each sample; only defined when built with `centred=True`."""
        g = self.centre_gain
        if latents is None:
            return g * self.null_centre.unsqueeze(0), g * self.null_log_scale.reshape(1)
        latents = latents.to(self.centre_table.dtype)
        mu = g * torch.einsum("bmk,mkd->bd", latents, self.centre_table)
        log_s = g * torch.einsum("bmk,mk->b", latents, self.log_scale_table)
        if null_latent is not None:
            mu = torch.where(null_latent.view(-1, 1), g * self.null_centre, mu)
            log_s = torch.where(null_latent, g * self.null_log_scale, log_s)
        return mu, log_s


class CentredDenoiser(Denoiser):
    """EDM preconditioning around the centre of a centred `MLPBackbone`: D = mu + EDM_s(x - mu), where
    (mu, log s) = net.centre(z) and EDM_s is `edm.Denoiser` with s in place of sigma_data.

    With F = 0 this is the exact denoiser of the Gaussian N(mu, s^2 I), the reparameterisation of the paper's toy
    experiment. `sigma_data` is kept for the interface but not used here.
    """

    def forward(self, x, sigma, *, latents=None, null_latent=None, class_labels=None, latent_features=None):
        sigma, s = self.noise_levels(x, sigma)
        mu, log_scale = self.net.centre(latents, null_latent)
        scale = log_scale.exp().reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in, _ = edm_scalings(s, scale)
        c_noise = sigma.log() / 4
        x0 = x - mu
        f = self.net(c_in * x0, c_noise, class_labels=class_labels, latents=latents, null_latent=null_latent,
                     **self.net_options(latent_features))
        return mu + c_skip * x0 + c_out * f.to(torch.float32)


class MLPEncoder(Encoder):
    """E(y): clean vector data [B, D] -> logits [B, m, k]. Sees no noise level and no class label.

    `prototypes=True` adds a nearest-prototype term to the MLP's logits, logits_c = MLP(u)_c - |u - p_c|^2 / (2 w^2)
    with u = y / input_scale, learned prototypes p_c and a learned width w (initially `prototype_width`). The
    prototypes are seeded by k-means++ on the first training batch (`init_from_data`), so the encoder starts from a partition of the
    data into k compact regions instead of a random one; gradient descent cannot undo a bad starting partition,
    which leaves codes dead or covering two modes (see docs/toy2d.md).
    """

    def __init__(self, dim: int, num_latents: int, codebook_size: int, hidden: int = 128, depth: int = 3,
                 input_scale: float = 1.0, prototypes: bool = False, prototype_width: float = 0.25):
        super().__init__()
        self.num_latents, self.codebook_size, self.input_scale = num_latents, codebook_size, input_scale
        layers, width = [], dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, num_latents * codebook_size))
        self.net = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.zeros(num_latents, codebook_size, dim)) if prototypes else None
        if prototypes:
            self.log_precision = nn.Parameter(torch.full((num_latents, 1), -2 * math.log(prototype_width)))
            self.register_buffer("prototypes_seeded", torch.tensor(False))

    @torch.no_grad()
    def init_from_data(self, y: torch.Tensor) -> bool:
        """Seeds the prototypes by k-means++ on the clean batch y; returns whether it did. A no-op without
        prototypes or once seeded (`prototypes_seeded` records it, so a resumed or loaded encoder keeps its own).
        The trainer calls this on the first training batch, through `networks.init_encoder_from_data`."""
        if self.prototypes is None or bool(self.prototypes_seeded):
            return False
        u = y.flatten(1) / self.input_scale
        for i in range(self.num_latents):
            self.prototypes[i] = kmeans_pp(u.float(), self.codebook_size).to(self.prototypes.dtype)
        self.prototypes_seeded.fill_(True)
        return True

    def forward(self, y):
        u = y.flatten(1) / self.input_scale
        logits = self.net(u)
        logits = logits.view(-1, self.num_latents, self.codebook_size)
        if self.prototypes is not None:
            d2 = (u[:, None, None, :] - self.prototypes[None]).square().sum(-1)  # [B, m, k]
            logits = logits - 0.5 * self.log_precision.exp() * d2
        return logits
