"""Host memory of training on a folder or zip of images: uint8 and memory-mapped (the decode cache) against the
same images held whole as float32, the way every loader held them before.

Builds a zip of --num synthetic 64x64 RGB PNGs (seeded: blurred noise, so they compress like photographs rather
than like white noise), then trains a tiny model on it for a few steps in fresh processes, each reporting its own
peak resident memory (resource.getrusage ru_maxrss) and its training images/s:

  cold    the first load: decodes the zip into the cache (DISCODIFF_CACHE_DIR), then trains on the memory map;
  cached  a second start: memory-maps the cache, decodes nothing;
  float   the same images already in memory as float32 [-1, 1] (ArrayDataset(x=...)), the old data path.

    python benchmarks/data_memory.py                         # 20,000 images: about 1-2 minutes on 2 CPU cores
    python benchmarks/data_memory.py --num 2000 --steps 4    # a quick look

Target (the scale path): peak RSS of the training process at most 1.0 GB with 20,000 images, which are 246 MB as
uint8 and 983 MB as float32. Writes the figures as JSON (--out).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

TINY = {"model": {"network": {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                              "attn_resolutions": [], "channels_per_head": 8, "latent_dim": 16,
                              "latent_heads": 2, "latent_depth": 1, "dropout": 0.0},
                  "encoder": {"width": 32, "heads": 2, "depth": 1, "patch_size": 8}},
        "train": {"lr_rampup_kimg": 0, "snapshot_ticks": 10**9, "state_ticks": 10**9}}


def build_zip(path: Path, num: int, size: int, seed: int) -> float:
    """`num` seeded RGB PNGs of size x size in a zip (stored: PNG is compressed already); returns seconds."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for start in range(0, num, 500):
            n = min(500, num - start)
            coarse = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
            smooth = coarse.repeat(8, 1).repeat(8, 2)
            imgs = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
            for i, a in enumerate(imgs):
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="PNG", compress_level=1)
                z.writestr(f"{(start + i) // 1000:05d}/img{start + i:08d}.png", buf.getvalue())
    return time.perf_counter() - t0


def child(args) -> None:
    """One training process: load, train --steps steps, print one JSON line."""
    import torch

    from discodiff.config import DataConfig, preset_config
    from discodiff.data import ArrayDataset, load_dataset
    from discodiff.train.stage1 import train_stage1

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_dataset(DataConfig(name="path", path=str(args.zip), options={"use_labels": False}))
    if args.mode == "float":  # the old path: the whole set as float32 (what every loader used to return)
        x = data.x
        data = ArrayDataset(x=x, kind="image", name=data.name)
        del x
    load_s = time.perf_counter() - t0
    per_tick = args.batch * args.steps_per_tick
    cfg = preset_config("emoji", {**TINY, "train": {**TINY["train"], "batch": args.batch, "tick_kimg": per_tick / 1000,
                                                    "kimg": per_tick * (args.ticks + 1) / 1000, "seed": 0}})
    cfg.model.data_shape, cfg.model.num_classes = data.shape, 0
    with tempfile.TemporaryDirectory() as run_dir:
        train_stage1(Path(run_dir), cfg, data, quiet=True)
        rows = [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]
    ips = [r["images_per_s"] for r in rows[1:]]  # the first tick includes the warm-up
    print(json.dumps({"mode": args.mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "load_s": round(load_s, 2), "images_per_s": round(sum(ips) / len(ips), 1),
                      "pixels_dtype": str(data.stored.dtype), "images": len(data)}), flush=True)


def run_child(args, mode: str, zip_path: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--zip", str(zip_path), "--batch", str(args.batch),
           "--steps-per-tick", str(args.steps_per_tick), "--ticks", str(args.ticks), "--threads", str(args.threads)]
    env = {**os.environ, "DISCODIFF_CACHE_DIR": str(cache_dir)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"{mode:>6}: peak RSS {row['peak_rss_mb']:7.0f} MB, {row['images_per_s']:7.1f} img/s training, "
          f"load {row['load_s']:.1f} s, process {row['wall_s']:.0f} s", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num", type=int, default=20000, help="images in the synthetic zip")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="small: the training step's own memory stays small")
    p.add_argument("--steps-per-tick", type=int, default=4, help="steps per timed tick")
    p.add_argument("--ticks", type=int, default=2, help="timed ticks after a warm-up tick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=None, help="where the zip and cache go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_memory.json"))
    p.add_argument("--child", choices=["cold", "cached", "float"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--zip", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        zip_path, cache_dir = work / "synthetic.zip", work / "cache"
        build_s = build_zip(zip_path, args.num, args.size, args.seed)
        uint8_mb = args.num * args.size * args.size * 3 / 1e6
        print(f"{args.num} images {args.size}x{args.size} RGB: zip {zip_path.stat().st_size / 1e6:.0f} MB in "
              f"{build_s:.0f} s; {uint8_mb:.0f} MB as uint8, {4 * uint8_mb:.0f} MB as float32", flush=True)
        rows = {m: run_child(args, m, zip_path, cache_dir) for m in ("cold", "cached", "float")}
    result = {"num": args.num, "size": args.size, "batch": args.batch, "uint8_mb": round(uint8_mb, 1),
              "float32_mb": round(4 * uint8_mb, 1), "zip_build_s": round(build_s, 1), "runs": rows,
              "target_peak_rss_mb": 1000, "meets_target": max(rows["cold"]["peak_rss_mb"],
                                                              rows["cached"]["peak_rss_mb"]) <= 1000,
              "speed_vs_float": round(rows["cached"]["images_per_s"] / rows["float"]["images_per_s"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
