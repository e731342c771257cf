"""Set-conditioned generation: a target point cloud (a ligand's atoms) generated given a conditioning set (a
receptor's points), both of varying size, with masks (docs/docking.md).

The data of a batch are a dict `cond` (see data/dock3d.py's `batch`): the set (rec_pos [B, N, 3], rec_type [B, N],
rec_mask [B, N]) and the target's own conditioning (lig_ref [B, A, 3], its reference shape in a canonical frame,
lig_type, lig_mask); the target x is [B, A, 3] (padded atoms are 0 and never count).

- `SetEncoder`: a transformer over the set's elements (no positional order, so permutation-equivariant), with an
  attention bias that falls with the squared distance between elements; it reads m indicator channels per element
  (the pointer latents as flags on the chosen elements) or a global latent code added to every element.
- `SetBackbone` ("set_transformer" in the network registry): EDM's F for the target. The set is encoded once per
  trajectory (its latent features, `context`); every call runs a few layers over the target's atoms: attention among
  them (biased by their reference shape's distances) and to the set's elements (biased by distance at the current
  noise level), each adding the attention-weighted relative vectors to the atoms' features. `edm.Denoiser` wraps it
  with EDM's preconditioning as for every backbone; the set reaches it as `latent_features`.
- `SetLatentEncoder` ("set_pointer" in the encoder registry): the posterior q(z | y, set): logits over the set's
  elements for pointer latents (variants/pointer.py), or over k codes for fixed-codebook latents.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..latents import LatentEmbedding
from ..networks import register_backbone, register_encoder
from ..networks.layers import Encoder, PositionalEmbedding, zero_init

NEG = -1e9  # the logit of a padded element: exp() is exactly 0, and no NaN when a row is all padding
RECEPTOR_SCALE = 6.0  # coordinates enter the networks divided by this (the receptors' radius)


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, m, N] over a set's elements with the padded ones (mask [B, N] False) at NEG: no draw, argmax or
    softmax can pick them, and no gradient reaches them."""
    return logits.masked_fill(~mask.bool().unsqueeze(1), NEG)


def pointer_latents(cfg) -> bool:
    """Whether the latents of model config `cfg` point at the set's elements (rather than a fixed codebook)."""
    return cfg.latent_type == "pointer"


class BiasedAttention(nn.Module):
    """Multi-head attention of queries [B, Q, W] to keys [B, K, W] with an additive bias [B, H, Q, K] (masks are
    NEG entries); returns (output [B, Q, W], the attention-weighted relative vectors sum_k p_hqk (pk - pq)
    [B, Q, 3H] when positions are given)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"set network width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)

    def forward(self, x, ctx, bias, pos_q=None, pos_k=None):
        B, Q, W = x.shape
        H = self.heads
        q = self.q(x).view(B, Q, H, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, H, -1).permute(2, 0, 3, 1, 4)
        p = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias).softmax(-1)  # [B, H, Q, K]
        out = self.proj((p @ v).transpose(1, 2).reshape(B, Q, W))
        if pos_q is None:
            return out, None
        rel = p @ pos_k.unsqueeze(1) - pos_q.unsqueeze(1)  # [B, H, Q, 3]
        return out, rel.transpose(1, 2).reshape(B, Q, 3 * H)


def distance_bias(scale: torch.Tensor, a: torch.Tensor, b: torch.Tensor, key_mask: torch.Tensor,
                  width: torch.Tensor | float = 1.0) -> torch.Tensor:
    """-softplus(scale_h) |a_q - b_k|^2 / width^2 per head [B, H, Q, K], NEG on padded keys. `width` [B] or a
    number: the length over which attention falls off (the noise level for a noisy target)."""
    d2 = (a.unsqueeze(2) - b.unsqueeze(1)).square().sum(-1)  # [B, Q, K]
    w = torch.as_tensor(width, dtype=d2.dtype, device=d2.device).reshape(-1, 1, 1)
    bias = -F.softplus(scale).view(1, -1, 1, 1) * (d2 / w.square()).unsqueeze(1)
    return bias.masked_fill(~key_mask.bool()[:, None, None, :], NEG)


def _head_scales(heads: int) -> nn.Parameter:
    """Initial distance scales per head, from nearly global (softplus ~0.01) to local (~2)."""
    return nn.Parameter(torch.linspace(-4.6, 1.9, heads))


class SetBlock(nn.Module):
    """Self-attention over the set's elements with a distance bias, then an MLP (pre-LayerNorm)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = BiasedAttention(width, heads)
        self.scale = _head_scales(heads)
        self.rel = nn.Linear(3 * heads, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h, pos, mask):
        bias = distance_bias(self.scale, pos, pos, mask, 3.0)
        a, rel = self.attn(self.norm1(h), self.norm1(h), bias, pos / RECEPTOR_SCALE, pos / RECEPTOR_SCALE)
        h = h + a + self.rel(rel)
        return h + self.mlp(self.norm2(h))


class SetEncoder(nn.Module):
    """Tokens [B, N, W] of a conditioning set from its points, types and `flags` [B, N, m] (indicators of the
    chosen elements, or None), plus `extra` [B, W] added to every element (a fixed-codebook latent's embedding,
    or a learned null embedding); padded elements are masked out of every attention."""

    def __init__(self, width: int, heads: int, depth: int, types: int, flags: int):
        super().__init__()
        self.width, self.flags = width, flags
        self.kind = nn.Embedding(types, width)
        self.pos = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        self.flag = nn.Linear(flags, width, bias=False) if flags else None
        self.blocks = nn.ModuleList(SetBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, pos, types, mask, flags=None, extra=None):
        h = self.kind(types.long()) + self.pos(pos / RECEPTOR_SCALE)
        if flags is not None and self.flag is not None:
            h = h + self.flag(flags.to(h.dtype))
        if extra is not None:
            h = h + extra.unsqueeze(1)
        for block in self.blocks:
            h = block(h, pos, mask)
        return self.norm(h) * mask.unsqueeze(-1)


class TargetBlock(nn.Module):
    """One layer over the target's atoms: attention among them (biased by the reference shape's distances), then to
    the set's elements (biased by distance at the noise level), each adding its relative vectors; then an MLP. The
    noise embedding shifts the features before each part."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.ctx_norm = nn.LayerNorm(width)
        self.self_attn, self.cross_attn = BiasedAttention(width, heads), BiasedAttention(width, heads)
        self.self_scale, self.cross_scale = _head_scales(heads), _head_scales(heads)
        self.self_rel, self.cross_rel = nn.Linear(3 * heads, width), nn.Linear(3 * heads, width)
        self.emb = nn.Linear(width, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h, emb, x, ref, lig_mask, ctx, rec_pos, rec_mask, width, pscale):
        s1, s2, s3 = self.emb(emb).unsqueeze(1).chunk(3, dim=-1)
        q = self.norms[0](h) + s1
        xs = x * pscale  # relative vectors in units of the noisy target's scale, so they stay O(1) at any sigma
        a, rel = self.self_attn(q, q, distance_bias(self.self_scale, ref, ref, lig_mask, 1.0), xs, xs)
        h = h + a + self.self_rel(rel)
        q = self.norms[1](h) + s2
        a, rel = self.cross_attn(q, self.ctx_norm(ctx), distance_bias(self.cross_scale, x, rec_pos, rec_mask, width),
                                 xs, rec_pos * pscale)
        h = h + a + self.cross_rel(rel)
        return h + self.mlp(self.norms[2](h) + s3)


class SetBackbone(nn.Module):
    """EDM's F(c_in x, c_noise) for a target point cloud x [B, A, 3] given a conditioning set, as described in the
    module docstring. Latents: pointer flags on the set's elements ([B, m, N] one-hots, as `PointerLatents` gives
    them) or the embedding of m fixed-codebook codes ([B, m, k]); the null latent zeros the flags and adds a learned
    null embedding to every element (the paper's "unconditional embedding")."""

    def __init__(self, num_latents: int, token_width: int, pointer: bool, sigma_data: float, *, width: int = 64,
                 depth: int = 3, heads: int = 4, set_depth: int = 2, set_types: int = 4, target_types: int = 3):
        super().__init__()
        self.num_latents, self.pointer, self.sigma_data = num_latents, pointer, float(sigma_data)
        self.sizes = {"width": width, "heads": heads, "set_depth": set_depth, "set_types": set_types}
        self.set_encoder = SetEncoder(width, heads, set_depth, set_types, num_latents if pointer else 0)
        if num_latents and pointer:
            self.null = nn.Parameter(torch.zeros(width))
        elif num_latents:
            self.codes = LatentEmbedding(num_latents, token_width, width, init_std=1 / math.sqrt(width))
        self.noise = PositionalEmbedding(width)
        self.emb = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.inp = nn.Linear(6, width)
        self.kind = nn.Embedding(target_types, width)
        self.blocks = nn.ModuleList(TargetBlock(width, heads) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = zero_init(nn.Linear(width, 3))

    def context(self, cond: dict, latents=None, null_latent=None) -> dict:
        """What the set and the latents contribute to every call of a trajectory (computed once): the set's
        tokens, with the target's conditioning passed along."""
        B = cond["rec_pos"].shape[0]
        flags = extra = None
        if self.num_latents:
            null = (torch.ones(B, dtype=torch.bool, device=cond["rec_pos"].device) if latents is None else
                    null_latent if null_latent is not None else torch.zeros(B, dtype=torch.bool,
                                                                             device=cond["rec_pos"].device))
            if self.pointer:
                if latents is not None:
                    flags = latents.transpose(1, 2)[:, :cond["rec_pos"].shape[1]] * (~null).view(-1, 1, 1)
                extra = self.null * null.view(-1, 1).to(self.null.dtype)
            else:
                extra = self.codes(latents, null, B).sum(1)
        tokens = self.set_encoder(cond["rec_pos"], cond["rec_type"], cond["rec_mask"], flags, extra)
        return {"tokens": tokens, **{k: cond[k] for k in ("rec_pos", "rec_mask", "lig_ref", "lig_type", "lig_mask")}}

    def forward(self, x_in, c_noise, class_labels=None, latents=None, null_latent=None, latent_features=None):
        ctx = latent_features
        if ctx is None:
            raise ConfigError("the set_transformer network needs its conditioning set: sample and train it through "
                              "discodiff.variants.docking")
        sigma = (4 * c_noise).exp().reshape(-1)
        x = x_in * (sigma.square() + self.sigma_data ** 2).sqrt().view(-1, 1, 1)  # the noisy target itself
        emb = self.emb(self.noise(c_noise.reshape(-1)))
        mask = ctx["lig_mask"]
        ref = ctx["lig_ref"]
        h = self.inp(torch.cat([x_in, ref / RECEPTOR_SCALE], -1)) + self.kind(ctx["lig_type"].long()) + emb.unsqueeze(1)
        width = (sigma.square() + 1.0).sqrt()
        pscale = (sigma.square() + self.sigma_data ** 2).rsqrt().view(-1, 1, 1)  # c_in
        for block in self.blocks:
            h = block(h, emb, x, ref, mask, ctx["tokens"], ctx["rec_pos"], ctx["rec_mask"], width, pscale)
        return self.out(self.out_norm(h)) * mask.unsqueeze(-1)


class SetLatentEncoder(Encoder):
    """q(z | y, set): the clean target's atoms and the set's elements as one token set (atoms marked by a type of
    their own), a few layers of distance-biased attention, then per latent either one logit on every element of the
    set (pointer latents: [B, m, N], padded elements at NEG) or k logits from the pooled tokens (fixed codebook).
    It starts from random weights: no data-dependent start (layers.Encoder's hooks do nothing)."""

    def __init__(self, num_latents: int, outputs: int, pointer: bool, *, width: int = 64, heads: int = 4,
                 depth: int = 2, set_types: int = 4, target_types: int = 3):
        super().__init__()
        self.num_latents, self.outputs, self.pointer = num_latents, outputs, pointer
        self.set_types = set_types
        self.encoder = SetEncoder(width, heads, depth, set_types + target_types, 0)
        self.head = nn.Linear(width, num_latents if pointer else num_latents * outputs)

    def forward(self, cond: dict, y: torch.Tensor) -> torch.Tensor:
        N = cond["rec_pos"].shape[1]
        pos = torch.cat([cond["rec_pos"], y], 1)
        types = torch.cat([cond["rec_type"], cond["lig_type"] + self.set_types], 1)
        mask = torch.cat([cond["rec_mask"], cond["lig_mask"]], 1)
        h = self.encoder(pos, types, mask)
        if self.pointer:
            logits = self.head(h[:, :N]).transpose(1, 2)  # [B, m, N]
            logits = masked_logits(logits, cond["rec_mask"])
            return F.pad(logits, (0, self.outputs - N), value=NEG) if N < self.outputs else logits
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled).view(-1, self.num_latents, self.outputs)


@register_backbone("set_transformer")
def _set_backbone(cfg, kw: dict) -> nn.Module:
    if cfg.data_shape != [36]:
        raise ConfigError(f"the set_transformer network generates 12 atoms x 3 coordinates (data_shape [36]); "
                          f"got {cfg.data_shape}")
    return SetBackbone(cfg.num_latents, cfg.token_width, pointer_latents(cfg), cfg.sigma_data, **kw)


@register_encoder("set_pointer")
def _set_encoder(cfg, kw: dict) -> nn.Module:
    from ..networks import encoder_outputs
    return SetLatentEncoder(cfg.num_latents, encoder_outputs(cfg), pointer_latents(cfg), **kw)
