"""Benchmark: can the encoder be made to name the class without labels?

    .venv/bin/python benchmarks/research/encoder_objectives.py [--preset fashion16] [--width 16] [--seed 0] \
        [--variants preset,m8,...] [--kmeans 16,256] [--out /tmp/discodiff-sweep-fashion16]

benchmarks/research/latent_class.py found that DisCo-Diff's FID gain follows how much of the class its latents name
(a linear probe's accuracy on the one-hot tuple). This screens encoder objectives by that measure, which needs stage
I only (15-21 minutes a run at width 16 on 2 cores) where an FID ratio needs the prior and 4,000 samples more. Each
variant in VARIANTS is trained (stage I, the sweep's settings and folder: <out>/w<width>-s<seed>/discodiff[-<name>],
so that benchmarks/sweep.py --variant <name> reuses it) unless it is there, and measured: the probe's held-out
accuracy and each latent's I(class; z_i) (latent_class.measure), and its loss z / null at high noise
(benchmarks/common.py's latent_information). For scale, --kmeans K clusters the training images by k-means in pixel
space, what the denoising loss asks of one latent as sigma grows (the best denoiser given z is then E[y | z]), and
measures the clusters the same way. Writes benchmarks/results/encoder-objectives-<preset>-w<width>-s<seed>.json.

Ran at commit 8b0f46c (as benchmarks/encoder_objectives.py), where the options its VARIANTS set exist: the focus and
invariance variants need model.latent_sigma_focus and model.invariance_weight / _shift / _flip, since removed from
the package, and the info variants model.usage_weight with model.confidence_weight, since folded into
model.regularisers.information. To run it again as it ran, check out that commit. Its loss z / null was then measured at
sigma 2.34, 4.74, 9.61 and 19.48, as latent_information still is.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, run_latent_information, write_report  # noqa: E402
from benchmarks.research.latent_class import measure  # noqa: E402
from benchmarks.sweep import child_env, run_folder, run_logged, stage1_done, train_commands  # noqa: E402

# name -> the --set overrides of DisCo-Diff's stage I ("" is the preset itself, the sweep's "discodiff" run)
VARIANTS = {
    "": [],
    "k100": ["model.codebook_size=100"],
    "m1-info0.1": ["model.num_latents=1", "model.usage_weight=0.1", "model.confidence_weight=0.1"],
    "m1-k256-info0.1": ["model.num_latents=1", "model.codebook_size=256", "model.usage_weight=0.1",
                        "model.confidence_weight=0.1"],
    "m4-focus0.5": ["model.latent_sigma_focus=0.5"],
    "m8": ["model.num_latents=8"],
    "m8-focus0.5": ["model.num_latents=8", "model.latent_sigma_focus=0.5"],
    "m8-focus2": ["model.num_latents=8", "model.latent_sigma_focus=2"],
    "m8-focus5": ["model.num_latents=8", "model.latent_sigma_focus=5"],
    "m8-enc4x128": ["model.num_latents=8", "model.encoder.depth=4", "model.encoder.width=128"],
    "m8-inv0.1": ["model.num_latents=8", "model.usage_weight=0.1", "model.invariance_weight=0.1",
                  "model.invariance_shift=2", "model.invariance_flip=true"],
    "m16": ["model.num_latents=16"],
    # fixed latents: residual k-means of the pixels over the whole training set (networks/kmeans.py), not learned
    "km1x256": ["model.encoder.name=kmeans", "model.num_latents=1", "model.codebook_size=256"],
    "km4x16": ["model.encoder.name=kmeans"],
}


def kmeans_reference(preset: str, clusters: int, seed: int = 0) -> dict:
    """class_information of k-means clusters of the training images in pixel space (scikit-learn's MiniBatchKMeans,
    three restarts) and their mean squared distance to the centroid per pixel (in the data's [-1, 1] scale)."""
    from sklearn.cluster import MiniBatchKMeans

    from discodiff.analysis.codebook import class_information
    from discodiff.config import preset_config
    from discodiff.data import load_dataset

    data = load_dataset(preset_config(preset).data)
    x = data.x.float().flatten(1).numpy()
    km = MiniBatchKMeans(clusters, random_state=seed, batch_size=4096, n_init=3).fit(x)
    info = class_information(torch.as_tensor(km.labels_)[:, None], data.labels, clusters)
    return {**info, "clusters": clusters, "distortion_per_pixel": float(km.inertia_ / x.size)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="fashion16")
    ap.add_argument("--width", type=int, default=16, help="the U-Net's model_channels")
    ap.add_argument("--seed", type=int, default=0, help="the training seed")
    ap.add_argument("--variants", default=",".join(n or "preset" for n in VARIANTS),
                    help=f"comma-separated, of: {', '.join(n or 'preset' for n in VARIANTS)}")
    ap.add_argument("--kmeans", default="10,16,256", help="pixel-space k-means cluster counts (empty: none)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/discodiff-sweep-fashion16"), help="the sweep's run folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args(argv)
    names = ["" if n == "preset" else n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(n or 'preset' for n in VARIANTS)}")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    start = time.perf_counter()

    rows = []
    for name in names:
        path = run_folder(args.out, args.width, args.seed, "discodiff", name or None)
        run = {"width": args.width, "seed": args.seed, "model": "discodiff", "dir": path}
        if stage1_done(path) is None:
            print(f"[train] {path}", flush=True)
            train = train_commands(args.preset, run, VARIANTS[name])[0]
            run_logged([train], path.parent / f"{path.name}-train.log", child_env(args.threads))
        info = measure(path, device)
        loss = run_latent_information(path, device)["loss_ratio"]
        rows.append({"variant": name or "preset", "overrides": VARIANTS[name], "run": str(path),
                     "latent_loss_ratio": loss, **info})
        print(f"{name or 'preset':>12}: probe accuracy {info['probe_accuracy']:.3f}, I(class; z_i) "
              f"{min(info['mutual_information_bits']):.2f}-{max(info['mutual_information_bits']):.2f} bits, "
              f"loss z/null {loss:.3f}, codes in use {min(info['codes_used'])}-{max(info['codes_used'])} of "
              f"{info['codebook_size']}, {info['distinct_tuples']} distinct tuples", flush=True)
    references = []
    for k in [int(v) for v in args.kmeans.split(",") if v]:
        ref = kmeans_reference(args.preset, k)
        references.append(ref)
        print(f"{'k-means ' + str(k):>12}: probe accuracy {ref['probe_accuracy']:.3f}, I(class; cluster) "
              f"{ref['mutual_information_bits'][0]:.2f} bits, distortion {ref['distortion_per_pixel']:.4f}", flush=True)

    report = {"preset": args.preset, "width": args.width,
              "seed": args.seed, "variants": rows, "kmeans": references,
              "seconds": round(time.perf_counter() - start, 1), "device": str(device),
              "note": "probe_accuracy: held-out accuracy of a linear probe on the one-hot latents (1/6 of the images "
                      "held out, seed 0); latent_loss_ratio: the denoiser's loss given the encoder's latents over "
                      "its loss given the null latent at high noise (below 1: the latents inform it)."}
    out = args.results or RESULTS / f"encoder-objectives-{args.preset}-w{args.width}-s{args.seed}.json"
    write_report(report, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
