"""The EDM framework (Karras et al. 2022): preconditioning and the denoising loss.

Notation follows the paper: x = y + n with n ~ N(0, sigma^2 I), and the denoiser
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
is trained with the weighted loss lambda(sigma) ||D(y + n, sigma) - y||^2, ln sigma ~ N(P_mean, P_std^2).
Another forward process (model.process, `process.py`) changes only the law of n.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .process import GAUSSIAN, Process, process_of, standard_gamma


def edm_scalings(sigma: torch.Tensor, sigma_data: float | torch.Tensor):
    """EDM's preconditioning coefficients (c_skip, c_out, c_in, c_noise) for noise level `sigma`."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, so that lambda * c_out^2 = 1."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _broadcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class Denoiser(nn.Module):
    """EDM preconditioning around a backbone F(x_in, c_noise, class_labels, latents, null_latent):
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)).

    `latent_features`, when given, is the backbone's `latent_features(latents, null_latent, B)` computed beforehand
    (sampling computes it once per trajectory, see `model.DiscoDiff.make_denoiser`); training never passes it.

    (The toy MLP's centred variant, D = mu(z) + EDM_s(z)(x - mu(z)), is `networks.mlp.CentredDenoiser`.)
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    @staticmethod
    def noise_levels(x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma (a number or [B]) as float32 [B] on x's device, and reshaped to broadcast against x."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        sigma = sigma.to(torch.float32)
        return sigma, _broadcast(sigma, x)

    @staticmethod
    def net_options(latent_features) -> dict:
        """The backbone's `latent_features` keyword, passed only when given: a backbone without latent
        features (one registered elsewhere) keeps working as before."""
        return {} if latent_features is None else {"latent_features": latent_features}

    def forward(self, x, sigma, *, latents=None, null_latent=None, class_labels=None, latent_features=None):
        sigma, s = self.noise_levels(x, sigma)
        c_skip, c_out, c_in, _ = edm_scalings(s, self.sigma_data)
        c_noise = sigma.log() / 4
        f = self.net(c_in * x, c_noise, class_labels=class_labels, latents=latents, null_latent=null_latent,
                     **self.net_options(latent_features))
        return c_skip * x + c_out * f.to(torch.float32)


class EDMLoss:
    """Per-sample EDM loss with log-normal noise levels. Randomness comes only from `generator`.

    `process`: the perturbation kernel (`process.Process`); EDM's Gaussian by default, another kernel at the same
    sigma with everything else unchanged (e.g. PFGM++'s EDM-aligned form, variants/pfgmpp.py)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5, process: Process = GAUSSIAN):
        self.P_mean, self.P_std, self.sigma_data, self.process = P_mean, P_std, sigma_data, process

    @classmethod
    def for_model(cls, cfg) -> "EDMLoss":
        """The stage-I loss of a model config: its noise-level distribution, sigma_data and process."""
        return cls(cfg.P_mean, cfg.P_std, cfg.sigma_data, process=process_of(cfg))

    def sample_sigma(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        rnd = torch.randn(n, generator=generator, device=device)
        return (rnd * self.P_std + self.P_mean).exp()

    def __call__(self, denoise, y, *, sigma=None, generator=None, **cond) -> torch.Tensor:
        """Returns lambda(sigma) * mean_i (D(y+n, sigma) - y)_i^2 for each sample ([B])."""
        if sigma is None:
            sigma = self.sample_sigma(y.shape[0], generator=generator, device=y.device)
        g = torch.randn(y.shape, generator=generator, device=y.device)
        noise = self.process.perturbation(
            g, _broadcast(sigma, y), lambda alpha: standard_gamma(alpha, y.shape[0], generator=generator, device=y.device))
        D = denoise(y + noise, sigma, **cond)
        err = (D - y).square().flatten(1).mean(1)
        return loss_weight(sigma, self.sigma_data) * err


def sigma_bins(num_bins: int = 12, lo: float = 0.002, hi: float = 80.0) -> torch.Tensor:
    """Log-spaced noise levels, used to report the loss as a function of sigma."""
    return torch.logspace(math.log10(lo), math.log10(hi), num_bins)
