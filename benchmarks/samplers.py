"""Benchmark: FID against NFE for the baseline and DisCo-Diff with each sampler.

    .venv/bin/python benchmarks/samplers.py --preset digits [--num 2000] [--bootstrap 50] [--out DIR]
                                            [--features inception|classifier|both]

Then the hybrid of the two (DisCo-Diff solves the ODE above a switch sigma, the baseline below it; paper App. D)
against both of its parts, at the HYBRID settings.

Uses the two runs of benchmarks/images.py (the same --out, trained there or here with the same budget and reused)
and its reference features and FID cache, so the Heun rows it shares with that benchmark cost nothing. For each
sampler setting in GRID, both models draw --num samples from the same seeds; the report gives FID ± bootstrap std
and KID per model and the ratio, writes benchmarks/results/samplers-<preset>.json and the plot
docs/<preset>_fid_vs_nfe_samplers.png.

--features classifier measures in the hidden features of the data set's own classifier instead of Inception (its
Fréchet distance in place of the FID, with each row's class TV and confidence; docs/fid.md): report
samplers-<preset>-classifier.json, plot <preset>_fid_vs_nfe_samplers-classifier.png, and images.py's classifier
reference and cache. --features both measures in each (samples drawn once per space; the classifier's rows go to
"results_classifier" and a second table).

The settings are EDM's and the papers': Heun (EDM Alg. 1); DPM-Solver++(2M); EDM's stochastic sampler with its
ImageNet-64 churn (S_churn 40, S_min 0.05, S_max 50, S_noise 1.003); Restart with one interval over the small-sigma
range where both models' errors remain (the paper gives the 623-NFE ImageNet preset, too costly here).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (DOCS, RESULTS, add_features_option, balance_text, differ_word,  # noqa: E402
                               feature_detectors, features_suffix, fid_cache, fid_ratio, fid_text, join_tables,
                               kid_text, metric_name, ratio_text, reference_and_floor, run_overrides, second_space,
                               space_suffix, train_both, write_report)

# (label, sampler, steps, options): the grid of sampler settings, each run for both models
GRID = [
    ("Heun", "heun", 4, {}), ("Heun", "heun", 8, {}), ("Heun", "heun", 18, {}),
    ("DPM-Solver++(2M)", "dpmpp-2m", 7, {}), ("DPM-Solver++(2M)", "dpmpp-2m", 15, {}),
    ("EDM stochastic", "edm", 18, {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}),
    ("Restart", "restart", 10, {"intervals": [(5, 2, 0.3, 2.0)]}),
]
# (Heun steps, switch sigma): DisCo-Diff above the switch, the baseline below it (paper App. D's hybrid)
HYBRID = [(8, 1.0), (18, 1.0), (18, 5.0)]


def measure(models: dict, data, det, out: Path, args) -> dict:
    """The grid and the hybrid rows in one feature space, against its reference and with its FID cache."""
    from discodiff.analysis.quality import sample_fid
    from discodiff.data import to_uint8

    ref, floor, _ = reference_and_floor(to_uint8(data.x), det, out, args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, models, args.num, f"fid-cache{space_suffix(det)}.json")
    seeds = list(range(args.seed, args.seed + args.num))
    rows = []
    for label, sampler, steps, options in GRID:
        row = {"label": label, "sampler": sampler, "steps": steps, "options": options}
        for name, (model, prior) in models.items():
            row[name] = sample_fid(model, prior, seeds, ref, det, steps=steps, sampler=sampler, batch=args.batch,
                                   progress=True, desc=f"{name}, {label}, {steps} steps", cache=cache,
                                   model_key=name, bootstrap=args.bootstrap, sampler_options=options or None)
        row["nfe"] = row["discodiff"]["nfe"]
        row["ratio"], row["ratio_err"] = fid_ratio(row["discodiff"], row["baseline"])
        row["differ"] = differ_word(row["discodiff"], row["baseline"])
        rows.append(row)

    hybrid_rows = []
    disco, prior = models["discodiff"]
    for steps, switch in HYBRID:
        r = sample_fid(disco, prior, seeds, ref, det, steps=steps, sampler="heun", batch=args.batch, progress=True,
                       desc=f"hybrid, switch {switch:g}, {steps} steps", cache=cache, model_key=f"hybrid-{switch:g}",
                       bootstrap=args.bootstrap, hybrid=(models["baseline"][0], switch))
        parts = {name: next(row[name] for row in rows if row["sampler"] == "heun" and row["steps"] == steps)
                 for name in models}
        hybrid_rows.append({"steps": steps, "switch_sigma": switch, "hybrid": r, **parts})
    return {"floor": floor, "rows": rows, "hybrid": hybrid_rows}


def format_table(res: dict, args) -> str:
    floor, clf = res["floor"], "class_tv" in res["floor"]  # the classifier's features: class TV / confidence too
    tv = (lambda *rs: "".join(f" {balance_text(r):>11}" for r in rs)) if clf else (lambda *rs: "")
    lines = [f"FID ± bootstrap std ({args.bootstrap} resamples), KID x 1000 ± std, {args.num} samples per FID; floor "
             f"({floor['num']} real images): FID {floor['fid']:.3f}" + ("; TV/conf: the classifier's class TV and "
                                                                         "mean confidence" if clf else ""), "",
             f"{'sampler':>17} {'steps':>5} {'NFE':>4} {'baseline FID':>16} {'DisCo-Diff FID':>16} {'ratio':>14} "
             f"{'differ':>6} {'base KID':>12} {'DisCo KID':>12}" + (f" {'base TV/c':>11} {'DisCo TV/c':>11}"
                                                                     if clf else "")]
    for r in res["rows"]:
        lines.append(f"{r['label']:>17} {r['steps']:>5} {r['nfe']:>4} {fid_text(r['baseline']):>16} "
                     f"{fid_text(r['discodiff']):>16} {ratio_text(r['discodiff'], r['baseline']):>14} "
                     f"{r['differ']:>6} {kid_text(r['baseline']):>12} {kid_text(r['discodiff']):>12}"
                     + tv(r["baseline"], r["discodiff"]))
    lines += ["", "hybrid: DisCo-Diff for sigma >= switch, EDM below (Heun)", "",
              f"{'steps':>5} {'switch':>6} {'EDM FID':>16} {'DisCo-Diff FID':>16} {'hybrid FID':>16} {'hybrid KID':>12}"
              + (f" {'hybrid TV/c':>11}" if clf else "")]
    for h in res["hybrid"]:
        lines.append(f"{h['steps']:>5} {h['switch_sigma']:>6g} {fid_text(h['baseline']):>16} "
                     f"{fid_text(h['discodiff']):>16} {fid_text(h['hybrid']):>16} {kid_text(h['hybrid']):>12}"
                     + tv(h["hybrid"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="benchmarks/images.py's folder (default: its default)")
    add_features_option(ap)
    args = ap.parse_args(argv)

    from discodiff.errors import ConfigError
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-images-{args.preset}"
    start = time.perf_counter()
    try:
        overrides = run_overrides(args.preset, seed=args.seed)
        resolved = {name: resolve_run(out / name, preset=args.preset, overrides=o) for name, o in overrides.items()}
        cfgs = {name: cfg for name, (cfg, _) in resolved.items()}
        data = resolved["discodiff"][1]
        # the detectors before any training: data without labels are refused here for the classifier's features
        dets = feature_detectors(args.features, cfgs["discodiff"].data)
        models, _ = train_both(out, cfgs, data, {})
        results = {space: measure(models, data, det, out, args) for space, det in dets.items()}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spaces = list(results)
    tables = {space: format_table(r, args) for space, r in results.items()}
    table = join_tables(tables)
    print("\n" + table)
    suffix = features_suffix(args.features)
    pngs = [plot(r["rows"], DOCS / f"{args.preset}_fid_vs_nfe_samplers{suffix if i == 0 else '-' + space}.png", args,
                 space) for i, (space, r) in enumerate(results.items())]
    res = results[spaces[0]]
    report = {"preset": args.preset, "num": args.num, "bootstrap": args.bootstrap, "seed": args.seed,
              "features": spaces, "wall_s": round(time.perf_counter() - start, 1), "floor": res["floor"],
              "rows": res["rows"], "hybrid": res["hybrid"], "table": table, "plot": str(pngs[0]),
              **second_space(results, tables), **({"plot_classifier": str(pngs[1])} if len(pngs) > 1 else {}),
              "out": str(out), "detector_backend": dets[spaces[0]].backend, "threads": args.threads}
    path = RESULTS / f"samplers-{args.preset}{suffix}.json"
    write_report(report, path)
    print(f"wrote {path} and {', '.join(map(str, pngs))}")
    return 0


def plot(rows, path: Path, args, space: str = "inception") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colors = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for label in labels:
        sel = sorted((r for r in rows if r["label"] == label), key=lambda r: r["nfe"])
        for name, style, marker in (("baseline", "--", "o"), ("discodiff", "-", "s")):
            ax.errorbar([r["nfe"] for r in sel], [r[name]["fid"] for r in sel],
                        yerr=[r[name].get("fid_std", 0) for r in sel], color=colors[label], ls=style, marker=marker,
                        ms=4, capsize=2, label=f"{label}, {'EDM' if name == 'baseline' else 'DisCo-Diff'}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(f"{metric_name(space)} ({args.num} samples)")
    ax.set_title(f"{args.preset}: {metric_name(space)} against NFE by sampler (dashed: EDM, solid: DisCo-Diff)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
