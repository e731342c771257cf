"""What a configuration's parts weigh: parameter counts from a build on the meta device (no memory, no random
draws), for `discodiff train --dry-run` and for checks against the paper's sizes."""
from __future__ import annotations

import torch

from .config import ModelConfig, PriorTrainConfig

PARTS = ("denoiser backbone", "latent path", "encoder", "prior")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def parameter_counts(cfg: ModelConfig, prior_network: dict | None = None) -> dict[str, int]:
    """{part: parameters} for PARTS: the denoiser's plain backbone (what a run with m = 0 has), the latent path it
    gains with latents (latent embedding and transformer, cross-attention or embedding projection), the encoder and
    the stage-II prior of sizes `prior_network` (prior_train.network; None: the default) (0 for the parts a model
    without latents lacks)."""
    from .finetune import plain_counterpart
    from .model import DiscoDiff
    from .latents import prior_class
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = DiscoDiff(cfg)
        backbone = _count(DiscoDiff(plain_counterpart(cfg)).denoiser) if cfg.num_latents else _count(model.denoiser)
        network = PriorTrainConfig().network if prior_network is None else prior_network
        prior = prior_class(cfg).for_model(cfg, network) if cfg.num_latents else None
        return {"denoiser backbone": backbone, "latent path": _count(model.denoiser) - backbone,
                "encoder": _count(model.encoder), "prior": _count(prior)}


def describe(counts: dict[str, int]) -> list[str]:
    """One line per part, then the total, with thousands separators and millions."""
    width = max(len(p) for p in counts)
    lines = [f"{p:<{width}}  {n:>13,}  ({n / 1e6:.1f}M)" for p, n in counts.items()]
    total = sum(counts.values())
    return lines + [f"{'total':<{width}}  {total:>13,}  ({total / 1e6:.1f}M)"]
