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
from .sampling import guide


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

    def denoise(self, x, sigma, *, z=None, latents=None, null_latent=None, class_labels=None, latent_features=None):
        """D(x, sigma, z, c). Pass integer latents `z` [B, m] or relaxed one-hots `latents` [B, m, k];
        with neither (or `null_latent` True) the null latent is used; class_labels: int [B] or None.
        `latent_features`: `self.latent_features(...)` of the same latents, computed beforehand (optional)."""
        if z is not None:
            latents = one_hot(z.to(x.device), self.config.codebook_size)
        if self.num_latents and latents is None:
            null_latent = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            latents = torch.zeros(x.shape[0], self.num_latents, self.config.codebook_size, device=x.device)
        return self.denoiser(x, sigma, latents=latents if self.num_latents else None,
                             null_latent=null_latent if self.num_latents else None,
                             class_labels=self._class_onehot(class_labels, x.shape[0], x.device),
                             latent_features=latent_features if self.num_latents else None)

    def latent_features(self, latents, null_latent, batch: int):
        """The backbone's `latent_features(latents, null_latent, batch)`: what z contributes to a forward pass
        (the U-Net's latent tokens, the MLP's latent embedding), computed apart so that a sampler, whose z is
        fixed, computes it once per trajectory. None for a model without latents or a backbone without them."""
        fn = getattr(self.denoiser.net, "latent_features", None)
        if not self.num_latents or fn is None:
            return None
        return fn(latents, null_latent, batch)

    def guidance_weights(self, guidance: float = 0.0, class_guidance: float = 0.0,
                         class_labels=None) -> tuple[float, float]:
        """(w on the latents, w on the class) as `make_denoiser` applies them: 0 where that guidance has nothing
        to act on (a model without latents; without classes, or no class given)."""
        w_latent = float(guidance) if self.num_latents else 0.0
        w_class = float(class_guidance) if self.config.num_classes and class_labels is not None else 0.0
        return w_latent, w_class

    def guidance_passes(self, guidance: float = 0.0, class_guidance: float = 0.0, class_labels=None) -> int:
        """Network evaluations per denoiser call: 1, plus 1 for each kind of guidance in use. With batched
        guidance they run as ONE network call on a batch this many times larger."""
        return 1 + sum(bool(w) for w in self.guidance_weights(guidance, class_guidance, class_labels))

    def _stacked_inputs(self, conditions, batch: int, device) -> dict:
        """The denoiser's keyword inputs for `conditions` [(z or None, class labels or None), ...], each over
        `batch` rows, stacked along the batch in that order, with the latent features of all of them."""
        m, k = self.num_latents, self.config.codebook_size
        latents, null, classes = [], [], []
        for z, labels in conditions:
            if m and z is None:  # the learned null latent, as `denoise` gives it
                latents.append(torch.zeros(batch, m, k, device=device))
                null.append(torch.ones(batch, dtype=torch.bool, device=device))
            elif m:
                latents.append(one_hot(z.to(device), k).expand(batch, -1, -1))
                null.append(torch.zeros(batch, dtype=torch.bool, device=device))
            onehot = self._class_onehot(labels, batch, device)
            classes.append(None if onehot is None else onehot.expand(batch, -1))
        any_null = any(z is None for z, _ in conditions)
        inputs = {"latents": torch.cat(latents) if m else None,
                  "null_latent": torch.cat(null) if m and any_null else None,
                  "class_labels": None if classes[0] is None else torch.cat(classes)}
        inputs["latent_features"] = self.latent_features(inputs["latents"], inputs["null_latent"],
                                                         batch * len(conditions))
        return inputs

    def make_denoiser(self, z=None, class_labels=None, *, guidance: float = 0.0, class_guidance: float = 0.0,
                      batched: bool = True):
        """A `denoise(x, sigma)` closure for the samplers, with guidance on the latents and/or the class:
        D~ = (1 + w) D(x, sigma, z, c) - w D(x, sigma, null, c), and likewise for c with null = no class. With
        both, the latent-guided D~ is then guided on the class: D~~ = (1 + w_c) D~ - w_c D(x, sigma, z, no class).

        The passes a call needs (conditional, null latent, no class) run as ONE network call on the inputs stacked
        along the batch (2B or 3B rows), then split: the same result as separate passes up to float rounding (a
        larger batch may round the last bits differently). `batched=False` runs them one after another instead
        (less memory). The latent features (the backbone's `latent_features`: the U-Net's latent tokens, the MLP's
        latent embedding) depend on z alone, so they are computed on the first call and reused by every later one
        of the same batch size: once per sampling trajectory. Calls with gradients enabled compute them afresh,
        so backpropagating through the closure into the weights works as with `denoise`.
        """
        w_latent, w_class = self.guidance_weights(guidance, class_guidance, class_labels)
        conditions = [(z, class_labels)]
        if w_latent:
            conditions.append((None, class_labels))
        if w_class:
            conditions.append((z, None))
        n, cache = len(conditions), {}

        def inputs(batch: int, device) -> dict:
            if torch.is_grad_enabled():
                return self._stacked_inputs(conditions, batch, device)
            if batch not in cache:
                cache[batch] = self._stacked_inputs(conditions, batch, device)
            return cache[batch]

        def denoise(x, sigma):
            B = x.shape[0]
            ins = inputs(B, x.device)
            if n == 1:
                return self.denoiser(x, sigma, **ins)
            if batched:
                outs = self.denoiser(torch.cat([x] * n), _stack_sigma(sigma, x, n), **ins).chunk(n)
            else:
                outs = [self.denoiser(x, sigma, **{key: None if v is None else v[i * B:(i + 1) * B]
                                                  for key, v in ins.items()}) for i in range(n)]
            d = outs[0]
            if w_latent:
                d = guide(d, outs[1], w_latent)
            if w_class:
                d = guide(d, outs[-1], w_class)
            return d

        return denoise

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

    @torch.no_grad()
    def encode_all(self, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Encoder logits [N, m, k] (float32) of a whole dataset, in batches, in eval mode."""
        was_training = self.training
        self.eval()
        logits = torch.cat([self.encoder(y[i:i + batch]).float() for i in range(0, len(y), batch)])
        self.train(was_training)
        return logits


def _stack_sigma(sigma, x: torch.Tensor, n: int):
    """sigma for `n` copies of the batch x stacked along the batch: a single value stays as it is, [B] (or [B, 1,
    ...]) is repeated n times."""
    sigma = torch.as_tensor(sigma, device=x.device)
    return sigma if sigma.numel() == 1 else torch.cat([sigma] * n)
