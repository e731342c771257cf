"""Stage I (paper Alg. 1): the denoiser and the encoder trained jointly, end to end, through Gumbel-Softmax."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .. import dist
from ..checkpoint import (MODEL, latest_training_state, load_state_into, optimizer_from_flat, optimizer_to_flat,
                          prefixed, save_tensors, save_training_state, with_prefix)
from ..config import ConfigError, RunConfig
from ..data import ArrayDataset
from ..edm import EDMLoss
from ..ema import EMA
from ..model import DiscoDiff
from ..networks import init_encoder_from_data
from .common import RunLog, Timer, memory_mb, neutralise_nonfinite, progress_bar, step_generator


class _Stage1Loss(nn.Module):
    """What DDP wraps: exactly the stage-I parameters (denoiser + encoder), not the prior."""

    def __init__(self, model: DiscoDiff, loss_fn: EDMLoss):
        super().__init__()
        self.denoiser, self.encoder = model.denoiser, model.encoder
        object.__setattr__(self, "_model", model)  # not a submodule: its prior takes no part in stage I
        self.loss_fn = loss_fn

    def forward(self, y, class_labels, generator):
        return self._model.training_loss(y, class_labels, loss_fn=self.loss_fn, generator=generator)


def stage1_state_dict(model: DiscoDiff) -> dict[str, torch.Tensor]:
    """The inference weights of stage I: denoiser.* and encoder.* (the prior lives in prior.safetensors)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("prior.")}


def micro_batch(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(per-process micro-batch, accumulation rounds) such that micro * rounds * world == batch."""
    t = cfg.train
    micro = t.batch_gpu or t.batch // world
    if micro < 1 or t.batch % (micro * world):
        raise ConfigError(f"batch {t.batch} is not divisible by batch_gpu {micro} x {world} processes")
    return micro, t.batch // (micro * world)


def train_stage1(run_dir: Path, cfg: RunConfig, data: ArrayDataset, *, quiet: bool = False,
                 progress: bool | None = None) -> DiscoDiff:
    """Trains (or resumes) stage I in `run_dir` until cfg.train.kimg; returns the EMA model."""
    dist.init()
    device, rank, world = dist.device(), dist.rank(), dist.world_size()
    t, log = cfg.train, RunLog(run_dir, quiet)
    micro, rounds = micro_batch(cfg, world)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = DiscoDiff(cfg.model).to(device)
    ema = EMA(model, t.ema_halflife_kimg, t.ema_rampup)
    opt = torch.optim.Adam(model.stage1_parameters(), lr=t.lr, betas=(0.9, 0.999), eps=1e-8,
                           fused=True)  # one kernel for all tensors, on CPU as on GPU
    cur_nimg = 0
    state = latest_training_state(run_dir, "stage1")
    if state is not None:
        tensors, meta = state
        load_state_into(model, prefixed(tensors, "model."), run_dir)
        load_state_into(ema.module, prefixed(tensors, "ema."), run_dir)
        optimizer_from_flat(opt, prefixed(tensors, "optim."), meta["optimizer"])
        cur_nimg = int(meta["nimg"])
        log.line(f"resuming stage I from {cur_nimg / 1000:.1f} kimg")
    loss_fn = EDMLoss(cfg.model.P_mean, cfg.model.P_std, cfg.model.sigma_data)
    module = _Stage1Loss(model, loss_fn)
    ddp = (nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else module)
    x_all = data.x.to(device)
    labels_all = data.labels.to(device) if (data.labels is not None and cfg.model.num_classes) else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and t.bf16
                else contextlib.nullcontext())
    total = int(t.kimg * 1000)
    tick_nimg, tick_idx = max(int(t.tick_kimg * 1000), 1), cur_nimg // max(int(t.tick_kimg * 1000), 1)
    log.line(f"stage I: {sum(p.numel() for p in model.stage1_parameters()):,} parameters, m={model.num_latents} "
             f"k={cfg.model.codebook_size}, {len(data)} examples, batch {t.batch} = {micro} x {rounds} x {world}, "
             f"{t.kimg:g} kimg, device {device}")
    timer, bar = Timer(), progress_bar(total, min(cur_nimg, total), "stage I")
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)
    loss_count, tick_start_nimg = 0, cur_nimg
    while cur_nimg < total:
        opt.zero_grad(set_to_none=True)
        for r in range(rounds):
            g = step_generator(device, t.seed, rank, cur_nimg, r)
            idx = torch.randint(len(data), (micro,), generator=g, device=device)
            y = x_all[idx]
            labels = labels_all[idx] if labels_all is not None else None
            if cur_nimg == 0 and r == 0:  # a fresh run's first batch: the encoder's data-dependent init
                init_encoder_from_data(model.encoder, y)
            sync = contextlib.nullcontext() if (world == 1 or r == rounds - 1) else ddp.no_sync()
            with sync:
                with autocast:
                    loss = ddp(y, labels, g)
                # DDP averages gradients over ranks, so each rank normalises by its own share of the batch
                (loss.sum() / (micro * rounds)).backward()
            loss_sum += loss.detach().sum()
            loss_count += micro
        lr = t.lr * min(cur_nimg / max(t.lr_rampup_kimg * 1000, 1e-8), 1) if t.lr_rampup_kimg > 0 else t.lr
        for group in opt.param_groups:
            group["lr"] = lr
        nonfinite += neutralise_nonfinite(model.stage1_parameters())
        opt.step()
        cur_nimg += t.batch
        ema.update(model, t.batch, cur_nimg)
        bar.update(t.batch)
        done = cur_nimg >= total
        if done or cur_nimg // tick_nimg > tick_idx:
            tick_idx = cur_nimg // tick_nimg
            mean_loss = float(dist.all_reduce_mean(loss_sum / max(loss_count, 1)))
            dt = timer.lap()
            ips = (cur_nimg - tick_start_nimg) / max(dt, 1e-9)
            row = {"stage": 1, "kimg": cur_nimg / 1000, "loss": mean_loss, "images_per_s": ips, "lr": lr,
                   "nonfinite_grads": int(nonfinite), "memory_mb": memory_mb(device), "seconds": timer.total()}
            log.stats(row)
            bar.clear()
            bad = row["nonfinite_grads"]
            log.line(f"kimg {cur_nimg / 1000:8.1f}  loss {mean_loss:.4f}  {ips:8.0f} img/s  "
                     f"mem {row['memory_mb']:.0f} MB" + (f"  non-finite gradient entries zeroed: {bad}" if bad else ""))
            loss_sum.zero_()
            nonfinite.zero_()
            loss_count, tick_start_nimg = 0, cur_nimg
            if dist.is_main() and (done or tick_idx % t.snapshot_ticks == 0):
                save_tensors(stage1_state_dict(ema.module), Path(run_dir) / MODEL, metadata={"kimg": str(cur_nimg / 1000)})
            if world > 1 and (done or tick_idx % t.state_ticks == 0):
                dist.check_replicas_identical(model)
            if dist.is_main() and (done or tick_idx % t.state_ticks == 0):
                optim_tensors, optim_meta = optimizer_to_flat(opt)
                tensors = {**with_prefix(model.state_dict(), "model."), **with_prefix(ema.module.state_dict(), "ema."),
                           **with_prefix(optim_tensors, "optim.")}
                save_training_state(run_dir, "stage1", cur_nimg, tensors, {"optimizer": optim_meta})
            dist.barrier()
    bar.close()
    if dist.is_main() and not (Path(run_dir) / MODEL).exists():
        save_tensors(stage1_state_dict(ema.module), Path(run_dir) / MODEL)
    if world > 1:
        log.line(f"replicas identical on all {world} processes")
    log.line(f"stage I done at {cur_nimg / 1000:.1f} kimg in {timer.total():.1f} s; weights in {Path(run_dir) / MODEL}")
    return ema.module
