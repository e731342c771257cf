"""Benchmark: the paper's 2D experiment, plain EDM against DisCo-Diff.

    .venv/bin/python benchmarks/toy2d.py [--work-dir DIR] [--seed S] [--kimg N] [--threads 1]

Trains both models with the toy2d preset through `discodiff.experiments.toy2d.run_toy2d`, prints every metric at
50 and 10 Heun steps and the seconds of each stage, checks the issue's targets (PASS/FAIL, as measured), and
writes benchmarks/results/toy2d.json. Run folders and figures go to --work-dir (a temporary folder by default).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, write_report  # noqa: E402

REPORT = RESULTS / "toy2d.json"
TIME_LIMIT_S = 600.0


def targets(res: dict, wall_s: float) -> list[tuple[str, bool, str]]:
    """(target, passed, the measured figures) for each target of the issue."""
    out = []
    base, disco = res["models"]["baseline"], res["models"]["discodiff"]
    for n in map(str, res["steps"]):
        b, d = base[n], disco[n]
        out.append((f"off-mode fraction <= half the baseline's ({n} steps)", d["off_mode"] <= 0.5 * b["off_mode"],
                    f"{d['off_mode']:.4f} vs {b['off_mode']:.4f}"))
        out.append((f"within-mode W2 below the baseline's ({n} steps)", d["within_mode_w2"] < b["within_mode_w2"],
                    f"{d['within_mode_w2']:.4f} vs {b['within_mode_w2']:.4f}"))
        out.append((f"mean curvature below the baseline's ({n} steps)", d["mean_curvature"] < b["mean_curvature"],
                    f"{d['mean_curvature']:.4g} vs {b['mean_curvature']:.4g}"))
        lat = d["latent"]
        out.append((f"latent purity >= 0.95 with all 8 codes in use ({n} steps)",
                    lat["purity"] >= 0.95 and lat["codes_used"] == 8,
                    f"purity {lat['purity']:.4f}, {lat['codes_used']} codes"))
    out.append((f"whole benchmark under {TIME_LIMIT_S / 60:.0f} minutes", wall_s < TIME_LIMIT_S, f"{wall_s:.1f} s"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=None, help="where the run folders and figures go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kimg", type=float, default=None, help="stage-I kimg per model (default: the preset's)")
    ap.add_argument("--num", type=int, default=4000, help="samples per model and step count")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; one is fastest for this small MLP (docs/toy2d.md)")
    ap.add_argument("--out", type=Path, default=REPORT, help="the JSON report")
    args = ap.parse_args(argv)

    from discodiff.experiments.toy2d import run_toy2d

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="toy2d-bench-"))
    print(f"toy2d benchmark: seed {args.seed}, {args.num} samples per model and step count, "
          f"{args.threads} torch threads; run folders in {work}", flush=True)
    start = time.perf_counter()
    res = run_toy2d(work, kimg=args.kimg, seed=args.seed, steps=(50, 10), num_eval=args.num)
    wall = time.perf_counter() - start
    checks = targets(res, wall)
    print(f"\nwall time {wall:.1f} s\ntargets:")
    for name, ok, figures in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {figures}")
    report = {"wall_s": wall,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": args.threads},
              "targets": [{"target": n, "pass": ok, "measured": f} for n, ok, f in checks],
              "results": {k: v for k, v in res.items() if k != "files"}, "work_dir": str(work)}
    write_report(report, args.out)
    print(f"wrote {args.out}; figures in {work}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
