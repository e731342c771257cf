"""Benchmark: why latent guidance hurts on digits, and what would make it help.

    .venv/bin/python benchmarks/research/guidance.py [--sweep-out DIR] [--run w24-s0/discodiff] [--weights 0,1]
        [--latents prior,oracle] [--intervals all,0.28:5.42] [--p-null 0.3] [--num 2000] [--steps 9,18]
        [--ref fid-ref.npz] [--baseline w24-s0/baseline --baseline-steps 18,35] [--sampler heun|dpmpp-2m|...]
        [--results FILE] [--plot FILE.png]

Guidance D~ = (1 + w) D(x, sigma, z) - w D(x, sigma, null) on a finished DisCo-Diff run of `benchmarks/sweep.py`
(its reference features and its classifier, benchmarks.sweep.SmallClassifier, are reused), the same noise seeds
everywhere, varying the three things the issue names:
- where the latents come from: the prior (what sampling uses), or the oracle, the encoder's argmax z of num
  training images (a seeded subset), with no prior in the way. If guidance hurts with oracle latents too, the
  prior is not the cause;
- the guidance form: at every step ("all"), or only inside a noise interval LO:HI, lo < sigma <= hi, conditional
  elsewhere (Kynkaanniemi et al. 2024). Their ImageNet interval for EDM2 is 0.28:5.42;
- the null latent's training share: --p-null P trains a copy of the run with model.p_null = P (otherwise the same
  command as the sweep's, prior included) beside it, and measures it too.
For each row: FID ± bootstrap std, KID, diversity (tr Sigma of the samples' features over the data's), the class
total variation of the samples and the network evaluations per sample, counted on the network (guided passes
included). --steps takes a list; --baseline RUN also measures a plain EDM run of the sweep at --baseline-steps, so
that guided DisCo-Diff can be set against EDM at equal network evaluations (--plot draws FID against them);
--sampler solves every row's ODE with another sampler of `discodiff sample` (DPM-Solver++(2M) takes one network
evaluation per step where Heun takes two). A falling diversity with a worse class balance says that guidance pulls
each latent's images towards its dominant class. Writes --results (default benchmarks/results/guidance-digits.json).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks import sweep  # noqa: E402  (the sweep whose runs, reference and classifier this reuses)
from benchmarks.common import RESULTS, write_report  # noqa: E402


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


def plot_rows(rows: list[dict], path: Path, num: int) -> None:
    """FID against the network evaluations per sample, one line per run and guidance form (log-log: guidance at
    too few steps is far off the others)."""
    from discodiff.plots.analysis import plot_fid_curves

    samplers = sorted({row.get("sampler", "heun") for row in rows})  # results written before --sampler: Heun
    series = {}
    for row in rows:
        where = "" if row["interval"] is None else f" at {row['interval'][0]:g} < σ ≤ {row['interval'][1]:g}"
        label = ("EDM" if row["latents"] == "none" else
                 f"{Path(row['run']).name}, {row['latents']} z, w = {row['guidance']:g}{where}")
        if len(samplers) > 1:  # each label names its sampler
            label += f" ({row.get('sampler', 'heun')})"
        series.setdefault(label, []).append((row["network_evaluations"], row["fid"]))
    series = {label: tuple(map(list, zip(*sorted(points)))) for label, points in series.items()}
    plot_fid_curves(series, path, xlabel="network evaluations per sample", log_x=True, log_y=True,
                    title=f"FID against network evaluations ({', '.join(samplers)}, {num} samples)")
    print(f"wrote {path}")


def main(argv=None) -> int:
    from discodiff.sampling import NAMED_SAMPLERS

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
    ap.add_argument("--steps", default="18", help="sampler step counts, e.g. 9,18")
    ap.add_argument("--baseline", default=None, help="a plain EDM run inside --sweep-out to measure beside it")
    ap.add_argument("--baseline-steps", default="18,35", help="the baseline's step counts")
    ap.add_argument("--sampler", default="heun", choices=NAMED_SAMPLERS,
                    help="the ODE sampler of every row (restart, which needs its intervals, is not offered)")
    ap.add_argument("--plot", type=Path, default=None, help="FID against network evaluations per sample, as PNG")
    ap.add_argument("--bootstrap", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "guidance-digits.json")
    ap.add_argument("--replot", type=Path, nargs="+", default=None,
                    help="only draw --plot again from these results files, together (no sampling)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replot is not None:
        if args.plot is None:
            raise SystemExit("--replot needs --plot FILE.png")
        reports = [json.loads(path.read_text()) for path in args.replot]
        if len({r["num"] for r in reports}) > 1:
            raise SystemExit("--replot: the results files were measured with different --num")
        plot_rows([row for r in reports for row in r["rows"]], args.plot, reports[0]["num"])
        return 0

    from discodiff.analysis.codebook import encoder_latents
    from discodiff.analysis.common import pick_images
    from discodiff.analysis.quality import diversity, sample_batches
    from discodiff.metrics.fid import FIDStats, InceptionDetector, scores, stats_of_images
    from discodiff.data import load_dataset
    from discodiff.pipeline import PassCounter
    from discodiff.runs import Run
    from safetensors.torch import load_file

    t_start = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",")]
    intervals = parse_intervals(args.intervals)
    sources = [s.strip() for s in args.latents.split(",")]
    steps_list = [int(n) for n in args.steps.split(",")]
    baseline_steps = [int(n) for n in args.baseline_steps.split(",")]
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

    def measure(model, prior, z, steps, w, interval, **fields):
        t0 = time.perf_counter()
        with PassCounter(model) as counter:
            images = torch.cat(list(sample_batches(model, prior, seeds, z=z, steps=steps, guidance=w,
                                                   guidance_interval=interval, sampler=args.sampler, batch=256)))
        stats = stats_of_images(images, det)
        freq = sweep.frequencies(sweep.predict(net, sweep.to_unit(images), "cpu"), meta["classes"])
        row = {**fields, "sampler": args.sampler, "guidance": w,
               "interval": None if interval is None else list(interval), "steps": steps,
               "network_evaluations": round(counter.total / len(seeds), 2),
               **scores(stats, ref, bootstrap=args.bootstrap), "diversity": diversity(stats, ref),
               "class_tv": sweep.total_variation(freq, np.array(meta["data_frequencies"])),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        where = "all" if interval is None else f"{interval[0]:g}:{interval[1]:g}"
        print(f"{args.sampler} {fields['latents']:>6} w={w:<4g} {where:>10} {steps:>3} steps "
              f"({row['network_evaluations']:g} evaluations)  FID {row['fid']:.3f} ± {row['fid_std']:.3f}  KID x 1e3 {1000 * row['kid']:.3f}  "
              f"diversity {row['diversity']:.3f}  class TV {row['class_tv']:.3f}  ({row['seconds']:.0f} s)", flush=True)

    if args.baseline is not None:
        base = Run(args.sweep_out / args.baseline)
        base_model = base.load_model()
        if base_model.num_latents:
            raise SystemExit(f"--baseline {args.baseline} has latents; name a plain EDM run of the sweep")
        for steps in baseline_steps:
            measure(base_model, None, None, steps, 0.0, None, run=str(base.path), p_null=None, latents="none")
    for run_dir in runs:
        run = Run(run_dir)
        model, prior = run.load_model(), run.load_prior()
        data = load_dataset(run.config.data)
        z_oracle = encoder_latents(model, data.x[pick_images(len(data), args.num, 0)])
        for latents in sources:
            z = {"prior": None, "oracle": z_oracle}[latents]
            for w in weights:
                for interval in (intervals if w else [None]):  # w = 0: no guidance, the interval is moot
                    for steps in steps_list:
                        measure(model, prior, z, steps, w, interval, run=str(run_dir),
                                p_null=run.config.model.p_null, latents=latents)
    if args.plot is not None:
        plot_rows(rows, args.plot, args.num)
    report = {"runs": [str(r) for r in runs], "num": args.num,
              "steps": steps_list, "sampler": args.sampler, "baseline": args.baseline, "bootstrap": args.bootstrap,
              "classifier_accuracy": meta["held_out_accuracy"], "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_report(report, args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
