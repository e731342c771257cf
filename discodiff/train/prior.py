"""Stage II (paper Alg. 2): the prior, fitted to latents of the frozen EMA encoder.

The encoder runs once over the dataset (its outputs are cached); every batch then draws fresh latents from them.
Discrete latents: z ~ Cat(softmax(logits)) by Gumbel-Softmax at tau = 0.01, as the paper does, and the
autoregressive prior learns them by maximum likelihood. Continuous latents: z ~ N(mean, var) of each image's
posterior, and the diffusion prior (diffusion_prior.py) learns them with EDM's loss.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..checkpoint import (discard_training_states, latest_training_state, load_state_into, optimizer_from_flat,
                          optimizer_to_flat, prefixed, save_training_state, with_prefix)
from ..config import RunConfig
from ..data import ArrayDataset
from ..ema import EMA
from ..fileio import write_json
from ..latents import codebook_usage, gaussian_kl, split_posterior
from ..model import DiscoDiff
from ..prior import ARPrior, prior_class
from ..runs import STAGE1_HASH_KEY, Run
from .common import RunLog, Timer, progress_bar, resume_line, step_generator


def marginal_perplexity(z: torch.Tensor, codebook_size: int) -> float:
    """exp of the mean per-position entropy of the empirical marginals: a prior that ignores context scores this."""
    return float(torch.tensor(codebook_usage(z, codebook_size)["perplexity"]).log().mean().exp())


@torch.no_grad()
def prior_perplexity(prior, z: torch.Tensor, labels, batch: int = 1024) -> float:
    prior.eval()
    nll = sum(float(prior.nll(z[i:i + batch], None if labels is None else labels[i:i + batch])) * len(z[i:i + batch])
              for i in range(0, len(z), batch))
    return math.exp(nll / len(z))


@torch.no_grad()
def encode_streamed(model: DiscoDiff, data: ArrayDataset, device, batch: int = 512) -> torch.Tensor:
    """`model.encode_all` over the dataset a batch at a time: each batch goes to `device` (uint8 images become
    [-1, 1] there), so the whole set never sits on the device, nor in float32 anywhere. float32 outputs on `device`."""
    reader = data.reader(device, labels=False, max_device_fraction=0.0)  # (images: only a batch on a GPU at a time)
    return torch.cat([model.encode_all(y, batch=batch) for _, y in reader.batches(batch)])


def train_prior(run_dir: Path, cfg: RunConfig, data: ArrayDataset, model: DiscoDiff, *,
                quiet: bool = False) -> tuple[ARPrior, dict]:
    """Trains (or resumes) the prior of `model`, which must be the run's stage-I EMA model (model.safetensors);
    returns (the prior, a report). The prior file records which stage-I weights it was fitted to, and a training
    state fitted to other weights is discarded rather than resumed."""
    run = Run(run_dir, cfg)
    with run.lock() if dist.is_main() else contextlib.nullcontext():
        return _train_prior(run, data, model, quiet=quiet)


def _train_prior(run: Run, data: ArrayDataset, model: DiscoDiff, *, quiet: bool) -> tuple[ARPrior, dict]:
    run_dir, cfg = run.path, run.config
    device = next(model.parameters()).device
    p, log = cfg.prior_train, RunLog(run_dir, quiet)
    continuous = cfg.model.continuous
    stage1 = run.stage1_sha256()
    encoded = encode_streamed(model, data, device)  # logits, or the continuous latents' posteriors
    labels = data.labels.to(device) if (data.labels is not None and cfg.model.num_classes) else None
    torch.manual_seed(p.seed)
    prior = prior_class(cfg.model).for_model(cfg.model).to(device)
    if continuous:  # (a resumed state brings the same values back)
        prior.fit_standardisation(*split_posterior(encoded))
    opt = torch.optim.AdamW(prior.parameters(), lr=p.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    ema = EMA(prior, p.ema_halflife_kimg, rampup=None) if p.ema_halflife_kimg > 0 else None
    cur_nimg = 0
    state = latest_training_state(run_dir, "prior")
    if state is not None and state.meta.get(STAGE1_HASH_KEY) != stage1:
        log.line("the prior's training state belongs to older stage-I weights: fitting the prior afresh")
        discard_training_states(run_dir, "prior")
        state = None
    if state is not None:
        load_state_into(prior, prefixed(state.tensors, "prior."), state.path)
        if ema is not None:  # (a state saved without an EMA starts it from the resumed weights)
            ema_tensors = prefixed(state.tensors, "ema.")
            load_state_into(ema.module, ema_tensors if ema_tensors else prefixed(state.tensors, "prior."), state.path)
        optimizer_from_flat(opt, prefixed(state.tensors, "optim."), state.meta["optimizer"])
        cur_nimg = state.nimg
        log.line(resume_line("the prior", state))
    total, tick_nimg = int(p.kimg * 1000), max(int(p.tick_kimg * 1000), 1)
    log.line(f"stage II: {'diffusion' if continuous else 'autoregressive'} prior with "
             f"{sum(q.numel() for q in prior.parameters()):,} parameters over {cfg.model.latent_summary()}, "
             f"{len(data)} encoded examples, {p.kimg:g} kimg")
    timer, bar = Timer(), progress_bar(total, min(cur_nimg, total), "prior")
    tick_idx, loss_sum, steps = cur_nimg // tick_nimg, 0.0, 0
    prior.train()
    while cur_nimg < total:
        g = step_generator(device, p.seed, 0, cur_nimg)
        idx = torch.randint(len(encoded), (p.batch,), generator=g, device=device)
        z = model.latent_sample(encoded[idx], p.tau, generator=g)
        loss = prior.training_loss(z, labels[idx] if labels is not None else None, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cur_nimg += p.batch
        if ema is not None:
            ema.update(prior, p.batch, cur_nimg)
        loss_sum, steps = loss_sum + float(loss.detach()), steps + 1
        bar.update(p.batch)
        done = cur_nimg >= total
        if done or cur_nimg // tick_nimg > tick_idx:
            tick_idx = cur_nimg // tick_nimg
            bar.clear()
            what = "loss" if continuous else "nll"
            log.line(f"prior kimg {cur_nimg / 1000:8.1f}  {what} {loss_sum / steps:.4f}"
                     f"{'' if continuous else ' nats/token'}  ({timer.lap():.1f} s)")
            log.stats({"stage": 2, "kimg": cur_nimg / 1000, what: loss_sum / steps, "seconds": timer.total()})
            loss_sum, steps = 0.0, 0
            optim_tensors, optim_meta = optimizer_to_flat(opt)
            save_training_state(run_dir, "prior", cur_nimg,
                                {**with_prefix(prior.state_dict(), "prior."), **with_prefix(optim_tensors, "optim."),
                                 **(with_prefix(ema.module.state_dict(), "ema.") if ema is not None else {})},
                                {"optimizer": optim_meta, STAGE1_HASH_KEY: stage1})
    bar.close()
    if ema is not None:
        prior = ema.module
    prior.eval().save(run.prior_path, metadata={STAGE1_HASH_KEY: stage1, "kimg": str(cur_nimg / 1000)})
    g = step_generator(device, p.seed, 1, 0)
    report, summary = (continuous_report if continuous else discrete_report)(prior, model, encoded, labels, p.tau, g)
    report.update(kimg=cur_nimg / 1000, seconds=timer.total())
    write_json(report, Path(run_dir) / "prior_report.json")
    log.line(f"prior done: {summary}; weights in {run.prior_path}")
    return prior, report


def discrete_report(prior: ARPrior, model: DiscoDiff, logits, labels, tau: float, generator) -> tuple[dict, str]:
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
def fit_report(model: DiscoDiff, prior: ARPrior, logits: torch.Tensor, z_data: torch.Tensor, tau: float,
               generator) -> dict:
    """analysis.codebook.prior_fit of the prior's draws for sampling seeds 0 .. n-1 (n = the data's size, at most
    FIT_DRAWS) against the encoder's latents z_data on the data, with a second draw of those on n random examples
    as the floor."""
    from ..analysis.codebook import prior_fit
    from ..analysis.common import generation_labels
    from ..pipeline import sample_latents

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
