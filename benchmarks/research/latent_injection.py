"""Benchmark: how the latents enter the U-Net, at equal budget.

    .venv/bin/python benchmarks/research/latent_injection.py --preset digits [--variants embedding,xattn,xattn-soft]
        [--num 2000]

Trains DisCo-Diff variants of an image preset that differ only in how the latents are injected and relaxed, how the
encoder's heads start, and which penalty against codebook collapse they train with, with the same network, data,
seed and training images, and reports for each:

- codes in use per latent (the encoder's argmax over the whole data set; a collapsed latent uses 1-2 of k codes),
  after training and at step 0 (a fresh model of the variant's config and seed, its encoder initialised on a seeded
  first batch as the trainer does: whether a collapse was there from the start or came with training);
- the prior's token perplexity against the marginal's (stage II's own report);
- the loss at sigma >= 2 given the encoder's latents, over the loss given the null latent (the same network: how
  much the latents carry at high noise, where the paper says they matter; 1 = nothing): benchmarks/common.py's
  latent_information, at sigma 2.34, 4.74, 9.61 and 19.48 (the report in benchmarks/results/ took sigma 2, 5, 10
  and 20);
- FID ± bootstrap std and KID at the preset's Heun steps, --num samples against the training set.

The runs live beside benchmarks/images.py's (the same --out), so its DisCo-Diff run serves as the preset's own
variant. Writes benchmarks/results/latent-injection-<preset>.json.

Ran at commit 8b0f46c (as benchmarks/latent_injection.py), where the options its VARIANTS set exist: the -kmeans
variants need the ViT encoder's head_init="kmeans", since removed from the package, and the -usage / -info variants
model.usage_weight and model.confidence_weight, since folded into one model.regularisers.information. To run it again as it ran,
check out that commit.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import (RESULTS, fid_cache, fid_text, high_sigmas, kid_text, latent_information,  # noqa
                               reference_and_floor, run_overrides, train_both, write_report)

# name -> (run folder, model overrides); "embedding" is the digits preset itself (benchmarks/images.py's run)
VARIANTS = {
    "embedding": ("discodiff", {}),
    "xattn": ("xattn", {"network": {"latent_injection": "cross_attention"}}),
    "xattn-soft": ("xattn-soft", {"network": {"latent_injection": "cross_attention"}, "hard": False}),
    "embedding-soft": ("embedding-soft", {"hard": False}),
    # the encoder's heads seeded by k-means++ on its first batch's token features (ViTEncoder head_init)
    "xattn-kmeans": ("xattn-kmeans", {"network": {"latent_injection": "cross_attention"},
                                      "encoder": {"head_init": "kmeans"}}),
    "xattn-soft-kmeans": ("xattn-soft-kmeans", {"network": {"latent_injection": "cross_attention"}, "hard": False,
                                                "encoder": {"head_init": "kmeans"}}),
    "embedding-kmeans": ("embedding-kmeans", {"encoder": {"head_init": "kmeans"}}),
    # against collapse in training, at weight w: the code-usage penalty alone (model.usage_weight,
    # latents.usage_penalty), and with the posterior entropy (model.confidence_weight) as well, log k - I(y; z)
    **{f"{name}-{form}{w:g}": (f"{name}-{form}{w:g}", {**model, "usage_weight": w,
                                                       "confidence_weight": w if form == "info" else 0.0})
       for name, model in (("xattn", {"network": {"latent_injection": "cross_attention"}}),
                           ("xattn-soft", {"network": {"latent_injection": "cross_attention"}, "hard": False}),
                           ("embedding", {}))
       for form in ("usage", "info") for w in (0.01, 0.1, 1.0)},
}


def at_start(cfg, x: torch.Tensor, seed: int) -> dict:
    """Codes in use per latent and the argmax code's mean probability, of a fresh model of `cfg` whose encoder has
    had its data-dependent initialisation (if any) on a seeded batch of train.batch images, over all of `x`."""
    from discodiff.analysis.codebook import codebook_analysis
    from discodiff.model import DiscoDiff
    from discodiff.networks import init_encoder_from_data

    torch.manual_seed(seed)
    model = DiscoDiff(cfg.model)
    first = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:cfg.train.batch]
    init_encoder_from_data(model.encoder, x[first])
    cb = codebook_analysis(model.eval(), None, x)
    return {"codes_used": cb["encoder"]["codes_used"], "confidence": cb["confidence"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--variants", default="embedding,xattn,xattn-soft")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="benchmarks/images.py's folder (default: its default)")
    args = ap.parse_args(argv)

    from discodiff.analysis.codebook import codebook_analysis
    from discodiff.analysis.quality import sample_fid
    from discodiff.cli.options import parse_list
    from discodiff.config import merge
    from discodiff.data import to_uint8
    from discodiff.metrics.fid import InceptionDetector
    from discodiff.runs import resolve_run

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.gettempdir()) / f"discodiff-images-{args.preset}"
    names = parse_list(args.variants, str, "--variants")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    base = run_overrides(args.preset, seed=args.seed)["discodiff"]
    cfgs, data = {}, None
    for name in names:
        folder, model = VARIANTS[name]
        cfg, data = resolve_run(out / folder, preset=args.preset, overrides=merge(base, {"model": model}))
        cfgs[folder] = cfg
    start = time.perf_counter()
    seconds: dict = {}
    models, _ = train_both(out, cfgs, data, seconds)
    det = InceptionDetector.from_file()
    ref, floor, _ = reference_and_floor(to_uint8(data.x), det, out, args.num, args.seed, args.bootstrap)
    cache = fid_cache(out, cfgs, args.num, "fid-cache-injection.json")
    seeds = list(range(args.seed, args.seed + args.num))
    rows = {}
    for name in names:
        folder = VARIANTS[name][0]
        model, prior = models[folder]
        cb = codebook_analysis(model, prior, data.x, prior_samples=args.num, seed=args.seed)
        use = latent_information(model, data.x, data.labels, seed=args.seed)
        init = at_start(cfgs[folder], data.x, args.seed)
        report_path = out / folder / "prior_report.json"
        prior_report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        fid = sample_fid(model, prior, seeds, ref, det, steps=cfgs[folder].sample.steps, batch=128, progress=True,
                         desc=f"{name}, {cfgs[folder].sample.steps} steps", cache=cache, model_key=folder,
                         bootstrap=args.bootstrap)
        rows[name] = {"codes_used": cb["encoder"]["codes_used"], "perplexity": cb["encoder"]["perplexity"],
                      "distinct_tuples": cb["encoder"]["distinct_tuples"],
                      "prior_vs_encoder_tv": cb.get("prior_vs_encoder_tv"), "prior_report": prior_report,
                      "loss_ratio_high_sigma": use["loss_ratio"], "loss_oracle": use["loss_oracle"],
                      "loss_null": use["loss_null"], "fid": fid, "model": VARIANTS[name][1], "at_start": init}
        print(f"{name}: codes used {rows[name]['codes_used']} (at step 0: {init['codes_used']}), loss ratio "
              f"(sigma >= 2) "
              f"{rows[name]['loss_ratio_high_sigma']:.3f}, FID {fid_text(fid)}", flush=True)
    k = next(iter(cfgs.values())).model.codebook_size
    lines = [f"{args.preset}, equal budget; FID ± bootstrap std over {args.num} samples, KID x 1000; loss ratio = "
             f"loss given the encoder's latents / given the null latent, mean over sigma "
             f"{[round(s, 2) for s in high_sigmas()]}", "",
             f"{'variant':>22} {'codes used of ' + str(k):>16} {'at step 0':>16} {'tuples':>7} {'prior TV':>22} "
             f"{'loss ratio':>10} "
             f"{'FID':>16} {'KID':>12}"]
    for name, r in rows.items():
        tv = ", ".join(f"{v:.2f}" for v in r["prior_vs_encoder_tv"] or [])
        lines.append(f"{name:>22} {str(r['codes_used']):>16} {str(r['at_start']['codes_used']):>16} "
                     f"{r['distinct_tuples']:>7} {tv:>22} "
                     f"{r['loss_ratio_high_sigma']:>10.3f} {fid_text(r['fid']):>16} {kid_text(r['fid']):>12}")
    table = "\n".join(lines)
    print("\n" + table)
    report = {"preset": args.preset, "num": args.num,
              "bootstrap": args.bootstrap, "seed": args.seed, "floor": floor, "rows": rows, "table": table,
              "seconds": seconds, "wall_s": round(time.perf_counter() - start, 1), "out": str(out)}
    path = RESULTS / f"latent-injection-{args.preset}.json"
    write_report(report, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
