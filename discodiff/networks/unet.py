"""An EDM-style (ADM / DhariwalUNet-like) U-Net backbone F(x_in, c_noise, c, z) for images.

Layout, as in EDM's ADM U-Net: an input conv, then per resolution level a down-sampling residual block (levels
> 0) and `num_blocks` residual blocks; a middle pair of blocks (the first with self-attention); then per level an
up-sampling block (levels < deepest) and `num_blocks + 1` blocks that each take one skip connection. Residual
blocks use GroupNorm, SiLU, dropout and an adaptive scale/shift from the noise embedding; self-attention follows
the residual part in blocks at `attn_resolutions`.

Conditioning:
- the class enters like EDM's `map_label`: a bias-free linear map of the one-hot added to the noise embedding;
- the discrete latents z [B, m, k] become m tokens (LatentEmbedding -> learned per-position embedding -> a small
  transformer encoder; the learned null sequence where `null_latent` is True) and, by default, enter through
  CROSS-ATTENTION after every self-attention layer (the paper's section 3.3). `latent_injection="embedding"`
  instead adds a projection of the flattened tokens to the noise embedding (ablation).
- `latent_groups = G > 1` is the group-hierarchical variant (the paper's sections 3.3 and 4.1): z splits into G
  contiguous groups, group g feeding only the cross-attention at the g-th lowest DECODER resolution that has
  attention (the middle block counts as the lowest). Choice made here (the paper leaves it open): encoder-side attention layers get no
  cross-attention, so each resolution's latents reach the image only at one place, on the synthesis path, as
  in StyleGAN; and the latent transformer is masked block-diagonally so a group's tokens see only their group.

Zero start: every output projection into the image path (the residual convs, self- and cross-attention
projections, the latent embedding projection, the final conv) is zero-initialised, as EDM's ADM does, so a fresh
network outputs F = 0 and, more to the point, latents have no effect until trained. All latent modules are built
AFTER the plain network, so with the same torch seed a DisCo-Diff U-Net has exactly the plain U-Net's weights
plus new ones, and gives exactly the plain U-Net's output.

Group norms: `norm_eps` is their epsilon, 1e-6 by default (the runs made so far); EDM's DhariwalUNet uses 1e-5, which
the imagenet64 preset and the networks converted from EDM's checkpoints (edm_import.py) set.

Resolutions: any size works. Down-sampling is 2x2 average pooling with ceil_mode (odd sizes round up: 7 -> 4)
and up-sampling is nearest-neighbour to the exact size of the matching skip (4 -> 7). So 28 px with
channel_mult of length 3 runs at 28, 14, 7; with length 4 at 28, 14, 7, 4. Attention resolutions name these
level sizes (e.g. attn_resolutions=[14, 7]).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..latents import LatentEmbedding
from .layers import PositionalEmbedding, TransformerBlock, class_embedding, zero_init

LATENT_INJECTIONS = ("cross_attention", "embedding")


DEFAULT_NORM_EPS = 1e-6  # the network option norm_eps; EDM's DhariwalUNet has 1e-5 (the imagenet64 preset's)


def group_norm(channels: int, eps: float = DEFAULT_NORM_EPS) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (EDM's rule), using a divisor of `channels`."""
    groups = max(min(32, channels // 4), 1)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=eps)


def _heads(channels: int, channels_per_head: int) -> int:
    heads = max(channels // channels_per_head, 1)
    while channels % heads:  # e.g. 96 channels at 64 per head: 1 head rather than an error
        heads -= 1
    return heads


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, C, N] (channels first, as from a 1x1 conv) -> [B, heads, N, C / heads], contiguous.

    Contiguous on purpose: the transpose alone leaves the last dimension with stride N, and scaled_dot_product_attention
    then silently takes its math kernel (it materialises the [N, N] matrix); the fused kernels (flash,
    memory-efficient, cuDNN) need a last-dimension stride of 1."""
    B, C, N = t.shape
    return t.reshape(B, heads, C // heads, N).transpose(-1, -2).contiguous()


def _merge_heads(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, heads, H*W, d] -> [B, C, H, W] shaped like `like`."""
    return t.transpose(-1, -2).reshape(like.shape)


class SelfAttention2d(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map."""

    def __init__(self, channels: int, heads: int, norm_eps: float = DEFAULT_NORM_EPS):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels, norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def heads_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, heads, H*W, C / heads], each contiguous. The qkv conv's output channels are ordered
        (q/k/v, head, channel); EDM's are (head, channel, q/k/v) (edm_import.py permutes them)."""
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)
        return tuple(_split_heads(t, self.heads) for t in (q, k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.scaled_dot_product_attention(*self.heads_qkv(x))
        return x + self.proj(_merge_heads(y, x))


class CrossAttention2d(nn.Module):
    """Residual cross-attention: pixels are the queries, latent tokens [B, M, ctx_dim] the keys and values.

    Its output projection starts at zero, so adding it leaves the network's function unchanged.
    """

    def __init__(self, channels: int, ctx_dim: int, heads: int, norm_eps: float = DEFAULT_NORM_EPS):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels, norm_eps)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(ctx_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def heads_qkv(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, heads, H*W, C / heads] from the pixels, k and v [B, heads, M, C / heads] from the tokens; contiguous."""
        q = _split_heads(self.q(self.norm(x)).flatten(2), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(ctx).transpose(1, 2).chunk(2, dim=1))
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        y = F.scaled_dot_product_attention(*self.heads_qkv(x, ctx))
        return x + self.proj(_merge_heads(y, x))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with adaptive scale/shift from the embedding, optional resampling, then
    optional self-attention and (attached later by the U-Net) cross-attention to the latent tokens."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, dropout: float = 0.0,
                 resample: str | None = None, attention: bool = False, heads: int = 1, takes_skip: bool = False,
                 resolution: int = 0, norm_eps: float = DEFAULT_NORM_EPS):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.resample, self.takes_skip = resample, takes_skip
        self.resolution = resolution  # the size of its output feature map (bookkeeping for hierarchical latents)
        self.norm_eps = norm_eps
        self.norm0 = group_norm(in_channels, norm_eps)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)
        self.norm1 = group_norm(out_channels, norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.attn = SelfAttention2d(out_channels, heads, norm_eps) if attention else None
        self.cross_attn: CrossAttention2d | None = None
        self.latent_group = 0  # which group of latent tokens the cross-attention reads

    def _resample(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2, ceil_mode=True)
        if self.resample == "up":
            return F.interpolate(x, size=tuple(size), mode="nearest")
        return x

    def forward(self, x, emb, ctx=None, size=None):
        h = F.silu(self.norm0(x))
        if self.resample:
            h, x = self._resample(h, size), self._resample(x, size)
        h = self.conv0(h)
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = h + (self.skip(x) if self.skip is not None else x)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, ctx)
        return x


class LatentPath:
    """The latent path of an image backbone, shared by the U-Net and the SongUNet (song_unet.py): the latent tokens
    (LatentEmbedding -> a learned per-position embedding -> a small transformer encoder -> LayerNorm) and their way
    into the image path, cross-attention after self-attention layers or a projection added to an embedding.

    A backbone that uses it sets `num_latents`, `latent_injection` and `latent_groups`, has `_attention_blocks(
    decoder_only)` list its blocks with self-attention (each with `attn`, `out_channels`, `heads`, `norm_eps`,
    `resolution`, `cross_attn` and `latent_group`, as ResBlock), calls `_build_latent_path` LAST in its constructor
    (so that its plain weights do not depend on the latent path) and `_latent_inputs` in its forward pass."""

    def _attention_blocks(self, decoder_only: bool) -> list:
        raise NotImplementedError

    def _build_latent_path(self, m, k, emb_ch, dim, depth, heads):
        G = self.latent_groups
        if k < 1:
            raise ValueError("num_latents > 0 needs codebook_size >= 1")
        if G < 1 or m % G:
            raise ValueError(f"latent_groups={G} must divide num_latents={m} (contiguous groups of equal size)")
        if G > 1 and self.latent_injection != "cross_attention":
            raise ValueError("latent_groups > 1 (hierarchical latents) needs latent_injection='cross_attention'")
        self.latent_embed = LatentEmbedding(m, k, dim)
        # LatentEmbedding's tables are already one per position, so this is formally redundant; the paper leaves the
        # input format open, and a learned position embedding costs only m * latent_dim parameters.
        self.latent_pos = nn.Parameter(torch.randn(m, dim) * 0.02)
        self.latent_blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.latent_norm = nn.LayerNorm(dim)
        # Group g's tokens attend only within group g: the latents of one resolution stay separate.
        group = torch.arange(m) // (m // G)
        self.register_buffer("latent_mask", group[:, None] == group[None, :] if G > 1 else None, persistent=False)

        if self.latent_injection == "embedding":
            self.latent_proj = zero_init(nn.Linear(m * dim, emb_ch))
            return
        blocks = self._attention_blocks(decoder_only=G > 1)
        if not blocks:
            raise ValueError("cross-attention latents need at least one self-attention layer")
        if G > 1:
            res_levels = sorted({b.resolution for b in blocks})
            if len(res_levels) != G:
                raise ValueError(f"latent_groups={G} needs {G} decoder resolutions with attention, but the decoder "
                                 f"has attention at {res_levels} (the middle block counts); adjust attn_resolutions")
        for b in blocks:
            b.cross_attn = CrossAttention2d(b.out_channels, dim, b.heads, b.norm_eps)
            if G > 1:
                b.latent_group = res_levels.index(b.resolution)  # the lowest resolution reads group 0

    def silence_latents(self) -> None:
        """Zeroes the layers through which the latents reach the image path (the latent embedding's projection, or
        every cross-attention's output projection), as a fresh network has them: the output is then the plain
        network's for any z and for the null latent. Fine-tuning from a plain run calls this after loading it."""
        if not self.num_latents:
            return
        if self.latent_injection == "embedding":
            zero_init(self.latent_proj)
            return
        for b in self._attention_blocks(decoder_only=False):
            if b.cross_attn is not None:
                zero_init(b.cross_attn.proj)

    def latent_context(self, latents, null_latent, batch: int) -> torch.Tensor:
        """Latent tokens [B, m, latent_dim]: the keys and values of the cross-attention."""
        h = self.latent_embed(latents, null_latent, batch) + self.latent_pos
        for blk in self.latent_blocks:
            h = blk(h, self.latent_mask)
        return self.latent_norm(h)

    def latent_features(self, latents, null_latent, batch: int) -> torch.Tensor:
        """All that the latents contribute to a forward pass, a function of z alone: the latent tokens
        [B, m, latent_dim] that the cross-attention reads, or with `latent_injection="embedding"` their projection
        [B, emb_channels] added to the noise embedding. `forward(..., latent_features=...)` takes them precomputed:
        z is fixed along a sampling trajectory, so the sampler computes them once (model.make_denoiser)."""
        ctx = self.latent_context(latents, null_latent, batch)
        return self.latent_proj(ctx.flatten(1)) if self.latent_injection == "embedding" else ctx

    def _latent_inputs(self, emb, latents, null_latent, latent_features, batch: int):
        """(emb, contexts): the embedding with the latents' projection added (latent_injection "embedding"), and
        the latent tokens per group that the cross-attention blocks read ([None] without latents)."""
        contexts = [None]
        if self.num_latents:
            if latent_features is None:  # training, and plain calls: computed here, at the same point as ever
                latent_features = self.latent_features(latents, null_latent, batch)
            if self.latent_injection == "embedding":
                emb = emb + latent_features
            else:
                contexts = list(latent_features.chunk(self.latent_groups, dim=1))
        return emb, contexts


class UNet(LatentPath, nn.Module):
    """The image backbone. `forward(x, c_noise, *, class_labels, latents, null_latent) -> F` shaped like x.

    class_labels: float one-hots [B, num_classes] (all zero = class dropped) or None; latents: relaxed one-hots
    [B, m, k] or None (= the null latent); null_latent: bool [B], True = use the learned null latent;
    latent_features: `latent_features(latents, null_latent, B)` computed beforehand (then latents and null_latent
    are not read), so that a sampler embeds its fixed z once per trajectory rather than at every step.
    With num_latents = 0 the network has no latent modules at all.
    """

    def __init__(self, img_resolution: int, in_channels: int, *, out_channels: int | None = None,
                 num_classes: int = 0, num_latents: int = 0, codebook_size: int = 0,
                 model_channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 channels_per_head: int = 64, latent_dim: int = 64, latent_depth: int = 2, latent_heads: int = 4,
                 latent_injection: str = "cross_attention", latent_groups: int = 1,
                 norm_eps: float = DEFAULT_NORM_EPS):
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must name at least one resolution level")
        if latent_injection not in LATENT_INJECTIONS:
            raise ValueError(f"latent_injection must be one of {LATENT_INJECTIONS}, got {latent_injection!r}")
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or not norm_eps > 0:
            raise ValueError(f"norm_eps (the group norms' epsilon) must be a positive number, got {norm_eps!r}")
        self.img_resolution, self.in_channels = img_resolution, in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes, self.num_latents, self.codebook_size = num_classes, num_latents, codebook_size
        self.latent_injection, self.latent_groups = latent_injection, latent_groups
        self.resolutions = self._level_resolutions(img_resolution, len(channel_mult))
        attn_resolutions = {int(r) for r in attn_resolutions}
        emb_ch = model_channels * channel_mult_emb

        # --- the plain U-Net. Nothing latent-related may be created in this section (RNG order, see top). ---
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_layer0 = nn.Linear(model_channels, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        self.map_label = class_embedding(num_classes, emb_ch)

        def block(cin, cout, res, attention=False, **kw):
            return ResBlock(cin, cout, emb_ch, dropout=dropout, attention=attention,
                            heads=_heads(cout, channels_per_head), resolution=res, norm_eps=norm_eps, **kw)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = self.resolutions[level]
            if level == 0:
                cout = model_channels * mult
                self.enc[f"{res}x{res}_conv"] = nn.Conv2d(in_channels, cout, 3, padding=1)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, resample="down")
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, res, attention=res in attn_resolutions)
        skip_channels = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.resolutions[level]
            if level == len(channel_mult) - 1:  # the middle: EDM always gives its first block attention
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, resample="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, res, attention=res in attn_resolutions,
                                                            takes_skip=True)
        self.out_norm = group_norm(cout, norm_eps)
        self.out_conv = zero_init(nn.Conv2d(cout, self.out_channels, 3, padding=1))

        # --- the latent path, built last so that the weights above do not depend on it. ---
        if num_latents:
            self._build_latent_path(num_latents, codebook_size, emb_ch, latent_dim, latent_depth, latent_heads)
        elif latent_groups != 1:
            raise ValueError("latent_groups > 1 needs num_latents > 0")

    @staticmethod
    def _level_resolutions(img_resolution: int, levels: int) -> list[int]:
        res = [img_resolution]
        for _ in range(levels - 1):
            if res[-1] < 2:
                raise ValueError(f"{levels} resolution levels are too many for {img_resolution} px "
                                 f"(the levels would be {res} then 1 again)")
            res.append(math.ceil(res[-1] / 2))
        return res

    def _attention_blocks(self, decoder_only: bool) -> list[ResBlock]:
        parts = [self.dec] if decoder_only else [self.enc, self.dec]
        return [m for part in parts for m in part.values() if isinstance(m, ResBlock) and m.attn is not None]

    def forward(self, x, c_noise, *, class_labels=None, latents=None, null_latent=None, latent_features=None):
        B = x.shape[0]
        with torch.autocast(x.device.type, enabled=False):  # the noise and label embedding stay float32, as EDM's
            emb = self.map_layer1(F.silu(self.map_layer0(self.map_noise(c_noise.reshape(-1).expand(B).float()))))
            if self.map_label is not None and class_labels is not None:
                emb = emb + self.map_label(class_labels.float())
        emb, contexts = self._latent_inputs(emb, latents, null_latent, latent_features, B)
        emb = F.silu(emb)

        skips, h = [], x
        for blk in self.enc.values():
            h = blk(h) if isinstance(blk, nn.Conv2d) else blk(h, emb, contexts[blk.latent_group])
            skips.append(h)
        for blk in self.dec.values():
            if blk.takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            size = skips[-1].shape[-2:] if blk.resample == "up" else None
            h = blk(h, emb, contexts[blk.latent_group], size=size)
        return self.out_conv(F.silu(self.out_norm(h)))
