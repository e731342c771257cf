"""A stage-I term against codebook collapse: log k - I(y; z), the mutual information between an image and its code
under the encoder, subtracted from its maximum (information-maximising clustering, IIC / RIM). The paper does not
use it; the soft-relaxation presets for small images do (model.regularisers = {"information": weight}), because
through cross-attention their codebooks collapsed to 2-3 codes a latent without it (docs/research-log.md).

It is the sum of two parts, equally weighted:
- `usage_penalty`: per latent, log k - H(the batch's mean posterior), 0 when the batch uses every code equally (the
  codebook-diversity term of wav2vec 2.0);
- `posterior_entropy`: the mean entropy of each image's posterior, 0 when the encoder is sure of every code.
The first alone is satisfied as well by an encoder unsure of every image; the second tells the two apart.
"""
from __future__ import annotations

import math

import torch

from ..latents import entropy, register_regulariser


def usage_penalty(logits: torch.Tensor) -> torch.Tensor:
    """log k - H(mean over the batch of softmax(logits)), averaged over the m latents. logits: [B, m, k]."""
    mean_posterior = logits.float().softmax(-1).mean(0)  # [m, k]
    return (math.log(logits.shape[-1]) - entropy(mean_posterior)).mean()


def posterior_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean entropy of each image's posterior over the codes, averaged over the m latents. logits: [B, m, k]."""
    return entropy(logits.float().softmax(-1)).mean()


@register_regulariser("information")
def information_term(model, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log k - I(y; z) of the batch's encoder logits [B, m, k]: the same for every sample of the batch."""
    return usage_penalty(logits) + posterior_entropy(logits)
