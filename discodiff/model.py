"""The stage-I model of DisCo-Diff: the denoiser D(x, sigma, z, c) and the encoder E(y), trained together.

The latents are the paper's discrete ones unless the config names another kind (model.latent_type, a
`latents.LatentType`). The prior p(z | c) is a separate object (`prior.prior_class`), trained and saved on its own in
stage II; sampling (`pipeline.generate`) takes both.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_state_into, load_tensors, save_tensors
from .config import ModelConfig
from .edm import EDMLoss
from .latents import REGULARISERS, latent_type, null_mask
from .networks import build_denoiser, build_encoder


class DiscoDiff(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.latent_type = latent_type(cfg)
        self.denoiser = build_denoiser(cfg)
        self.encoder = build_encoder(cfg) if cfg.num_latents else None
        # Stage I's extra loss terms, (regulariser, weight): the config's, and those the kind of latent always adds
        # (none for the paper's).
        self.regularisers = [(REGULARISERS[name], weight) for name, weight in
                             [*cfg.regularisers.items(), *self.latent_type.loss_terms()] if weight]

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
        return self.latent_type.embedding_input(z)

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
                      guidance_interval: tuple[float, float] | None = None, batched: bool = True,
                      conditional_too: bool = False):
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

        `conditional_too`: the closure returns (guided D~, conditional D(x, sigma, z, c)), the second from the same
        network call (autoguidance adds w (D - D_weak) to D~: autoguidance.py).
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
                d = self.denoiser(x, sigma, **ins)
                return (d, d) if conditional_too else d
            inside = _in_interval(sigma, guidance_interval, x)
            if inside is not None and not inside.any():  # no guidance at this noise level: the conditional pass
                d = self.denoiser(x, sigma, **{key: None if v is None else v[:B] for key, v in ins.items()})
                return (d, d) if conditional_too else d
            if batched:
                outs = self.denoiser(torch.cat([x] * n), _stack_sigma(sigma, x, n), **ins).chunk(n)
            else:
                outs = [self.denoiser(x, sigma, **{key: None if v is None else v[i * B:(i + 1) * B]
                                                  for key, v in ins.items()}) for i in range(n)]
            d = outs[0]
            if w_latent:
                d = d + w_latent * (d - outs[1])
            if w_class:
                d = d + w_class * (d - outs[-1])
            d = d if inside is None else torch.where(inside, d, outs[0])
            return (d, outs[0]) if conditional_too else d

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
        return self.latent_type.mode(encoded)

    def latent_sample(self, encoded: torch.Tensor, tau: float, *, generator=None) -> torch.Tensor:
        """z drawn from the posterior the encoder outputs give: Cat(softmax(logits)) by Gumbel-Softmax at temperature
        `tau` [B, m], or N(mean, var) by reparameterisation [B, D] (`tau` does not apply). What stage II learns."""
        return self.latent_type.sample(encoded, tau, generator=generator)

    def training_loss(self, y, class_labels=None, *, loss_fn: EDMLoss, generator=None) -> torch.Tensor:
        """Stage I, the paper's Algorithm 1, per sample [B]:
            z ~ GumbelSoftmax(E(y), tau), replaced by the null latent with probability p_null,
            loss = lambda(sigma) ||D(y + n, sigma, z, c) - y||^2        (EDMLoss: sigma, n drawn inside),
        plus the weighted sum of the regularisers the config names (none in the paper). Other kinds of latent
        draw z their own way (`latents.LatentType.training_sample`). All randomness comes from `generator`."""
        B = y.shape[0]
        z = null = None
        extra = torch.zeros((), device=y.device)
        if self.num_latents:
            encoded = self.encoder(y)
            z = self.latent_type.training_sample(encoded, generator=generator)
            null = null_mask(B, self.config.p_null, generator=generator, device=y.device)
            for regulariser, weight in self.regularisers:
                extra = extra + weight * regulariser(self, y, encoded)
        c = self._training_class_onehot(class_labels, B, y.device, generator)
        loss = loss_fn(self.denoiser, y, generator=generator, latents=z, null_latent=null, class_labels=c)
        return loss + extra

    def _training_class_onehot(self, class_labels, batch: int, device, generator):
        """The class one-hots stage I conditions on, each dropped (to "no class") with probability p_class_drop, so
        that the model can also be guided on the class."""
        onehot = self._class_onehot(class_labels, batch, device)
        if class_labels is None or onehot is None or self.config.p_class_drop <= 0:
            return onehot
        keep = torch.rand(batch, generator=generator, device=device) >= self.config.p_class_drop
        return onehot * keep[:, None]

    @torch.no_grad()
    def encode_all(self, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Encoder outputs (float32) of a whole dataset, in batches, in eval mode: logits [N, m, k], or for continuous
        latents the posterior's mean and log-variance [N, m, 2 D / m] (variants.continuous.split_posterior)."""
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
