"""Benchmark: do the latents pay off where they name the class?

    .venv/bin/python benchmarks/research/latent_class.py benchmarks/results/sweep-fashion16*.json \
        --runs /tmp/discodiff-sweep-fashion16 [--steps 18] [--results benchmarks/results/latent-class-fashion16.json]

For every DisCo-Diff run of the given benchmarks/sweep.py reports (found in --runs, the sweeps' --out folder, as
w<width>-s<seed>/discodiff[-<variant>]), the encoder's latents z = argmax E(y) on the whole training set are compared
with the images' class labels (discodiff.analysis.codebook.class_information): each latent's mutual information with
the class, and the held-out accuracy of a linear probe that reads the class from the whole tuple. Each run is paired
with its FID ratio to EDM at --steps and its "loss z / null" (what its latents carry at high noise, from the sweep),
and the script gives the rank (Spearman) and linear (Pearson) correlation of the ratio with each. A variant trained
on the labels instead of latents (num_latents=0, num_classes > 0) enters as the latent that names the class exactly:
accuracy 1, I = H(class); the correlations are given without it and with it. Writes the JSON and a plot of the ratio
against the probe's accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import DOCS, RESULTS, ROOT, run_latent_information, write_report  # noqa: E402
from benchmarks.sweep import load_reports, run_folder  # noqa: E402  (the sweep's reports and run folders)


def measure(path: Path, device: torch.device) -> dict:
    """class_information of a run's encoder latents on its whole training set, with the codes each latent uses and
    the distinct tuples; for a run given the labels instead of latents, the labels themselves (the exact class)."""
    from discodiff.analysis.codebook import class_information, encoder_latents, usage_report
    from discodiff.data import load_dataset
    from discodiff.runs import Run

    run = Run(path)
    data = load_dataset(run.config.data)
    if data.labels is None:
        raise SystemExit(f"{path}: its data set has no class labels to compare the latents with")
    if not run.config.model.num_latents:
        if not run.config.model.num_classes:
            raise SystemExit(f"{path} has neither latents nor class labels")
        return {**class_information(data.labels[:, None], data.labels, int(data.labels.max()) + 1), "labels": True}
    model = run.load_model(device)
    z, k = encoder_latents(model, data.x), model.config.codebook_size
    usage = usage_report(z, k)
    return {**class_information(z, data.labels, k), "labels": False, "codebook_size": k,
            "codes_used": usage["codes_used"], "distinct_tuples": usage["distinct_tuples"]}


def correlations(points: list[dict], key: str, against: str = "ratio") -> dict:
    """Spearman and Pearson correlation (with p-values) of `against` (the FID ratio) with `key` over `points`."""
    from scipy.stats import pearsonr, spearmanr

    x, y = [p[key] for p in points], [p[against] for p in points]
    s, p = spearmanr(x, y), pearsonr(x, y)
    return {"n": len(points), "spearman": float(s.statistic), "spearman_p": float(s.pvalue),
            "pearson": float(p.statistic), "pearson_p": float(p.pvalue)}


def plot(points: list[dict], steps: int, nfe: int, preset: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    for variant in dict.fromkeys(p["variant"] for p in points):
        mine = [p for p in points if p["variant"] == variant]
        ax.errorbar([p["probe_accuracy"] for p in mine], [p["ratio"] for p in mine],
                    yerr=[p["ratio_err"] for p in mine], marker="s" if mine[0]["labels"] else "o", ls="none",
                    capsize=3, label=variant)
        for p in mine:
            ax.annotate(f"w{p['width']} s{p['seed']}", (p["probe_accuracy"], p["ratio"]), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("class accuracy of a linear probe on the latents (held out)")
    ax.set_ylabel(f"FID ratio DisCo-Diff / EDM, {steps} steps (NFE {nfe})")
    ax.set_title(f"{preset}: the gain against what the latents say about the class", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)  # below: the points stay visible
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, help="benchmarks/sweep.py reports of one preset")
    ap.add_argument("--runs", type=Path, required=True, help="the sweeps' run folder (their --out)")
    ap.add_argument("--steps", type=int, default=18, help="the Heun step count whose FID ratio is compared")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--results", type=Path, default=None, help="the JSON (default: results/latent-class-<preset>.json)")
    ap.add_argument("--docs", type=Path, default=DOCS, help="where the plot goes")
    args = ap.parse_args(argv)
    reports = load_reports(args.reports, ap.error)
    presets = {r["preset"] for r in reports}
    if len(presets) != 1:
        ap.error(f"the reports must share one preset, got {sorted(presets)}")
    preset = presets.pop()
    device = torch.device(args.device)

    start = time.perf_counter()
    points = []
    for path, report in zip(args.reports, reports):
        rows = [r for r in report["summary"]["rows"] if r["steps"] == args.steps]
        if not rows:
            ap.error(f"{path} has no FIDs at {args.steps} steps")
        for row in rows:
            where = run_folder(args.runs, row["width"], row["seed"], "discodiff", report.get("variant"))
            if not (where / "config.json").is_file():
                ap.error(f"no run at {where}: is --runs the folder the sweep of {path} trained in?")
            info = measure(where, device)
            loss = row.get("latent_loss_ratio")  # reports older than the sweep's own measure lack it
            if loss is None and not info["labels"]:
                loss = run_latent_information(where, device)["loss_ratio"]
            overrides = ", ".join(o.removeprefix("model.") for o in report.get("discodiff_overrides") or [])
            variant = f"{report['variant']} ({overrides})" if report.get("variant") else "as the preset"
            points.append({"run": str(where), "report": path.name, "variant": variant,
                           "width": row["width"], "seed": row["seed"], "ratio": row["ratio"],
                           "ratio_err": row["ratio_err"], "nfe": row["nfe"],
                           "latent_loss_ratio": loss, **info})
            print(f"{where}: ratio {row['ratio']:.3f}, probe accuracy {info['probe_accuracy']:.3f}, "
                  f"I(class; z_i) {', '.join(f'{v:.2f}' for v in info['mutual_information_bits'])} bits"
                  + ("" if loss is None else f", loss z/null {loss:.3f}"), flush=True)

    learned = [p for p in points if not p["labels"]]
    if len(learned) < 3:
        ap.error(f"{len(learned)} runs with learned latents: a correlation needs at least 3")
    stats = {"probe_accuracy": correlations(learned, "probe_accuracy"),
             "probe_accuracy_with_labels": (correlations(points, "probe_accuracy") if len(points) > len(learned)
                                            else None),
             "latent_loss_ratio": correlations(learned, "latent_loss_ratio"),
             # are the two measures of the latents one thing on these runs? (then the sweep cannot tell them apart)
             "probe_accuracy_vs_latent_loss_ratio": correlations(learned, "probe_accuracy", "latent_loss_ratio")}
    for name, s in stats.items():
        if s:
            print(f"{'ratio against ' if '_vs_' not in name else ''}{name}: Spearman {s['spearman']:.2f} "
                  f"(p = {s['spearman_p']:.3g}), Pearson {s['pearson']:.2f} (p = {s['pearson_p']:.3g}) "
                  f"over {s['n']} runs")
    figure = plot(points, args.steps, points[0]["nfe"], preset, args.docs / f"latent-class-{preset}.png")
    report = {"preset": preset, "steps": args.steps,
              "reports": [str(p) for p in args.reports], "points": points, "correlations": stats,
              "seconds": round(time.perf_counter() - start, 1), "device": str(device),
              "plot": str(figure.relative_to(ROOT)) if figure.is_relative_to(ROOT) else str(figure),
              "note": "probe_accuracy: held-out accuracy of a linear probe on the one-hot latents (1/6 of the images "
                      "held out, seed 0); a lower bound on what the tuple says about the class. Ratios and their "
                      "errors are the sweep's (bootstrap stds of the two FIDs)."}
    out = args.results or RESULTS / f"latent-class-{preset}.json"
    write_report(report, out)
    print(f"wrote {out} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
