"""Benchmark: pointer latents on the dock3d docking ANALOGUE (DisCo-DiffDock's design, the paper's §4.2;
docs/docking.md).

    nice -n 19 .venv/bin/python benchmarks/docking.py            # the full comparison, about 30-45 min on 2 cores
    .venv/bin/python benchmarks/docking.py --quick               # a tiny end-to-end check, under a minute

Trains, with the dock3d preset's network, data, budget and training seeds (--seeds, default 0 and 1), through the
library's own set-conditioned path (discodiff.variants.docking: stage I, then the prior), in DIR/<method>-s<seed>:
- plain: plain EDM (m = 0), the same set transformer;
- pointer: DisCo-Diff with m = 2 pointer latents over the receptor's points and the set prior;
- fixed: DisCo-Diff with m = 2 ordinary discrete latents of a fixed codebook of k = 64 codes (the pointers' width:
  the same size) and the same set prior over codes: the ablation of pointers.
Then, for the seen split (new complexes on training receptors) and the unseen one (held-out receptors), --samples
poses per complex with the same seeds for every method, Heun at each of --steps (20, the paper's, and fewer):
success rate (centroid within 1 A of a pocket centre and RMSD after alignment < 0.5 A), top-1 success (the pose of
highest prior likelihood; the first pose for plain EDM, which has no prior), pocket coverage TV, trajectory
curvature (1 - chord / path length at sigma <= 10), the median RMSD, and success's two parts apart: pocket hit
(centroid within 1 A of a pocket centre) and shape kept (RMSD after alignment < 0.5 A). Error bars: the std over training seeds
(ddof 1), and the binomial standard error of the pooled rate. Writes benchmarks/results/docking.json (--quick: into
DIR) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py

from benchmarks.common import RESULTS, log, write_report  # noqa: E402

METHODS = {
    "plain": {"model": {"num_latents": 0}},
    "pointer": {"model": {"num_latents": 2, "latent_type": "pointer"}},
    "fixed": {"model": {"num_latents": 2, "latent_type": "set_discrete", "codebook_size": 64}},
}
MEASURES = ("success", "top1", "coverage_tv", "curvature", "rmsd", "pocket_hit", "shape_kept")
QUICK = {"train": {"kimg": 0.5, "batch": 16, "tick_kimg": 0.25, "lr_rampup_kimg": 0.1},
         "prior_train": {"kimg": 0.25, "batch": 16},
         "data": {"options": {"seed": 0, "receptors": 12, "unseen_receptors": 4, "train_per_receptor": 4,
                              "eval_per_receptor": 2}}}


def job(args: tuple) -> dict:
    """One (method, training seed): train stage I (and the prior), then measure. Runs in its own process."""
    method, seed, out, overrides, steps_list, samples, complexes, threads = args
    import torch
    torch.set_num_threads(threads)
    from discodiff.config import merge
    from discodiff.runs import Run, resolve_run
    from discodiff.variants import docking

    run_dir = Path(out) / f"{method}-s{seed}"
    cfg, dataset = resolve_run(run_dir, preset="dock3d",
                               overrides=merge(merge(overrides, METHODS[method]), {"train": {"seed": seed},
                                                                                   "prior_train": {"seed": seed}}))
    Run.create(run_dir, cfg)
    t0 = time.time()
    model = docking.train_set_stage1(run_dir, cfg, dataset, quiet=True)
    t1 = time.time()
    prior = docking.train_set_prior(run_dir, cfg, dataset, model, quiet=True) if cfg.model.num_latents else None
    t2 = time.time()
    data, results = dataset.data, {}
    for split in ("seen", "unseen"):
        rows = data.indices(split)[:complexes] if complexes else data.indices(split)
        for steps in steps_list:
            # the same pose seeds for every method and training seed: 10**6 apart per split
            results[f"{split}/{steps}"] = docking.evaluate(model, prior, data, rows, samples=samples, steps=steps,
                                                           seed=10**6 * (1 + ["seen", "unseen"].index(split)))
    t3 = time.time()
    return {"method": method, "seed": seed, "results": results,
            "seconds": {"stage1": t1 - t0, "prior": t2 - t1, "evaluate": t3 - t2}}


def summarise(jobs: list[dict], steps_list, seeds) -> dict:
    """Per method, split and step count: each measure's mean over the training seeds, its std (ddof 1) and the
    per-seed values; for success and top1 also the binomial standard error of the pooled rate."""
    import numpy as np
    table = {}
    for method in METHODS:
        rows = [j for j in jobs if j["method"] == method]
        if not rows:
            continue
        for key in rows[0]["results"]:
            entry = {}
            for m in MEASURES:
                vals = np.array([r["results"][key][m] for r in rows], float)
                entry[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None,
                            "per_seed": vals.tolist()}
            n = sum(r["results"][key]["complexes"] * r["results"][key]["samples"] for r in rows)
            p = entry["success"]["mean"]
            entry["success"]["binomial_se"] = float(np.sqrt(p * (1 - p) / max(n, 1)))
            n1 = sum(r["results"][key]["complexes"] for r in rows)
            p1 = entry["top1"]["mean"]
            entry["top1"]["binomial_se"] = float(np.sqrt(p1 * (1 - p1) / max(n1, 1)))
            table[f"{method}/{key}"] = entry
    return table


def targets(table: dict, steps: int = 20) -> dict:
    """The issue's targets on unseen receptors at `steps` steps, with the figures they rest on."""
    def get(method, measure="success"):
        return table.get(f"{method}/unseen/{steps}", {}).get(measure)

    out = {}
    p, b, f = get("pointer"), get("plain"), get("fixed")
    if p and b:
        ratio = p["mean"] / b["mean"] if b["mean"] > 0 else (float("inf") if p["mean"] > 0 else float("nan"))
        ps, bs = p["std"] or 0.0, b["std"] or 0.0
        apart = p["mean"] - 2 * ps > b["mean"] + 2 * bs
        out["pointer_vs_plain"] = {"ratio": ratio, "at_least_1.3x": ratio >= 1.3, "intervals_2std_apart": apart,
                                   "met": ratio >= 1.3 and apart}
    if p and f:
        out["pointer_vs_fixed"] = {"pointer": p["mean"], "fixed": f["mean"], "met": p["mean"] > f["mean"]}
    return out


def fmt(e: dict) -> str:
    return f"{e['mean']:.3f}" + (f" ± {e['std']:.3f}" if e.get("std") is not None else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny end-to-end check (the numbers mean nothing)")
    ap.add_argument("--seeds", default="0,1", help="training seeds")
    ap.add_argument("--steps", default="20,10,5", help="Heun step counts to sample with")
    ap.add_argument("--methods", default=",".join(METHODS), help="which of plain, pointer, fixed")
    ap.add_argument("--kimg", type=float, default=None, help="stage-I budget (default: the preset's)")
    ap.add_argument("--prior-kimg", type=float, default=None, help="the prior's budget (default: the preset's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config entry of every run, e.g. --set train.lr=2e-3")
    ap.add_argument("--samples", type=int, default=4, help="poses per complex")
    ap.add_argument("--complexes", type=int, default=160, help="complexes per split, the first ones (0: all; unseen has 160)")
    ap.add_argument("--workers", type=int, default=2, help="runs trained at once, one process each")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--results", type=Path, default=None, help="the JSON report (default: "
                                                                 "benchmarks/results/docking.json)")
    a = ap.parse_args(argv)
    from discodiff.config import merge
    overrides: dict = {}
    seeds = [int(s) for s in a.seeds.split(",")]
    steps_list = [int(s) for s in a.steps.split(",")]
    samples, complexes = a.samples, a.complexes
    if a.quick:
        overrides, seeds, steps_list, samples, complexes = QUICK, seeds[:1], [5, 2], 2, 6
    if a.sets:
        from discodiff.cli.options import parse_key_values
        overrides = merge(overrides, parse_key_values(a.sets))
    if a.kimg is not None:
        overrides = merge(overrides, {"train": {"kimg": a.kimg}})
    if a.prior_kimg is not None:
        overrides = merge(overrides, {"prior_train": {"kimg": a.prior_kimg}})
    out = a.out or Path(tempfile.mkdtemp(prefix="docking-"))
    results = a.results or (out / "docking.json" if a.quick else RESULTS / "docking.json")
    methods = a.methods.split(",")
    work = [(m, s, str(out), overrides, steps_list, samples, complexes, a.threads) for s in seeds for m in methods]
    start = time.time()
    log(f"docking: {len(work)} runs ({', '.join(methods)} x seeds {seeds}) in {out}, {a.workers} at a time")
    if a.workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(a.workers) as pool:
            jobs = []
            for j in pool.imap_unordered(job, work):
                log(f"  {j['method']} seed {j['seed']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in j["seconds"].items()))
                jobs.append(j)
    else:
        jobs = []
        for w in work:
            jobs.append(job(w))
            log(f"  {w[0]} seed {w[1]}: " + ", ".join(f"{k} {v:.0f} s" for k, v in jobs[-1]["seconds"].items()))
    total = time.time() - start
    table = summarise(jobs, steps_list, seeds)
    log(f"\n{'method':8s} {'split':7s} {'steps':>5s}  {'success':>15s}  {'top-1':>15s}  {'coverage TV':>15s}  "
        f"{'curvature':>15s}  {'median RMSD':>11s}  {'pocket hit':>15s}  {'shape kept':>15s}")
    for key, e in table.items():
        method, split, steps = key.split("/")
        log(f"{method:8s} {split:7s} {steps:>5s}  {fmt(e['success']):>15s}  {fmt(e['top1']):>15s}  "
            f"{fmt(e['coverage_tv']):>15s}  {fmt(e['curvature']):>15s}  {e['rmsd']['mean']:11.3f}  "
            f"{fmt(e['pocket_hit']):>15s}  {fmt(e['shape_kept']):>15s}")
    tg = targets(table, 20 if 20 in steps_list else max(steps_list))
    log(f"\ntargets: {tg}\ntotal {total / 60:.1f} min")
    write_report({"analogue": "dock3d: a seeded docking analogue, not molecular docking (data/dock3d.py)",
                  "quick": a.quick, "seeds": seeds, "steps": steps_list, "samples_per_complex": samples,
                  "overrides": overrides, "table": table, "targets": tg, "minutes": total / 60,
                  "runs": jobs}, results)
    log(f"wrote {results}")


if __name__ == "__main__":
    main()
