"""Prints the README's results tables from the benchmarks' JSON reports.

    python scripts/readme_results.py                                   # every report in benchmarks/results/
    python scripts/readme_results.py benchmarks/results/toy2d.json     # one report

toy2d.json comes from benchmarks/toy2d.py, images-<preset>.json from benchmarks/images.py, fid-speed.json from
benchmarks/fid_speed.py, samplers-<preset>.json from benchmarks/samplers.py, latent-injection-<preset>.json from
benchmarks/latent_injection.py, throughput-<preset>-<device>.json from benchmarks/throughput.py and
sweep-<preset>.json from benchmarks/sweep.py; any other report with a "table" (pfgmpp-*.json, finetune-*.json,
guidance-*.json) is printed as that text.
"""
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks/results"


def targets_line(d: dict) -> str:
    return "Targets: " + "; ".join(f"{x['target']}: {'met' if x['pass'] else 'NOT met'} ({x['measured']})"
                                   if "measured" in x else f"{x['target']}: {'met' if x['pass'] else 'NOT met'}"
                                   for x in d["targets"]) + "."


def toy2d(d: dict) -> None:
    m = d["results"]["models"]
    rows = [("W2 to the data (floor)", lambda r: f"{r['w2']:.3f} ({r['w2_floor']:.3f})"),
            ("within-mode W2 (floor)", lambda r: f"{r['within_mode_w2']:.3f} ({r['within_mode_w2_floor']:.3f})"),
            ("mode TV vs uniform", lambda r: f"{r['mode_tv']:.3f}"),
            ("off-mode fraction", lambda r: f"{r['off_mode']:.4f}"),
            ("mean ODE curvature", lambda r: f"{r['mean_curvature']:.1f}"),
            ("mean Jacobian ‖∇G‖²_F", lambda r: f"{r['mean_jacobian_fro_sq']:.2f}"),
            ("straightness, t ≤ 3 (mean)", lambda r: f"{r['straightness_t_le_3']['mean']:.3f}"),
            ("latent purity / codes used",
             lambda r: f"{r['latent']['purity']:.3f} / {r['latent']['codes_used']}" if "latent" in r else "–")]
    print("| metric | EDM, 50 steps | DisCo-Diff, 50 steps | EDM, 10 steps | DisCo-Diff, 10 steps |")
    print("|---|---|---|---|---|")
    for name, f in rows:
        print(f"| {name} | " + " | ".join(f(m[k][s]) for s in ("50", "10") for k in ("baseline", "discodiff")) + " |")
    t = d["results"]["seconds"]
    print(f"\nWall time {d['wall_s']:.0f} s on a 2-core CPU ({d['machine']['threads']} torch thread); "
          f"stage I {t['stage1_baseline']:.0f} s (EDM) and {t['stage1_discodiff']:.0f} s (DisCo-Diff), "
          f"prior {t['prior_discodiff']:.0f} s. " + targets_line(d))


def _fid(r: dict) -> str:
    return f"{r['fid']:.2f}" + (f" ± {r['fid_std']:.2f}" if "fid_std" in r else "")


def _kid(r: dict) -> str:
    return f"{1000 * r['kid']:.2f} ± {1000 * r['kid_std']:.2f}" if r.get("kid") is not None else "–"


def images(d: dict) -> None:
    res = d["results"]
    rows = res["nfe"]["rows"]
    print("| Heun steps (NFE) | EDM FID | DisCo-Diff FID | ratio | differ? | EDM KID ×1000 | DisCo-Diff KID ×1000 |")
    print("|---|---|---|---|---|---|---|")
    for rb, rd in zip(rows["baseline"], rows["discodiff"]):
        r = rd["fid"] / rb["fid"]
        err = (r * ((rd["fid_std"] / rd["fid"]) ** 2 + (rb["fid_std"] / rb["fid"]) ** 2) ** 0.5
               if "fid_std" in rd and "fid_std" in rb else None)
        gap = abs(rd["fid"] - rb["fid"])
        differ = ("–" if err is None else
                  "yes" if gap > 2 * (rd["fid_std"] ** 2 + rb["fid_std"] ** 2) ** 0.5 else "no")
        ratio = f"{r:.3f}" + (f" ± {err:.3f}" if err is not None else "")
        print(f"| {rb['steps']} ({rb['nfe']}) | {_fid(rb)} | {_fid(rd)} | {ratio} | {differ} | {_kid(rb)} | "
              f"{_kid(rd)} |")
    o = res["oracle"]
    floor = res.get("data_floor", {"fid": res["data_floor_fid"], "num": d["num"]})
    spread = f", FID ± its std over {d['bootstrap']} bootstrap resamples" if d.get("bootstrap") else ""
    print(f"\nFID over {d['num']} samples against the {res['reference_num']} training images{spread}; KID ×1000 ± "
          f"std over 100 subsets of 1,000. {floor['num']} real training images score FID {_fid(floor)}, KID ×1000 "
          f"{_kid(floor)} (the floor). \"differ?\": the two FIDs are more than twice their combined std apart. "
          f"DisCo-Diff at {d['default_steps']} steps with oracle latents (the encoder on training images): FID "
          f"{_fid(o['oracle'])}, KID ×1000 {_kid(o['oracle'])}; with prior latents: {_fid(o['prior'])}, "
          f"{_kid(o['prior'])}. Guidance on the latents: " +
          ", ".join(f"w = {r['guidance']:g}: FID {_fid(r)}, KID ×1000 {_kid(r)}" for r in res["guidance"]["rows"])
          + ".")
    s = d["seconds"]
    print(f"\nBudget {d['budget']['kimg_per_model']:g} kimg per model, prior {d['budget']['prior_kimg']:g} kimg; "
          f"stage I {s['stage1_baseline']:.0f} s (EDM) and {s['stage1_discodiff']:.0f} s (DisCo-Diff), prior "
          f"{s['prior_discodiff']:.0f} s, {d['machine']['threads']} torch threads, detector backend "
          f"{d.get('detector_backend', 'torchscript')}. " + targets_line(d))


def samplers(d: dict) -> None:
    print("| sampler | steps | NFE | EDM FID | DisCo-Diff FID | ratio | differ? | EDM KID ×1000 | DisCo-Diff KID ×1000 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        ratio = f"{r['ratio']:.3f}" + (f" ± {r['ratio_err']:.3f}" if r.get("ratio_err") is not None else "")
        print(f"| {r['label']} | {r['steps']} | {r['nfe']} | {_fid(r['baseline'])} | {_fid(r['discodiff'])} | {ratio} | "
              f"{r['differ']} | {_kid(r['baseline'])} | {_kid(r['discodiff'])} |")
    if d.get("hybrid"):
        print("\n| Heun steps | switch σ | EDM FID | DisCo-Diff FID | hybrid FID | hybrid KID ×1000 |")
        print("|---|---|---|---|---|---|")
        for h in d["hybrid"]:
            print(f"| {h['steps']} | {h['switch_sigma']:g} | {_fid(h['baseline'])} | {_fid(h['discodiff'])} | "
                  f"{_fid(h['hybrid'])} | {_kid(h['hybrid'])} |")
    print(f"\n{d['num']} samples per FID, the same seeds for every row, FID ± std over {d['bootstrap']} bootstrap "
          f"resamples; detector backend {d['detector_backend']}.")


def latent_injection(d: dict) -> None:
    print("| variant | codes in use (of 16), per latent | at step 0 | distinct tuples in the data | prior token / "
          "marginal perplexity | prior vs encoder marginal TV | loss ratio, σ ≥ 2 | FID (18 steps) | KID ×1000 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in d["rows"].items():
        start = r.get("at_start")
        at_start = ", ".join(map(str, start["codes_used"])) if start else "–"
        pr = r.get("prior_report") or {}
        ppl = f"{pr['prior_perplexity']:.2f} / {pr['marginal_perplexity']:.2f}" if "prior_perplexity" in pr else "–"
        tv = ", ".join(f"{v:.2f}" for v in r["prior_vs_encoder_tv"] or [])
        print(f"| {name} | {', '.join(map(str, r['codes_used']))} | {at_start} | {r['distinct_tuples']} | {ppl} | "
              f"{tv} | "
              f"{r['loss_ratio_high_sigma']:.3f} | {_fid(r['fid'])} | {_kid(r['fid'])} |")


def fid_speed(d: dict) -> None:
    print("| backend | images/s | speed-up | GFLOP/s | of the matmul peak | max feature difference / scale | FID "
          "difference |")
    print("|---|---|---|---|---|---|---|")
    for name, r in d["backends"].items():
        print(f"| {name} | {r['images_per_s']:.2f} | {r['speedup']:.2f}× | {r['gflops']:.0f} | "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% | {r['max_abs_diff_over_scale']:.1e} | "
              f"{100 * r['fid_rel_diff']:.4f}% |")
    print(f"\n{d['num']} digits images, batch {d['batch']}, {d['threads']} threads; matmul peak "
          f"{d['matmul_peak_gflops']:.0f} GFLOP/s in the same run; {d['gflop_per_image']:.2f} GFLOP per image "
          f"(2 per multiply-add). " + targets_line(d))


def throughput(d: dict) -> None:
    b, c = d["models"]["baseline"], d["models"]["discodiff"]
    t = d["targets"]
    print("| | EDM | DisCo-Diff | DisCo-Diff vs EDM |")
    print("|---|---|---|---|")
    print(f"| training images/s | {b['train_images_per_s']:.1f} | {c['train_images_per_s']:.1f} | "
          f"cost {100 * t['training_overhead']:+.1f}% |")
    gap = f"{-100 * t['sampling_gap']:+.1f}%" if "sampling_gap" in t else ""
    print(f"| sampling images/s (NFE {c['sampling']['nfe_per_image']}) | {b['sampling']['images_per_s']:.1f} | "
          f"{c['sampling']['images_per_s']:.1f} | {gap} |")
    g = d.get("guided_sampling")
    if g:
        print(f"| sampling images/s, latent guidance w = 1 ({g['nfe_per_image']} evaluations in "
              f"{g['network_calls_per_image']} batched calls) | | {g['images_per_s']:.1f} | "
              f"{g['images_per_s'] / c['sampling']['images_per_s']:.2f}× unguided |")
    extra = (f"; sampling within 3% of EDM's: {'met' if t['sampling_gap_ok'] else 'NOT met'}"
             if "sampling_gap" in t else "")
    print(f"\nDevice: {d['device']}, torch {d['torch']}. Drawing the latents from the prior takes "
          f"{100 * t['prior_fraction']:.3f}% of DisCo-Diff's sampling time. Targets: training cost <= +15%: "
          f"{'met' if t['training_overhead_ok'] else 'NOT met'}; prior <= 1% of sampling time: "
          f"{'met' if t['prior_fraction_ok'] else 'NOT met'}{extra}.")


def sweep(d: dict) -> None:
    """The FID ratio DisCo-Diff / EDM for each width (mean over training seeds, ± their spread where there are
    several, else ± the bootstrap error) and step count, then the class balance at the most steps."""
    rows, steps = d["summary"]["rows"], d["steps"]
    print("| U-Net width (parameters EDM / DisCo-Diff) | seeds | " + " | ".join(
        f"{n} steps (NFE {2 * n - 1})" for n in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for w in d["widths"]:
        mine = [r for r in rows if r["width"] == w]
        seeds = sorted({r["seed"] for r in mine})
        cells = []
        for n in steps:
            rs = [r for r in mine if r["steps"] == n]
            mean = sum(r["ratio"] for r in rs) / len(rs)
            err = ((sum((r["ratio"] - mean) ** 2 for r in rs) / (len(rs) - 1)) ** 0.5 if len(rs) > 1
                   else rs[0]["ratio_err"])
            fids = ", ".join(f"{r['discodiff']['fid']:.2f}/{r['baseline']['fid']:.2f}" for r in rs)
            cells.append(f"**{mean:.3f} ± {err:.3f}** ({fids})")
        params = d["parameters"]
        print(f"| {w} ({params[f'baseline-w{w}'] / 1e6:.2f} M / {params[f'discodiff-w{w}'] / 1e6:.2f} M) | "
              f"{', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    n = max(steps)
    print(f"\nEach cell: the FID ratio, then DisCo-Diff's / EDM's FID per seed. {d['num']} samples per FID (seeds "
          f"0 to {d['num'] - 1} for every model), {d['bootstrap']} bootstrap resamples. Class balance at {n} steps "
          f"(total variation between the class frequencies a small classifier, {100 * d['classifier']['held_out_accuracy']:.1f}% "
          f"held-out accuracy, reads off the samples and off the training images), EDM / DisCo-Diff: "
          + "; ".join(f"width {r['width']} seed {r['seed']}: {r['baseline']['class_tv']:.3f} / "
                      f"{r['discodiff']['class_tv']:.3f}" for r in rows if r["steps"] == n) + ".")
    c = d["training_cost"]
    variant = (f" DisCo-Diff variant {d['variant']}: " + ", ".join(d["discodiff_overrides"]) + "."
               if d.get("variant") else "")
    print(f"\nTraining cost per image, DisCo-Diff / EDM at the preset's width: {c['ratio']:.3f} (timed side by "
          f"side, {c['device']}). Wall time {d['seconds']['total'] / 60:.0f} min ({d['jobs']} jobs).{variant}")


def text_table(d: dict) -> None:
    print("```\n" + d["table"] + "\n```")


def main(paths) -> None:
    for path in paths:
        d = json.loads(Path(path).read_text())
        print(f"<!-- {Path(path).name} -->")
        name = Path(path).name
        kind = next((f for prefix, f in (("toy2d", toy2d), ("images", images), ("fid-speed", fid_speed),
                                          ("samplers", samplers), ("latent-injection", latent_injection),
                                          ("sweep", sweep), ("throughput", throughput))
                     if name.startswith(prefix)), text_table)
        kind(d)
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(RESULTS.glob("*.json")))
