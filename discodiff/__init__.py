"""discodiff: DisCo-Diff (Xu et al., ICML 2024), EDM diffusion models with learned discrete latents."""
from .config import ConfigError, RunConfig, preset_config
from .edm import Denoiser, EDMLoss, edm_scalings, loss_weight
from .latents import gumbel_softmax
from .model import DiscoDiff
from .prior import ARPrior
from .sampling import karras_sigmas, sample_edm_stochastic, sample_euler, sample_heun

__version__ = "0.1.0"
__all__ = ["ARPrior", "ConfigError", "Denoiser", "DiscoDiff", "EDMLoss", "RunConfig", "edm_scalings",
           "gumbel_softmax", "karras_sigmas", "loss_weight", "preset_config", "sample_edm_stochastic",
           "sample_euler", "sample_heun"]
