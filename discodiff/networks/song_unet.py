"""EDM's SongUNet family as a discodiff backbone: DDPM++ and NCSN++ (Song et al., 2021, as EDM reimplemented them
for its CIFAR-10, FFHQ and AFHQv2 networks), with the discrete latents of DisCo-Diff added as in the U-Net.

Written from the architecture's description (EDM's paper and its published networks' layout), not from EDM's code.
It exists so that `discodiff import-edm` can convert EDM's SongUNet snapshots (edm_import.py) and fine-tune them
into DisCo-Diff; its module names are EDM's, so that a snapshot's state dict maps onto it key for key.

Layout. An input conv (model_channels wide), then per level (resolution img_resolution >> level) a down-sampling
block (levels > 0) and `num_blocks` blocks; a middle pair (the first with self-attention); then per level an
up-sampling block (levels < deepest) and `num_blocks + 1` blocks that each take one skip connection. Unlike the ADM
U-Net (unet.py), a decoder level has self-attention only in its LAST block, every attention has one head, and:
- blocks add the embedding's projection before the second norm (no adaptive scale), and scale each residual sum by
  sqrt(1/2), after the residual part and again after the self-attention;
- resampling is a separable FIR filter (`resample_filter`: [1, 1] is DDPM++'s box, [1, 3, 3, 1] NCSN++'s), and a
  resampling block's skip path is a 1x1 conv even when the channels do not change;
- the noise embedding is DDPM++'s sinusoids (`embedding_type="positional"`) or NCSN++'s random Fourier features
  ("fourier", frequencies drawn once, kept in the state dict), `channel_mult_noise * model_channels` wide, sine
  first; the class label (a one-hot times sqrt(num_classes), through a linear layer with bias) and the augmentation
  labels are added to it BEFORE the two-layer mapping network;
- `encoder_type`: "standard" (DDPM++), "skip" (the input image, down-sampled, is added to each level's first
  feature map through a 1x1 conv) or "residual" (NCSN++: a progressive path, a 3x3 conv then the FIR filter at
  stride 2, averaged into the feature map with weight sqrt(1/2));
- `decoder_type`: "standard" (only the finest level outputs, through GroupNorm-SiLU-conv) or "skip" (every level
  outputs so, the coarser outputs up-sampled by the filter and summed).

Augmentation labels: EDM trained its CIFAR-10 and FFHQ/AFHQ networks with a non-leaking augmentation pipeline whose
9 parameters enter through `map_augment` (`augment_dim` 9); at sampling time it gives none, which is the same as
zero labels. discodiff has no such pipeline, so the layer reads zero labels always: its weight loads (and stays as
trained: its gradient is zero), and the network computes EDM's sampling-time function.

Latents: exactly the U-Net's latent path (unet.LatentPath, the same options and the null latent), built after the
plain network so that its weights do not depend on it. Cross-attention follows every self-attention layer, with
the block's one head; `latent_injection="embedding"` adds the tokens' projection where the class label goes, before
the mapping network. Every layer that leads out of the latent path starts at zero, so latents start with no effect.

Initialisation of a fresh network: Xavier-uniform weights and zero biases as DDPM++, the attention's qkv with gain
sqrt(0.2); the layers that close a residual branch and the output convs start at exactly zero (EDM: 1e-5 times
Xavier), so a fresh network outputs F = 0, as discodiff's U-Net does.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .unet import LATENT_INJECTIONS, LatentPath, SelfAttention2d, group_norm
from .layers import zero_init

EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")
SONG_NORM_EPS = 1e-6          # SongUNet's group norms
SKIP_SCALE = math.sqrt(0.5)   # each residual sum is scaled so that its variance stays that of one branch
FOURIER_SCALE = 16.0          # NCSN++'s random frequencies: N(0, 16^2)


def _xavier(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    return _xavier(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))


def linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    return _xavier(nn.Linear(cin, cout, bias=bias))


def fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The 2D filter of a separable FIR filter with 1D `taps`, normalised to sum 1: [n, n]."""
    f = torch.as_tensor([float(t) for t in taps], dtype=torch.float32)
    return torch.outer(f, f) / f.sum().square()


class Resample(nn.Module):
    """Down- or up-sampling by 2 with a separable FIR filter, per channel. Down: the filter at stride 2 (with [1, 1],
    2x2 average pooling); up: its transpose, scaled by 4 to keep the mean (with [1, 1], nearest neighbour). The
    filter is a constant of the configuration, not a weight: it is kept out of the state dict."""

    def __init__(self, taps: Sequence[float], direction: str):
        super().__init__()
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        if len(taps) < 1 or any(t < 0 for t in taps) or sum(taps) <= 0:
            raise ValueError(f"resample_filter must be non-negative taps with a positive sum, got {list(taps)}")
        self.direction = direction
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, n = x.shape[1], self.kernel.shape[-1]
        k = self.kernel.to(x.dtype).expand(C, 1, n, n)
        pad = (n - 1) // 2
        if self.direction == "down":
            return F.conv2d(x, k, stride=2, padding=pad, groups=C)
        return F.conv_transpose2d(x, k * 4, stride=2, padding=pad, groups=C)


class ConvDown(nn.Conv2d):
    """NCSN++'s progressive input path: a 3x3 conv over a border widened by the filter's reach, then the FIR filter
    at stride 2 (the conv first, the reverse of a resampling block's order). The bias passes the filter unchanged,
    as the filter sums to 1."""

    def __init__(self, cin: int, cout: int, taps: Sequence[float]):
        super().__init__(cin, cout, 3)
        _xavier(self)
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.kernel.shape[-1]
        h = F.conv2d(x, self.weight, self.bias, padding=1 + (n - 1) // 2)
        k = self.kernel.to(h.dtype).expand(h.shape[1], 1, n, n)
        return F.conv2d(h, k, stride=2, groups=h.shape[1])


class SongBlock(nn.Module):
    """A residual block of DDPM++/NCSN++: GroupNorm-SiLU-(resample)-conv, plus the embedding's projection, then
    GroupNorm-SiLU-dropout-conv; the sum with the skip path scaled by sqrt(1/2); then optional one-head self-attention
    (scaled so again) and, attached later by the network, cross-attention to the latent tokens (not scaled: it starts
    at zero, and the network must start as the plain one)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, resolution: int,
                 resample: str | None = None, resample_filter: Sequence[float] = (1, 1), attention: bool = False,
                 dropout: float = 0.0, takes_skip: bool = False, norm_eps: float = SONG_NORM_EPS):
        super().__init__()
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, 1
        self.resolution, self.takes_skip, self.norm_eps = resolution, takes_skip, norm_eps
        self.norm0 = group_norm(in_channels, norm_eps)
        self.conv0 = conv(in_channels, out_channels, 3)
        self.affine = linear(emb_channels, out_channels)
        self.norm1 = group_norm(out_channels, norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.resample = Resample(resample_filter, resample) if resample else None
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels or resample else None
        self.attn = None
        if attention:
            self.attn = SelfAttention2d(out_channels, 1, norm_eps)
            _xavier(self.attn.qkv, gain=math.sqrt(0.2))
        self.cross_attn = None
        self.latent_group = 0  # which group of latent tokens the cross-attention reads

    def forward(self, x, emb, ctx=None):
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h) + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.attn is not None:
            x = self.attn(x) * SKIP_SCALE
        if self.cross_attn is not None:
            x = self.cross_attn(x, ctx)
        return x


class SinusoidalEmbedding(nn.Module):
    """DDPM++'s noise embedding: [sin, cos] of t times frequencies from 1 down to exactly 1/max_positions."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"the noise embedding needs an even width of at least 4, got {dim}")
        self.dim, self.max_positions = dim, max_positions

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """NCSN++'s noise embedding: [sin, cos] of 2 pi t times random frequencies, drawn once (a buffer)."""

    def __init__(self, dim: int, scale: float = FOURIER_SCALE):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the noise embedding needs an even width, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * (2 * math.pi * self.freqs)[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _role(name: str) -> str:
    """'16x16_aux_residual' -> 'aux_residual', '32x32_block3' -> 'block', '8x8_in0' -> 'in'."""
    role = name.split("_", 1)[1]
    return role.rstrip("0123456789") if not role.startswith("aux_") else role


class SongUNet(LatentPath, nn.Module):
    """DDPM++ / NCSN++. `forward(x, c_noise, *, class_labels, latents, null_latent, latent_features) -> F` shaped
    like x, with the U-Net's arguments and meaning (unet.UNet). The defaults are EDM's CIFAR-10 DDPM++; NCSN++ is
    embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", resample_filter=[1, 3, 3, 1]."""

    def __init__(self, img_resolution: int, in_channels: int, *, out_channels: int | None = None,
                 num_classes: int = 0, num_latents: int = 0, codebook_size: int = 0,
                 model_channels: int = 128, channel_mult: Sequence[int] = (2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.13,
                 embedding_type: str = "positional", channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter: Sequence[float] = (1, 1), augment_dim: int = 0,
                 norm_eps: float = SONG_NORM_EPS, latent_dim: int = 64, latent_depth: int = 2, latent_heads: int = 4,
                 latent_injection: str = "cross_attention", latent_groups: int = 1):
        super().__init__()
        for value, allowed, what in ((embedding_type, EMBEDDING_TYPES, "embedding_type"),
                                     (encoder_type, ENCODER_TYPES, "encoder_type"),
                                     (decoder_type, DECODER_TYPES, "decoder_type"),
                                     (latent_injection, LATENT_INJECTIONS, "latent_injection")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if not channel_mult:
            raise ValueError("channel_mult must name at least one resolution level")
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"{len(channel_mult)} resolution levels halve {img_resolution} px "
                             f"{len(channel_mult) - 1} times: it must be a multiple of {1 << (len(channel_mult) - 1)}")
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or not norm_eps > 0:
            raise ValueError(f"norm_eps (the group norms' epsilon) must be a positive number, got {norm_eps!r}")
        if augment_dim < 0:
            raise ValueError(f"augment_dim must be >= 0, got {augment_dim}")
        self.img_resolution, self.in_channels = img_resolution, in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes, self.num_latents, self.codebook_size = num_classes, num_latents, codebook_size
        self.augment_dim = augment_dim
        self.latent_injection, self.latent_groups = latent_injection, latent_groups
        attn_resolutions = {int(r) for r in attn_resolutions}
        emb_ch, noise_ch = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        taps = [float(t) for t in resample_filter]

        # --- the plain network. Nothing latent-related may be created in this section (RNG order, see unet.py). ---
        self.map_noise = SinusoidalEmbedding(noise_ch) if embedding_type == "positional" else FourierEmbedding(noise_ch)
        self.map_label = linear(num_classes, noise_ch) if num_classes else None
        self.map_augment = linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = linear(noise_ch, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)

        def block(cin, cout, res, **kw):
            return SongBlock(cin, cout, emb_ch, resolution=res, resample_filter=taps, dropout=dropout,
                             norm_eps=norm_eps, **kw)

        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels
                self.enc[f"{res}x{res}_conv"] = conv(in_channels, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, resample="down")
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Resample(taps, "down")
                    self.enc[f"{res}x{res}_aux_skip"] = conv(caux, cout, 1)
                elif encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = ConvDown(caux, cout, taps)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, res, attention=res in attn_resolutions)
        skip_channels = [m.out_channels for name, m in self.enc.items() if not _role(name).startswith("aux_")]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:  # the middle: its first block always has attention
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, resample="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = block(
                    cin, cout, res, attention=idx == num_blocks and res in attn_resolutions, takes_skip=True)
            if decoder_type == "skip" or level == 0:  # this level outputs an image
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Resample(taps, "up")
                self.dec[f"{res}x{res}_aux_norm"] = group_norm(cout, norm_eps)
                self.dec[f"{res}x{res}_aux_conv"] = zero_init(nn.Conv2d(cout, self.out_channels, 3, padding=1))
        self._enc_roles = {name: _role(name) for name in self.enc}
        self._dec_roles = {name: _role(name) for name in self.dec}

        # --- the latent path, built last so that the weights above do not depend on it. ---
        if num_latents:
            self._build_latent_path(num_latents, codebook_size, noise_ch, latent_dim, latent_depth, latent_heads)
        elif latent_groups != 1:
            raise ValueError("latent_groups > 1 needs num_latents > 0")

    def _attention_blocks(self, decoder_only: bool) -> list[SongBlock]:
        parts = [self.dec] if decoder_only else [self.enc, self.dec]
        return [m for part in parts for m in part.values() if isinstance(m, SongBlock) and m.attn is not None]

    def forward(self, x, c_noise, *, class_labels=None, latents=None, null_latent=None, latent_features=None):
        B = x.shape[0]
        with torch.autocast(x.device.type, enabled=False):  # the embeddings stay float32, as in the U-Net
            emb = self.map_noise(c_noise.reshape(-1).expand(B).float())
            if self.map_label is not None:  # no labels = all classes dropped: the layer's bias still enters
                labels = class_labels.float() if class_labels is not None else emb.new_zeros(B, self.num_classes)
                emb = emb + self.map_label(labels * math.sqrt(self.num_classes))
            # no augmentation here: zero labels (EDM's sampling-time input). The layer still runs, adding zero, so
            # that its weight takes part in the graph: DDP requires every parameter to receive a gradient
            if self.map_augment is not None:
                emb = emb + self.map_augment(emb.new_zeros(B, self.augment_dim))
        emb, contexts = self._latent_inputs(emb, latents, null_latent, latent_features, B)
        with torch.autocast(x.device.type, enabled=False):
            emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb.float()))))

        skips, h, aux = [], x, x
        for name, blk in self.enc.items():
            role = self._enc_roles[name]
            if role == "aux_down":
                aux = blk(aux)
            elif role == "aux_skip":
                h = skips[-1] = h + blk(aux)
            elif role == "aux_residual":
                h = skips[-1] = aux = (h + blk(aux)) * SKIP_SCALE
            else:
                h = blk(h) if role == "conv" else blk(h, emb, contexts[blk.latent_group])
                skips.append(h)

        out, tmp = None, None
        for name, blk in self.dec.items():
            role = self._dec_roles[name]
            if role == "aux_up":
                out = blk(out)
            elif role == "aux_norm":
                tmp = blk(h)
            elif role == "aux_conv":
                tmp = blk(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if blk.takes_skip:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = blk(h, emb, contexts[blk.latent_group])
        return out
