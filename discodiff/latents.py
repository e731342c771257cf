"""The discrete latents of DisCo-Diff: Gumbel-Softmax over the encoder's logits, the learned null latent, and the
embedding the denoiser reads them through.

A kind of latent is a `LatentType`, named in the config (model.latent_type) and looked up in `LATENT_TYPES`; this
module defines the paper's, "discrete". Other kinds (the continuous latents of the paper's Table 3,
variants/continuous.py) register themselves by name; this module knows none of them.

Stage I's extra loss terms work the same way: `REGULARISERS` maps a name in model.regularisers to a term, and the
paper uses none (variants/information.py adds one against codebook collapse).
"""
from __future__ import annotations

from typing import Callable

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
    A continuous latent cut into m slices [B, m, D / m] goes through the same map (then a linear one per position).

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


def entropy(p: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of the distributions p over the last axis."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def codebook_usage(z: torch.Tensor, codebook_size: int) -> dict:
    """Per-latent perplexity of the empirical code distribution and the number of codes in use."""
    z = z.long()
    counts = torch.stack([torch.bincount(z[:, i], minlength=codebook_size) for i in range(z.shape[1])]).float()
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return {"perplexity": entropy(p).exp().tolist(), "codes_used": (counts > 0).sum(1).tolist(),
            "counts": counts.long().tolist()}


class LatentType:
    """How a model's latents are drawn from the encoder's outputs and handed to the denoiser. The paper's kind is
    `DiscreteLatents`; a variant subclasses this and registers it with `register_latent_type`."""

    name = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def encoder_outputs(self) -> int:
        """What the encoder outputs per latent token."""
        raise NotImplementedError

    def embedding_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the denoiser's latent embedding reads for latents z: [B, m, token_width]."""
        raise NotImplementedError

    def training_sample(self, encoded: torch.Tensor, generator=None) -> torch.Tensor:
        """Stage I's draw from the encoder's posterior, differentiable, in the embedding's input form."""
        raise NotImplementedError

    def mode(self, encoded: torch.Tensor) -> torch.Tensor:
        """The posterior's mode (the "oracle" latents of the analyses)."""
        raise NotImplementedError

    def sample(self, encoded: torch.Tensor, tau: float, generator=None) -> torch.Tensor:
        """A draw of z from the posterior (what stage II learns)."""
        raise NotImplementedError

    def loss_terms(self) -> list[tuple[str, float]]:
        """Regularisers (names in REGULARISERS, with weights) that this kind of latent always adds in stage I."""
        return []

    def prior_class(self):
        """The stage-II prior over these latents."""
        raise NotImplementedError

    def prepare_prior(self, prior, encoded: torch.Tensor) -> None:
        """Whatever a fresh prior takes from the encoder's outputs over the data set before stage II (nothing for
        the paper's)."""


class DiscreteLatents(LatentType):
    """The paper's latents: m categorical variables of k codes; stage I draws them by Gumbel-Softmax at temperature
    tau (straight-through one-hots with model.hard, the paper's choice; soft samples otherwise); an autoregressive
    transformer is their prior."""

    name = "discrete"

    def encoder_outputs(self) -> int:
        return self.cfg.codebook_size

    def embedding_input(self, z):
        return one_hot(z, self.cfg.codebook_size)

    def training_sample(self, encoded, generator=None):
        return gumbel_softmax(encoded, self.cfg.tau, hard=self.cfg.hard, generator=generator)

    def mode(self, encoded):
        return encoded.argmax(-1)

    def sample(self, encoded, tau, generator=None):
        return gumbel_softmax(encoded, tau, hard=True, generator=generator).argmax(-1)

    def prior_class(self):
        from .prior import ARPrior
        return ARPrior


LATENT_TYPES: dict[str, type[LatentType]] = {"discrete": DiscreteLatents}


def register_latent_type(cls: type[LatentType]) -> type[LatentType]:
    LATENT_TYPES[cls.name] = cls
    return cls


def latent_type(cfg) -> LatentType:
    """The LatentType of a model config (model.latent_type); the config has checked the name."""
    return LATENT_TYPES[cfg.latent_type](cfg)


def prior_class(cfg):
    """The stage-II prior of a model of configuration `cfg`, as its kind of latent says: `prior.ARPrior` over the
    paper's discrete latents. Every prior has for_model, load, save, training_loss and sample(noise, labels,
    temperature)."""
    return latent_type(cfg).prior_class()


# A regulariser: (model, clean data y [B, ...], encoder outputs of y) -> a loss term per sample [B] or for the batch.
Regulariser = Callable[..., torch.Tensor]
REGULARISERS: dict[str, Regulariser] = {}


def register_regulariser(name: str):
    def deco(fn: Regulariser) -> Regulariser:
        REGULARISERS[name] = fn
        return fn
    return deco
