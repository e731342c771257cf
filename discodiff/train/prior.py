"""Stage II (paper Alg. 2): the autoregressive prior, by maximum likelihood on latents of the frozen EMA encoder.

The encoder runs once over the dataset (its logits are cached); every batch then draws fresh latents from
those logits with Gumbel-Softmax at tau = 0.01, i.e. z ~ Cat(softmax(logits)), as the paper does.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import dist
from ..checkpoint import (PRIOR, latest_training_state, load_state_into, optimizer_from_flat, optimizer_to_flat,
                          prefixed, save_tensors, save_training_state, with_prefix, write_json)
from ..config import RunConfig
from ..data import ArrayDataset
from ..latents import codebook_usage, gumbel_softmax
from ..model import DiscoDiff
from ..prior import ARPrior
from .common import RunLog, Timer, progress_bar, step_generator


@torch.no_grad()
def encode_dataset(model: DiscoDiff, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Encoder logits [N, m, k] of the whole dataset (computed once, then sampled from)."""
    model.eval()
    return torch.cat([model.encode_logits(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def marginal_perplexity(z: torch.Tensor, codebook_size: int) -> float:
    """exp of the mean per-position entropy of the empirical marginals: a prior that ignores context scores this."""
    return float(torch.tensor(codebook_usage(z, codebook_size)["perplexity"]).log().mean().exp())


@torch.no_grad()
def prior_perplexity(prior, z: torch.Tensor, labels, batch: int = 1024) -> float:
    prior.eval()
    nll = sum(float(prior.nll(z[i:i + batch], None if labels is None else labels[i:i + batch])) * len(z[i:i + batch])
              for i in range(0, len(z), batch))
    return math.exp(nll / len(z))


def train_prior(run_dir: Path, cfg: RunConfig, data: ArrayDataset, model: DiscoDiff, *, quiet: bool = False) -> dict:
    """Trains (or resumes) the prior of `model` (whose encoder must be the stage-I EMA encoder); returns a report."""
    device = next(model.parameters()).device
    p, log = cfg.prior_train, RunLog(run_dir, quiet)
    m, k = cfg.model.num_latents, cfg.model.codebook_size
    logits = encode_dataset(model, data.x.to(device))
    labels = data.labels.to(device) if (data.labels is not None and cfg.model.num_classes) else None
    torch.manual_seed(p.seed)
    prior = ARPrior(m, k, cfg.model.num_classes, **cfg.model.prior).to(device)
    opt = torch.optim.AdamW(prior.parameters(), lr=p.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    cur_nimg = 0
    state = latest_training_state(run_dir, "prior")
    if state is not None:
        tensors, meta = state
        load_state_into(prior, prefixed(tensors, "prior."), run_dir)
        optimizer_from_flat(opt, prefixed(tensors, "optim."), meta["optimizer"])
        cur_nimg = int(meta["nimg"])
        log.line(f"resuming the prior from {cur_nimg / 1000:.1f} kimg")
    total, tick_nimg = int(p.kimg * 1000), max(int(p.tick_kimg * 1000), 1)
    log.line(f"stage II: prior with {sum(q.numel() for q in prior.parameters()):,} parameters over m={m} latents, "
             f"k={k}, {len(data)} encoded examples, {p.kimg:g} kimg")
    timer, bar = Timer(), progress_bar(total, min(cur_nimg, total), "prior")
    tick_idx, loss_sum, steps = cur_nimg // tick_nimg, 0.0, 0
    prior.train()
    while cur_nimg < total:
        g = step_generator(device, p.seed, 0, cur_nimg)
        idx = torch.randint(len(logits), (p.batch,), generator=g, device=device)
        z = gumbel_softmax(logits[idx], p.tau, hard=True, generator=g).argmax(-1)
        _, loss = prior(z, labels[idx] if labels is not None else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cur_nimg += p.batch
        loss_sum, steps = loss_sum + float(loss.detach()), steps + 1
        bar.update(p.batch)
        done = cur_nimg >= total
        if done or cur_nimg // tick_nimg > tick_idx:
            tick_idx = cur_nimg // tick_nimg
            bar.clear()
            log.line(f"prior kimg {cur_nimg / 1000:8.1f}  nll {loss_sum / steps:.4f} nats/token  "
                     f"({timer.lap():.1f} s)")
            log.stats({"stage": 2, "kimg": cur_nimg / 1000, "nll": loss_sum / steps, "seconds": timer.total()})
            loss_sum, steps = 0.0, 0
            optim_tensors, optim_meta = optimizer_to_flat(opt)
            save_training_state(run_dir, "prior", cur_nimg,
                                {**with_prefix(prior.state_dict(), "prior."), **with_prefix(optim_tensors, "optim.")},
                                {"optimizer": optim_meta})
    bar.close()
    save_tensors(prior.state_dict(), Path(run_dir) / PRIOR)
    model.prior = prior.eval()
    # The report: the prior's token perplexity on fresh encoder samples, beside the marginal's.
    g = step_generator(device, p.seed, 1, 0)
    z_eval = gumbel_softmax(logits, p.tau, hard=True, generator=g).argmax(-1)
    report = {"prior_perplexity": prior_perplexity(prior, z_eval, labels),
              "marginal_perplexity": marginal_perplexity(z_eval, k),
              "codebook": codebook_usage(z_eval, k), "kimg": cur_nimg / 1000, "seconds": timer.total()}
    write_json(report, Path(run_dir) / "prior_report.json")
    log.line(f"prior done: token perplexity {report['prior_perplexity']:.3f} vs marginal "
             f"{report['marginal_perplexity']:.3f} (codebook size {k}); weights in {Path(run_dir) / PRIOR}")
    return report
