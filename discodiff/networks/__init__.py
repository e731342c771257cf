"""Network registry: configs name backbones and encoders by stable short names, never by import path."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError

from ..config import ModelConfig
from ..edm import Denoiser
from ..latents import latent_type
from .layers import Encoder

BACKBONES: dict[str, Callable[[ModelConfig, dict], nn.Module]] = {}
ENCODERS: dict[str, Callable[[ModelConfig, dict], nn.Module]] = {}


def register_backbone(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn
    return deco


def register_encoder(name: str):
    def deco(fn):
        ENCODERS[name] = fn
        return fn
    return deco


def _build(registry: dict, spec: dict, cfg: ModelConfig, what: str) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose from: {', '.join(sorted(registry))}")
    try:
        return registry[name](cfg, spec)
    except TypeError as e:  # an unknown or missing keyword in the config
        raise ConfigError(f"bad {what} options {spec}: {e}") from None


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The backbone F of the denoiser D (edm.py's notation) named by cfg.network."""
    return _build(BACKBONES, cfg.network, cfg, "network")


def build_denoiser(cfg: ModelConfig) -> Denoiser:
    """The denoiser D around the backbone F: EDM's preconditioning, or, for the toy MLP built with centred=True,
    the centred one (networks.mlp.CentredDenoiser)."""
    from .mlp import CentredDenoiser, MLPBackbone
    net = build_backbone(cfg)
    if isinstance(net, MLPBackbone) and net.centred:
        return CentredDenoiser(net, cfg.sigma_data)
    return Denoiser(net, cfg.sigma_data)


def build_encoder(cfg: ModelConfig) -> nn.Module:
    return _build(ENCODERS, cfg.encoder, cfg, "encoder")


def encoder_outputs(cfg: ModelConfig) -> int:
    """What an encoder outputs per latent token, as the model's kind of latent says (k logits for the paper's)."""
    return latent_type(cfg).encoder_outputs()


# Encoder options that shape a categorical distribution's logits, so fit discrete latents only, each with the value
# that fits continuous latents (the default): `discodiff train --latent-type continuous` on a preset made for
# discrete latents sets them so (`continuous_encoder_fixes`), and building such an encoder with other values fails.
DISCRETE_ONLY_ENCODER_OPTIONS: dict[str, dict] = {"mlp": {"prototypes": False}}


def continuous_encoder_fixes(encoder: dict) -> dict:
    """{option: value} for the options of an encoder spec (model.encoder) that are set for discrete latents only,
    with the values continuous latents need; {} when there are none."""
    fits = DISCRETE_ONLY_ENCODER_OPTIONS.get(encoder.get("name"), {})
    return {k: v for k, v in fits.items() if k in encoder and encoder[k] != v}


def init_encoder_from_data(encoder: Encoder | None, y, dataset=None) -> None:
    """The encoder's data-dependent initialisation at a fresh run's start (layers.Encoder): on y, the first training
    batch (the MLP encoder's k-means++ prototypes), or, for an encoder that `needs_dataset`, on `dataset`, the whole
    training set (the k-means encoder's centroids). Nothing for an encoder that needs neither, a `frozen` one
    (another run's, copied: autoguidance.py), or none. Under DDP every rank then takes rank 0's parameters and
    buffers, so all start from the same initialisation."""
    if encoder is None or encoder.frozen:
        return
    done = encoder.init_from_dataset(dataset) if encoder.needs_dataset else encoder.init_from_data(y)
    if not done:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in [*encoder.parameters(), *encoder.buffers()]:
            torch.distributed.broadcast(t.data, 0)


@register_backbone("mlp")
def _mlp_backbone(cfg: ModelConfig, kw: dict) -> nn.Module:
    from .mlp import MLPBackbone
    return MLPBackbone(math.prod(cfg.data_shape), cfg.num_latents, cfg.token_width, cfg.num_classes,
                       sigma_data=cfg.sigma_data, **kw)


@register_encoder("mlp")
def _mlp_encoder(cfg: ModelConfig, kw: dict) -> nn.Module:
    from .mlp import MLPEncoder
    kw.setdefault("input_scale", cfg.sigma_data)
    for option in DISCRETE_ONLY_ENCODER_OPTIONS["mlp"]:
        if cfg.continuous and kw.get(option):
            raise ConfigError(f"the mlp encoder's {option}=true applies to discrete latents, not continuous ones; "
                              f"set model.encoder.{option}=false")
    return MLPEncoder(math.prod(cfg.data_shape), cfg.num_latents, encoder_outputs(cfg), **kw)


def _image_shape(cfg: ModelConfig, what: str) -> tuple[int, int]:
    """(channels, resolution) of square image data [C, H, W]."""
    if len(cfg.data_shape) != 3 or cfg.data_shape[1] != cfg.data_shape[2]:
        raise ConfigError(f"the {what} needs square images, data_shape [C, H, H]; got {list(cfg.data_shape)}")
    return int(cfg.data_shape[0]), int(cfg.data_shape[1])


@register_backbone("unet")
def _unet_backbone(cfg: ModelConfig, kw: dict) -> nn.Module:
    from .unet import UNet
    channels, resolution = _image_shape(cfg, "unet network")
    try:
        return UNet(resolution, channels, num_classes=cfg.num_classes, num_latents=cfg.num_latents,
                    codebook_size=cfg.token_width, **kw)
    except ValueError as e:  # an option the network rejects (e.g. latent_groups not dividing m): a config error
        raise ConfigError(f"unet network: {e}") from None


@register_backbone("song_unet")
def _song_unet_backbone(cfg: ModelConfig, kw: dict) -> nn.Module:
    """EDM's DDPM++ / NCSN++ (song_unet.py): the backbone of EDM's CIFAR-10, FFHQ and AFHQv2 networks, which
    `discodiff import-edm` converts."""
    from .song_unet import SongUNet
    channels, resolution = _image_shape(cfg, "song_unet network")
    try:
        return SongUNet(resolution, channels, num_classes=cfg.num_classes, num_latents=cfg.num_latents,
                        codebook_size=cfg.token_width, **kw)
    except ValueError as e:
        raise ConfigError(f"song_unet network: {e}") from None


@register_encoder("kmeans")
def _kmeans_encoder(cfg: ModelConfig, kw: dict) -> nn.Module:
    from .kmeans import KMeansEncoder
    if cfg.continuous:
        raise ConfigError("the kmeans encoder gives discrete codes; continuous latents need a learned encoder "
                          "(model.encoder.name=vit or mlp)")
    try:
        return KMeansEncoder(math.prod(cfg.data_shape), cfg.num_latents, cfg.codebook_size, **kw)
    except ValueError as e:
        raise ConfigError(f"kmeans encoder: {e}") from None


@register_encoder("vit")
def _vit_encoder(cfg: ModelConfig, kw: dict) -> nn.Module:
    from .vit import ViTEncoder
    channels, resolution = _image_shape(cfg, "vit encoder")
    kw.setdefault("input_scale", cfg.sigma_data)
    try:
        return ViTEncoder(resolution, channels, cfg.num_latents, encoder_outputs(cfg), **kw)
    except ValueError as e:
        raise ConfigError(f"vit encoder: {e}") from None
