"""The paper's 2D toy data: an equal mixture of 8 Gaussians on a circle."""
from __future__ import annotations

import math

import torch

from ..config import DataConfig
from . import ArrayDataset, DataError, register


def ring_means(num_modes: int = 8, radius: float = 3.0) -> torch.Tensor:
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def sample_ring(n: int, *, num_modes: int = 8, radius: float = 3.0, std: float = 0.2, seed: int = 0,
                balanced: bool = False):
    """n points of the mixture and their component index. `balanced` gives exactly n / num_modes per mode."""
    g = torch.Generator().manual_seed(seed)
    if balanced:
        comp = torch.arange(n) % num_modes
    else:
        comp = torch.randint(num_modes, (n,), generator=g)
    x = ring_means(num_modes, radius)[comp] + std * torch.randn(n, 2, generator=g)
    return x, comp


@register("toy2d")
def load_toy2d(cfg: DataConfig) -> ArrayDataset:
    o = {"num_points": 8000, "num_modes": 8, "radius": 3.0, "std": 0.2, "seed": 0}
    unknown = set(cfg.options) - set(o)
    if unknown:
        raise DataError(f"unknown option(s) for dataset 'toy2d': {', '.join(sorted(unknown))}; "
                        f"valid: {', '.join(sorted(o))}")
    o.update(cfg.options)
    x, comp = sample_ring(o["num_points"], num_modes=o["num_modes"], radius=o["radius"], std=o["std"],
                          seed=o["seed"], balanced=True)
    # The component index is kept as a label (for analysis); the toy models are unconditional.
    return ArrayDataset(x=x, labels=comp, num_classes=o["num_modes"], kind="vector", name="toy2d")
