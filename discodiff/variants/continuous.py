"""Continuous latents, the paper's Table 3 ablation (docs/continuous_latents.md): the m categorical latents become a
Gaussian vector z of D entries, cut into m tokens of D / m that the denoiser reads through the same embedding. Stage I
draws z ~ q(z | y) = N(mean, diag(var)) by reparameterisation and adds beta * KL(q(z | y) || N(0, I)) per data entry
to each sample's loss; stage II fits a diffusion prior (discodiff/diffusion_prior.py) to the posterior samples.

Selected by model.latent_type = "continuous" (`--latent-type continuous`), with model.latent_dim (D) and
model.kl_weight (beta).
"""
from __future__ import annotations

import torch

from ..latents import LatentType, register_latent_type, register_regulariser
from .diffusion_prior import DiffusionPrior

# The posterior's log-variance is clamped, as latent diffusion's DiagonalGaussianDistribution does, so that exp() can
# neither overflow nor vanish.
LOGVAR_RANGE = (-30.0, 20.0)


def split_posterior(encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output [B, m, 2w] -> (mean, log-variance), each [B, m, w] in float32."""
    mean, logvar = encoded.float().chunk(2, dim=-1)
    return mean, logvar.clamp(*LOGVAR_RANGE)


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, *, generator=None) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of the posterior that gradients pass through."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * logvar).exp() * eps


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample [B], in nats, summed over all latent coordinates:
    sum_i (mean_i^2 + var_i - 1 - logvar_i) / 2."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


@register_regulariser("gaussian_kl")
def kl_per_entry(model, y: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
    """KL(q(z | y) || N(0, I)) / d per sample, d the number of data entries. The EDM loss is a mean over the d
    entries, so this weighs the KL against the squared error summed over them, as an ELBO does: weight 1 is the
    VAE's balance. It counts for every sample, dropped to the null latent or not: it regularises the encoder,
    whatever the denoiser saw."""
    return gaussian_kl(*split_posterior(encoded)) / y[0].numel()


@register_latent_type
class ContinuousLatents(LatentType):
    name = "continuous"

    def encoder_outputs(self) -> int:
        return 2 * self.cfg.token_width  # the mean and the log-variance of each token's D / m coordinates

    def embedding_input(self, z):
        return z.float().reshape(len(z), self.cfg.num_latents, self.cfg.token_width)

    def training_sample(self, encoded, generator=None):
        return reparameterise(*split_posterior(encoded), generator=generator)

    def mode(self, encoded):
        return split_posterior(encoded)[0].flatten(1)

    def sample(self, encoded, tau, generator=None):  # tau does not apply
        return reparameterise(*split_posterior(encoded), generator=generator).flatten(1)

    def loss_terms(self):
        return [("gaussian_kl", self.cfg.beta)]

    def prior_class(self):
        return DiffusionPrior

    def prepare_prior(self, prior, encoded):
        prior.fit_standardisation(*split_posterior(encoded))
