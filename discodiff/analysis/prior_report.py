"""How well a fitted prior matches the latents it was fitted to: written by `discodiff train-prior` (and the demo)
after training, as R/prior_report.json, beside the log line that sums it up.

Discrete latents: the prior's token perplexity on fresh encoder samples beside the marginals', and the fit of its
draws to the data's latent tuples (`analysis.codebook.prior_fit`, with a second draw of the data's latents as the
floor). Continuous latents: the Frechet distance between the prior's draws and the posterior samples.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..fileio import write_json
from ..latents import DiscreteLatents, codebook_usage
from ..model import DiscoDiff
from ..train.common import step_generator
from ..train.prior import encode_streamed


def write_prior_report(run_dir: Path, cfg, data, model: DiscoDiff, prior) -> tuple[dict, str]:
    """(report, its line) of `prior`, fitted to `model`'s latents on `data`; also written to R/prior_report.json.
    Its random draws come from the prior's seed (prior_train.seed), so the same run gives the same report."""
    device = next(model.parameters()).device
    encoded = encode_streamed(model, data, device)
    labels = data.labels.to(device) if (data.labels is not None and cfg.model.num_classes) else None
    g = step_generator(device, cfg.prior_train.seed, 1, 0)
    discrete = isinstance(model.latent_type, DiscreteLatents)
    report, summary = (discrete_report if discrete else continuous_report)(prior, model, encoded, labels,
                                                                            cfg.prior_train.tau, g)
    write_json(report, Path(run_dir) / "prior_report.json")
    return report, summary


def marginal_perplexity(z: torch.Tensor, codebook_size: int) -> float:
    """exp of the mean per-position entropy of the empirical marginals: a prior that ignores context scores this."""
    return float(torch.tensor(codebook_usage(z, codebook_size)["perplexity"]).log().mean().exp())


@torch.no_grad()
def prior_perplexity(prior, z: torch.Tensor, labels, batch: int = 1024) -> float:
    prior.eval()
    nll = sum(float(prior.nll(z[i:i + batch], None if labels is None else labels[i:i + batch])) * len(z[i:i + batch])
              for i in range(0, len(z), batch))
    return math.exp(nll / len(z))



def discrete_report(prior, model: DiscoDiff, logits, labels, tau: float, generator) -> tuple[dict, str]:
    """(report, its line): the autoregressive prior's token perplexity on fresh encoder samples, beside the
    marginal's."""
    k = model.config.codebook_size
    z_eval = model.latent_sample(logits, tau, generator=generator)
    fit = fit_report(model, prior, logits, z_eval, tau, generator)
    report = {"prior_perplexity": prior_perplexity(prior, z_eval, labels),
              "marginal_perplexity": marginal_perplexity(z_eval, k), "codebook": codebook_usage(z_eval, k),
              "fit": fit}
    return report, (f"token perplexity {report['prior_perplexity']:.3f} vs marginal "
                    f"{report['marginal_perplexity']:.3f} (codebook size {k}); fit over {fit['num']} draws (floor: a "
                    f"second draw of the data's latents): marginal TV max {max(fit['prior']['marginal_tv']):.3f} "
                    f"(floor {max(fit['floor']['marginal_tv']):.3f}), pairwise TV mean "
                    f"{fit['prior']['pairwise_tv_mean']:.3f} (floor {fit['floor']['pairwise_tv_mean']:.3f}), tuples "
                    f"unseen in the data {100 * fit['prior']['unseen_share']:.1f}% (floor "
                    f"{100 * fit['floor']['unseen_share']:.1f}%)")


FIT_DRAWS = 20_000


@torch.no_grad()
def fit_report(model: DiscoDiff, prior, logits: torch.Tensor, z_data: torch.Tensor, tau: float,
               generator) -> dict:
    """analysis.codebook.prior_fit of the prior's draws for sampling seeds 0 .. n-1 (n = the data's size, at most
    FIT_DRAWS) against the encoder's latents z_data on the data, with a second draw of those on n random examples
    as the floor."""
    from ..pipeline import sample_latents
    from .codebook import prior_fit
    from .common import generation_labels

    n = min(len(z_data), FIT_DRAWS)
    seeds = list(range(n))
    z_prior = sample_latents(model, prior, seeds, class_labels=generation_labels(model, seeds)).cpu()
    pick = torch.randperm(len(logits), generator=generator, device=logits.device)[:n]
    z_again = model.latent_sample(logits[pick], tau, generator=generator).cpu()
    return prior_fit(z_prior, z_data.cpu(), z_again, model.config.codebook_size)


@torch.no_grad()
def continuous_report(prior, model: DiscoDiff, encoded, labels, tau: float, generator, num: int = 2000,
                      batch: int = 1024) -> tuple[dict, str]:
    """(report, its line): how well the diffusion prior's draws match the encoder's posterior samples: the Frechet
    distance between Gaussians fitted to `num` of each, in the standardised coordinates the prior models, beside the
    same distance between two independent sets of posterior samples (its floor at this N); and the posteriors' mean
    KL to N(0, I), the nats per image the latent carries."""
    from ..metrics.fid import frechet_distance
    from ..variants.continuous import gaussian_kl, split_posterior

    def moments(z):
        u = ((z - prior.shift) / prior.scale).double().cpu().numpy()
        return u.mean(0), np.atleast_2d(np.cov(u, rowvar=False))

    idx = torch.randint(len(encoded), (2, num), generator=generator, device=encoded.device)
    posterior = [model.latent_sample(encoded[i], tau, generator=generator) for i in idx]
    noise = torch.randn(num, prior.latent_dim, generator=generator, device=encoded.device)
    cls = None if labels is None else labels[idx[0]]
    drawn = torch.cat([prior.sample(noise[i:i + batch], None if cls is None else cls[i:i + batch])
                       for i in range(0, num, batch)])
    fd = frechet_distance(*moments(drawn), *moments(posterior[0]))
    floor = frechet_distance(*moments(posterior[1]), *moments(posterior[0]))
    kl = gaussian_kl(*split_posterior(encoded))
    report = {"latent_fd": fd, "latent_fd_floor": floor, "num": num, "posterior_kl_nats": float(kl.mean())}
    return report, (f"Frechet distance to the posterior samples {fd:.4f} (standardised latents; two posterior "
                    f"sample sets: {floor:.4f}), mean KL of the posteriors {report['posterior_kl_nats']:.1f} nats")
