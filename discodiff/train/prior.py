"""Stage II (paper Alg. 2): the prior, fitted to latents of the frozen EMA encoder.

The encoder runs once over the dataset (its outputs are cached); every batch then draws fresh latents from them.
Discrete latents: z ~ Cat(softmax(logits)) by Gumbel-Softmax at tau = 0.01, as the paper does, and the
autoregressive prior learns them by maximum likelihood. Other kinds of latent draw z their own way and bring their
own prior (continuous latents: variants/diffusion_prior.py). How well the prior fits is measured after training, by
`analysis.prior_report`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import discard_training_states, latest_training_state
from ..config import RunConfig
from ..data import ArrayDataset
from ..latents import DiscreteLatents, prior_class
from ..model import DiscoDiff
from ..prior import Prior
from ..runs import PRIOR_NETWORK_KEY, STAGE1_HASH_KEY, Run, network_record
from .common import RunLog, resume_line, step_generator
from .loop import Ticks, locked, restore, save_state


@torch.no_grad()
def encode_streamed(model: DiscoDiff, data: ArrayDataset, device, batch: int = 512) -> torch.Tensor:
    """`model.encode_all` over the dataset a batch at a time: each batch goes to `device` (uint8 images become
    [-1, 1] there), so the whole set never sits on the device, nor in float32 anywhere. float32 outputs on `device`."""
    reader = data.reader(device, labels=False, max_device_fraction=0.0)  # (images: only a batch on a GPU at a time)
    return torch.cat([model.encode_all(y, batch=batch) for _, y in reader.batches(batch)])


def train_prior(run_dir: Path, cfg: RunConfig, data: ArrayDataset, model: DiscoDiff, *,
                quiet: bool = False) -> Prior:
    """Trains (or resumes) the prior of `model`, which must be the run's stage-I EMA model (model.safetensors);
    returns the prior, in eval mode. The prior file records which stage-I weights it was fitted to, and a training
    state fitted to other weights is discarded rather than resumed."""
    run = Run(run_dir, cfg)
    with locked(run):
        return _train_prior(run, data, model, quiet=quiet)


# Why a prior's training state cannot be resumed, by the entry of `fitted_to` that differs
_STALE_STATE = {STAGE1_HASH_KEY: "belongs to older stage-I weights",
                PRIOR_NETWORK_KEY: "is of another network (prior_train.network)"}


def fitted_to(run: Run) -> dict[str, str]:
    """What a prior (its file and its training states) records it was fitted to: the stage-I weights' sha256 and
    the prior's network (prior_train.network)."""
    return {STAGE1_HASH_KEY: run.stage1_sha256(), PRIOR_NETWORK_KEY: network_record(run.config.prior_train.network)}


def resumable_prior_state(run_dir: Path, record: dict[str, str], log: RunLog):
    """The newest prior training state when it was fitted to `record` (fitted_to); else None, with the prior's
    states discarded and a line saying why, so that the prior is fitted afresh."""
    state = latest_training_state(run_dir, "prior")
    for key, why in _STALE_STATE.items():
        if state is not None and state.meta.get(key) != record[key]:
            log.line(f"the prior's training state {why}: fitting the prior afresh")
            discard_training_states(run_dir, "prior")
            state = None
    return state


def _train_prior(run: Run, data: ArrayDataset, model: DiscoDiff, *, quiet: bool) -> Prior:
    run_dir, cfg = run.path, run.config
    device = next(model.parameters()).device
    p, log = cfg.prior_train, RunLog(run_dir, quiet)
    continuous = not isinstance(model.latent_type, DiscreteLatents)
    record = fitted_to(run)
    encoded = encode_streamed(model, data, device)  # logits, or the continuous latents' posteriors
    labels = data.labels.to(device) if (data.labels is not None and cfg.model.num_classes) else None
    torch.manual_seed(p.seed)
    prior = prior_class(cfg.model).for_model(cfg.model, p.network).to(device)
    model.latent_type.prepare_prior(prior, encoded)  # (a resumed state brings back the same values)
    opt = torch.optim.AdamW(prior.parameters(), lr=p.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    state = resumable_prior_state(run_dir, record, log)
    parts, start = {"prior": prior}, 0
    if state is not None:
        start = restore(state, parts, opt)
        log.line(resume_line("the prior", state))
    log.line(f"stage II: {'diffusion' if continuous else 'autoregressive'} prior with "
             f"{sum(q.numel() for q in prior.parameters()):,} parameters over {cfg.model.latent_summary()}, "
             f"{len(data)} encoded examples, {p.kimg:g} kimg")
    ticks = Ticks("prior", start, int(p.kimg * 1000), p.batch, p.tick_kimg)
    loss_sum, steps = 0.0, 0
    prior.train()
    while ticks.running():
        g = step_generator(device, p.seed, 0, ticks.nimg)
        idx = torch.randint(len(encoded), (p.batch,), generator=g, device=device)
        z = model.latent_sample(encoded[idx], p.tau, generator=g)
        loss = prior.training_loss(z, labels[idx] if labels is not None else None, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, steps = loss_sum + float(loss.detach()), steps + 1
        if not ticks.step():
            continue
        what = "loss" if continuous else "nll"
        seconds, _ = ticks.lap()
        log.line(f"prior kimg {ticks.nimg / 1000:8.1f}  {what} {loss_sum / steps:.4f}"
                 f"{'' if continuous else ' nats/token'}  ({seconds:.1f} s)")
        log.stats({"stage": 2, "kimg": ticks.nimg / 1000, what: loss_sum / steps, "seconds": ticks.timer.total()})
        loss_sum, steps = 0.0, 0
        save_state(run_dir, "prior", ticks.nimg, parts, opt, record)
    ticks.close()
    prior.eval().save(run.prior_path, metadata={**record, "kimg": str(ticks.nimg / 1000)})
    log.line(f"prior done at {ticks.nimg / 1000:.1f} kimg in {ticks.timer.total():.1f} s; weights in {run.prior_path}")
    return prior
