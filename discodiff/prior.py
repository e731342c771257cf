"""Stage II: an autoregressive transformer prior p(z) = prod_i p(z_i | z_<i [, c]) over the m latent tokens.

(Other kinds of latent bring their own prior, e.g. variants/diffusion_prior.py; `latents.prior_class` picks the one a
model needs.)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError
from .networks.layers import TransformerBlock


class _Block(TransformerBlock):
    """The shared transformer layer, causal, with dropout on the attention weights and the MLP output (not its
    hidden layer)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__(width, heads, dropout=dropout, causal=True, attn_dropout=dropout, hidden_dropout=False)


class Prior(nn.Module):
    """What every stage-II prior shares: it is built from the model's configuration and the sizes in
    prior_train.network (`for_model`), and saved to and loaded from one safetensors file. Each kind of prior adds
    `training_loss(z, class_labels, generator=...)` (what stage II minimises) and `sample(noise, class_labels,
    temperature)` (z from the noise that `pipeline.prior_noise` draws per seed)."""

    @classmethod
    def model_args(cls, cfg) -> tuple:
        """The constructor's leading arguments that come from the model's configuration."""
        raise NotImplementedError

    @classmethod
    def for_model(cls, cfg, network: dict):
        """The prior of a model of configuration `cfg` (a ModelConfig with m >= 1), of the sizes `network`."""
        try:
            return cls(*cls.model_args(cfg), **network)
        except TypeError as e:  # an unknown or missing size
            raise ConfigError(f"bad prior_train.network {network}: {e}") from None

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        """The weights as one safetensors file (atomically); `metadata` records what it was trained on."""
        from .checkpoint import save_tensors
        save_tensors(self.state_dict(), path, metadata=metadata)

    @classmethod
    def load(cls, path: Path, cfg, network: dict):
        from .checkpoint import load_state_into, load_tensors
        prior = cls.for_model(cfg, network)
        load_state_into(prior, load_tensors(path), path)
        return prior


class ARPrior(Prior):
    """A GPT over the latent sequence. Position 0 holds a start token: a class embedding for class-conditional
    priors (index num_classes is the 'no class' token), a learned start token otherwise. Works for m = 1."""

    def __init__(self, num_latents: int, codebook_size: int, num_classes: int = 0, depth: int = 4,
                 width: int = 128, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if num_latents < 1:
            raise ValueError("an autoregressive prior needs at least one latent")
        self.num_latents, self.codebook_size, self.num_classes = num_latents, codebook_size, num_classes
        self.start = nn.Embedding(num_classes + 1, width)
        self.token = nn.Embedding(codebook_size, width)
        self.pos = nn.Parameter(torch.zeros(num_latents, width))
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size)
        nn.init.normal_(self.pos, std=0.02)

    def _start_ids(self, batch: int, class_labels, device):
        if class_labels is None or self.num_classes == 0:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return class_labels.long().to(device)

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None):
        """Teacher-forced logits [B, T+1 (<= m), k] for positions 0..T given the prefix z [B, T] (T < m or T = m).

        Returns (logits over the m positions, mean cross-entropy) when z is a full sequence of length m,
        else (logits for positions 0..T, None).
        """
        B, T = z.shape
        full = T == self.num_latents
        prefix = z[:, :-1] if full else z
        h = self.start(self._start_ids(B, class_labels, z.device)).unsqueeze(1)
        if prefix.shape[1]:
            h = torch.cat([h, self.token(prefix.long())], dim=1)
        h = h + self.pos[: h.shape[1]]
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.ln_f(h))
        loss = F.cross_entropy(logits.reshape(-1, self.codebook_size), z.long().reshape(-1)) if full else None
        return logits, loss

    @torch.no_grad()
    def sample(self, uniforms: torch.Tensor, class_labels: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Draws z [B, m] by inverse-CDF sampling from the uniforms [B, m] (one per latent).

        Taking the randomness as an input keeps every sample a function of its own seed, whatever the batch.
        """
        if temperature <= 0:
            raise ValueError(f"prior temperature must be positive, got {temperature}")
        B = uniforms.shape[0]
        z = torch.zeros(B, 0, dtype=torch.long, device=uniforms.device)
        for i in range(self.num_latents):
            logits, _ = self(z, class_labels)
            cdf = (logits[:, i].float() / temperature).softmax(-1).cumsum(-1)
            nxt = torch.searchsorted(cdf, uniforms[:, i:i + 1].float().contiguous() * cdf[:, -1:]).clamp_max(self.codebook_size - 1)
            z = torch.cat([z, nxt], dim=1)
        return z

    def training_loss(self, z: torch.Tensor, class_labels: torch.Tensor | None = None, *, generator=None):
        """The mean cross-entropy of full sequences z [B, m], what stage II minimises (`generator`: unused, as the
        diffusion prior's draws its noise from it)."""
        return self(z, class_labels)[1]

    @torch.no_grad()
    def nll(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per token (nats); exp of it is the token perplexity."""
        return self(z, class_labels)[1]

    @classmethod
    def model_args(cls, cfg) -> tuple:
        """m latents of k codes, and the classes (prior_train.network: depth, width, heads, dropout)."""
        return cfg.num_latents, cfg.codebook_size, cfg.num_classes
