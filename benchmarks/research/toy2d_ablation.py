"""Mode separation on the toy data: does each of the 8 codes name one of the 8 modes? (docs/toy2d.md)

    .venv/bin/python benchmarks/research/toy2d_ablation.py --name soft --kimg 300 --seeds 0,1,2,3,4 \
        --set model.hard=false

Trains stage I only (train_stage1, the function `discodiff train` calls) with the toy2d preset plus the --set
overrides, once per seed, in a temporary folder, then reports the purity of the EMA encoder's argmax code on the
training data against the true components, the number of codes in use, the encoder's mean confidence and the last
training loss. One JSON line per seed is appended to --out.

The tool takes any --set; rows of docs/research-log.md that set options since removed from the package
(model.encoder.balanced, model.network.latent_embedding=false) ran at commit 8b0f46c, where they exist.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from discodiff.cli.options import parse_key_values, parse_list
from discodiff.config import ConfigError, merge
from discodiff.experiments.toy2d import encoder_purity
from discodiff.fileio import check_writable
from discodiff.runs import Run, resolve_run
from discodiff.train.stage1 import train_stage1


def run_one(overrides: dict, seed: int, kimg: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="toy2d-ablation-") as tmp:
        run_dir = Path(tmp) / "run"
        cfg, data = resolve_run(run_dir, preset="toy2d", overrides=merge(overrides, {"train": {"seed": seed,
                                                                                             "kimg": kimg}}))
        Run.create(run_dir, cfg)
        t0 = time.perf_counter()
        model = train_stage1(run_dir, cfg, data, quiet=True)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return {"seed": seed, "kimg": kimg, **encoder_purity(model, data), "loss": rows[-1]["loss"],
            "loss_curve": [[r["kimg"], r["loss"]] for r in rows], "seconds": seconds}


def report(args, overrides: dict, seed: int) -> float:
    """Trains one seed, prints its line, appends its JSON line to --out; returns its purity."""
    row = {"name": args.name, "overrides": overrides, **run_one(overrides, seed, args.kimg)}
    print(f"{args.name:<24} seed {seed}  purity {row['purity']:.3f}  codes {row['codes_used']}  "
          f"modes {row['modes_covered']}  confidence {row['confidence']:.3f}  loss {row['loss']:.4f}  "
          f"({row['seconds']:.0f} s)", flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row["purity"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--kimg", type=float, default=300)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("toy2d-ablation.jsonl"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        check_writable(args.out)
        overrides = parse_key_values(args.sets)
        purities = [report(args, overrides, seed) for seed in parse_list(args.seeds, int, "--seeds")]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = sum(p >= 0.95 for p in purities)
    print(f"{args.name:<24} purity >= 0.95 on {ok} of {len(purities)} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
