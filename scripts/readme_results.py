"""Prints the README's results tables from the benchmarks' JSON reports.

    python scripts/readme_results.py                                   # every report in benchmarks/results/
    python scripts/readme_results.py benchmarks/results/toy2d.json     # one report

toy2d.json comes from benchmarks/toy2d.py, images-<preset>.json from benchmarks/images.py and
throughput-<preset>-<device>.json from benchmarks/throughput.py.
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


def images(d: dict) -> None:
    res = d["results"]
    rows = res["nfe"]["rows"]
    print("| Heun steps (NFE) | EDM FID | DisCo-Diff FID | ratio |")
    print("|---|---|---|---|")
    for rb, rd in zip(rows["baseline"], rows["discodiff"]):
        print(f"| {rb['steps']} ({rb['nfe']}) | {rb['fid']:.2f} | {rd['fid']:.2f} | {rd['fid'] / rb['fid']:.2f} |")
    o = res["oracle"]
    print(f"\nFID over {d['num']} samples against the {res['reference_num']} training images; {d['num']} real training "
          f"images score {res['data_floor_fid']:.2f} (the floor at this N). DisCo-Diff at {d['default_steps']} steps "
          f"with oracle latents (the encoder on training images): {o['oracle']['fid']:.2f}; with prior latents: "
          f"{o['prior']['fid']:.2f} (gap {o['gap']:+.2f}). Guidance on the latents: " +
          ", ".join(f"w = {r['guidance']:g}: {r['fid']:.2f}" for r in res["guidance"]["rows"]) + ".")
    s = d["seconds"]
    print(f"\nBudget {d['budget']['kimg_per_model']:g} kimg per model, prior {d['budget']['prior_kimg']:g} kimg; "
          f"stage I {s['stage1_baseline']:.0f} s (EDM) and {s['stage1_discodiff']:.0f} s (DisCo-Diff), prior "
          f"{s['prior_discodiff']:.0f} s, {d['machine']['threads']} torch threads. " + targets_line(d))


def throughput(d: dict) -> None:
    b, c = d["models"]["baseline"], d["models"]["discodiff"]
    t = d["targets"]
    print("| | EDM | DisCo-Diff | DisCo-Diff vs EDM |")
    print("|---|---|---|---|")
    print(f"| training images/s | {b['train_images_per_s']:.1f} | {c['train_images_per_s']:.1f} | "
          f"cost {100 * t['training_overhead']:+.1f}% |")
    print(f"| sampling images/s (NFE {c['sampling']['nfe_per_image']}) | {b['sampling']['images_per_s']:.1f} | "
          f"{c['sampling']['images_per_s']:.1f} | |")
    print(f"\nDevice: {d['device']}, torch {d['torch']}. Drawing the latents from the prior takes "
          f"{100 * t['prior_fraction']:.3f}% of DisCo-Diff's sampling time. Targets: training cost <= +15%: "
          f"{'met' if t['training_overhead_ok'] else 'NOT met'}; prior <= 1% of sampling time: "
          f"{'met' if t['prior_fraction_ok'] else 'NOT met'}.")


def main(paths) -> None:
    for path in paths:
        d = json.loads(Path(path).read_text())
        print(f"<!-- {Path(path).name} -->")
        name = Path(path).name
        (toy2d if name.startswith("toy2d") else images if name.startswith("images") else throughput)(d)
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(RESULTS.glob("*.json")))
