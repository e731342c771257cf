"""discodiff: DisCo-Diff (Xu et al., ICML 2024), EDM diffusion models with learned discrete latents.

The pieces, in the order a run uses them: `resolve_run` / `Run` (a run folder: config, weights, state), `DiscoDiff`
(stage I: denoiser + encoder), `ARPrior` (stage II), and `generate` (latents from the prior, then a sampler).
"""
from .errors import ConfigError
from .config import RunConfig, preset_config
from .edm import Denoiser, EDMLoss, edm_scalings, loss_weight
from .latents import gumbel_softmax
from .model import DiscoDiff
from .pipeline import generate, generate_batches, hybrid_denoiser, sample_latents, sampler_from_name, shared_latents
from .prior import ARPrior
from .runs import Run, resolve_run
from . import variants  # noqa: F401  (registers the research variants by name)
from .sampling import (RESTART_PRESETS, SAMPLERS, karras_sigmas, sample_dpmpp_2m, sample_edm_stochastic, sample_euler,
                       sample_heun, sample_restart)

__version__ = "0.1.0"
__all__ = ["ARPrior", "ConfigError", "Denoiser", "DiscoDiff", "EDMLoss", "RESTART_PRESETS", "Run", "RunConfig",
           "SAMPLERS", "edm_scalings", "generate", "generate_batches", "gumbel_softmax", "hybrid_denoiser",
           "karras_sigmas", "loss_weight", "preset_config", "resolve_run", "sample_dpmpp_2m", "sample_edm_stochastic",
           "sample_euler", "sample_heun", "sample_latents", "sample_restart", "sampler_from_name", "shared_latents"]
