"""Benchmark: why latent guidance hurts on digits (issue #10, item 4).

    python benchmarks/guidance.py [--sweep-out DIR] [--run w24-s0/discodiff] [--weights 0,0.5,1] [--num 2000]

Guidance D~ = (1 + w) D(x, sigma, z) - w D(x, sigma, null) on a finished DisCo-Diff run of `benchmarks/sweep.py`
(its reference features and its classifier are reused), with latents from two sources, the same noise seeds:
- the prior (what sampling uses), and
- the oracle: the encoder's argmax z of num training images (a seeded subset), with no prior in the way.
For each (latents, w): FID ± bootstrap std, KID, diversity (tr Sigma of the samples' features over the data's) and
the class total variation of the samples. If guidance hurts with oracle latents too, the prior is not the cause;
a falling diversity with a steady class balance says that guidance trades spread within each latent's images for
fidelity, which FID at this scale counts against it. Writes benchmarks/results/guidance-digits.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    import sweep

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep-out", type=Path, default=Path(tempfile.gettempdir()) / "discodiff-sweep-digits")
    ap.add_argument("--run", default="w24-s0/discodiff", help="run folder inside --sweep-out")
    ap.add_argument("--weights", default="0,0.5,1")
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
    run = Run(args.sweep_out / args.run)
    model, prior = run.load_model(), run.load_prior()
    data = load_dataset(run.config.data)
    ref = FIDStats.load(args.sweep_out / "fid-ref.npz")
    meta = json.loads((args.sweep_out / "classifier.json").read_text())
    net = sweep.SmallClassifier(meta["channels"], meta["classes"])
    net.load_state_dict(load_file(args.sweep_out / "classifier.safetensors"))
    net.eval()
    det = InceptionDetector.from_file()
    seeds = list(range(args.num))
    z_oracle = encoder_latents(model, data.x[pick_images(len(data), args.num, 0)])
    weights = [float(w) for w in args.weights.split(",")]
    rows = []
    for latents, z in (("prior", None), ("oracle", z_oracle)):
        for w in weights:
            t0 = time.perf_counter()
            images = torch.cat(list(sample_batches(model, prior, seeds, z=z, steps=args.steps, guidance=w,
                                                   batch=256)))
            stats = stats_of_images(images, det)
            freq = sweep.frequencies(sweep.predict(net, sweep.to_unit(images), "cpu"), meta["classes"])
            row = {"latents": latents, "guidance": w, **scores(stats, ref, bootstrap=args.bootstrap),
                   "diversity": diversity(stats, ref),
                   "class_tv": sweep.total_variation(freq, np.array(meta["data_frequencies"])),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{latents:>6} w={w:<4g} FID {row['fid']:.3f} ± {row['fid_std']:.3f}  KID x 1e3 "
                  f"{1000 * row['kid']:.3f}  diversity {row['diversity']:.3f}  class TV {row['class_tv']:.3f}  "
                  f"({row['seconds']:.0f} s)", flush=True)
    report = {"command": " ".join(["python", *sys.argv]), "run": str(run.path), "num": args.num,
              "steps": args.steps, "bootstrap": args.bootstrap, "p_null": run.config.model.p_null,
              "classifier_accuracy": meta["held_out_accuracy"], "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(jsonable(report), args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
