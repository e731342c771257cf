"""The stage-I model of DisCo-Diff: the denoiser D(x, sigma, z, c) and the encoder E(y), trained together.

The latents are discrete by default (m categorical variables); `latent_type="continuous"` makes them a Gaussian
vector with a KL penalty instead, the paper's Table 3 ablation. The prior p(z | c) is a separate object
(`prior.prior_class`: autoregressive or diffusion), trained and saved on its own in stage II; sampling
(`pipeline.generate`) takes both.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_state_into, load_tensors, save_tensors
from .config import ModelConfig
from .edm import EDMLoss
from .latents import (disagreement, gaussian_kl, gumbel_softmax, moved_copies, noise_level_focus, null_mask, one_hot,
                      posterior_entropy, reparameterise, scale_gradient, split_posterior, usage_penalty)
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

    def latent_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the denoiser's latent embedding reads for latents z: the one-hots [B, m, k] of integer codes [B, m],
        or a continuous z [B, D] cut into its m tokens [B, m, D / m]."""
        if self.config.continuous:
            return z.float().reshape(len(z), self.num_latents, self.config.token_width)
        return one_hot(z, self.config.codebook_size)

    def _class_onehot(self, class_labels, batch, device):
        if self.config.num_classes == 0:
            return None
        if class_labels is None:  # no class given: the class-dropped (unconditional) input
            return torch.zeros(batch, self.config.num_classes, device=device)
        return nn.functional.one_hot(class_labels.long().to(device), self.config.num_classes).float()

    def denoise(self, x, sigma, *, z=None, latents=None, null_latent=None, class_labels=None, latent_features=None):
        """D(x, sigma, z, c). Pass latents `z` (integer [B, m], or float [B, D] if continuous) or the embedding's
        input `latents` [B, m, k] (relaxed one-hots, or z's tokens); with neither (or `null_latent` True) the null
        latent is used; class_labels: int [B] or None.
        `latent_features`: `self.latent_features(...)` of the same latents, computed beforehand (optional)."""
        if z is not None:
            latents = self.latent_input(z.to(x.device))
        if self.num_latents and latents is None:
            null_latent = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            latents = torch.zeros(x.shape[0], self.num_latents, self.config.token_width, device=x.device)
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
        m, k = self.num_latents, self.config.token_width
        latents, null, classes = [], [], []
        for z, labels in conditions:
            if m and z is None:  # the learned null latent, as `denoise` gives it
                latents.append(torch.zeros(batch, m, k, device=device))
                null.append(torch.ones(batch, dtype=torch.bool, device=device))
            elif m:
                latents.append(self.latent_input(z.to(device)).expand(batch, -1, -1))
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
                      guidance_interval: tuple[float, float] | None = None, batched: bool = True):
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

        `guidance_interval=(lo, hi)` applies the guidance only at noise levels lo < sigma <= hi, and the conditional
        D elsewhere, with one pass instead of two (Kynkaanniemi et al. 2024, "Applying guidance in a limited
        interval"): at high noise guidance pushes every trajectory towards the latents' dominant images and skews
        the mix of the samples; at low noise it has little left to do. None: guidance at every step.
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
            inside = _in_interval(sigma, guidance_interval, x)
            if inside is not None and not inside.any():  # no guidance at this noise level: the conditional pass
                return self.denoiser(x, sigma, **{key: None if v is None else v[:B] for key, v in ins.items()})
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
            return d if inside is None else torch.where(inside, d, outs[0])

        return denoise

    def encode_logits(self, y: torch.Tensor) -> torch.Tensor:
        return self.encoder(y)

    @torch.no_grad()
    def encode(self, y: torch.Tensor, *, tau: float | None = None, generator=None) -> torch.Tensor:
        """Latents of clean data: the posterior's mode (`latent_mode`), or with `tau` a sample (`latent_sample`)."""
        encoded = self.encoder(y)
        return self.latent_mode(encoded) if tau is None else self.latent_sample(encoded, tau, generator=generator)

    def latent_mode(self, encoded: torch.Tensor) -> torch.Tensor:
        """z from encoder outputs (as `encoder` or `encode_all` give them): the argmax code of each latent [B, m], or a
        continuous latent's posterior mean [B, D]. The "oracle" latents of the analyses."""
        if self.config.continuous:
            return split_posterior(encoded)[0].flatten(1)
        return encoded.argmax(-1)

    def latent_sample(self, encoded: torch.Tensor, tau: float, *, generator=None) -> torch.Tensor:
        """z drawn from the posterior the encoder outputs give: Cat(softmax(logits)) by Gumbel-Softmax at temperature
        `tau` [B, m], or N(mean, var) by reparameterisation [B, D] (`tau` does not apply). What stage II learns."""
        if self.config.continuous:
            return reparameterise(*split_posterior(encoded), generator=generator).flatten(1)
        return gumbel_softmax(encoded, tau, hard=True, generator=generator).argmax(-1)

    def training_loss(self, y, class_labels=None, *, loss_fn: EDMLoss, generator=None) -> torch.Tensor:
        """Stage I (paper Alg. 1): z ~ GumbelSoftmax(E(y), tau), null with probability p_null, EDM loss on D.

        Continuous latents draw z ~ N(mean, var) of E(y) instead, and add beta * KL(q(z | y) || N(0, I)) / d to each
        sample's loss, d the number of data entries. The EDM loss is a mean over the d entries, so this weighs the KL
        against the squared error summed over them, as an ELBO does: beta = 1 is the VAE's balance. The KL counts
        for every sample, dropped to the null latent or not: it regularises the encoder, whatever the denoiser saw.
        Against codebook collapse, discrete latents add usage_weight * latents.usage_penalty + confidence_weight *
        latents.posterior_entropy of the batch's encoder logits to every sample's loss (when either weight is > 0),
        and invariance_weight * latents.disagreement of the codes of the images and of moved copies of them.
        With latent_sigma_focus > 0, the gradient into each sample's latents is weighted by its noise level
        (latents.noise_level_focus); the noise levels are then drawn here, from the same generator, before the loss."""
        cfg, B = self.config, y.shape[0]
        latents = drop = kl = penalty = None
        if self.num_latents and cfg.continuous:
            mean, logvar = split_posterior(self.encoder(y))
            latents = reparameterise(mean, logvar, generator=generator)
            kl = gaussian_kl(mean, logvar)
        elif self.num_latents:
            logits = self.encoder(y)
            latents = gumbel_softmax(logits, cfg.tau, hard=cfg.hard, generator=generator)
            if cfg.usage_weight or cfg.confidence_weight:
                penalty = cfg.usage_weight * usage_penalty(logits) + cfg.confidence_weight * posterior_entropy(logits)
            if cfg.invariance_weight:
                moved = moved_copies(y, cfg.invariance_shift, cfg.invariance_flip, generator=generator)
                invariance = cfg.invariance_weight * disagreement(logits, self.encoder(moved))
                penalty = invariance if penalty is None else penalty + invariance
        if self.num_latents:
            drop = null_mask(B, cfg.p_null, generator=generator, device=y.device)
        if class_labels is not None and cfg.num_classes and cfg.p_class_drop > 0:
            keep = torch.rand(B, generator=generator, device=y.device) >= cfg.p_class_drop
            class_onehot = self._class_onehot(class_labels, B, y.device) * keep[:, None]
        else:
            class_onehot = self._class_onehot(class_labels, B, y.device)
        sigma = None
        if latents is not None and cfg.latent_sigma_focus > 0:
            sigma = loss_fn.sample_sigma(B, generator=generator, device=y.device)
            latents = scale_gradient(latents, noise_level_focus(sigma, cfg.latent_sigma_focus))
        loss = loss_fn(self.denoiser, y, sigma=sigma, generator=generator, latents=latents, null_latent=drop,
                       class_labels=class_onehot)
        if kl is not None:
            loss = loss + cfg.beta * kl / y[0].numel()
        return loss if penalty is None else loss + penalty

    @torch.no_grad()
    def encode_all(self, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Encoder outputs (float32) of a whole dataset, in batches, in eval mode: logits [N, m, k], or for continuous
        latents the posterior's mean and log-variance [N, m, 2 D / m] (latents.split_posterior)."""
        was_training = self.training
        self.eval()
        logits = torch.cat([self.encoder(y[i:i + batch]).float() for i in range(0, len(y), batch)])
        self.train(was_training)
        return logits


def _in_interval(sigma, interval: tuple[float, float] | None, x: torch.Tensor) -> torch.Tensor | None:
    """Whether each sample's sigma lies in the guidance interval (lo, hi], shaped to broadcast against x; None
    without an interval."""
    if interval is None:
        return None
    lo, hi = interval
    s = torch.as_tensor(sigma, device=x.device).reshape(-1)
    inside = (s > lo) & (s <= hi)
    return inside.reshape(-1, *([1] * (x.ndim - 1)))


def _stack_sigma(sigma, x: torch.Tensor, n: int):
    """sigma for `n` copies of the batch x stacked along the batch: a single value stays as it is, [B] (or [B, 1,
    ...]) is repeated n times."""
    sigma = torch.as_tensor(sigma, device=x.device)
    return sigma if sigma.numel() == 1 else torch.cat([sigma] * n)
