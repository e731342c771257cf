"""Pointer latents (DisCo-DiffDock, the paper's §3.3 and App. E; docs/docking.md): each of the m latents takes a value among
the elements of the example's conditioning set, so the codebook changes from one example to the next and the
latents are permutation-equivariant (permuting the set permutes the chosen indices).

- `PointerLatents` (model.latent_type = "pointer"): the encoder puts one logit on every element of the set (padded
  elements at -1e9, `sets.masked_logits`); stage I draws z by straight-through Gumbel-Softmax over the valid
  elements only; the null latent and its dropout (p_null) are the paper's; the denoiser reads z as m indicator
  channels on the set's elements (`sets.SetBackbone`). model.codebook_size is the largest set (the one-hots' width).
- `SetDiscreteLatents` (model.latent_type = "set_discrete"): ordinary discrete latents of a fixed codebook of k
  codes, for the same set-conditioned models: the ablation of pointers. Only their prior differs from "discrete":
  it is conditioned on the set.
- `SetPrior`: the autoregressive prior p(z_i | z_<i, set) over the m latents, conditioned on the set: a set encoder
  that reads the latents decoded so far as flags (pointer) or as their code embeddings (fixed codebook), and per
  latent a head with one logit per element (masked to the valid ones) or k logits. With network.share, its set
  encoder starts as a copy of the denoiser's and stays frozen for the first network.freeze_fraction of stage II,
  as the paper does against overfitting (`init_from_denoiser`, `variants.docking.train_set_prior`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..latents import DiscreteLatents, gumbel_softmax, register_latent_type
from ..prior import Prior
from .sets import NEG, SetBlock, SetEncoder, masked_logits


@register_latent_type
class PointerLatents(DiscreteLatents):
    """m pointers into the set; the encoder's logits arrive already masked (padded elements at NEG), so every draw
    below is over the valid elements only."""

    name = "pointer"

    def training_sample(self, encoded, generator=None):
        return gumbel_softmax(encoded, self.cfg.tau, hard=self.cfg.hard, generator=generator)

    def prior_class(self):
        return SetPrior


@register_latent_type
class SetDiscreteLatents(DiscreteLatents):
    """The paper's discrete latents (m codes of a fixed codebook of k) with a prior conditioned on the set."""

    name = "set_discrete"

    def prior_class(self):
        return SetPrior


class SetPrior(Prior):
    """p(z | set) = prod_i p(z_i | z_<i, set), for pointer or fixed-codebook latents (see the module docstring).
    A stage-II prior (prior.Prior: saved and loaded as the others) whose condition is the example's set, a batch
    dict, where the image priors take class labels.
    `network`: depth (the prior's own layers over the set after its set encoder), share, freeze_fraction; width and
    heads must equal the denoiser's set encoder's (model.network), whose sizes the prior's set encoder takes."""

    def __init__(self, num_latents: int, codebook_size: int, pointer: bool, *, width: int, heads: int,
                 set_depth: int, set_types: int, depth: int = 1, share: bool = True, freeze_fraction: float = 0.25,
                 dropout: float = 0.0):
        super().__init__()
        if num_latents < 1:
            raise ConfigError("a set prior needs at least one latent")
        self.num_latents, self.codebook_size, self.pointer = num_latents, codebook_size, pointer
        self.share, self.freeze_fraction = bool(share), float(freeze_fraction)
        # The set encoder has the denoiser's shape (flag channels only for pointers), so it can start as its copy.
        self.set_encoder = SetEncoder(width, heads, set_depth, set_types, num_latents if pointer else 0)
        self.null = nn.Parameter(torch.zeros(width))  # the denoiser's "no latent" embedding's counterpart
        self.own = nn.ModuleList(SetBlock(width, heads) for _ in range(depth))
        self.step = nn.Embedding(num_latents, width)
        self.prev = nn.Linear(num_latents, width, bias=False) if pointer else None
        self.codes = None if pointer else nn.Embedding(codebook_size * num_latents, width)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                  nn.Linear(2 * width, num_latents if pointer else num_latents * codebook_size))

    @classmethod
    def for_model(cls, cfg, network: dict) -> "SetPrior":
        net = dict(cfg.network)
        width, heads = net.get("width", 64), net.get("heads", 4)
        network = dict(network)
        if network.pop("width", width) != width or network.pop("heads", heads) != heads:
            raise ConfigError(f"the set prior's width and heads are the denoiser's set encoder's ({width}, {heads}); "
                              f"set prior_train.network.width and .heads to those or leave them out")
        try:
            return cls(cfg.num_latents, cfg.codebook_size, cfg.latent_type == "pointer", width=width, heads=heads,
                       set_depth=net.get("set_depth", 2), set_types=net.get("set_types", 4), **network)
        except TypeError as e:
            raise ConfigError(f"bad prior_train.network {network}: {e}") from None

    def init_from_denoiser(self, model) -> None:
        """The set encoder as a copy of the denoiser's (model: the stage-I DiscoDiff); the null embedding too."""
        net = model.denoiser.net
        self.set_encoder.load_state_dict(net.set_encoder.state_dict())
        if self.pointer and hasattr(net, "null"):
            self.null.data.copy_(net.null.data)

    def _logits(self, cond: dict, z_prev: torch.Tensor, i: int) -> torch.Tensor:
        """Logits of latent i [B, N or k] given the decoded z_prev [B, i]."""
        B, N = cond["rec_pos"].shape[:2]
        device = cond["rec_pos"].device
        flags = extra = None
        step = self.step.weight[i].expand(B, -1)
        if self.pointer:
            flags = torch.zeros(B, N, self.num_latents, device=device)
            if i:
                flags[:, :, :i] = F.one_hot(z_prev.long(), max(N, self.codebook_size))[..., :N].transpose(1, 2).float()
            extra = self.null.expand(B, -1)  # the flags say which elements are chosen
        else:
            extra = self.null.expand(B, -1)
            if i:
                offsets = torch.arange(i, device=device) * self.codebook_size
                extra = extra + self.codes(z_prev.long() + offsets).sum(1)
        h = self.set_encoder(cond["rec_pos"], cond["rec_type"], cond["rec_mask"], flags, extra)
        h = h + step.unsqueeze(1)
        for block in self.own:
            h = block(h, cond["rec_pos"], cond["rec_mask"])
        if self.pointer:
            logits = self.head(h)[..., i]  # [B, N]
            logits = masked_logits(logits.unsqueeze(1), cond["rec_mask"])[:, 0]
            return F.pad(logits, (0, self.codebook_size - N), value=NEG) if N < self.codebook_size else logits
        pooled = (h * cond["rec_mask"].unsqueeze(-1)).sum(1) / cond["rec_mask"].sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled).view(B, self.num_latents, self.codebook_size)[:, i]

    def log_probs(self, cond: dict, z: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probabilities [B, m, codebook] of every latent given the ones before it."""
        return torch.stack([self._logits(cond, z[:, :i], i).float().log_softmax(-1)
                            for i in range(self.num_latents)], 1)

    def log_prob(self, cond: dict, z: torch.Tensor) -> torch.Tensor:
        """log p(z | set) [B], in nats."""
        return self.log_probs(cond, z).gather(-1, z.long().unsqueeze(-1)).squeeze(-1).sum(1)

    def training_loss(self, cond: dict, z: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy per latent of full sequences z [B, m]."""
        return -self.log_prob(cond, z).mean() / self.num_latents

    @torch.no_grad()
    def sample(self, cond: dict, uniforms: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """z [B, m] by inverse-CDF sampling of the uniforms [B, m], latent by latent (padded elements have
        probability 0 whatever the temperature)."""
        if temperature <= 0:
            raise ConfigError(f"prior temperature must be positive, got {temperature}")
        B = uniforms.shape[0]
        z = torch.zeros(B, 0, dtype=torch.long, device=uniforms.device)
        for i in range(self.num_latents):
            logits = self._logits(cond, z, i).float()
            p = (logits / temperature).masked_fill(logits <= NEG / 2, -torch.inf).softmax(-1)
            cdf = p.cumsum(-1)
            # right=True: the first element whose cdf exceeds u * total, which has p > 0
            nxt = torch.searchsorted(cdf, uniforms[:, i:i + 1].float().contiguous() * cdf[:, -1:], right=True)
            z = torch.cat([z, nxt.clamp_max(self.codebook_size - 1)], 1)
        return z
