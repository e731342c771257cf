"""Benchmark: where the latents pay off. Plain EDM (m = 0) against DisCo-Diff across network
width, sampler steps and training seeds, with the same data, training images and noise seeds everywhere.

    .venv/bin/python benchmarks/sweep.py --preset digits|fashion16 [--widths 16,24,40] [--seeds 0,1]
        [--steps 4,6,8,12,18] [--num 2000] [--bootstrap 20] [--jobs 4] [--device cpu|cuda] [--out DIR]
        [--variant NAME --disco-set KEY=VALUE ...]

1. Training. For each width (the U-Net's model_channels; attention keeps the preset's number of heads) and model,
   `discodiff train` runs, then `discodiff train-prior` for DisCo-Diff: the commands a user types, as --jobs
   parallel processes. The preset's own width is trained with every --seeds, the other widths with the first.
   Finished runs are reused, so an interrupted sweep is re-run with the same command.
2. Cost. Seconds per training image of both models at the preset's width, timed side by side in this process
   (interleaved rounds of training steps), because the parallel jobs share the device.
3. Evaluation, one process per run (--jobs at a time): for every step count, --num samples with seeds 0..num-1,
   FID ± its bootstrap std and KID ± std against the training images (or a fixed subset of --ref-num of them), and
   the class frequencies of the samples as a small classifier (trained here on the data's labels) sees them, against
   that classifier's view of the data. For a data set with labels, also the domain measure of `discodiff fid
   --features classifier` (docs/fid.md): the Fréchet distance ± its bootstrap std, KID, class TV and mean confidence
   in the hidden features of the data set's own cached classifier, against the same reference images ("domain" in
   each step's results, "domain FD" in the table). Each run keeps its results per step count, so a later --steps
   with more counts evaluates only the new ones (and a run evaluated before the domain measure existed is sampled
   again for it alone).
4. Report: a table, the FID ratio DisCo-Diff / baseline with its propagated error, the seed spread at the preset's
   width, two plots (the ratio against NFE for each width; the ratio against width at the most steps) in
   docs/sweep-<preset>-*.png, and benchmarks/results/sweep-<preset>.json.

A variant changes DisCo-Diff alone: `--variant info --disco-set model.regularisers.information=0.1` trains DisCo-Diff into
w<width>-s<seed>/discodiff-info, reuses the EDM runs beside it, and reports to sweep-<preset>-info.json and
docs/sweep-<preset>-info-*.png. A variant may drop the latents: `--variant labels --disco-set model.num_latents=0
--disco-set model.num_classes=10` puts EDM given the data's class labels (drawn balanced at sampling) in DisCo-Diff's
place, a reference for what a perfectly fitted, human-chosen latent gives.

FID over a few thousand samples is biased upward (KID is not), so compare only at equal --num. The "loss z/null"
column is benchmarks/common.py's latent_information (the noise levels of `discodiff analyze loss-vs-sigma` within
[2, 20]). The research scripts in benchmarks/research/ build on this sweep: its run folders (run_folder), its
commands (train_commands), its classifier and its reports (load_reports, mean_ratio).
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (DOCS, RESULTS, ROOT, differ, differ_word, fid_ratio, fid_text, finished,  # noqa: E402
                               high_sigmas, log, run_latent_information, write_report)

MODELS = ("baseline", "discodiff")


# ---- the plan ----------------------------------------------------------------------------------------------------

def width_sets(preset: str, width: int) -> list[str]:
    """--set overrides that give the preset's U-Net `width` base channels, with the preset's number of attention
    heads (channels_per_head scaled alike), everything else the preset's."""
    from discodiff.config import preset_config

    net = preset_config(preset).model.network
    per_head = max(1, net.get("channels_per_head", 64) * width // net["model_channels"])
    return [f"model.network.model_channels={width}", f"model.network.channels_per_head={per_head}"]


def run_folder(out: Path, width: int, seed: int, model: str, variant: str | None = None) -> Path:
    """Where a sweep keeps one run: out/w<width>-s<seed>/<model>, and a `variant`'s DisCo-Diff runs in
    discodiff-<variant>, beside the baseline they are compared with."""
    return out / f"w{width}-s{seed}" / (f"{model}-{variant}" if variant and model == "discodiff" else model)


def plan(preset: str, widths: list[int], seeds: list[int], out: Path, variant: str | None = None) -> list[dict]:
    """One entry per run: {"width", "seed", "model", "dir"}; every seed at the preset's width, the first elsewhere;
    "dir" from run_folder."""
    from discodiff.config import preset_config

    own = preset_config(preset).model.network["model_channels"]
    runs = []
    for width in widths:
        for seed in (seeds if width == own else seeds[:1]):
            for model in MODELS:
                runs.append({"width": width, "seed": seed, "model": model,
                             "dir": run_folder(out, width, seed, model, variant)})
    return runs


def train_commands(preset: str, run: dict, extra_sets: list[str], disco_sets: list[str] = ()) -> list[list[str]]:
    cli = [sys.executable, "-m", "discodiff"]
    if run["model"] == "discodiff":
        extra_sets = [*extra_sets, *disco_sets]
    sets = [a for s in (*width_sets(preset, run["width"]), *extra_sets) for a in ("--set", s)]
    train = [*cli, "train", "--preset", preset, "--run-dir", str(run["dir"]), "--seed", str(run["seed"]),
             *sets, "--quiet"]
    if run["model"] == "baseline":
        return [train + ["--latents", "0"]]
    from discodiff.cli.options import parse_key_values
    from discodiff.config import preset_config

    cfg = preset_config(preset, parse_key_values(extra_sets))
    if cfg.model.num_latents == 0:  # a variant without latents (e.g. EDM given the labels): no prior to fit
        return [train]
    # the prior's settings are given, so that a run trained before the preset's prior changed is fitted again
    p = cfg.prior_train
    return [train, [*cli, "train-prior", "--run-dir", str(run["dir"]), "--kimg", f"{p.kimg:g}", "--batch",
                    str(p.batch), "--lr", f"{p.lr:g}", "--quiet"]]


def stage1_done(path: Path):
    """The Run in `path` when its stage I has trained for its whole budget, else None (none begun, or unfinished)."""
    from discodiff.config import RunConfig
    from discodiff.errors import ConfigError
    from discodiff.runs import Run

    try:
        cfg = RunConfig.load(path / "config.json")
    except ConfigError:
        return None
    r = Run(path, cfg)
    return r if finished(r, "stage1") else None


def is_trained(run: dict, p) -> bool:
    """Whether the run's stage I and (for DisCo-Diff) its prior are done, the prior with the settings `p`."""
    r = stage1_done(run["dir"])
    if r is None:
        return False
    cfg = r.config
    if cfg.model.num_latents and (cfg.prior_train.kimg, cfg.prior_train.batch, cfg.prior_train.lr) != (p.kimg, p.batch,
                                                                                                      p.lr):
        return False  # a prior fitted with other settings than the preset's
    return cfg.model.num_latents == 0 or finished(r, "prior")


def run_logged(commands: list[list[str]], log_file: Path, env: dict) -> float:
    """Runs the commands one after the other, output into `log_file`; returns the seconds; raises on a failure."""
    t0 = time.perf_counter()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        for cmd in commands:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode:
                raise RuntimeError(f"failed: {' '.join(cmd)} (see {log_file})")
    return time.perf_counter() - t0


def in_parallel(jobs: int, tasks: list[tuple[str, list[list[str]], Path]], env: dict) -> dict:
    """{name: seconds} of the tasks (name, commands, log), `jobs` at a time."""
    seconds = {}
    with futures.ThreadPoolExecutor(jobs) as pool:
        running = {pool.submit(run_logged, cmds, log_file, env): name for name, cmds, log_file in tasks}
        for fut in futures.as_completed(running):
            seconds[running[fut]] = round(fut.result(), 1)
            log(f"[sweep]   done: {running[fut]} ({seconds[running[fut]]:.0f} s)")
    return seconds


def child_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


# ---- training cost -----------------------------------------------------------------------------------------------

def training_cost(preset: str, extra_sets: list[str], device: torch.device, rounds: int = 5,
                  steps: int = 20, disco_sets: list[str] = ()) -> dict:
    """Seconds per training image of the baseline and DisCo-Diff at the preset's width and batch: forward, backward
    and the optimizer step of each model, timed in interleaved rounds (the median round counts)."""
    from discodiff.cli.options import parse_key_values
    from discodiff.config import merge, preset_config
    from discodiff.data import load_dataset
    from discodiff.edm import EDMLoss
    from discodiff.model import DiscoDiff
    from discodiff.networks import init_encoder_from_data

    base = parse_key_values(extra_sets)
    cfg = preset_config(preset, parse_key_values([*extra_sets, *disco_sets]))
    data = load_dataset(cfg.data)
    cfgs = {"baseline": preset_config(preset, merge(base, {"model": {"num_latents": 0}})), "discodiff": cfg}
    x_all = data.x.to(device)
    state = {}
    for name, c in cfgs.items():
        c.model.data_shape = data.shape
        torch.manual_seed(0)
        model = DiscoDiff(c.model).to(device)
        # the encoder's one-off start from the data, as the trainer makes it (the k-means encoder's fit, seconds)
        init_encoder_from_data(model.encoder, x_all[:c.train.batch], dataset=x_all)
        opt = torch.optim.Adam(model.parameters(), lr=c.train.lr, fused=True)
        state[name] = (model, opt, EDMLoss(c.model.P_mean, c.model.P_std, c.model.sigma_data))
    batch = cfg.train.batch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.train.bf16
                else torch.autocast("cpu", enabled=False))
    g = torch.Generator(device).manual_seed(0)

    labels_all = data.labels.to(device) if cfg.model.num_classes and data.labels is not None else None

    def step(name):
        model, opt, loss_fn = state[name]
        idx = torch.randint(len(x_all), (batch,), generator=g, device=device)
        labels = labels_all[idx] if labels_all is not None and model.config.num_classes else None
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model.training_loss(x_all[idx], labels, loss_fn=loss_fn, generator=g)
        loss.mean().backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name in state:  # warm-up
        for _ in range(3):
            step(name)
    times = {name: [] for name in state}
    for _ in range(rounds):
        for name in state:
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            sync()
            times[name].append((time.perf_counter() - t0) / (steps * batch))
    med = {name: float(np.median(v)) for name, v in times.items()}
    return {"seconds_per_image": med, "ratio": med["discodiff"] / med["baseline"], "batch": batch,
            "rounds": rounds, "steps_per_round": steps, "device": str(device)}


# ---- a classifier's view of class frequencies --------------------------------------------------------------------

class SmallClassifier(nn.Module):
    """Two conv layers and a linear head on [N, C, H, W] images in [-1, 1]; enough to read the class of 8x8 digits
    and 16x16 Fashion-MNIST."""

    def __init__(self, channels: int, classes: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, classes))

    def forward(self, x):
        return self.net(x)


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1


def train_classifier(x: torch.Tensor, labels: torch.Tensor, device, *, steps: int = 3000, seed: int = 0) -> tuple:
    """(classifier, held-out accuracy): trained on 90% of (x in [-1, 1], labels), scored on the other 10%."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    cut = len(x) * 9 // 10
    tr, te = order[:cut], order[cut:]
    torch.manual_seed(seed)
    net = SmallClassifier(x.shape[1], int(labels.max()) + 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xd, ld = x.to(device), labels.to(device)
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (128,), generator=g)].to(device)
        loss = nn.functional.cross_entropy(net(xd[idx]), ld[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((predict(net, x[te], device) == labels[te]).float().mean())
    return net, acc


@torch.no_grad()
def predict(net, x: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    return torch.cat([net(x[i:i + batch].to(device)).argmax(1).cpu() for i in range(0, len(x), batch)])


def frequencies(pred: torch.Tensor, classes: int) -> np.ndarray:
    return np.bincount(pred.numpy(), minlength=classes) / len(pred)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


# ---- evaluation of one run (a child process) ---------------------------------------------------------------------

def evaluate_run(run_dir: Path, ref_path: Path, classifier_path: Path, steps: list[int], num: int, bootstrap: int,
                 device: torch.device, batch: int, *, domain_ref_path: Path | None = None,
                 inception_steps: list[int] | None = None) -> dict:
    """{steps: {fid, fid_std, kid, kid_std, class_tv, ..., "domain": {...}}} for one run, samples with seeds
    0..num-1. "domain" (with `domain_ref_path`, a reference made in the classifier's features): the Fréchet distance
    ("fid") ± its bootstrap std, KID and the class balance in the data set's own classifier (metrics/classifier.py).
    `inception_steps`: the step counts whose Inception FID and class TV are wanted (default: all); the others get
    "domain" alone, to complete an earlier evaluation."""
    from safetensors.torch import load_file

    from discodiff.analysis.quality import diversity, sample_batches
    from discodiff.metrics.fid import FIDStats, InceptionDetector, scores, stats_of_images
    from discodiff.runs import Run
    from discodiff.sampling import nfe

    run = Run(run_dir)
    model, prior = run.load_model(device), run.load_prior(device)
    ref = FIDStats.load(ref_path)
    det = InceptionDetector.from_file(device=device)
    inception_steps = steps if inception_steps is None else inception_steps
    clf = domain_ref = None
    if domain_ref_path is not None:
        from discodiff.metrics.classifier import classifier_of_reference

        domain_ref = FIDStats.load(domain_ref_path)
        clf = classifier_of_reference(domain_ref.provenance, device=device, notice=log)
    meta = json.loads(classifier_path.with_suffix(".json").read_text())
    net = SmallClassifier(meta["channels"], meta["classes"]).to(device)
    net.load_state_dict(load_file(classifier_path))
    net.eval()
    data_freq = np.array(meta["data_frequencies"])
    out = {}
    for n in steps:
        t0 = time.perf_counter()
        images = torch.cat(list(sample_batches(model, prior, range(num), steps=n, batch=batch)))
        t1 = time.perf_counter()
        out[str(n)] = {}
        if n in inception_steps:
            stats = stats_of_images(images, det, batch=256 if device.type == "cuda" else 32)
            freq = frequencies(predict(net, to_unit(images), device), meta["classes"])
            out[str(n)] = {**scores(stats, ref, bootstrap=bootstrap), "diversity": diversity(stats, ref),
                           "steps": n, "nfe": nfe("heun", n), "class_tv": total_variation(freq, data_freq),
                           "class_frequencies": freq.tolist(), "sampling_s": round(t1 - t0, 1)}
            log(f"{run_dir}: {n} steps FID {out[str(n)]['fid']:.3f} class TV {out[str(n)]['class_tv']:.3f}")
        if clf is not None:
            dstats = stats_of_images(images, clf, batch=1000)
            dom = {**scores(dstats, domain_ref, bootstrap=bootstrap), **clf.class_balance(dstats.features,
                                                                                         domain_ref.features)}
            dom.pop("data_class_frequencies")
            out[str(n)]["domain"] = dom
            log(f"{run_dir}: {n} steps domain FD {dom['fid']:.3f} class TV {dom['class_tv']:.3f} confidence "
                f"{dom['confidence']:.3f}")
        # (a step count measured for the domain alone keeps the seconds of its first evaluation)
        out[str(n)]["seconds" if n in inception_steps else "domain_seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ---- the report --------------------------------------------------------------------------------------------------

def summarise(runs: list[dict], evals: dict, steps: list[int], own_width: int) -> dict:
    """Ratios per (width, seed, steps); per width the mean over seeds, and the seed spread at the preset's width."""
    pairs = {}
    for r in runs:
        pairs.setdefault((r["width"], r["seed"]), {})[r["model"]] = evals[str(r["dir"])]
    rows = []
    for (width, seed), e in sorted(pairs.items()):
        for n in steps:
            b, d = e["baseline"][str(n)], e["discodiff"][str(n)]
            rr, err = fid_ratio(d, b)
            info = e["discodiff"].get("latents") or {}
            row = {"width": width, "seed": seed, "steps": n, "nfe": b["nfe"], "baseline": b, "discodiff": d,
                   "ratio": rr, "ratio_err": err, "latent_loss_ratio": info.get("loss_ratio"), "differ": differ(d, b)}
            if "domain" in b and "domain" in d:  # the classifier's features (docs/fid.md)
                row["domain_ratio"], row["domain_ratio_err"] = fid_ratio(d["domain"], b["domain"])
                row["domain_differ"] = differ(d["domain"], b["domain"])
            rows.append(row)
    spread = {}
    for n in steps:
        rs = [r["ratio"] for r in rows if r["width"] == own_width and r["steps"] == n]
        if len(rs) > 1:
            spread[str(n)] = {"mean": float(np.mean(rs)), "std_over_seeds": float(np.std(rs, ddof=1)), "n": len(rs)}
    return {"rows": rows, "seed_spread": spread}


def format_table(summary: dict) -> str:
    lines = [f"{'width':>5} {'seed':>4} {'steps':>5} {'NFE':>4} {'EDM FID':>14} {'DisCo FID':>14} {'ratio':>13} "
             f"{'differ':>6} {'EDM KIDx1e3':>11} {'DisCo KIDx1e3':>13} {'class TV E/D':>13} {'loss z/null':>11}"
             + (f" {'EDM domain FD':>15} {'DisCo domain FD':>15} {'domain ratio':>14} {'dom. TV E/D':>12}"
                if any("domain_ratio" in r for r in summary["rows"]) else "")]
    for r in summary["rows"]:
        b, d = r["baseline"], r["discodiff"]
        kid = (lambda x: f"{1000 * x['kid']:.2f}" if x.get("kid") is not None else "-")
        err = "" if r["ratio_err"] is None else f" ± {r['ratio_err']:.3f}"
        lines.append(f"{r['width']:>5} {r['seed']:>4} {r['steps']:>5} {r['nfe']:>4} {fid_text(b, 2):>14} "
                     f"{fid_text(d, 2):>14} {r['ratio']:>6.3f}{err:<8} {differ_word(d, b):>6} {kid(b):>11} "
                     f"{kid(d):>13} {b['class_tv']:>6.3f}/{d['class_tv']:.3f} "
                     f"{'-' if r.get('latent_loss_ratio') is None else format(r['latent_loss_ratio'], '.3f'):>11}"
                     + _domain_columns(r))
    lines += ["", "loss z/null: DisCo-Diff's loss given its encoder's latents over its loss given the null latent, "
              f"mean over sigma in {[round(s, 2) for s in high_sigmas()]} (below 1: the latents inform the denoiser)"]
    if summary["seed_spread"]:
        lines += ["", "ratio over training seeds at the preset's width: " + ", ".join(
            f"{n} steps {s['mean']:.3f} ± {s['std_over_seeds']:.3f} (n={s['n']})"
            for n, s in summary["seed_spread"].items())]
    return "\n".join(lines)


def _domain_columns(r: dict) -> str:
    """The table's domain columns of one row: both FDs ± std, their ratio ± error and both class TVs."""
    if "domain_ratio" not in r:
        return ""
    b, d = r["baseline"]["domain"], r["discodiff"]["domain"]
    err = "" if r["domain_ratio_err"] is None else f" ± {r['domain_ratio_err']:.3f}"
    return (f" {fid_text(b, 2):>15} {fid_text(d, 2):>15} {r['domain_ratio']:>6.3f}{err:<8} "
            f"{b['class_tv']:>5.3f}/{d['class_tv']:.3f}")


def mean_ratio(rows: list[dict], width: int, n: int) -> tuple[float, float, int]:
    """(the FID ratio at `width` and `n` steps, mean over the training seeds; its error: the seeds' spread when there
    are several, else the bootstrap error of the one pair; the NFE) from a summary's rows."""
    rs = [r for r in rows if r["width"] == width and r["steps"] == n]
    value = float(np.mean([r["ratio"] for r in rs]))
    err = (float(np.std([r["ratio"] for r in rs], ddof=1)) if len(rs) > 1 else rs[0]["ratio_err"])
    if err is None:  # one pair measured without bootstrap stds: no error bar
        err = float("nan")
    return value, err, rs[0]["nfe"]


def plot(summary: dict, preset: str, widths: list[int], steps: list[int], docs: Path,
         name: str | None = None) -> list[Path]:
    """The FID ratio against NFE for each width (mean over seeds), and against width at the most steps (when there
    are several widths)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for w in widths:
        vals = [mean_ratio(rows, w, n) for n in steps]
        ax.errorbar([v[2] for v in vals], [v[0] for v in vals], yerr=[v[1] for v in vals], marker="o", capsize=3,
                    label=f"width {w}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's minor labels crowd the NFE labels set below
    nfes = [mean_ratio(rows, widths[0], n)[2] for n in steps]
    ax.set_xticks(nfes, [str(v) for v in nfes])
    ax.set_xlabel("NFE (Heun)")
    ax.set_ylabel("FID ratio DisCo-Diff / EDM")
    name = name or preset
    ax.set_title(f"{name}: the latents' gain against sampler steps", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(docs / f"sweep-{name}-ratio-vs-nfe.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if len(widths) < 2:
        return paths  # one width: the ratio against width would be a single point
    fig, ax = plt.subplots(figsize=(5, 4))
    n = max(steps)
    vals = [mean_ratio(rows, w, n) for w in widths]
    ax.errorbar(widths, [v[0] for v in vals], yerr=[v[1] for v in vals], marker="o", capsize=3)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("U-Net base channels")
    ax.set_ylabel(f"FID ratio at {n} steps (NFE {vals[0][2]})")
    ax.set_title(f"{name}: the latents' gain against network width", fontsize=10)
    paths.append(docs / f"sweep-{name}-ratio-vs-width.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def reference_images(images: torch.Tensor, num: int | None, seed: int = 0) -> torch.Tensor:
    """The FID reference: all training images, or a fixed seeded subset of `num` of them (the same on every call)."""
    if num is None or num >= len(images):
        return images
    if num < 2:
        raise SystemExit(f"--ref-num must be at least 2, got {num}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:num].sort().values]


# ---- main --------------------------------------------------------------------------------------------------------

def load_reports(paths: list[Path], error) -> list[dict]:
    """The reports this script wrote at `paths`; `error` (an ArgumentParser's .error) for a missing or foreign file."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        error(f"no such report: {', '.join(missing)}")
    reports = [json.loads(p.read_text()) for p in paths]
    if any("summary" not in r or "preset_width" not in r for r in reports):
        error("every report must come from benchmarks/sweep.py")
    return reports


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--widths", default=None, help="U-Net base channels, comma-separated (default: about 2/3, 1 "
                                                    "and 5/3 of the preset's, rounded to multiples of 8)")
    ap.add_argument("--seeds", default="0,1", help="training seeds at the preset's width (the first elsewhere)")
    ap.add_argument("--steps", default="4,6,8,12,18", help="Heun step counts")
    ap.add_argument("--num", type=int, default=2000, help="samples per FID")
    ap.add_argument("--bootstrap", type=int, default=20, help="bootstrap resamples for each FID's std")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained / evaluated at once (1 on a 2-core CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=500, help="samples per sampling batch")
    ap.add_argument("--ref-num", type=int, default=None, help="reference images for FID: a fixed random subset of "
                    "the training images (default: all of them; Fashion-MNIST's 60,000 take an hour on a CPU)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every run (e.g. train.kimg=50 for a quick check)")
    ap.add_argument("--disco-set", dest="disco_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the DisCo-Diff runs alone (needs --variant)")
    ap.add_argument("--variant", default=None, help="name of the --disco-set variant: its DisCo-Diff runs go to "
                    "discodiff-NAME beside the baseline runs they are compared with, its report to "
                    "sweep-<preset>-NAME.json")
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: under the temp folder)")
    ap.add_argument("--results", type=Path, default=None, help="the JSON report")
    ap.add_argument("--docs", type=Path, default=DOCS, help="where the plots go")
    ap.add_argument("--eval-run", type=Path, default=None, help=argparse.SUPPRESS)  # a child: one run's evaluation
    ap.add_argument("--ref", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--domain-ref", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.disco_sets and not args.variant:
        ap.error("--disco-set needs --variant NAME, so that its runs do not overwrite the plain DisCo-Diff runs")
    if args.variant is not None and (not args.variant.replace("-", "").replace(".", "").isalnum()):
        ap.error(f"--variant must be letters, digits, '-' and '.', got {args.variant!r}")
    steps = _ints(args.steps)
    device = torch.device(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    torch.set_num_threads(threads)

    if args.eval_run is not None:  # evaluates the step counts the run's file lacks, and adds them to it
        path = args.eval_run / f"sweep-eval-{args.num}.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        lacking = [n for n in steps if str(n) not in done or (args.domain_ref and "domain" not in done[str(n)])]
        res = evaluate_run(args.eval_run, args.ref, args.out / "classifier.safetensors", lacking, args.num,
                           args.bootstrap, device, args.batch, domain_ref_path=args.domain_ref,
                           inception_steps=[n for n in lacking if str(n) not in done])
        if "latents" not in done:
            res["latents"] = run_latent_information(args.eval_run, device)
        for key, value in res.items():  # a step count measured for the domain alone keeps its Inception figures
            done[key] = {**done[key], **value} if key in done and key != "latents" else value
        path.write_text(json.dumps(done) + "\n")
        return 0

    from discodiff.cli.options import parse_key_values
    from discodiff.config import preset_config
    from discodiff.data import load_dataset, to_uint8
    from discodiff.metrics.fid import InceptionDetector, stats_of_images

    start = time.perf_counter()
    cfg = preset_config(args.preset)
    own = cfg.model.network["model_channels"]
    widths = _ints(args.widths) if args.widths else sorted({max(8, round(own * f / 8) * 8) for f in (2 / 3, 1, 5 / 3)})
    seeds = _ints(args.seeds)
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-sweep-{args.preset}"
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(args.preset, widths, seeds, out, args.variant)
    name = f"{args.preset}-{args.variant}" if args.variant else args.preset
    env = child_env(threads)
    seconds = {}
    log(f"[sweep] {args.preset}: widths {widths} (preset {own}), seeds {seeds} at the preset's width, steps {steps}, "
        f"{args.num} samples per FID, {len(runs)} runs, {args.jobs} jobs x {threads} threads on {device}; in {out}")

    prior_settings = preset_config(args.preset, parse_key_values([*args.sets, *args.disco_sets])).prior_train
    todo = [r for r in runs if not is_trained(r, prior_settings)]
    log(f"[sweep] training {len(todo)} runs ({len(runs) - len(todo)} already trained)")
    t0 = time.perf_counter()
    train_s = in_parallel(args.jobs, [(str(r["dir"]), train_commands(args.preset, r, args.sets, args.disco_sets),
                                       r["dir"].parent / f"{r['dir'].name}-train.log") for r in todo], env)
    seconds["training"] = round(time.perf_counter() - t0, 1)

    log("[sweep] training cost per image, side by side")
    cost = training_cost(args.preset, args.sets, device, disco_sets=args.disco_sets)
    log(f"[sweep]   DisCo-Diff / EDM seconds per training image: {cost['ratio']:.3f}")

    data = load_dataset(cfg.data)
    images = to_uint8(data.x)
    ref_images = reference_images(images, args.ref_num)
    ref_path = out / ("fid-ref.npz" if len(ref_images) == len(images) else f"fid-ref-{len(ref_images)}.npz")
    if not ref_path.is_file():
        log(f"[sweep] reference features of {len(ref_images)} of the {len(images)} training images")
        det = InceptionDetector.from_file(device=device)
        stats_of_images(ref_images, det, batch=256 if device.type == "cuda" else 32).save(ref_path)
        del det
    cls_path = out / "classifier.safetensors"
    if not cls_path.is_file() and data.labels is not None:
        from safetensors.torch import save_file
        log("[sweep] training the classifier that reads the samples' classes")
        net, acc = train_classifier(to_unit(images), data.labels, device)
        classes = int(data.labels.max()) + 1
        save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, cls_path)
        data_freq = frequencies(predict(net, to_unit(images), device), classes)
        cls_path.with_suffix(".json").write_text(json.dumps({"channels": images.shape[1], "classes": classes,
                                                             "held_out_accuracy": acc,
                                                             "data_frequencies": data_freq.tolist()}) + "\n")
    classifier = json.loads(cls_path.with_suffix(".json").read_text())
    log(f"[sweep]   classifier held-out accuracy {classifier['held_out_accuracy']:.3f}")
    domain_path, domain = None, None
    if data.labels is not None:  # the domain measure: the data set's own cached classifier (docs/fid.md)
        from discodiff.metrics.classifier import classifier_features
        from discodiff.metrics.fid import FIDStats, provenance

        clf = classifier_features(cfg.data, device=device, notice=log)
        domain = {k: clf.config[k] for k in ("data", "held_out", "held_out_accuracy", "recipe", "weights_sha256")}
        domain_path = ref_path.with_name(f"{ref_path.stem}-classifier.npz")
        if not (domain_path.is_file()
                and FIDStats.load(domain_path).provenance.get("detector_sha256") == clf.sha256):
            log(f"[sweep] reference features of the same {len(ref_images)} images in the classifier's features")
            st = stats_of_images(ref_images, clf, batch=1000)
            st.provenance = provenance(clf, ref_images.shape, cfg.data.name, len(ref_images))
            st.save(domain_path)

    def eval_path(r):
        return r["dir"] / f"sweep-eval-{args.num}.json"

    for r in todo:  # trained afresh: its earlier evaluation no longer holds
        eval_path(r).unlink(missing_ok=True)
    def evaluated(r) -> bool:
        done = json.loads(eval_path(r).read_text()) if eval_path(r).is_file() else {}
        return ({*map(str, steps), "latents"} <= done.keys()
                and (domain_path is None or all("domain" in done[str(n)] for n in steps)))

    fresh = [r for r in runs if not evaluated(r)]
    log(f"[sweep] evaluating {len(fresh)} runs")
    t0 = time.perf_counter()
    child = [sys.executable, str(Path(__file__).resolve()), "--num", str(args.num), "--steps", args.steps,
             "--bootstrap", str(args.bootstrap), "--device", args.device, "--batch", str(args.batch),
             "--out", str(out), "--ref", str(ref_path), "--threads", str(threads)]
    if domain_path is not None:
        child += ["--domain-ref", str(domain_path)]
    eval_s = in_parallel(args.jobs, [(str(r["dir"]), [child + ["--eval-run", str(r["dir"])]],
                                      r["dir"].parent / f"{r['dir'].name}-eval.log") for r in fresh], env)
    seconds["evaluation"] = round(time.perf_counter() - t0, 1)
    evals = {str(r["dir"]): json.loads(eval_path(r).read_text()) for r in runs}

    summary = summarise(runs, evals, steps, own)
    table = format_table(summary)
    args.docs.mkdir(parents=True, exist_ok=True)
    plots = plot(summary, args.preset, widths, steps, args.docs, name)
    seconds["total"] = round(time.perf_counter() - start, 1)
    log("\n" + table + f"\n\nclassifier held-out accuracy {classifier['held_out_accuracy']:.3f}; training cost "
        f"DisCo-Diff / EDM per image {cost['ratio']:.3f} ({device}); seconds: "
        + ", ".join(f"{k} {v:g}" for k, v in seconds.items()))
    params = {}
    for w in widths:
        from discodiff.model import DiscoDiff
        for model in MODELS:  # a variant's own settings (its number of latents, say) count for DisCo-Diff
            own_sets = args.disco_sets if model == "discodiff" else ["model.num_latents=0"]
            c = preset_config(args.preset, parse_key_values([*width_sets(args.preset, w), *args.sets, *own_sets]))
            c.model.data_shape = data.shape
            params[f"{model}-w{w}"] = sum(p.numel() for p in DiscoDiff(c.model).parameters())
    report = {
        "preset": args.preset, "widths": widths,
        "preset_width": own, "seeds": seeds, "steps": steps, "num": args.num, "bootstrap": args.bootstrap,
        "overrides": args.sets, "variant": args.variant, "discodiff_overrides": args.disco_sets, "jobs": args.jobs,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "parameters": params, "training_cost": cost, "classifier": {k: v for k, v in classifier.items()},
        "domain_classifier": domain,
        "seconds": seconds, "training_seconds_per_run": train_s, "evaluation_seconds_per_run": eval_s,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "summary": summary, "table": table, "plots": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                                                      for p in plots],
        "reference_images": len(ref_images),
        "note": "FID over --num samples against reference_images training images (all, or a fixed seeded subset; "
                "biased upward relative to FID-50k; compare at equal N). Ratio errors propagate the two bootstrap "
                "stds; the seed spread is over training seeds. "
                "class TV: total variation between the class frequencies a small classifier reads off the samples "
                "and those it reads off the training images. domain: the Fréchet distance (key fid), KID and class "
                "balance in the hidden features of the data set's own classifier (discodiff fid --features "
                "classifier, docs/fid.md) against the same reference images; domain_ratio DisCo-Diff / EDM.",
    }
    path = args.results or RESULTS / f"sweep-{name}.json"
    write_report(report, path)
    log(f"wrote {path} and {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
