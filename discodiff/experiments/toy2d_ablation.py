"""Mode separation on the toy data: does each of the 8 codes name one of the 8 modes? (docs/toy2d.md)

    python -m discodiff.experiments.toy2d_ablation --name soft --kimg 300 --seeds 0,1,2,3,4 --set model.hard=false

Trains stage I only (train_stage1, the function `discodiff train` calls) with the toy2d preset plus the --set
overrides, once per seed, in a temporary folder, then reports the purity of the EMA encoder's argmax code on the
training data against the true components, the number of codes in use, the encoder's mean confidence and the last
training loss. One JSON line per seed is appended to --out.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ..config import merge, preset_config
from ..data import load_dataset
from ..metrics.toy import latent_purity
from ..train.stage1 import train_stage1


@torch.no_grad()
def encoder_report(model, data) -> dict:
    logits = model.encode_logits(data.x)[:, 0].float()
    pur = latent_purity(logits.argmax(-1).numpy(), data.labels.numpy())
    return {**pur, "confidence": float(logits.softmax(-1).max(-1).values.mean())}


def run_one(overrides: dict, seed: int, kimg: float) -> dict:
    cfg = preset_config("toy2d", merge(overrides, {"train": {"seed": seed, "kimg": kimg}}))
    data = load_dataset(cfg.data)
    with tempfile.TemporaryDirectory(prefix="toy2d-ablation-") as tmp:
        t0 = time.perf_counter()
        model = train_stage1(Path(tmp), cfg, data, quiet=True)
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "stats.jsonl").read_text().splitlines()]
    return {"seed": seed, "kimg": kimg, **encoder_report(model, data), "loss": rows[-1]["loss"],
            "loss_curve": [[r["kimg"], r["loss"]] for r in rows], "seconds": seconds}


def main(argv=None) -> None:
    from ..cli import _parse_set

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--kimg", type=float, default=300)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("toy2d-ablation.jsonl"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = _parse_set(args.sets)
    purities = []
    for seed in (int(s) for s in args.seeds.split(",")):
        row = {"name": args.name, "overrides": overrides, **run_one(overrides, seed, args.kimg)}
        purities.append(row["purity"])
        print(f"{args.name:<24} seed {seed}  purity {row['purity']:.3f}  codes {row['codes_used']}  "
              f"modes {row['modes_covered']}  confidence {row['confidence']:.3f}  loss {row['loss']:.4f}  "
              f"({row['seconds']:.0f} s)", flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    ok = sum(p >= 0.95 for p in purities)
    print(f"{args.name:<24} purity >= 0.95 on {ok} of {len(purities)} seeds", flush=True)


if __name__ == "__main__":
    main()
