"""Benchmark: why latent guidance hurts on digits, and what would make it help (issue #10, item 4).

    python benchmarks/guidance.py [--sweep-out DIR] [--run w24-s0/discodiff] [--weights 0,1] [--latents prior,oracle]
        [--intervals all,0.28:5.42] [--p-null 0.3] [--num 2000] [--ref fid-ref.npz] [--results FILE]

Guidance D~ = (1 + w) D(x, sigma, z) - w D(x, sigma, null) on a finished DisCo-Diff run of `benchmarks/sweep.py`
(its reference features and its classifier are reused), the same noise seeds everywhere, varying the three things
the issue names:
- where the latents come from: the prior (what sampling uses), or the oracle, the encoder's argmax z of num
  training images (a seeded subset), with no prior in the way. If guidance hurts with oracle latents too, the
  prior is not the cause;
- the guidance form: at every step ("all"), or only inside a noise interval LO:HI, lo < sigma <= hi, conditional
  elsewhere (Kynkaanniemi et al. 2024). Their ImageNet interval for EDM2 is 0.28:5.42;
- the null latent's training share: --p-null P trains a copy of the run with model.p_null = P (otherwise the same
  command as the sweep's, prior included) beside it, and measures it too.
For each row: FID ± bootstrap std, KID, diversity (tr Sigma of the samples' features over the data's) and the class
total variation of the samples. A falling diversity with a worse class balance says that guidance pulls each
latent's images towards its dominant class. Writes --results (default benchmarks/results/guidance-digits.json).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def parse_intervals(text: str) -> list[tuple[float, float] | None]:
    """"all,0.28:5.42" -> [None, (0.28, 5.42)], each interval read and checked as --guidance-interval is."""
    from discodiff.cli.options import parse_guidance_interval

    items = [item.strip() for item in text.split(",")]
    return [None if item == "all" else parse_guidance_interval(item.replace(":", ",")) for item in items]


def train_null_share_copy(run_dir: Path, p_null: float) -> Path:
    """A copy of the sweep's run trained with model.p_null = p_null: the same `discodiff train` and `train-prior`
    commands (read back from the sweep's train log), into a sibling folder; reused once trained."""
    from discodiff.runs import Run

    target = run_dir.parent.parent / f"{run_dir.parent.name}-pnull{p_null:g}" / run_dir.name
    if (target / "prior.safetensors").is_file():
        return target
    log = run_dir.parent / f"{run_dir.name}-train.log"
    commands = [line[2:].split() for line in log.read_text().splitlines() if line.startswith("$ ")]
    train, prior = [c for c in commands if "train" in c][:1], [c for c in commands if "train-prior" in c][:1]
    if not train or not prior:
        raise SystemExit(f"cannot read the run's commands from {log}")
    swap = {str(run_dir): str(target)}
    train_cmd = [swap.get(a, a) for a in train[0]] + ["--set", f"model.p_null={p_null:g}"]
    prior_cmd = [swap.get(a, a) for a in prior[0]]
    for cmd in (train_cmd, prior_cmd):
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    assert Run(target).config.model.p_null == p_null
    return target


def main(argv=None) -> int:
    import sweep

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep-out", type=Path, default=Path(tempfile.gettempdir()) / "discodiff-sweep-digits")
    ap.add_argument("--run", default="w24-s0/discodiff", help="run folder inside --sweep-out")
    ap.add_argument("--ref", default="fid-ref.npz", help="the sweep's FID reference inside --sweep-out "
                    "(fid-ref-5000.npz for a sweep run with --ref-num 5000)")
    ap.add_argument("--weights", default="0,1")
    ap.add_argument("--latents", default="prior,oracle", help="prior, oracle or both")
    ap.add_argument("--intervals", default="all", help="guidance forms: all (every step) and/or LO:HI intervals")
    ap.add_argument("--p-null", type=float, default=None, help="also a copy of the run trained with this p_null")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--bootstrap", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "guidance-digits.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from discodiff.analysis.codebook import encoder_latents
    from discodiff.analysis.common import jsonable, pick_images
    from discodiff.analysis.quality import diversity, sample_batches
    from discodiff.fileio import write_json
    from discodiff.metrics.fid import FIDStats, InceptionDetector, scores, stats_of_images
    from discodiff.data import load_dataset
    from discodiff.runs import Run
    from safetensors.torch import load_file

    t_start = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",")]
    intervals = parse_intervals(args.intervals)
    sources = [s.strip() for s in args.latents.split(",")]
    runs = [args.sweep_out / args.run]
    if args.p_null is not None:
        runs.append(train_null_share_copy(runs[0], args.p_null))
    ref = FIDStats.load(args.sweep_out / args.ref)
    meta = json.loads((args.sweep_out / "classifier.json").read_text())
    net = sweep.SmallClassifier(meta["channels"], meta["classes"])
    net.load_state_dict(load_file(args.sweep_out / "classifier.safetensors"))
    net.eval()
    det = InceptionDetector.from_file()
    seeds = list(range(args.num))
    rows = []
    for run_dir in runs:
        run = Run(run_dir)
        model, prior = run.load_model(), run.load_prior()
        data = load_dataset(run.config.data)
        z_oracle = encoder_latents(model, data.x[pick_images(len(data), args.num, 0)])
        for latents in sources:
            z = {"prior": None, "oracle": z_oracle}[latents]
            for w in weights:
                for interval in (intervals if w else [None]):  # w = 0: no guidance, the interval is moot
                    t0 = time.perf_counter()
                    images = torch.cat(list(sample_batches(model, prior, seeds, z=z, steps=args.steps, guidance=w,
                                                           guidance_interval=interval, batch=256)))
                    stats = stats_of_images(images, det)
                    freq = sweep.frequencies(sweep.predict(net, sweep.to_unit(images), "cpu"), meta["classes"])
                    row = {"run": str(run_dir), "p_null": run.config.model.p_null, "latents": latents,
                           "guidance": w, "interval": None if interval is None else list(interval),
                           **scores(stats, ref, bootstrap=args.bootstrap), "diversity": diversity(stats, ref),
                           "class_tv": sweep.total_variation(freq, np.array(meta["data_frequencies"])),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    where = "all" if interval is None else f"{interval[0]:g}:{interval[1]:g}"
                    print(f"p_null {row['p_null']:g} {latents:>6} w={w:<4g} {where:>10}  FID {row['fid']:.3f} ± "
                          f"{row['fid_std']:.3f}  KID x 1e3 {1000 * row['kid']:.3f}  diversity "
                          f"{row['diversity']:.3f}  class TV {row['class_tv']:.3f}  ({row['seconds']:.0f} s)",
                          flush=True)
    report = {"command": " ".join(["python", *sys.argv]), "runs": [str(r) for r in runs], "num": args.num,
              "steps": args.steps, "bootstrap": args.bootstrap,
              "classifier_accuracy": meta["held_out_accuracy"], "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(jsonable(report), args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
