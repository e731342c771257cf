"""Prints the README's toy 2D results table from benchmarks/results/toy2d.json (written by benchmarks/toy2d.py)."""
import json
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "benchmarks/results/toy2d.json")
d = json.loads(path.read_text())
m = d["results"]["models"]
rows = [("W2 to the data (floor)", lambda r: f"{r['w2']:.3f} ({r['w2_floor']:.3f})"),
        ("within-mode W2 (floor)", lambda r: f"{r['within_mode_w2']:.3f} ({r['within_mode_w2_floor']:.3f})"),
        ("mode TV vs uniform", lambda r: f"{r['mode_tv']:.3f}"),
        ("off-mode fraction", lambda r: f"{r['off_mode']:.4f}"),
        ("mean ODE curvature", lambda r: f"{r['mean_curvature']:.1f}"),
        ("mean Jacobian ‖∇G‖²_F", lambda r: f"{r['mean_jacobian_fro_sq']:.2f}"),
        ("straightness, t ≤ 3 (mean)", lambda r: f"{r['straightness_t_le_3']['mean']:.3f}"),
        ("latent purity / codes used", lambda r: f"{r['latent']['purity']:.3f} / {r['latent']['codes_used']}" if "latent" in r else "–")]
print("| metric | EDM, 50 steps | DisCo-Diff, 50 steps | EDM, 10 steps | DisCo-Diff, 10 steps |")
print("|---|---|---|---|---|")
for name, f in rows:
    print(f"| {name} | " + " | ".join(f(m[k][s]) for s in ("50", "10") for k in ("baseline", "discodiff")) + " |")
t = d["results"]["seconds"]
print(f"\nWall time {d['wall_s']:.0f} s on a 2-core CPU ({d['machine']['threads']} torch thread); "
      f"stage I {t['stage1_baseline']:.0f} s (EDM) and {t['stage1_discodiff']:.0f} s (DisCo-Diff), "
      f"prior {t['prior_discodiff']:.0f} s. Targets: " +
      "; ".join(f"{x['target']}: {'met' if x['pass'] else 'NOT met'}" for x in d["targets"]) + ".")
