"""Stage I (paper Alg. 1): the denoiser and the encoder trained jointly, end to end, through Gumbel-Softmax."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .. import dist
from ..autoguidance import freeze_encoder
from ..checkpoint import MODEL, latest_training_state
from ..config import RunConfig
from ..data import ArrayDataset
from ..edm import EDMLoss
from ..ema import EMA
from ..errors import ConfigError
from ..finetune import group_lrs, load_base_weights, parameter_groups
from ..latents import prior_class
from ..model import DiscoDiff
from ..networks import init_encoder_from_data
from ..runs import Run
from .common import (DivergenceGuard, RunLog, configure_backends, memory_mb, neutralise_nonfinite, resume_line,
                     seed_dropout, step_generator)
from .loop import Ticks, locked, restore, save_state


class _Stage1Loss(nn.Module):
    """What DDP wraps: the model (denoiser + encoder) and its stage-I loss."""

    def __init__(self, model: DiscoDiff, loss_fn: EDMLoss):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, y, class_labels, generator):
        return self.model.training_loss(y, class_labels, loss_fn=self.loss_fn, generator=generator)


def _process(m) -> str:
    """The log line's mention of a process other than EDM, the default."""
    return f"process {m.process} (D={m.pfgm_D}), " if m.process != "edm" else ""


def backward_round(step_loss, y, labels, generator, *, rank_batch: int, autocast) -> torch.Tensor:
    """One accumulation round: the per-sample losses of this rank's micro-batch, backpropagated as their share of
    the mean over the rank's `rank_batch` samples (DDP then averages the ranks' gradients), so that any split of the
    batch into ranks and rounds gives the gradient of the mean loss over the whole batch. Returns the losses' sum."""
    with autocast:
        loss = step_loss(y, labels, generator)
    (loss.sum() / rank_batch).backward()
    return loss.detach().sum()


class CodeChurn:
    """How far the meaning of the codes still moves: the fraction of a fixed set of training images (the first
    `num`) whose EMA-encoder codes z = argmax E(y) differ, in any latent, from those of the previous tick. The prior
    is fitted to the final EMA encoder's codes, while the EMA denoiser averages the codes' meanings over its last
    tens of kimg: a churn far from 0 at the end of stage I means the two disagree (train.freeze_encoder_kimg). Only
    the paper's discrete latents of an image model; the first tick of a run or of a resumed run has nothing to
    compare with (None)."""

    def __init__(self, model: DiscoDiff, reader, num: int = 1024):
        self.images = None
        if model.num_latents and model.config.latent_type == "discrete" and len(model.config.data_shape) == 3:
            self.images = reader.images(torch.arange(min(num, len(reader.data)), device=reader.device),
                                        torch.Generator(reader.device).manual_seed(0))
        self.codes = None

    @torch.no_grad()
    def update(self, ema_model: DiscoDiff) -> float | None:
        if self.images is None:
            return None
        codes = ema_model.latent_mode(ema_model.encode_all(self.images))
        moved = None if self.codes is None else float((codes != self.codes).any(-1).float().mean())
        self.codes = codes
        return moved


def micro_batch(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(per-process micro-batch, accumulation rounds) such that micro * rounds * world == batch."""
    t = cfg.train
    micro = t.batch_gpu or t.batch // world
    if micro < 1 or t.batch % (micro * world):
        raise ConfigError(f"batch {t.batch} is not divisible by batch_gpu {micro} x {world} processes")
    return micro, t.batch // (micro * world)


def train_stage1(run_dir: Path, cfg: RunConfig, data: ArrayDataset, *, quiet: bool = False,
                 progress: bool | None = None) -> DiscoDiff:
    """Trains (or resumes) stage I in `run_dir` until cfg.train.kimg; returns the EMA model. The folder is locked
    against a second training process meanwhile (rank 0 holds the lock)."""
    dist.init()
    with locked(Run(run_dir, cfg)):
        return _train_stage1(run_dir, cfg, data, quiet=quiet)


def _train_stage1(run_dir: Path, cfg: RunConfig, data: ArrayDataset, *, quiet: bool) -> DiscoDiff:
    device, rank, world = dist.device(), dist.rank(), dist.world_size()
    t, log = cfg.train, RunLog(run_dir, quiet)
    micro, rounds = micro_batch(cfg, world)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = DiscoDiff(cfg.model).to(device)
    if cfg.model.num_latents:
        # Training still draws from the global generator after this point (dropout masks, the encoder's k-means++
        # seeding). Building the prior here, and dropping it, leaves that generator where it was when the model
        # also held the prior, so a seed gives the same run as it did then and published results reproduce.
        prior_class(cfg.model).for_model(cfg.model, cfg.prior_train.network)
    state = latest_training_state(run_dir, "stage1")
    if state is None and t.init_from is not None:
        # A fine-tuned run's first start (on every rank alike): the plain run's EMA weights, the new parts as
        # built but with the latent path silent. The EMA below starts from the same weights.
        load_base_weights(model, t.init_from)
        log.line(f"stage I starts from the plain run {t.init_from['run']} (EMA weights, sha256 "
                 f"{t.init_from['sha256'][:12]}); the encoder and the latent path start fresh")
    if t.encoder_from is not None:  # autoguidance's weak model: the strong run's encoder, frozen (before the EMA)
        freeze_encoder(model, t.encoder_from, load=state is None)
    ema = EMA(model, t.ema_halflife_kimg, t.ema_rampup)
    base_lrs = group_lrs(cfg)  # [lr] (a fine-tuned run: [lr, new_parts_lr]), one per parameter group
    opt = torch.optim.Adam(parameter_groups(model, cfg), lr=t.lr, betas=(0.9, 0.999), eps=1e-8,
                           fused=True)  # one kernel for all tensors, on CPU as on GPU
    parts = {"model": model, "ema": ema.module}  # what a training state holds, beside the optimizer
    start = 0
    if state is not None:
        start = restore(state, parts, opt)
        log.line(resume_line("stage I", state))
    loss_fn = EDMLoss.for_model(cfg.model)  # EDM's Gaussian or PFGM++'s kernel (model.process)
    module = _Stage1Loss(model, loss_fn)
    ddp = (nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else module)
    configure_backends(device, t.tf32)
    # torch.compile wraps the call only: the weights stay those of `model`, so what is saved and averaged is the same
    step_loss = torch.compile(ddp) if t.compile else ddp
    # uint8 images stay uint8 until a batch is drawn; each batch becomes [-1, 1] floats on the device
    reader = data.reader(device, labels=bool(cfg.model.num_classes))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and t.bf16
                else contextlib.nullcontext())
    log.line(f"stage I: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg.model.latent_summary()}, "
             f"{_process(cfg.model)}{len(data)} examples, batch {t.batch} = {micro} x {rounds} x {world}, "
             f"{t.kimg:g} kimg, device {device}")
    ticks = Ticks("stage I", start, int(t.kimg * 1000), t.batch, t.tick_kimg)
    freeze_nimg = None if t.freeze_encoder_kimg is None else int(t.freeze_encoder_kimg * 1000)
    encoder_frozen = lambda nimg: freeze_nimg is not None and model.encoder is not None and nimg >= freeze_nimg
    churn = CodeChurn(model, reader) if dist.is_main() else None
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)
    loss_count = 0
    guard = DivergenceGuard("stage I", state.nimg if state is not None else None)
    while ticks.running():
        cur_nimg = ticks.nimg
        opt.zero_grad(set_to_none=True)
        for r in range(rounds):
            g = step_generator(device, t.seed, rank, cur_nimg, r)
            idx = torch.randint(len(data), (micro,), generator=g, device=device)
            y = reader.images(idx, g)  # (draws from g only with the data option xflip)
            labels = reader.labels(idx)
            if cur_nimg == 0 and r == 0:  # a fresh run's first batch: the encoder's data-dependent init
                whole = reader.whole() if model.encoder is not None and model.encoder.needs_dataset else None
                init_encoder_from_data(model.encoder, y, dataset=whole)
                del whole
            sync = contextlib.nullcontext() if (world == 1 or r == rounds - 1) else ddp.no_sync()
            seed_dropout(t.seed, rank, cur_nimg, r)
            with sync:
                loss_sum += backward_round(step_loss, y, labels, g, rank_batch=micro * rounds, autocast=autocast)
            loss_count += micro
        ramp = min(cur_nimg / max(t.lr_rampup_kimg * 1000, 1e-8), 1) if t.lr_rampup_kimg > 0 else 1.0
        for group, base_lr in zip(opt.param_groups, base_lrs):
            group["lr"] = base_lr * ramp
        lr = t.lr * ramp
        if encoder_frozen(cur_nimg):
            # Dropped gradients rather than requires_grad(False): DDP's reducer expects every parameter's gradient
            # in every step, and Adam leaves a parameter without one (and its moments) exactly as it is.
            for p in model.encoder.parameters():
                p.grad = None
        nonfinite += neutralise_nonfinite(model.parameters())
        opt.step()
        ema.update(model, t.batch, cur_nimg + t.batch)
        if not ticks.step():
            continue
        cur_nimg, done, tick = ticks.nimg, ticks.done, ticks.index
        mean_loss = float(dist.all_reduce_mean(loss_sum / max(loss_count, 1)))
        _, ips = ticks.lap()
        row = {"stage": 1, "kimg": cur_nimg / 1000, "loss": mean_loss, "images_per_s": ips, "lr": lr,
               "nonfinite_grads": int(nonfinite), "memory_mb": memory_mb(device), "seconds": ticks.timer.total()}
        moved = churn.update(ema.module) if churn is not None else None
        if moved is not None:
            row["code_churn"] = moved
        log.stats(row)
        bad = row["nonfinite_grads"]
        log.line(f"kimg {cur_nimg / 1000:8.1f}  loss {mean_loss:.4f}  {ips:8.0f} img/s  "
                 f"mem {row['memory_mb']:.0f} MB" + (f"  codes moved {moved:.1%}" if moved is not None else "")
                 + ("  (encoder frozen)" if encoder_frozen(cur_nimg - 1) else "")
                 + (f"  non-finite gradient entries zeroed: {bad}" if bad else ""))
        loss_sum.zero_()
        nonfinite.zero_()
        loss_count = 0
        # Stops on weights that are no longer finite, or a loss that stays so; a bad tick saves nothing, so the
        # last good snapshot and training states are never overwritten.
        if not guard.healthy(cur_nimg, mean_loss, model, ema.module):
            continue
        if dist.is_main() and (done or tick % t.snapshot_ticks == 0):
            ema.module.save(Path(run_dir) / MODEL, metadata={"kimg": str(cur_nimg / 1000)})
        if world > 1 and (done or tick % t.state_ticks == 0):
            dist.check_replicas_identical(model)
        if dist.is_main() and (done or tick % t.state_ticks == 0):
            save_state(run_dir, "stage1", cur_nimg, parts, opt)
            guard.saved(cur_nimg)
        dist.barrier()
    ticks.close()
    cur_nimg = ticks.nimg
    if dist.is_main() and not (Path(run_dir) / MODEL).exists():
        ema.module.save(Path(run_dir) / MODEL)
    if world > 1:
        log.line(f"replicas identical on all {world} processes")
    log.line(f"stage I done at {cur_nimg / 1000:.1f} kimg in {ticks.timer.total():.1f} s; weights in "
             f"{Path(run_dir) / MODEL}")
    return ema.module
