"""Latents: Gumbel-Softmax relaxation of discrete ones, the learned null latent, codebook statistics, and the
Gaussian posterior of continuous ones (the paper's Table 3 ablation)."""
from __future__ import annotations

import math

import torch
from torch import nn


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, *, hard: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot sample of Cat(softmax(logits)) over the last axis.

    Ours rather than torch's because torch's takes no generator, and seeded runs must be reproducible.
    `hard=True` returns exact one-hots in the forward pass with the soft sample's gradient (straight-through).
    """
    if tau <= 0:
        raise ValueError(f"Gumbel-Softmax temperature must be positive, got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    exp_noise = -torch.log(u.clamp_min(1e-20))  # Exp(1) noise; g = -log(Exp(1)) is Gumbel(0, 1)
    g = -torch.log(exp_noise.clamp_min(1e-20))
    y_soft = ((logits.float() + g) / tau).softmax(-1)
    if not hard:
        return y_soft
    y_hard = nn.functional.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(y_soft.dtype)
    return (y_hard - y_soft).detach() + y_soft


# A continuous latent's posterior q(z | y) = N(mean, diag(exp(logvar))). Its log-variance is clamped, as latent
# diffusion's DiagonalGaussianDistribution does, so that exp() can neither overflow nor vanish.
LOGVAR_RANGE = (-30.0, 20.0)


def split_posterior(encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output [B, m, 2w] for continuous latents -> (mean, log-variance), each [B, m, w] in float32."""
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


def one_hot(z: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Integer latents [B, m] -> float one-hots [B, m, k]."""
    return nn.functional.one_hot(z.long(), codebook_size).float()


def null_mask(batch: int, p_null: float, *, generator=None, device=None) -> torch.Tensor:
    """Per-sample latent dropout: True where the latent is replaced by the learned null latent."""
    return torch.rand(batch, generator=generator, device=device) < p_null


class LatentEmbedding(nn.Module):
    """Maps (relaxed) one-hot latents [B, m, k] to tokens [B, m, dim], one embedding table per latent position.
    A continuous latent cut into m slices [B, m, D / m] goes through the same map (then a linear one per position).

    The lookup is a matmul, so soft and straight-through samples pass gradients back to the encoder. Rows where
    `null_latent` is True get a learned null sequence instead: that is the unconditional model for guidance.
    """

    def __init__(self, num_latents: int, codebook_size: int, dim: int, init_std: float = 1.0):
        super().__init__()
        self.num_latents, self.codebook_size, self.dim = num_latents, codebook_size, dim
        self.table = nn.Parameter(torch.randn(num_latents, codebook_size, dim) * init_std)
        self.null = nn.Parameter(torch.randn(num_latents, dim) * init_std)

    def forward(self, latents: torch.Tensor | None, null_latent: torch.Tensor | None, batch: int) -> torch.Tensor:
        if latents is None:  # no latent given at all: the unconditional model
            return self.null.expand(batch, -1, -1)
        tokens = torch.einsum("bmk,mkd->bmd", latents.to(self.table.dtype), self.table)
        if null_latent is not None:
            tokens = torch.where(null_latent.view(-1, 1, 1), self.null.unsqueeze(0), tokens)
        return tokens


def noise_level_focus(sigma: torch.Tensor, focus: float) -> torch.Tensor:
    """Per-sample weights sigma^2 / (sigma^2 + focus^2) for the gradient into each sample's latents, normalised to
    mean 1 over the batch. The weight is the share of a noisy image's variance that is noise (at focus = sigma_data):
    near 0 where the noisy image still shows its details, near 1 where only the latents can say what it was."""
    w = sigma.float().square() / (sigma.float().square() + focus**2)
    return w / w.mean().clamp_min(1e-12)


class _ScaledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad * weight.reshape(-1, *([1] * (grad.ndim - 1))).to(grad.dtype), None


def scale_gradient(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x unchanged in the forward pass; in the backward pass, sample i's gradient times weight[i]. Each sample's latent
    enters only its own loss term, so this re-weighs what the encoder learns from each noise level while the
    denoiser's loss stays as it is."""
    return _ScaledGradient.apply(x, weight.detach())


def usage_penalty(logits: torch.Tensor) -> torch.Tensor:
    """How far a batch's codes are from all being in use: per latent, log k - H(mean over the batch of
    softmax(logits)), the KL of the batch's mean posterior from the uniform one, averaged over the m latents.
    0 when the batch spreads evenly over the k codes, log k when every image picks the same one. (The codebook-
    diversity term of wav2vec 2.0.) logits: [B, m, k].

    It pushes only the mean posterior towards uniform, and an encoder unsure of every image satisfies it as well as
    one that is sure of a different code for each group of images; `posterior_entropy` tells the two apart."""
    mean_posterior = logits.float().softmax(-1).mean(0)  # [m, k]
    return (math.log(logits.shape[-1]) - _entropy(mean_posterior)).mean()


def posterior_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean entropy of each image's posterior over the codes, averaged over the m latents: 0 when the encoder is
    sure of every code. usage_penalty + posterior_entropy = log k - I(y; z), the mutual information between an image
    and its code under the encoder (the objective of information-maximising clustering, IIC / RIM), 0 exactly when
    every image is sure of its code and the batch uses every code equally. logits: [B, m, k]."""
    return _entropy(logits.float().softmax(-1)).mean()


def disagreement(logits: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """How far two views of the same images are from being sure of the same codes: the cross-entropy between their
    posteriors, both ways, averaged over the batch and the m latents (0 only when both are sure of one code, the
    same). logits, logits_other: [B, m, k]."""
    lp, lq = logits.float().log_softmax(-1), logits_other.float().log_softmax(-1)
    return -0.5 * ((lq.exp() * lp).sum(-1) + (lp.exp() * lq).sum(-1)).mean()


def moved_copies(y: torch.Tensor, max_shift: int, flip: bool = False, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image [B, C, H, W] moved by its own random whole-pixel offset in [-max_shift, max_shift] along each axis
    (edge pixels repeated into the space it leaves) and, with `flip`, mirrored left-right with probability 1/2."""
    B, _, H, W = y.shape
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, B), generator=generator, device=y.device)
    rows = (torch.arange(H, device=y.device) + dy[:, None]).clamp(0, H - 1)  # [B, H]
    cols = (torch.arange(W, device=y.device) + dx[:, None]).clamp(0, W - 1)  # [B, W]
    out = y.gather(2, rows[:, None, :, None].expand_as(y)).gather(3, cols[:, None, None, :].expand_as(y))
    if flip:
        mirror = torch.rand(B, generator=generator, device=y.device) < 0.5
        out = torch.where(mirror.view(B, 1, 1, 1), out.flip(-1), out)
    return out


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def codebook_usage(z: torch.Tensor, codebook_size: int) -> dict:
    """Per-latent perplexity of the empirical code distribution and the number of codes in use."""
    z = z.long()
    counts = torch.stack([torch.bincount(z[:, i], minlength=codebook_size) for i in range(z.shape[1])]).float()
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return {"perplexity": _entropy(p).exp().tolist(), "codes_used": (counts > 0).sum(1).tolist(),
            "counts": counts.long().tolist()}
