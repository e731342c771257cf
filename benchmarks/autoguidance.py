"""Benchmark: autoguidance against EDM, DisCo-Diff and latent guidance at equal network evaluations.

    .venv/bin/python benchmarks/autoguidance.py --preset fashion16 --seeds 0,1 --num 2000 [--bootstrap 50]
        [--weights 0.5,1,2] [--width-scales 0.5,0.25] [--kimg-scales 0.25,0.5] [--budgets 18,36,70]
        [--samplers heun,dpmpp-2m] [--features inception|classifier|both] [--out DIR] [--quick]

For each training seed it trains (or reuses, in --out) the preset's plain EDM run (m = 0) and its DisCo-Diff run
(with its prior), and for every weak size (--width-scales) and budget (--kimg-scales) up to three weak runs (those
that the rows of --families sample with), each made in one command by `discodiff train --weak-of`: a weak EDM of the
EDM run, a weak DisCo-Diff on the DisCo-Diff run's frozen encoder, and a plain weak EDM of the DisCo-Diff run
(--latents 0). Then, for each sampler and each budget of
network evaluations per sample (both models' passes counted), it draws --num samples from the same seeds for:

    EDM                      the plain run alone
    EDM + AG                 autoguided by its weak EDM, each w, each weak run
    DisCo                    DisCo-Diff alone
    DisCo + LG               latent guidance, each (w_l, interval) of --latent-guidance
    DisCo + AG (z)           autoguided by the weak run on its frozen encoder, given z
    DisCo + AG (null)        the same weak run given its null latent
    DisCo + AG (plain)       autoguided by the plain weak EDM
    DisCo + LG + AG (form)   the first --latent-guidance setting with each autoguidance form

The step count of a row is the largest whose evaluations (strong passes + weak pass per call, guidance intervals
counted as if always on) fit the budget; the evaluations actually spent are measured (pipeline.PassCounter) and
reported. The report gives FID ± bootstrap std and KID per row, the training seconds of every weak run beside the
strong runs', and the issue's targets: EDM + AG against EDM, and the best DisCo-Diff row against the best EDM row
(ratio, and whether the bootstrap intervals are apart), per seed, sampler and budget. It writes
benchmarks/results/autoguidance-<preset>.json and the plot docs/autoguidance-<preset>-fid-vs-nfe.png.

--features classifier measures in the hidden features of the data set's own classifier instead of Inception (its
Fréchet distance in place of the FID, with each row's class TV and confidence; docs/fid.md): report
autoguidance-<preset>-classifier.json and its plot, the reference features and FID cache in their own files of
--out. --features both measures in each (a row's samples drawn once, scored in both; the classifier's rows and
targets go to "results_classifier", its targets printed after Inception's, its plot beside).

--quick is a smoke check of the whole path on the tiny digits networks of the tests (32 images, 8 samples per FID, no
bootstrap, one weight, one weak size and budget, Heun only, one row of each family and form): the numbers mean
nothing. It writes into its --out folder only. About a minute on an idle 2-core CPU once its five tiny runs exist.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (DOCS, QUICK_MODEL, RESULTS, _logged_seconds, add_features_option,  # noqa: E402
                               add_run_options, balance_text, differ, feature_detectors, features_suffix, fid_cache,
                               fid_text, finished, kid_text, log, metric_name, ratio_text, reference_and_floor,
                               second_space, space_suffix, write_report)

QUICK_SETS = ["--set", "model.network.model_channels=8", "--set", "model.network.channels_per_head=8",
              "--set", "model.network.latent_dim=16", "--set", "model.network.latent_heads=2",
              "--set", "model.network.latent_depth=1", "--set", "model.encoder.width=16",
              "--set", "model.encoder.heads=2", "--set", "model.encoder.depth=1",
              "--set", 'data.options={"max_images": 32}', "--set", "train.batch=32",
              "--set", "train.tick_kimg=0.128", "--set", "train.lr_rampup_kimg=0", "--kimg", "0.256"]
QUICK_PRIOR = ["--set", "prior_train.network.depth=1", "--set", "prior_train.network.width=32",
               "--set", "prior_train.network.heads=2", "--kimg", "0.128", "--batch", "64"]
assert QUICK_MODEL["network"]["model_channels"] == 8  # (the same tiny networks as the other scripts' --quick)


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_guidance(text: str) -> list[tuple[float, tuple | None]]:
    """"1@0:1,2" -> [(1.0, (0.0, 1.0)), (2.0, None)]: latent guidance weights, each with its interval LO:HI."""
    out = []
    for item in text.split(","):
        w, _, interval = item.partition("@")
        out.append((float(w), tuple(map(float, interval.split(":"))) if interval else None))
    return out


def steps_for(sampler: str, budget: int, passes: int) -> int:
    """The most steps whose evaluations, `passes` per denoiser call, fit `budget` (Heun: 2 steps - 1 calls)."""
    calls = budget // passes
    return max(1, (calls + 1) // 2 if sampler == "heun" else calls)


def train(run_dir: Path, args: list[str], prior_args: list[str] | None = None) -> None:
    """`discodiff train ARGS` (and `train-prior`), unless the run in `run_dir` is finished."""
    from discodiff.cli import main
    from discodiff.runs import Run

    if not ((run_dir / "config.json").is_file() and finished(Run(run_dir))):
        log(f"training {run_dir.name}: discodiff train {' '.join(args)}")
        main(["train", "--run-dir", str(run_dir), "--quiet", *args])
    if prior_args is not None and not finished(Run(run_dir), "prior"):
        main(["train-prior", "--run-dir", str(run_dir), "--quiet", *prior_args])


def train_all(out: Path, args) -> dict:
    """{seed: {name: run folder}} for every seed: edm, disco and the weak runs (the names say which)."""
    runs, needed = {}, {r.get("weak") for r in rows_of(args)}  # (only the weak runs that a row samples with)
    for seed in args.seeds:
        base = ["--preset", args.preset, "--seed", str(seed), *args.base_sets]
        r = {"edm": out / f"s{seed}-edm", "disco": out / f"s{seed}-disco"}
        train(r["edm"], [*base, "--latents", "0"])
        train(r["disco"], base, ["--set", f"prior_train.seed={seed}", *args.prior_sets])
        for ws in args.width_scales:
            for ks in args.kimg_scales:
                tag = f"w{ws:g}-k{ks:g}"
                scale = ["--width-scale", str(ws), "--kimg-scale", str(ks)]
                for name, strong, extra in ((f"edm-weak-{tag}", "edm", ["--latents", "0"]),
                                            (f"disco-weak-{tag}", "disco", []),
                                            (f"disco-plainweak-{tag}", "disco", ["--latents", "0"])):
                    if name in needed:
                        r[name] = out / f"s{seed}-{name}"
                        train(r[name], ["--weak-of", str(r[strong]), *scale, *extra])
        runs[seed] = r
    return runs


def rows_of(args) -> list[dict]:
    """The sampling configurations: {family, strong, weak, w, latents, guidance, interval}."""
    weaks = [f"w{ws:g}-k{ks:g}" for ws in args.width_scales for ks in args.kimg_scales]
    rows = [{"family": "EDM", "strong": "edm"}, {"family": "DisCo", "strong": "disco"}]
    rows += [{"family": "DisCo + LG", "strong": "disco", "guidance": g, "interval": i} for g, i in args.latent_guidance]
    lg = args.latent_guidance[0]
    for tag in weaks:
        for w in args.weights:
            rows.append({"family": "EDM + AG", "strong": "edm", "weak": f"edm-weak-{tag}", "w": w})
            for form, weak, latents in (("z", f"disco-weak-{tag}", "z"), ("null", f"disco-weak-{tag}", "null"),
                                        ("plain", f"disco-plainweak-{tag}", None)):
                common = {"strong": "disco", "weak": weak, "w": w, "latents": latents}
                rows.append({"family": f"DisCo + AG ({form})", **common})
                rows.append({"family": f"DisCo + LG + AG ({form})", **common, "guidance": lg[0], "interval": lg[1]})
    if args.families:  # a name keeps its family, and all its forms ("DisCo + AG": (z), (null), (plain))
        names = [f.strip() for f in args.families.split(",")]
        rows = [r for r in rows if r["family"] in ("EDM", "DisCo", *names)
                or any(r["family"].startswith(f"{f} (") for f in names)]
    if args.quick:  # one row of each path: each family, each form, latent guidance with autoguidance once
        keep = {"EDM", "DisCo", "EDM + AG", "DisCo + AG (z)", "DisCo + AG (plain)", "DisCo + LG + AG (null)"}
        rows = [r for r in rows if r["family"] in keep]
    return rows


def measure(row: dict, seed: int, models: dict, sampler: str, budget: int, seeds, ref, det, args, cache,
            drawn: dict) -> dict:
    """One row's scores in one feature space. `drawn` carries the row's samples ("samples", for sample_fid) and its
    measured evaluations ("evaluations") from one space to the next (--features both samples once)."""
    from discodiff.analysis.quality import sample_fid
    from discodiff.autoguidance import Autoguide
    from discodiff.pipeline import PassCounter

    model, prior = models[row["strong"]]
    weak = models[row["weak"]][0] if "weak" in row else None
    passes = model.guidance_passes(row.get("guidance", 0.0)) + (weak is not None)
    steps = steps_for(sampler, budget, passes)
    guide = Autoguide(weak, row["w"], latents=row.get("latents")) if weak is not None else None
    with PassCounter(model, *([weak] if weak is not None else [])) as counter:
        r = sample_fid(model, prior, seeds, ref, det, steps=steps, sampler=sampler, guidance=row.get("guidance", 0.0),
                       guidance_interval=row.get("interval"), autoguide=guide, batch=args.batch,
                       bootstrap=args.bootstrap, cache=cache, model_key=(seed, row["strong"], row.get("weak")),
                       samples=drawn["samples"])
    if counter.total:  # (a row found in the cache, or sampled for the other space, samples nothing)
        drawn["evaluations"] = (counter.total / len(seeds),
                                counter.samples_of[-1] / len(seeds) if weak is not None else 0.0)
    if "evaluations" in drawn:
        r["evaluations"], r["weak_evaluations"] = drawn["evaluations"]
        cache[cache_key(row, seed, sampler, budget)] = r
    elif cache_key(row, seed, sampler, budget) in cache:
        r = cache[cache_key(row, seed, sampler, budget)]
    evaluations = r.get("evaluations")
    return {**{k: v for k, v in row.items()}, "sampler": sampler, "budget": budget, "steps": steps,
            "evaluations": evaluations, "weak_evaluations": r.get("weak_evaluations"),
            **{k: r[k] for k in ("fid", "fid_std", "kid", "kid_std", "diversity", "class_tv", "confidence",
                                  "fid_class_matched") if k in r}}


def cache_key(row: dict, seed: int, sampler: str, budget: int) -> tuple:
    """The disk cache's key of a row's measured evaluations (beside sample_fid's own entries)."""
    return ("evaluations", seed, sampler, budget, tuple(sorted((k, repr(v)) for k, v in row.items())))


def targets(rows: list[dict]) -> list[dict]:
    """Per seed, sampler and budget: EDM + AG's best against EDM, and the best DisCo row against the best EDM row."""
    out = []
    keys = sorted({(r["seed"], r["sampler"], r["budget"]) for r in rows})
    for seed, sampler, budget in keys:
        group = [r for r in rows if (r["seed"], r["sampler"], r["budget"]) == (seed, sampler, budget)]
        edm = next(r for r in group if r["family"] == "EDM")
        edm_ag = min((r for r in group if r["family"] == "EDM + AG"), key=lambda r: r["fid"], default=None)
        best_edm = min((r for r in group if r["family"].startswith("EDM")), key=lambda r: r["fid"])
        best_disco = min((r for r in group if r["family"].startswith("DisCo")), key=lambda r: r["fid"])
        ratio = best_disco["fid"] / best_edm["fid"]
        out.append({"seed": seed, "sampler": sampler, "budget": budget, "edm": edm["fid"],
                    "edm_ag": None if edm_ag is None else edm_ag["fid"],
                    "edm_ag_beats_edm": None if edm_ag is None else edm_ag["fid"] < edm["fid"],
                    "edm_ag_apart": None if edm_ag is None else differ(edm_ag, edm),
                    "best_edm": f"{best_edm['family']} {best_edm.get('w', '')}".strip(),
                    "best_disco": f"{best_disco['family']} {best_disco.get('w', '')}".strip(),
                    "ratio": ratio, "ratio_text": ratio_text(best_disco, best_edm),
                    "ratio_met": ratio <= 0.90, "apart": differ(best_disco, best_edm)})
    return out


def row_label(r: dict) -> str:
    """A row's name in a plot: its family, weight and weak run (e.g. "EDM + AG, w 0.25, weak w0.5-k0.25")."""
    return (r["family"] + (f", w {r['w']:g}" if "w" in r else "")
            + (f", weak {r['weak'].rsplit('weak-', 1)[-1]}" if r.get("weak") else ""))


def plot(rows: list[dict], path: Path, space: str = "inception") -> None:
    """FD against evaluations per family (its best setting at each budget, mean over the seeds); with one budget,
    where that would be a scatter of single points, each row's distance ± its bootstrap std per seed instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({r["budget"] for r in rows}) == 1:
        return plot_rows(rows, path, space, plt)
    samplers = sorted({r["sampler"] for r in rows})
    fig, axes = plt.subplots(1, len(samplers), figsize=(6 * len(samplers), 4.5), squeeze=False)
    for ax, sampler in zip(axes[0], samplers):
        for family in sorted({r["family"] for r in rows}):
            mine = [r for r in rows if r["sampler"] == sampler and r["family"] == family]
            best = {}
            for r in mine:  # the best setting of the family at each budget (mean over the seeds)
                key = (r["budget"], r.get("w"), r.get("weak"), r.get("guidance"), str(r.get("interval")))
                best.setdefault(r["budget"], {}).setdefault(key, []).append(r)
            pts = sorted((sum(x["evaluations"] for x in v) / len(v), sum(x["fid"] for x in v) / len(v))
                         for b in best.values() for v in [min(b.values(), key=lambda v: sum(x["fid"] for x in v))])
            ax.plot(*zip(*pts), marker="o", label=family)
        spent = [r["evaluations"] for r in rows if r["sampler"] == sampler]
        ax.set(title=sampler, xlabel="network evaluations per sample (both models)", ylabel=metric_name(space),
               xscale="log" if max(spent) > 2 * min(spent) else "linear")  # (one budget: a log axis garbles its ticks)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_rows(rows: list[dict], path: Path, space: str, plt) -> None:
    """One budget: a horizontal bar per row and seed, the distance ± its bootstrap std, a panel per sampler."""
    samplers, seeds = sorted({r["sampler"] for r in rows}), sorted({r["seed"] for r in rows})
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    fig, axes = plt.subplots(1, len(samplers), figsize=(7 * len(samplers), 1.2 + 0.45 * len(labels) * len(seeds)),
                             squeeze=False, sharey=True)
    height = 0.8 / len(seeds)
    for ax, sampler in zip(axes[0], samplers):
        for j, seed in enumerate(seeds):
            mine = {row_label(r): r for r in rows if r["sampler"] == sampler and r["seed"] == seed}
            ys = [i + j * height for i, label in enumerate(labels) if label in mine]
            picked = [mine[label] for label in labels if label in mine]
            ax.barh(ys, [r["fid"] for r in picked], height, xerr=[r.get("fid_std") or 0 for r in picked],
                    label=f"seed {seed}", capsize=2)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"{sampler}, {rows[0]['budget']} evaluations per sample (both models)",
               xlabel=f"{metric_name(space)} ± bootstrap std")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fashion16")
    ap.add_argument("--seeds", default="0,1", help="training seeds")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--weights", default="0.5,1,2", help="autoguidance weights w")
    ap.add_argument("--width-scales", default="0.5,0.25", help="the weak runs' widths over the strong runs'")
    ap.add_argument("--kimg-scales", default="0.25,0.5", help="the weak runs' training images over the strong runs'")
    ap.add_argument("--latent-guidance", default="1@0:1,1", metavar="W@LO:HI,...",
                    help="latent guidance settings (the first is combined with autoguidance)")
    ap.add_argument("--budgets", default="18,36,70", help="network evaluations per sample")
    ap.add_argument("--samplers", default="heun,dpmpp-2m")
    ap.add_argument("--families", default=None, metavar="PREFIX,...",
                    help="only these families' rows (e.g. 'EDM + AG,DisCo + LG,DisCo + AG (z)'; a family without "
                         "its form, such as 'DisCo + AG', keeps all its forms), besides EDM and DisCo alone")
    ap.add_argument("--quick", action="store_true", help="smoke check on tiny digits networks (under a minute)")
    add_features_option(ap)
    add_run_options(ap, batch=128, results="benchmarks/results/autoguidance-<preset>.json (with --features "
                                           "classifier: autoguidance-<preset>-classifier.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.seeds, args.num, args.bootstrap = "digits", "0", min(args.num, 8), 0  # (each bootstrap draw: a 2048-d sqrtm)
        args.weights, args.width_scales, args.kimg_scales, args.budgets = "1", "0.5", "0.5", "9"
        args.samplers, args.latent_guidance = "heun", "1@0:1"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.weights, args.width_scales = parse_floats(args.weights), parse_floats(args.width_scales)
    args.kimg_scales, args.budgets = parse_floats(args.kimg_scales), [int(b) for b in args.budgets.split(",")]
    args.samplers, args.latent_guidance = args.samplers.split(","), parse_guidance(args.latent_guidance)
    args.base_sets = QUICK_SETS if args.quick else []
    args.prior_sets = QUICK_PRIOR if args.quick else []

    from discodiff.cli.options import parse_key_values
    from discodiff.config import preset_config
    from discodiff.data import load_dataset, to_uint8
    from discodiff.errors import ConfigError
    from discodiff.runs import Run

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-autoguidance-{args.preset}{'-quick' if args.quick else ''}"
    suffix = features_suffix(args.features)
    path = args.results or (out / f"autoguidance-quick{suffix}.json" if args.quick
                            else RESULTS / f"autoguidance-{args.preset}{suffix}.json")
    out.mkdir(parents=True, exist_ok=True)
    try:
        # the detectors before any training: data without labels are refused here for the classifier's features
        data_sets = [v for k, v in zip(args.base_sets[::2], args.base_sets[1::2]) if k == "--set"
                     and v.startswith("data.")]  # (--quick's fewer images: the classifier of those)
        data_cfg = preset_config(args.preset, parse_key_values(data_sets)).data
        dets = feature_detectors(args.features, data_cfg, detector=args.detector)
        runs = train_all(out, args)
        first = Run(runs[args.seeds[0]]["disco"]).config
        images = to_uint8(load_dataset(first.data).x)
        spaces, seconds = {}, {}
        for space, det in dets.items():
            ref, floor, _ = reference_and_floor(images, det, out, args.num, 0, args.bootstrap)
            # a disk cache of every FID (kept while the runs' weights are the same): an interrupted measurement resumes
            cache = fid_cache(out, [d.name for r in runs.values() for d in r.values()], args.num,
                              f"fid-cache{space_suffix(det)}.json")
            spaces[space] = {"det": det, "ref": ref, "floor": floor, "cache": cache, "rows": []}
        for seed, r in runs.items():
            models = {}
            for name, d in r.items():
                run = Run(d)
                models[name] = (run.load_model(), run.load_prior() if run.config.model.num_latents and
                                name == "disco" else None)
                seconds[f"s{seed}-{name}"] = _logged_seconds(d, 1)
            seeds = list(range(args.num))
            for sampler in args.samplers:
                for budget in args.budgets:
                    for row in rows_of(args):
                        drawn = {"samples": {}}  # (the row's samples, drawn once for all the feature spaces)
                        for space, m in spaces.items():
                            res = {"seed": seed, **measure(row, seed, models, sampler, budget, seeds, m["ref"],
                                                           m["det"], args, m["cache"], drawn)}
                            m["rows"].append(res)
                            w = f" w {row['w']:g}" if "w" in row else ""
                            lg = f" LG {row['guidance']:g}@{row.get('interval')}" if "guidance" in row else ""
                            what = "FID" if space == "inception" else f"{space} FD"
                            tv = "" if space == "inception" else f", TV/conf {balance_text(res)}"
                            log(f"seed {seed} {sampler} budget {budget}: {row['family']}{w}{lg} "
                                f"{row.get('weak', '')}: {res['steps']} steps, {res['evaluations']:.1f} evaluations, "
                                f"{what} {fid_text(res)}, KID {kid_text(res)}{tv}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {}
    for i, (space, m) in enumerate(spaces.items()):
        goals = targets(m["rows"])
        if space != "inception":
            log(f"in the {space}'s features (its Fréchet distance in place of the FID):")
        for g in goals:
            edm_ag = "-" if g["edm_ag"] is None else f"{g['edm_ag']:.3f}"
            log(f"seed {g['seed']} {g['sampler']} budget {g['budget']}: EDM {g['edm']:.3f}, EDM + AG {edm_ag}, "
                f"best DisCo ({g['best_disco']}) / best EDM ({g['best_edm']}) = {g['ratio_text']} "
                f"(<= 0.90: {g['ratio_met']}, apart: {g['apart']})")
        plot_path = (out if args.quick else DOCS) / f"{path.stem}{'' if i == 0 else '-' + space}-fid-vs-nfe.png"
        try:
            plot(m["rows"], plot_path, space)
        except ImportError:
            plot_path = None
        results[space] = {"rows": m["rows"], "targets": goals, "data_floor": m["floor"],
                          "plot": None if plot_path is None else str(plot_path)}
    res = results[next(iter(results))]
    write_report({"preset": args.preset, "quick": args.quick, "num": args.num, "bootstrap": args.bootstrap,
                  "seeds": args.seeds, "features": list(results), "rows": res["rows"], "targets": res["targets"],
                  "training_seconds": seconds, "data_floor": res["data_floor"], "plot": res["plot"],
                  **second_space(results), "wall_s": round(time.perf_counter() - start, 1), "runs": str(out)}, path)
    log(f"wrote {path}" + "".join(f" and {r['plot']}" for r in results.values() if r["plot"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
