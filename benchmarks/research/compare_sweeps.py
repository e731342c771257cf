"""Plots the FID ratio DisCo-Diff / EDM against NFE from several benchmarks/sweep.py reports, one line per report
(at the preset's width, or --width, the mean over training seeds ± their spread), one panel per preset.

    .venv/bin/python benchmarks/research/compare_sweeps.py benchmarks/results/sweep-digits.json \
        benchmarks/results/sweep-digits-info0.1.json \
        benchmarks/results/sweep-fashion16.json benchmarks/results/sweep-fashion16-info0.1.json \
        --out docs/sweep-info-term.png
    .venv/bin/python benchmarks/research/compare_sweeps.py benchmarks/results/sweep-fashion16.json \
        benchmarks/results/sweep-fashion16-m8.json --width 16 --out docs/sweep-fashion16-latents.png
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks.sweep import load_reports, mean_ratio  # noqa: E402  (the sweep's own reading of its reports)


def curve(report: dict, width: int) -> tuple[list[int], list[float], list[float]]:
    """NFE, mean ratio and its error at each step count, at `width` (sweep.mean_ratio)."""
    values = [mean_ratio(report["summary"]["rows"], width, n) for n in report["steps"]]
    return [v[2] for v in values], [v[0] for v in values], [v[1] for v in values]


def label(report: dict, width: int) -> str:
    seeds = len({r["seed"] for r in report["summary"]["rows"] if r["width"] == width})
    what = ("DisCo-Diff " + ", ".join(report["discodiff_overrides"]) if report.get("variant")
            else "DisCo-Diff as the preset")
    return f"{what} ({seeds} seed{'' if seeds == 1 else 's'})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the PNG")
    ap.add_argument("--width", type=int, default=None, help="the U-Net width to compare at (default: each preset's)")
    args = ap.parse_args(argv)
    reports = load_reports(args.reports, ap.error)
    lacking = [str(p) for p, r in zip(args.reports, reports)
               if (args.width or r["preset_width"]) not in {row["width"] for row in r["summary"]["rows"]}]
    if lacking:
        ap.error(f"no runs at width {args.width or 'the preset width'} in: {', '.join(lacking)}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in reports))
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 5), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        mine = [r for r in reports if r["preset"] == preset]
        width = args.width or mine[0]["preset_width"]
        ticks = set()
        for i, r in enumerate(mine):
            nfe, mean, err = curve(r, width)
            ticks.update(nfe)
            shift = 1 + 0.02 * (i - (len(mine) - 1) / 2)  # side by side, so that the error bars stay apart
            ax.errorbar([n * shift for n in nfe], mean, yerr=err, marker="o", capsize=3, label=label(r, width))
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted(ticks)
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlabel("NFE (Heun)")
        ax.set_ylabel("FID ratio DisCo-Diff / EDM")
        ax.set_title(f"{preset}, width {width}", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the curves stay visible
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
