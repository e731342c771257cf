"""A fixed encoder: the latents are the data's k-means clusters in pixel space, computed once over the whole training
set before stage I, not learned.

Why it exists: on fashion16 every learned encoder names the class worse than plain k-means on the pixels
does (16 clusters: probe accuracy 0.631 against 0.576 for m = 8 learned latents; 256 clusters: 0.767). This encoder
asks what DisCo-Diff gains when the latents are such a partition, the denoiser learning on top of it as usual and the
prior fitting its frequencies. It is an ablation of the paper's end-to-end encoder, not the paper's method.

With m > 1 latents the partition is residual (residual vector quantisation): latent 1 is the nearest of k centroids of
the images, latent i + 1 the nearest of k centroids of what the first i leave over, y - c_1(z_1) - ... - c_i(z_i). So
m latents of k codes index up to k^m cells, coarse to fine, as one k-means of k^m clusters could not be fitted.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Encoder


def nearest(u: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The index of the nearest of centres [k, D] for each row of u [N, D] (squared Euclidean distance), [N]."""
    half_norms = 0.5 * centres.square().sum(1)
    # argmin |u - c|^2 = argmax (u . c - |c|^2 / 2): one matrix product per chunk, no [N, k, D] tensor
    return torch.cat([(u[i:i + chunk] @ centres.T - half_norms).argmax(1) for i in range(0, len(u), chunk)])


def kmeans_pp_seeds(u: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k rows of u [N, D] by k-means++ (Arthur & Vassilvitskii 2007): each drawn with probability proportional to its
    squared distance to those already chosen. Draws come from `generator` (a CPU one), whatever u's device, so a seed
    gives the same partition on a CPU and a GPU; `layers.kmeans_pp`, which seeds the learned encoders from one batch,
    draws from the global generator on u's device instead."""
    first = int(torch.randint(len(u), (), generator=generator))
    chosen = [u[first]]
    d2 = (u - u[first]).square().sum(1)
    for _ in range(k - 1):
        weights = d2.double().cpu()
        if weights.sum() <= 0:  # fewer distinct points than k: repeat one
            weights = torch.ones_like(weights)
        idx = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        chosen.append(u[idx])
        d2 = torch.minimum(d2, (u - u[idx]).square().sum(1))
    return torch.stack(chosen)


def lloyd(u: torch.Tensor, k: int, iterations: int, generator: torch.Generator, seed_rows: int = 8192) -> torch.Tensor:
    """k-means centroids [k, D] of u [N, D]: k-means++ seeds from a random subset of `seed_rows` rows, then Lloyd's
    iterations on all of u. A centroid left without points keeps its place (and may win points back later)."""
    subset = u[torch.randperm(len(u), generator=generator)[:seed_rows].to(u.device)]
    centres = kmeans_pp_seeds(subset, k, generator)
    for _ in range(iterations):
        assign = nearest(u, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, u)
        counts = torch.bincount(assign, minlength=k).to(u.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class KMeansEncoder(Encoder):
    """E(y) = the (residual) k-means codes of y [B, ...] as hard logits [B, m, k]: 0 for the nearest centroid,
    HARD_LOGIT for the others, so the mode, every Gumbel-Softmax sample and the posterior used by stage II are the
    code itself. No parameters: the centroids [m, k, D] are buffers, fitted by `init_from_dataset` on the whole
    training set at a fresh run's start and saved with the weights."""

    HARD_LOGIT = -1e3  # far beyond any Gumbel noise, finite so that softmax and bf16 stay well defined
    needs_dataset = True

    def __init__(self, data_dim: int, num_latents: int, codebook_size: int, *, iterations: int = 25):
        super().__init__()
        if num_latents < 1 or codebook_size < 2:
            raise ValueError("a k-means encoder needs num_latents >= 1 and codebook_size >= 2")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.num_latents, self.codebook_size, self.iterations = num_latents, codebook_size, iterations
        self.register_buffer("centroids", torch.zeros(num_latents, codebook_size, data_dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def init_from_dataset(self, x: torch.Tensor, generator: torch.Generator | None = None) -> bool:
        """Fits the centroids on the whole training set x [N, ...] (residual k-means, module docstring); returns
        whether it did: once only, so a resumed or loaded encoder keeps its own. Draws come from `generator`, by
        default one seeded from the global generator, so a training seed fixes the partition."""
        if bool(self.fitted):
            return False
        if len(x) < self.codebook_size:
            raise ValueError(f"the k-means encoder needs at least codebook_size = {self.codebook_size} training "
                             f"examples, got {len(x)}")
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
        residual = x.flatten(1).float().clone()
        for i in range(self.num_latents):
            centres = lloyd(residual, self.codebook_size, self.iterations, generator)
            self.centroids[i] = centres
            residual -= centres[nearest(residual, centres)]
        self.fitted.fill_(True)
        return True

    def codes(self, y: torch.Tensor) -> torch.Tensor:
        """The residual k-means codes of y, int [B, m]."""
        if not bool(self.fitted):
            raise RuntimeError("the k-means encoder has no centroids yet: stage I fits them on the training set "
                               "(init_from_dataset) before its first step")
        codes = []
        with torch.autocast(y.device.type, enabled=False):  # nearest centroids in float32, under bf16 training too
            residual = y.flatten(1).float()
            for centres in self.centroids.float():
                z = nearest(residual, centres)
                residual = residual - centres[z]
                codes.append(z)
        return torch.stack(codes, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(self.codes(y), self.codebook_size).to(y.dtype)
        return (1 - onehot) * self.HARD_LOGIT
