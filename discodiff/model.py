"""The stage-I model of DisCo-Diff: the denoiser D(x, sigma, z, c) and the encoder E(y), trained together.

The prior p(z | c) is a separate object (`prior.ARPrior`), trained and saved on its own in stage II; sampling
(`pipeline.generate`) takes both.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_state_into, load_tensors, save_tensors
from .config import ModelConfig
from .edm import EDMLoss
from .latents import gumbel_softmax, null_mask, one_hot
from .networks import build_denoiser, build_encoder
from .sampling import guided


class DiscoDiff(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.denoiser = build_denoiser(cfg)
        self.encoder = build_encoder(cfg) if cfg.num_latents else None

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        """The weights as one safetensors file (atomically); the run's config.json holds `self.config`."""
        save_tensors(self.state_dict(), path, metadata=metadata)

    @classmethod
    def load(cls, path: Path, cfg: ModelConfig) -> "DiscoDiff":
        """A model of configuration `cfg` with the weights in `path`; weights of another network or shape are
        refused with one line (CheckpointError)."""
        model = cls(cfg)
        load_state_into(model, load_tensors(path), path)
        return model

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    def _class_onehot(self, class_labels, batch, device):
        if self.config.num_classes == 0:
            return None
        if class_labels is None:  # no class given: the class-dropped (unconditional) input
            return torch.zeros(batch, self.config.num_classes, device=device)
        return nn.functional.one_hot(class_labels.long().to(device), self.config.num_classes).float()

    def denoise(self, x, sigma, *, z=None, latents=None, null_latent=None, class_labels=None):
        """D(x, sigma, z, c). Pass integer latents `z` [B, m] or relaxed one-hots `latents` [B, m, k];
        with neither (or `null_latent` True) the null latent is used; class_labels: int [B] or None."""
        if z is not None:
            latents = one_hot(z.to(x.device), self.config.codebook_size)
        if self.num_latents and latents is None:
            null_latent = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            latents = torch.zeros(x.shape[0], self.num_latents, self.config.codebook_size, device=x.device)
        return self.denoiser(x, sigma, latents=latents if self.num_latents else None,
                             null_latent=null_latent if self.num_latents else None,
                             class_labels=self._class_onehot(class_labels, x.shape[0], x.device))

    def encode_logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.encoder(y)

    @torch.no_grad()
    def encode(self, y: torch.Tensor, *, tau: float | None = None, generator=None) -> torch.Tensor:
        """Latents [B, m] of clean data: the argmax of the encoder, or a Gumbel sample at temperature `tau`."""
        logits = self.encoder(y)
        if tau is None:
            return logits.argmax(-1)
        return gumbel_softmax(logits, tau, hard=True, generator=generator).argmax(-1)

    def training_loss(self, y, class_labels=None, *, loss_fn: EDMLoss, generator=None) -> torch.Tensor:
        """Stage I (paper Alg. 1): z ~ GumbelSoftmax(E(y), tau), null with probability p_null, EDM loss on D."""
        cfg, B = self.config, y.shape[0]
        latents = drop = None
        if self.num_latents:
            latents = gumbel_softmax(self.encoder(y), cfg.tau, hard=cfg.hard, generator=generator)
            drop = null_mask(B, cfg.p_null, generator=generator, device=y.device)
        if class_labels is not None and cfg.num_classes and cfg.p_class_drop > 0:
            keep = torch.rand(B, generator=generator, device=y.device) >= cfg.p_class_drop
            class_onehot = self._class_onehot(class_labels, B, y.device) * keep[:, None]
        else:
            class_onehot = self._class_onehot(class_labels, B, y.device)
        return loss_fn(self.denoiser, y, generator=generator, latents=latents, null_latent=drop,
                       class_labels=class_onehot)

    def make_denoiser(self, z=None, class_labels=None, *, guidance: float = 0.0, class_guidance: float = 0.0):
        """A `denoise(x, sigma)` closure for the samplers, with guidance on the latents and/or the class:
        D~ = (1 + w) D(x, sigma, z, c) - w D(x, sigma, null, c), and likewise for c with null = no class."""
        def cond(x, s):
            return self.denoise(x, s, z=z, class_labels=class_labels)

        def no_latent(x, s):
            return self.denoise(x, s, z=None, class_labels=class_labels)

        def no_class(x, s):
            return self.denoise(x, s, z=z, class_labels=None)

        d = guided(cond, no_latent, guidance) if (guidance and self.num_latents) else cond
        if class_guidance and self.config.num_classes and class_labels is not None:
            d = guided(d, no_class, class_guidance)
        return d

    @torch.no_grad()
    def encode_all(self, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Encoder logits [N, m, k] (float32) of a whole dataset, in batches, in eval mode."""
        was_training = self.training
        self.eval()
        logits = torch.cat([self.encoder(y[i:i + batch]).float() for i in range(0, len(y), batch)])
        self.train(was_training)
        return logits
