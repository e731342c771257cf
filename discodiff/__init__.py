"""discodiff: DisCo-Diff (Xu et al., ICML 2024), EDM diffusion models with learned discrete latents.

The pieces, in the order a run uses them: `resolve_run` / `Run` (a run folder: config, weights, state), `DiscoDiff`
(stage I: denoiser + encoder), `ARPrior` (stage II), and `generate` (latents from the prior, then a sampler).
"""
from .config import ConfigError, RunConfig, preset_config
from .edm import Denoiser, EDMLoss, edm_scalings, loss_weight
from .latents import gumbel_softmax
from .model import DiscoDiff
from .pipeline import generate, generate_batches, sample_latents, sampler_from_name, shared_latents
from .prior import ARPrior
from .runs import Run, resolve_run
from .sampling import SAMPLERS, karras_sigmas, sample_edm_stochastic, sample_euler, sample_heun

__version__ = "0.1.0"
__all__ = ["ARPrior", "ConfigError", "Denoiser", "DiscoDiff", "EDMLoss", "Run", "RunConfig", "SAMPLERS",
           "edm_scalings", "generate", "generate_batches", "gumbel_softmax", "karras_sigmas", "loss_weight",
           "preset_config", "resolve_run", "sample_edm_stochastic", "sample_euler", "sample_heun", "sample_latents",
           "sampler_from_name", "shared_latents"]
