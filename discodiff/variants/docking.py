"""Training, sampling and measuring set-conditioned runs (the dock3d docking analogue; docs/docking.md).

The core's trainers read an `ArrayDataset` of fixed-shape rows; a docking example is a conditioning set of varying
size plus a target, so this module keeps the domain's own path, on the core's pieces: the model is a `DiscoDiff`
whose backbone and encoder are the set networks (variants/sets.py) and whose latents a registered `LatentType`
draws (variants/pointer.py); its weights, config and prior live in an ordinary run folder (`runs.Run`), so
`Run.load_model` and `Run.load_prior` open them; sampling uses the core's samplers and noise levels.

- `stage1_loss`: the paper's Algorithm 1 for a batch of complexes: z ~ GumbelSoftmax(E(y, set)) over the valid
  elements, dropped to the null latent with probability p_null, and EDM's loss on the target's valid atoms.
- `train_set_stage1`, `train_set_prior`: stage I and stage II (with the prior's set encoder copied from the
  denoiser's and frozen for the first part of training when prior_train.network.share).
- `dock`: poses for complexes, one per seed: z from the prior (with its log-likelihood), then the ODE.
- `evaluate`: success rate, top-1 success by the prior's likelihood, pocket coverage TV and trajectory curvature.

Both stages write resumable training states at every tick, as the image trainers do: `discodiff train` and
`train-prior` on an existing docking run go on from where it stopped, and give the same weights as a run that was
never stopped.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import latest_training_state
from ..data import dock3d
from ..edm import loss_weight
from ..ema import EMA
from ..errors import ConfigError
from ..latents import gumbel_softmax, null_mask, prior_class
from ..metrics.ode import straightness
from ..model import DiscoDiff
from ..runs import Run
from ..sampling import StackedGenerator, karras_sigmas, sample_heun, takes_noise_source
from ..train.common import RunLog, resume_line
from ..train.loop import Ticks, locked, restore, save_state
from ..train.prior import fitted_to, resumable_prior_state

ATOMS = dock3d.MAX_LIGAND
# The ODE starts at sigma 30, not EDM's 80: ten times the data's scale (sigma_data 3) and three times the receptors'
# diameter already make the initial draw independent of the pose; the training noise levels (ln sigma ~ N(0.5,
# 1.4^2)) reach 30 at 2 std, 80 almost never.
SIGMA_MAX = 30.0


def is_set_run(cfg) -> bool:
    """Whether a run config is set-conditioned (its network is the set transformer)."""
    return cfg.model.network.get("name") == "set_transformer"


def _to(b: dict, device) -> dict:
    return {k: v.to(device) for k, v in b.items()}


def stage1_loss(model: DiscoDiff, b: dict, generator: torch.Generator) -> torch.Tensor:
    """Per complex [B]: lambda(sigma) * mean over the valid atoms' coordinates of (D(y + n, sigma, z, set) - y)^2,
    with z drawn as in the paper's Algorithm 1 (or none for a plain model, m = 0)."""
    cfg = model.config
    y, mask = b["y"], b["lig_mask"].unsqueeze(-1).float()
    B = y.shape[0]
    z = null = None
    if model.num_latents:
        encoded = model.encoder(b, y)
        z = model.latent_type.training_sample(encoded, generator=generator)
        null = null_mask(B, cfg.p_null, generator=generator, device=y.device)
    ctx = model.denoiser.net.context(b, z, null)
    sigma = (torch.randn(B, generator=generator, device=y.device) * cfg.P_std + cfg.P_mean).exp()
    noise = torch.randn(y.shape, generator=generator, device=y.device) * sigma.view(-1, 1, 1) * mask
    D = model.denoiser(y + noise, sigma, latent_features=ctx)
    err = ((D - y).square() * mask).sum((1, 2)) / (3 * mask.sum((1, 2)))
    return loss_weight(sigma, cfg.sigma_data) * err


def _data(dataset) -> dock3d.Dock3D:
    data = getattr(dataset, "data", None)
    if not isinstance(data, dock3d.Dock3D):
        raise ConfigError("a set-conditioned run trains on a set data set (data.name dock3d)")
    return data


def train_set_stage1(run_dir: Path, cfg, dataset, *, quiet: bool = False, device="cpu") -> DiscoDiff:
    """Stage I on the training complexes for cfg.train.kimg thousand complexes (or resumed from the run's newest
    training state); writes model.safetensors (the EMA weights) into the run folder and returns the EMA model. A
    fixed seed gives the same weights, resumed or not: every draw comes from one generator whose state is saved."""
    run = Run(run_dir, cfg)
    with locked(run):
        return _train_set_stage1(run, _data(dataset), quiet=quiet, device=device)


def _train_set_stage1(run: Run, data: dock3d.Dock3D, *, quiet: bool, device) -> DiscoDiff:
    cfg, t, log = run.config, run.config.train, RunLog(run.path, quiet)
    rows = torch.from_numpy(data.indices("train"))
    torch.manual_seed(t.seed)
    model = DiscoDiff(cfg.model).to(device).train()
    ema = EMA(model, t.ema_halflife_kimg, t.ema_rampup)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    gen = torch.Generator(device).manual_seed(t.seed)
    parts, generators, start = {"model": model, "ema": ema.module}, {"data": gen}, 0
    state = latest_training_state(run.path, "stage1")
    if state is not None:
        start = restore(state, parts, opt, generators)
        log.line(resume_line("stage I", state))
    log.line(f"stage I (set-conditioned, {cfg.model.latent_type if cfg.model.num_latents else 'no'} latents, "
             f"m={cfg.model.num_latents}): {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
             f"{t.kimg:g} kimg at batch {t.batch}")
    ticks = Ticks("stage I", start, int(t.kimg * 1000), t.batch, t.tick_kimg)
    losses = []
    while ticks.running():
        pick = rows[torch.randint(len(rows), (t.batch,), generator=gen)]
        b = _to(dock3d.batch(data, pick.numpy()), device)
        for g in opt.param_groups:
            g["lr"] = t.lr * min(1.0, (ticks.nimg + 1) / max(t.lr_rampup_kimg * 1000, 1))
        loss = stage1_loss(model, b, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model, t.batch, ticks.nimg + t.batch)
        losses.append(float(loss.detach()))
        if not ticks.step():
            continue
        row = {"kimg": ticks.nimg / 1000, "loss": float(np.mean(losses)), "seconds": ticks.timer.total()}
        log.stats(row)
        log.line(f"kimg {row['kimg']:.1f} loss {row['loss']:.4f} ({row['seconds']:.0f} s)")
        losses = []
        save_state(run.path, "stage1", ticks.nimg, parts, opt, generators=generators)
    ticks.close()
    model = ema.module.eval()
    model.save(run.model_path, metadata={"kimg": str(ticks.nimg / 1000)})
    log.line(f"stage I done in {ticks.timer.total():.0f} s; weights in {run.model_path}")
    return model


@torch.no_grad()
def encode_logits(model: DiscoDiff, data: dock3d.Dock3D, rows: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The encoder's logits of the complexes `rows`: [N, m, codebook] (padded elements at -1e9 for pointers)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch):
        b = _to(dock3d.batch(data, rows[i:i + batch]), device)
        out.append(model.encoder(b, b["y"]).float())
    return torch.cat(out)


def train_set_prior(run_dir: Path, cfg, dataset, model: DiscoDiff, *, quiet: bool = False):
    """Stage II: the set prior fitted to z ~ GumbelSoftmax(E(y, set), prior_train.tau) of the training complexes,
    drawn afresh each step; with network.share its set encoder starts as the denoiser's and stays frozen for the
    first freeze_fraction of the steps (then the optimiser starts afresh, as the paper's code does). Resumes the
    run's newest prior training state when it was fitted to the same stage-I weights. Writes prior.safetensors with
    the stage-I hash it belongs to."""
    run = Run(run_dir, cfg)
    with locked(run):
        return _train_set_prior(run, _data(dataset), model, quiet=quiet)


def _train_set_prior(run: Run, data: dock3d.Dock3D, model: DiscoDiff, *, quiet: bool):
    cfg, p, log = run.config, run.config.prior_train, RunLog(run.path, quiet)
    device = next(model.parameters()).device
    rows = data.indices("train")
    logits = encode_logits(model, data, rows)
    torch.manual_seed(p.seed)
    prior = prior_class(cfg.model).for_model(cfg.model, p.network).to(device).train()
    if prior.share:
        prior.init_from_denoiser(model)
    gen = torch.Generator(device).manual_seed(p.seed)
    total = int(p.kimg * 1000)
    frozen = int(math.ceil(total / p.batch) * prior.freeze_fraction) if prior.share else 0  # in steps

    def optimizer(step: int) -> torch.optim.Optimizer:
        """Adam over what trains at `step`: all but the set encoder while it is frozen, everything after."""
        prior.set_encoder.requires_grad_(step >= frozen)
        return torch.optim.Adam([q for q in prior.parameters() if q.requires_grad], lr=p.lr)

    record = fitted_to(run)
    state = resumable_prior_state(run.path, record, log)
    parts, generators = {"prior": prior}, {"data": gen}
    # the optimizer that made the state's last step (a state saved on the step that unfreezes holds the one before)
    opt, start = optimizer(max(state.nimg // p.batch - 1, 0) if state is not None else 0), 0
    if state is not None:
        start = restore(state, parts, opt, generators)
        log.line(resume_line("the prior", state))
    ticks = Ticks("prior", start, total, p.batch, p.tick_kimg)
    losses, last = [], []
    while ticks.running():
        if frozen and ticks.nimg == frozen * p.batch:
            opt = optimizer(frozen)
        pick = torch.randint(len(rows), (p.batch,), generator=gen)
        b = _to(dock3d.batch(data, rows[pick.numpy()]), device)
        z = gumbel_softmax(logits[pick.to(logits.device)].to(device), p.tau, generator=gen).argmax(-1)
        loss = prior.training_loss(b, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not ticks.step():
            continue
        log.stats({"stage": 2, "kimg": ticks.nimg / 1000, "nll": float(np.mean(losses)),
                   "seconds": ticks.timer.total()})
        save_state(run.path, "prior", ticks.nimg, parts, opt, record, generators)
        last, losses = losses[-20:], []
    ticks.close()
    prior.eval()
    prior.save(run.prior_path, metadata={**record, "kimg": str(p.kimg)})
    log.line(f"prior: {ticks.nimg // p.batch} steps in {ticks.timer.total():.0f} s, last loss "
             f"{np.mean(last) if last else float('nan'):.3f} "
             f"nats per latent{f' (set encoder frozen for the first {frozen})' if frozen else ''}; "
             f"weights in {run.prior_path}")
    return prior


@torch.no_grad()
def dock(model: DiscoDiff, prior, data: dock3d.Dock3D, rows, seeds, *, steps: int = 20, sampler=sample_heun,
         guidance: float = 0.0, prior_temperature: float = 1.0, z: torch.Tensor | None = None,
         trajectory: bool = False) -> dict:
    """One pose per (complex row, seed) pair: each seed's generator draws the prior's m uniforms, then the initial
    noise (SIGMA_MAX times a Gaussian on the valid atoms), as `pipeline.generate` does. Returns x [B, 12, 3], z
    [B, m], logp [B] (log p(z | set) under the prior; 0 without latents), traj [steps + 1, B, 36] if asked, and
    the batch `cond`."""
    device = next(model.parameters()).device
    b = _to(dock3d.batch(data, np.asarray(rows)), device)
    mask = b["lig_mask"].unsqueeze(-1).float()
    gen = StackedGenerator(seeds, device)
    m = model.num_latents
    uniforms = gen.rand([max(m, 1)])[:, :m]
    logp = torch.zeros(len(seeds), device=device)
    if m:
        if z is None:
            if prior is None:
                raise ConfigError("this model has latents: docking needs its prior (or explicit z)")
            z = prior.sample(b, uniforms, prior_temperature)
        z = z.to(device)
        if prior is not None:
            logp = prior.log_prob(b, z)
    sigmas = karras_sigmas(steps, sigma_max=SIGMA_MAX, device=device)
    noise = gen.randn([ATOMS, 3]) * float(sigmas[0]) * mask
    if takes_noise_source(sampler):  # a sampler that draws noise of its own draws each seed's
        sampler = functools.partial(sampler, randn_like=lambda x: gen.randn_like(x) * mask)
    net = model.denoiser.net
    ctx = net.context(b, model.latent_input(z) if m else None,
                      torch.zeros(len(seeds), dtype=torch.bool, device=device) if m else None)
    ctx_null = net.context(b, None) if m and guidance else None

    def denoise(x, sigma):
        d = model.denoiser(x, sigma, latent_features=ctx)
        if ctx_null is not None:
            d = d + guidance * (d - model.denoiser(x, sigma, latent_features=ctx_null))
        return d * mask

    points = []
    callback = (lambda i, x: points.append(x.flatten(1).clone())) if trajectory else None
    if callback is not None:
        callback(-1, noise)
    x = sampler(denoise, noise, sigmas, callback=callback)
    out = {"x": x, "z": z if m else torch.zeros(len(seeds), 0, dtype=torch.long), "logp": logp, "cond": b,
           "sigmas": sigmas}
    if trajectory:
        out["traj"] = torch.stack(points)
    return out


def parse_complexes(data: dock3d.Dock3D, spec: str) -> np.ndarray:
    """Complex rows from a split name (train, seen, unseen) or indices ("3,7,9" or "0-99")."""
    if spec in dock3d.SPLITS:
        return data.indices(spec)
    try:
        rows = []
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            rows += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"--complexes takes a split ({', '.join(dock3d.SPLITS)}) or indices like 0-9,12; "
                          f"got {spec!r}") from None
    rows = np.array(rows, np.int64)
    if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(data.complex_split):
        raise ConfigError(f"--complexes: indices must lie in [0, {len(data.complex_split)})")
    return rows


CURVATURE_T_MAX = 10.0  # the part of each path measured by the curvature (sigma <= 10: where the pocket is chosen)


def evaluate(model: DiscoDiff, prior, data: dock3d.Dock3D, rows: np.ndarray, *, samples: int = 4,
             steps: int = 20, seed: int = 0, batch: int = 512, **options) -> dict:
    """The measures over `samples` poses for each complex of `rows` (seeds seed + i for the i-th pose overall):
    success (fraction of poses with the centroid within 1 A of a pocket centre and RMSD after alignment < 0.5 A),
    top1 (fraction of complexes whose pose of highest prior likelihood succeeds; without latents, the first pose),
    coverage_tv (per receptor, TV between the sampled pockets' frequencies, by the centroid's nearest pocket, and
    the data's uniform one, averaged), curvature (1 - chord / path length of the ODE's path at sigma <= 10, mean),
    rmsd (median RMSD after alignment), pocket_hit (fraction with the centroid within 1 A of a pocket centre) and
    shape_kept (fraction with RMSD after alignment < 0.5 A): success's two parts apart."""
    pairs = np.repeat(rows, samples)
    seeds = list(range(seed, seed + len(pairs)))
    succ, rmsd, pocket, logp, curv, hit = [], [], [], [], [], []
    for i in range(0, len(pairs), batch):
        out = dock(model, prior, data, pairs[i:i + batch], seeds[i:i + batch], steps=steps, trajectory=True,
                   **options)
        meas = dock3d.pose_measures(out["x"].cpu(), {k: v.cpu() for k, v in out["cond"].items()})
        succ.append(meas["success"])
        rmsd.append(meas["rmsd"])
        pocket.append(meas["pocket"])
        hit.append(meas["centroid_dist"] < dock3d.SUCCESS_CENTROID)
        logp.append(out["logp"].cpu())
        curv.append(1 - torch.from_numpy(straightness(out["traj"].cpu(), out["sigmas"].cpu(), CURVATURE_T_MAX)))
    succ, logp = torch.cat(succ).view(len(rows), samples), torch.cat(logp).view(len(rows), samples)
    best = logp.argmax(1) if model.num_latents else torch.zeros(len(rows), dtype=torch.long)
    receptor = np.repeat(data.complex_receptor[rows], samples)
    return {"success": float(succ.float().mean()), "top1": float(succ.gather(1, best[:, None]).float().mean()),
            "coverage_tv": dock3d.coverage_tv(torch.cat(pocket).numpy(), receptor, data.num_pockets[receptor]),
            "curvature": float(torch.cat(curv).mean()), "rmsd": float(torch.cat(rmsd).median()),
            "pocket_hit": float(torch.cat(hit).float().mean()),
            "shape_kept": float((torch.cat(rmsd) < dock3d.SUCCESS_RMSD).float().mean()),
            "complexes": int(len(rows)), "samples": int(samples), "steps": int(steps)}


def sample_command(run: Run, *, num: int, out: Path, seed: int, complexes: str | None, steps: int, sampler,
                   guidance: float, prior_temperature: float, trajectory: bool, batch: int, device) -> str:
    """`discodiff sample` on a set-conditioned run: `num` poses for each complex of `complexes` (a split or
    indices; default the unseen split), seeds seed, seed + 1, ... in complex order, written to `out` (.npz) with
    each pose's complex index and its measures; returns the summary line."""
    from ..data import load_dataset
    from ..fileio import atomic_path

    cfg = run.config
    data = _data(load_dataset(cfg.data))
    rows = parse_complexes(data, complexes or "unseen")
    model, prior = run.load_model(device), run.load_prior(device)
    pairs = np.repeat(rows, num)
    seeds = list(range(seed, seed + len(pairs)))
    keep = {k: [] for k in ("x", "z", "logp", "success", "rmsd", "centroid_dist", "pocket", "traj")}
    for i in range(0, len(pairs), batch):
        res = dock(model, prior, data, pairs[i:i + batch], seeds[i:i + batch], steps=steps, sampler=sampler,
                   guidance=guidance, prior_temperature=prior_temperature, trajectory=trajectory)
        meas = dock3d.pose_measures(res["x"].cpu(), {k: v.cpu() for k, v in res["cond"].items()})
        keep["x"].append(res["x"].cpu().float())
        keep["z"].append(res["z"].cpu())
        keep["logp"].append(res["logp"].cpu())
        for k in ("success", "rmsd", "centroid_dist", "pocket"):
            keep[k].append(meas[k])
        if trajectory:
            keep["traj"].append(res["traj"].cpu().view(steps + 1, -1, ATOMS, 3))
    arrays = {k: torch.cat(v, 1 if k == "traj" else 0).numpy() for k, v in keep.items() if v}
    arrays["success"] = arrays["success"].astype(bool)
    arrays["rmsd"] = arrays["rmsd"].astype(np.float32)
    arrays["centroid_dist"] = arrays["centroid_dist"].astype(np.float32)
    arrays["complex"] = pairs
    arrays["receptor"] = data.complex_receptor[pairs]
    arrays["atom_mask"] = data.shape_type[data.complex_shape[pairs]] >= 0
    arrays["seeds"] = np.array(seeds, np.int64)
    docs = {"x": "float32 [N, 12, 3]: the generated poses (atoms past atom_mask are 0)",
            "complex": "int64 [N]: each pose's complex (row of the data set's complex_* arrays)",
            "receptor": "int64 [N]: its receptor", "atom_mask": "bool [N, 12]: the ligand's atoms",
            "z": "int64 [N, m]: the latents (pointers: receptor point indices)",
            "logp": "float32 [N]: log p(z | receptor) under the prior (0 without latents)",
            "success": "bool [N]: centroid within 1 A of a pocket centre and RMSD after alignment < 0.5 A",
            "rmsd": "float32 [N]: RMSD to the reference shape after alignment",
            "centroid_dist": "float32 [N]: the centroid's distance to the nearest pocket centre",
            "pocket": "int64 [N]: that pocket", "seeds": "int64 [N]: each pose's seed",
            "traj": "float32 [steps + 1, N, 12, 3]: the sampler's points (--trajectory)"}
    with atomic_path(Path(out)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{f"doc_{k}": np.array(v) for k, v in docs.items() if k in arrays},
                     data_config=np.array(json.dumps(cfg.data.options)))
    split = complexes or "unseen"
    return (f"wrote {len(pairs)} poses ({num} for each of {len(rows)} complexes of {split}; {steps} steps) to {out}: "
            f"success {arrays['success'].mean():.3f}, median RMSD after alignment {np.median(arrays['rmsd']):.3f}")
