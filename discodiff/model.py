"""DisCo-Diff as one object: the denoiser D(x, sigma, z, c), the encoder E(y) and the prior p(z | c)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import ModelConfig
from .edm import Denoiser, EDMLoss
from .latents import gumbel_softmax, null_mask, one_hot
from .networks import build_denoiser, build_encoder
from .prior import ARPrior
from .sampling import SAMPLERS, StackedGenerator, guided, karras_sigmas


class DiscoDiff(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.denoiser = build_denoiser(cfg)
        m = cfg.num_latents
        self.encoder = build_encoder(cfg) if m else None
        self.prior = ARPrior(m, cfg.codebook_size, cfg.num_classes, **cfg.prior) if m else None

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
    def sample_latents(self, seeds: Sequence[int], *, class_labels=None, temperature: float = 1.0, device=None):
        """z [N, m] from the prior, exactly the latents `generate` draws for the same seeds (the first m uniforms)."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        uniforms = StackedGenerator(seeds, device).rand([max(self.num_latents, 1)])[:, :self.num_latents]
        return self._draw_latents(uniforms, self._labels(class_labels, len(seeds), device), temperature)

    @torch.no_grad()
    def shared_latents(self, seeds: Sequence[int], per_row: int, *, class_labels=None, temperature: float = 1.0,
                       device=None):
        """z [N, m] for grids whose rows share one latent (paper Fig. 2b): each run of `per_row` consecutive seeds
        gets the prior's draw for the first seed of its run. `class_labels`: one label, or one per row."""
        row_seeds = list(seeds)[::per_row]
        z_rows = self.sample_latents(row_seeds, class_labels=class_labels, temperature=temperature, device=device)
        return z_rows.repeat_interleave(per_row, dim=0)[:len(seeds)]

    def _labels(self, class_labels, n, device):
        if class_labels is None:
            return None
        return torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(n)

    def _draw_latents(self, uniforms, class_labels, temperature):
        if self.num_latents == 0:
            return torch.zeros(len(uniforms), 0, dtype=torch.long, device=uniforms.device)
        if self.prior is None:
            raise RuntimeError("this model has no prior; train one with `discodiff train-prior`")
        return self.prior.sample(uniforms, class_labels, temperature=temperature)

    @torch.no_grad()
    def generate(self, seeds: Sequence[int], *, class_labels=None, z=None, steps: int = 50,
                 sampler: str = "heun", guidance: float = 0.0, class_guidance: float = 0.0,
                 prior_temperature: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"),
                 S_noise: float = 1.0, callback=None, device=None):
        """Draws one sample per seed; returns (x in model space [N, *shape], z [N, m]).

        `callback(i, x)` is called with i = -1 and the initial noise, then after every step i = 0..steps-1.
        Each seed drives its own generator, in this order: the m uniforms for the prior, the initial noise,
        then any churn noise. A sample therefore depends on its seed only, not on the batch it is drawn in.
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        gen = StackedGenerator(seeds, device)
        m = self.num_latents
        uniforms = gen.rand([max(m, 1)])[:, :m]  # drawn even when z is given, so the noise stays the same
        class_labels = self._labels(class_labels, len(seeds), device)
        z = self._draw_latents(uniforms, class_labels, prior_temperature) if z is None else z.to(device)
        sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
        noise = gen.randn(self.config.data_shape) * sigmas[0].float()
        denoise = self.make_denoiser(z if m else None, class_labels, guidance=guidance,
                                     class_guidance=class_guidance)
        if callback is not None:
            callback(-1, noise)
        if sampler == "edm":
            x = SAMPLERS["edm"](denoise, noise, sigmas, S_churn=S_churn, S_min=S_min, S_max=S_max,
                                S_noise=S_noise, randn_like=gen.randn_like, callback=callback)
        else:
            x = SAMPLERS[sampler](denoise, noise, sigmas, callback=callback)
        return x, z

    def stage1_parameters(self):
        """Everything trained in stage I: the denoiser and the encoder (not the prior)."""
        mods = [self.denoiser] + ([self.encoder] if self.encoder is not None else [])
        return [p for mod in mods for p in mod.parameters()]
