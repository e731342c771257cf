"""What every analysis needs: its error type, input checks, seeded image subsets and JSON-safe results."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..sampling import SAMPLERS, takes_noise_source
from ..errors import AnalysisError  # noqa: F401

# The registered samplers that draw no noise of their own (the ODE solvers), for the analyses that need a
# deterministic sampler: latent switching continues a trajectory, and FID against steps measures the ODE's error.
ODE_SAMPLERS = tuple(name for name, info in SAMPLERS.items() if not takes_noise_source(info.fn))
# Latent switching restarts the sampler from a point of the trajectory, which continues it exactly only for the
# one-step solvers (a multistep one, like dpmpp-2m, would lose the evaluations it carries).
SWITCHING_SAMPLERS = tuple(name for name in ODE_SAMPLERS if not SAMPLERS[name].multistep)


def require_latents(model, what: str, where: str = "this run") -> None:
    """Analyses of the latents make no sense for a plain diffusion model (m = 0)."""
    if model.num_latents == 0:
        raise AnalysisError(f"{what} needs a DisCo-Diff model with discrete latents, but {where} is a plain diffusion "
                            f"model (m = 0)")


def require_discrete(model, what: str, where: str = "this run") -> None:
    """Analyses of codes (their usage, their tuples) need discrete latents, not continuous ones."""
    if model.config.continuous:
        raise AnalysisError(f"{what} needs discrete latents, but {where} has a continuous latent "
                            f"(latent_type continuous)")


def require_prior(model, prior, what: str, where: str = "this run") -> None:
    """Sampling a model with latents needs its prior (stage II); `prior` as Run.load_prior gives it (None for m = 0)."""
    if prior is None and model.num_latents:
        raise AnalysisError(f"{what} needs latents from the prior, and {where} has no trained prior yet; run "
                            f"`discodiff train-prior --run-dir {where}`")


def require_image_model(model, what: str, where: str = "this run") -> None:
    shape = list(model.config.data_shape)
    if len(shape) != 3:
        raise AnalysisError(f"{what} needs an image model, but {where} models vectors of shape {shape}")


def pick_images(num_data: int, num: int, seed: int) -> torch.Tensor:
    """Indices of `num` dataset items in a seeded random order, without repeats while the dataset lasts (then the
    same order again), so every analysis at the same seed looks at the same images."""
    if num < 1:
        raise AnalysisError(f"the number of images must be positive, got {num}")
    perm = torch.randperm(num_data, generator=torch.Generator().manual_seed(seed))
    return perm.repeat(math.ceil(num / num_data))[:num]


def generation_labels(model, seeds: Sequence[int], device=None) -> torch.Tensor | None:
    """Class labels for generating from `seeds`: seed % num_classes for a class-conditional model (balanced
    classes, as `discodiff fid gen` draws them), None for an unconditional one."""
    n = model.config.num_classes
    return torch.as_tensor(list(seeds), device=device) % n if n else None


def chunks(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    """(start, items[start:start + size]) pieces."""
    for i in range(0, len(items), size):
        yield i, items[i:i + size]


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square difference [N] (over all pixels / coordinates)."""
    return (a.float() - b.float()).flatten(1).square().mean(1).sqrt()


def jsonable(obj):
    """A copy of a result that json.dumps takes: tensors and arrays with more than 64 entries (pictures, samples)
    are dropped; small ones and numpy / torch scalars become lists and numbers."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if (torch.is_tensor(v) and v.numel() > 64) or (isinstance(v, np.ndarray) and v.size > 64):
                continue
            out[str(k)] = jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
