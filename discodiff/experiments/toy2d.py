"""The paper's 2D experiment: a plain EDM model against DisCo-Diff on 8 Gaussians.

Both models use the `toy2d` preset, the same network, the same budget and the same seeds; they differ only in
m (0 for the baseline, 1 latent with k = 8 codes for DisCo-Diff). Everything goes through the library's own
API, the functions the CLI calls: resolve_run and Run.create, train_stage1, train_prior, Run.load_model and
Run.load_prior, and pipeline.generate.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import merge, preset_config
from ..fileio import check_writable, write_json
from ..metrics import ode
from ..metrics import toy as tm
from ..pipeline import generate
from ..runs import Run, resolve_run
from ..sampling import karras_sigmas, trajectory_recorder
from ..analysis.prior_report import write_prior_report
from ..train.prior import train_prior
from ..train.stage1 import train_stage1
from .common import timed

MODELS = {"baseline": {"num_latents": 0}, "discodiff": {"num_latents": 1, "codebook_size": 8}}
LABELS = {"baseline": "DM", "discodiff": "DisCo-Diff"}
COLOURS = {"baseline": "tab:blue", "discodiff": "tab:red"}  # in the figures
STRAIGHT_T_MAX = 3.0  # straightness is also measured on the path's last part, t <= the ring's radius


def model_overrides(name: str, *, kimg=None, prior_kimg=None, seed: int = 0, overrides: dict | None = None) -> dict:
    """The nested overrides of the toy2d preset for one of the two models; only m (and k) differ between them.
    `overrides` (a nested config dict, as `--set` builds) applies to both models, for ablations. The training
    durations are always given (`kimg` / `prior_kimg`, else the preset's), so a resumed run trains to them."""
    ours = {"model": MODELS[name], "train": {"seed": seed}, "prior_train": {"seed": seed}}
    base = preset_config("toy2d", merge(overrides or {}, ours))
    ours["train"]["kimg"] = base.train.kimg if kimg is None else kimg
    ours["prior_train"]["kimg"] = base.prior_train.kimg if prior_kimg is None else prior_kimg
    return merge(overrides or {}, ours)


def sample_with_trajectories(model, prior, steps: int, seeds) -> dict:
    """Heun samples, their latents and every point the sampler visited (traj [steps + 1, N, 2])."""
    callback, points = trajectory_recorder()
    sigmas = karras_sigmas(steps, device=next(model.parameters()).device)
    x, z = generate(model, seeds, sigmas, prior=prior, callback=callback)
    return {"x": x.float(), "z": z, "traj": torch.stack(points).float(), "sigmas": sigmas}


def evaluate(model, samples: dict, *, seed: int, w2_floor: float) -> dict:
    """Every toy metric of one model's samples at one step count."""
    x, z, traj = samples["x"], samples["z"], samples["traj"]
    out = tm.sample_metrics(x, seed, w2_floor=w2_floor)
    for key, t_max in (("straightness", None), (f"straightness_t_le_{STRAIGHT_T_MAX:g}", STRAIGHT_T_MAX)):
        s = ode.straightness(traj, samples["sigmas"], t_max)
        out[key] = {"mean": float(s.mean()), "p10": float(np.percentile(s, 10)), "min": float(s.min())}
    # The ODE metrics run on a float64 copy: near t = 0, G = (x - D) / t cancels digits, and float32 rounding
    # alone would read as curvatures of ~1e3 (metrics/ode.py, ode_profile).
    model64 = copy.deepcopy(model).double()
    denoise = model64.make_denoiser(z if model.num_latents else None)
    prof = ode.ode_profile(denoise, traj, samples["sigmas"], dtype=torch.float64)
    out["ode"] = prof
    out["mean_curvature"] = float(np.mean(prof["curvature"]))   # the mean of E[kappa] over the sampler's t grid
    out["total_turning"] = ode.total_turning(prof)
    out["mean_jacobian_fro_sq"] = float(np.mean(prof["jacobian_fro_sq"]))
    if model.num_latents:
        mode, _ = tm.nearest_mode(x)
        out["latent"] = tm.latent_purity(z.cpu().numpy(), mode)
    return out


def encoder_purity(model, data) -> dict:
    """Purity of the encoder's argmax code on the data against the true component labels (with the codes used and
    the modes covered, tm.latent_purity), and "confidence", the encoder's mean top probability."""
    logits = model.encode_all(data.x.to(next(model.parameters()).device)).cpu()
    purity = tm.latent_purity(logits.argmax(-1).numpy(), data.labels.cpu().numpy())
    return {**purity, "confidence": float(logits.softmax(-1).amax(-1).mean())}


def run_toy2d(out_dir, *, kimg=None, prior_kimg=None, seed: int = 0, steps=(50, 10), num_eval: int = 4000,
              quiet: bool = False, overrides: dict | None = None) -> dict:
    """Trains both models into out_dir/{baseline,discodiff}, evaluates them, draws the figures; returns the results
    (also written to out_dir/metrics.json). `kimg` / `prior_kimg` default to the preset's budgets; `overrides`
    changes the preset for both models (ablations, docs/toy2d.md)."""
    out_dir = check_writable(Path(out_dir), folder=True)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    # Both runs are resolved (and an existing one checked to be the same run) before anything is written.
    resolved = {name: resolve_run(out_dir / name, preset="toy2d",
                                  overrides=model_overrides(name, kimg=kimg, prior_kimg=prior_kimg, seed=seed,
                                                            overrides=overrides))
                for name in MODELS}
    cfgs = {name: cfg for name, (cfg, _) in resolved.items()}
    data = resolved["baseline"][1]
    for name, cfg in cfgs.items():
        run_dir = out_dir / name
        Run.create(run_dir, cfg)
        log(f"[toy2d] stage I: {LABELS[name]} (m={cfg.model.num_latents}), {cfg.train.kimg:g} kimg -> {run_dir}")
        model = timed(seconds, f"stage1_{name}", train_stage1, run_dir, cfg, data, quiet=True)
        if cfg.model.num_latents:
            log(f"[toy2d] stage II: prior of {LABELS[name]}, {cfg.prior_train.kimg:g} kimg")
            prior = timed(seconds, f"prior_{name}", train_prior, run_dir, cfg, data, model, quiet=True)
            timed(seconds, f"prior_report_{name}", write_prior_report, run_dir, cfg, data, model, prior)
        log(f"[toy2d]   done in {seconds[f'stage1_{name}'] + seconds.get(f'prior_{name}', 0):.1f} s")

    seeds = list(range(seed * 1_000_000, seed * 1_000_000 + num_eval))
    log(f"[toy2d] sampling-floor W2 of {num_eval} true points")
    w2_floor = timed(seconds, "w2_floor", tm.sampling_floor, num_eval, seed)
    results: dict = {"models": {}, "w2_floor": w2_floor}
    figures_input: dict = {}
    for name in MODELS:
        run = Run(out_dir / name)
        model, prior = run.load_model(), run.load_prior()  # what `discodiff sample` loads
        results["models"][name] = {}
        if model.num_latents:
            results["encoder_purity_on_data"] = encoder_purity(model, data)
        for n in steps:
            log(f"[toy2d] {LABELS[name]}: {num_eval} samples with {n} Heun steps, then metrics")
            samples = timed(seconds, f"sample_{name}_{n}", sample_with_trajectories, model, prior, n, seeds)
            results["models"][name][str(n)] = timed(seconds, f"metrics_{name}_{n}", evaluate, model, samples,
                                                     seed=seed, w2_floor=w2_floor)
            figures_input[(name, n)] = samples

    log("[toy2d] figures")
    results["files"] = timed(seconds, "plots", draw_figures, out_dir, data.x.numpy(), figures_input, results, steps)
    seconds["total"] = round(time.perf_counter() - start, 2)
    results.update(seconds=seconds, num_eval=num_eval, seed=seed, steps=list(steps), overrides=overrides or {},
                   kimg={name: cfg.train.kimg for name, cfg in cfgs.items()},
                   prior_kimg=cfgs["discodiff"].prior_train.kimg, device="cpu", torch_threads=torch.get_num_threads())
    prior_report = out_dir / "discodiff" / "prior_report.json"
    if prior_report.exists():
        results["prior"] = json.loads(prior_report.read_text())
    results["files"]["metrics"] = str(out_dir / "metrics.json")
    write_json(results, out_dir / "metrics.json")
    log(format_table(results))
    log(f"[toy2d] wrote {out_dir / 'metrics.json'}, {results['files']['samples']}, {results['files']['ode']}")
    return results


def draw_figures(out_dir: Path, data: np.ndarray, samples: dict, results: dict, steps) -> dict:
    from ..plots import toy as plots
    n = steps[0]
    base, disco = samples[("baseline", n)], samples[("discodiff", n)]
    fig3 = plots.plot_samples(out_dir / "samples.png", data, base["x"].numpy(), disco["x"].numpy(),
                              disco["z"].numpy(), baseline_traj=base["traj"].numpy(),
                              disco_traj=disco["traj"].numpy(),
                              titles=(f"DM (baseline), {n} Heun steps", f"DisCo-Diff, {n} Heun steps"))
    profiles, styles = {}, {}
    for name in MODELS:
        for k in steps:
            label = f"{LABELS[name]}, {k} steps"
            profiles[label] = results["models"][name][str(k)]["ode"]
            styles[label] = ("-" if k == n else "--", COLOURS[name])  # solid: the step count of the samples figure
    fig4 = plots.plot_ode_profiles(out_dir / "curvature.png", profiles, styles)
    return {"samples": str(fig3), "ode": str(fig4)}


# ---- the printed table ------------------------------------------------------------------------------------

ROWS = [("W2 to the data", "w2"), ("  W2 sampling floor", "w2_floor"), ("within-mode W2", "within_mode_w2"),
        ("  within-mode floor", "within_mode_w2_floor"), ("mode TV vs uniform", "mode_tv"),
        ("off-mode fraction (>4 std)", "off_mode"), ("mean curvature E[kappa]", "mean_curvature"),
        ("total turning angle (rad)", "total_turning"),
        ("mean E||dG/dx||_F^2", "mean_jacobian_fro_sq"), ("straightness, whole path", ("straightness", "mean")),
        ("straightness, t <= 3", ("straightness_t_le_3", "mean")),
        ("  10th percentile", ("straightness_t_le_3", "p10")), ("latent purity (samples)", ("latent", "purity")),
        ("codes in use (samples)", ("latent", "codes_used"))]


def _get(d: dict, key):
    for k in (key if isinstance(key, tuple) else (key,)):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def format_table(results: dict) -> str:
    steps = results["steps"]
    cols = [(name, str(n)) for n in steps for name in MODELS]
    head = f"{'metric':<28}" + "".join(f"{LABELS[name] + ' @' + n:>17}" for name, n in cols)
    lines = [head, "-" * len(head)]
    for label, key in ROWS:
        cells = []
        for name, n in cols:
            v = _get(results["models"][name][n], key)
            cells.append(f"{'-':>17}" if v is None else f"{v:>17d}" if isinstance(v, int) else f"{v:>17.4f}")
        lines.append(f"{label:<28}" + "".join(cells))
    enc = results.get("encoder_purity_on_data")
    if enc:
        lines.append(f"encoder purity on the data: {enc['purity']:.4f}, codes used {enc['codes_used']}, "
                     f"modes covered {enc['modes_covered']}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()))
    return "\n".join(lines)
