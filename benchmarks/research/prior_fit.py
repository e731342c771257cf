"""Benchmark: how well stage II fits the encoder's latent tuples, across prior settings and runs.

    .venv/bin/python benchmarks/research/prior_fit.py --runs /tmp/discodiff-sweep-fashion16/w32-s0/discodiff,... \
        [--settings preset,kimg3000,ema,...] [--results benchmarks/results/prior-fit-fashion16.json]

For every finished DisCo-Diff run and every setting, the run's stage-I weights are copied into a folder of their own
(<out>/<sweep cell>/<run>/<setting>) and a prior is fitted there with the setting's prior_train.* and model.prior.*
values, by the same trainer as `discodiff train-prior`. Its report (prior_report.json) gives what the table shows:
the per-latent marginal total variation of 20,000 prior draws against the encoder's latents on the data, the mean
pairwise TV, the share of drawn tuples the data never produce, and the floor of each (a second draw of the data's own
latents). The copy's config.json holds the setting, so `discodiff fid gen --run-dir <copy>` samples with that prior.

Ran at commit 8b0f46c (as benchmarks/prior_fit.py), where the options its SETTINGS set exist: the -ema settings need
the prior's EMA (prior_train.ema_halflife_kimg), since removed from the package. To run it again as it ran, check
out that commit.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, write_report  # noqa: E402

# name -> overrides of prior_train (the training) and model.prior (the transformer's size); "preset" is the run's own
# settings as its config.json holds them
SETTINGS = {
    "preset": {},
    "kimg3000": {"prior_train": {"kimg": 3000}},
    "kimg10000": {"prior_train": {"kimg": 10000}},
    "ema": {"prior_train": {"ema_halflife_kimg": 100}},
    "lr3e-4": {"prior_train": {"lr": 3e-4}},
    "wide": {"model": {"prior": {"depth": 4, "width": 128}}},
    "wide-kimg3000": {"model": {"prior": {"depth": 4, "width": 128}}, "prior_train": {"kimg": 3000}},
    "wide-kimg3000-ema": {"model": {"prior": {"depth": 4, "width": 128}},
                          "prior_train": {"kimg": 3000, "ema_halflife_kimg": 300}},
}
STAGE1_FILES = ("config.json", "model.safetensors")


@functools.cache
def _dataset(data_config_json: str):
    """The data set of a data config, loaded once for all the settings and runs that share it."""
    from discodiff.config import DataConfig
    from discodiff.data import load_dataset

    return load_dataset(DataConfig(**json.loads(data_config_json)))


def fit_copy(run_dir: Path, target: Path, overrides: dict) -> dict:
    """Fits a prior with `overrides` to a copy of `run_dir`'s stage I in `target` (reused when done); its report."""
    from discodiff.config import RunConfig, merge
    from discodiff.runs import Run
    from discodiff.train.prior import train_prior

    report_path = target / "prior_report.json"
    cfg = RunConfig.from_dict(merge(RunConfig.load(run_dir / "config.json").to_dict(), overrides))
    if report_path.is_file() and RunConfig.load(target / "config.json").to_dict() == cfg.to_dict():
        return json.loads(report_path.read_text())
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in STAGE1_FILES:
        shutil.copy2(run_dir / name, target / name)
    Run.create(target, cfg)
    model = Run(target, cfg).load_model()
    data = _dataset(json.dumps(cfg.to_dict()["data"], sort_keys=True))
    _, report = train_prior(target, cfg, data, model, quiet=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="finished DisCo-Diff run folders, comma-separated")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"of: {', '.join(SETTINGS)}")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "discodiff-prior-fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "prior-fit.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from discodiff.cli.options import parse_list

    runs = [Path(r) for r in parse_list(args.runs, str, "--runs")]
    names = parse_list(args.settings, str, "--settings")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    missing = [str(r) for r in runs if not all((r / f).is_file() for f in STAGE1_FILES)]
    if missing:
        ap.error(f"not finished stage-I runs (no config.json and model.safetensors): {', '.join(missing)}")
    start = time.perf_counter()
    rows = []
    for run in runs:
        label = f"{run.parent.name}/{run.name}"
        for name in names:
            t0 = time.perf_counter()
            folder = args.out / run.parent.name / run.name / name  # runs of one sweep share their parent's name
            rep = fit_copy(run, folder, SETTINGS[name])
            fit = rep["fit"]
            rows.append({"run": label, "setting": name, "overrides": SETTINGS[name],
                         "marginal_tv": fit["prior"]["marginal_tv"], "marginal_tv_floor": fit["floor"]["marginal_tv"],
                         "pairwise_tv_mean": fit["prior"]["pairwise_tv_mean"],
                         "pairwise_tv_floor": fit["floor"]["pairwise_tv_mean"],
                         "unseen_share": fit["prior"]["unseen_share"], "unseen_floor": fit["floor"]["unseen_share"],
                         "prior_perplexity": rep["prior_perplexity"],
                         "marginal_perplexity": rep["marginal_perplexity"], "train_seconds": rep["seconds"],
                         "folder": str(folder)})
            r = rows[-1]
            print(f"{label} {name}: marginal TV max {max(r['marginal_tv']):.3f} (floor "
                  f"{max(r['marginal_tv_floor']):.3f}), pairwise {r['pairwise_tv_mean']:.3f}, unseen "
                  f"{100 * r['unseen_share']:.1f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = ["| run | setting | marginal TV per latent (floor max) | pairwise TV mean (floor) | unseen tuples (floor) "
             "| token / marginal perplexity | prior seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['setting']} | {', '.join(f'{v:.3f}' for v in r['marginal_tv'])} "
                     f"({max(r['marginal_tv_floor']):.3f}) | {r['pairwise_tv_mean']:.3f} "
                     f"({r['pairwise_tv_floor']:.3f}) | {100 * r['unseen_share']:.1f}% "
                     f"({100 * r['unseen_floor']:.1f}%) | {r['prior_perplexity']:.2f} / "
                     f"{r['marginal_perplexity']:.2f} | {r['train_seconds']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    write_report({"rows": rows, "table": table, "wall_s": round(time.perf_counter() - start, 1)}, args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
