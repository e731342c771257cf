"""Training and sampling throughput of the baseline (m = 0) and DisCo-Diff at the same network size.

Training images/s come from the real training loop (`train_stage1`, EMA and bookkeeping included), read from
its stats.jsonl after a warm-up tick; the two models train in turns, --repeats rounds, and each keeps its median
(a shared CPU's speed drifts by tens of percent between minutes). Sampling images/s time `pipeline.generate`
(prior + Heun ODE), and the prior's share of sampling time is measured on its own with `pipeline.sample_latents`,
the prior's part of `generate`.

    .venv/bin/python benchmarks/throughput.py --preset digits                # CPU figures
    .venv/bin/python benchmarks/throughput.py --preset emoji --device cuda   # GPU figures

Targets: DisCo-Diff training cost at most 15% above the baseline's; the prior at most 1% of the
total sampling time (the paper: 0.56% on ImageNet-128). DisCo-Diff's sampling throughput within 3% of the
baseline's (its latent tokens are computed once per trajectory). The sampling setups take turns too, and DisCo-Diff
with latent guidance w = 1 is timed beside them (its two passes run as one batched network call).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, write_report  # noqa: E402
from discodiff.cli.options import parse_key_values  # noqa: E402
from discodiff.config import merge, preset_config  # noqa: E402
from discodiff.data import ArrayDataset, load_dataset  # noqa: E402
from discodiff.fileio import check_writable  # noqa: E402
from discodiff.model import DiscoDiff  # noqa: E402
from discodiff.pipeline import generate_batches, sample_latents  # noqa: E402
from discodiff.prior import ARPrior  # noqa: E402
from discodiff.sampling import karras_sigmas  # noqa: E402
from discodiff.train.stage1 import train_stage1  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_images_per_s(cfg, data, device, ticks: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.train.kimg = cfg.train.tick_kimg * (ticks + 1)
        cfg.train.snapshot_ticks = cfg.train.state_ticks = 10**9  # time the loop, not the disk
        train_stage1(Path(run_dir), cfg, data, quiet=True)
        rows = [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]
    timed = rows[1:]  # the first tick includes warm-up
    return sum(r["images_per_s"] for r in timed) / len(timed)


def sampling_round(model: DiscoDiff, prior: ARPrior | None, device, num: int, steps: int, batch: int,
                   guidance: float = 0.0) -> tuple[float, float]:
    """(seconds of `generate` over `num` seeds, seconds of the prior's part alone)."""
    seeds = list(range(num))
    sigmas = karras_sigmas(steps, device=device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in generate_batches(model, seeds, sigmas, batch=batch, prior=prior, guidance=guidance):
        pass
    _sync(device)
    t1 = time.perf_counter()
    if model.num_latents:
        for i in range(0, num, batch):
            sample_latents(model, prior, seeds[i:i + batch], device=device)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def sampling(setups: dict, device, num: int, steps: int, batch: int, repeats: int) -> dict:
    """Sampling speed of each setup {name: (model, prior, guidance)}: the setups take turns, `repeats` rounds, and
    each keeps its fastest round (as with training, a drifting machine then slows all of them alike)."""
    for model, prior, guidance in setups.values():  # warm-up
        for _ in generate_batches(model, list(range(batch)), karras_sigmas(2, device=device), batch=batch,
                                  prior=prior, guidance=guidance):
            pass
    rounds = {name: [] for name in setups}
    for _ in range(repeats):
        for name, (model, prior, guidance) in setups.items():
            rounds[name].append(sampling_round(model, prior, device, num, steps, batch, guidance))
    out = {}
    for name, (model, _, guidance) in setups.items():
        t, p = min(r[0] for r in rounds[name]), min(r[1] for r in rounds[name])
        passes = model.guidance_passes(guidance)
        out[name] = {"images_per_s": num / t, "seconds": t, "prior_seconds": p, "prior_fraction": p / t,
                     "nfe_per_image": (2 * steps - 1) * passes, "network_calls_per_image": 2 * steps - 1,
                     "guidance": guidance}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ticks", type=int, default=3, help="timed training ticks (after one warm-up tick)")
    ap.add_argument("--tick-kimg", type=float, default=None, help="images per tick (default: 2 batches on CPU)")
    ap.add_argument("--num", type=int, default=256, help="images to sample")
    ap.add_argument("--steps", type=int, default=18, help="Heun steps (NFE = 2 * steps - 1)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of training (models alternating) and of sampling")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both models, as `discodiff train --set`")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    overrides = parse_key_values(args.sets)
    device = torch.device(args.device)
    out = check_writable(args.out or RESULTS / f"throughput-{args.preset}-{device.type}.json")
    results = {"preset": args.preset, "overrides": args.sets,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               "torch": torch.__version__, "repeats": args.repeats, "models": {}}
    cfgs, data = {}, None
    for name, m in (("baseline", 0), ("discodiff", None)):
        cfg = preset_config(args.preset, merge(overrides, {"model": {"num_latents": m}} if m is not None else {}))
        if data is None:
            data = load_dataset(cfg.data)  # the preset's own data: it fixes the image shape
            data = ArrayDataset(x=data.x, kind=data.kind, name=data.name)  # unconditional: labels dropped
        cfg.model.data_shape, cfg.model.num_classes = list(data.shape), 0
        cfg.train.tick_kimg = args.tick_kimg or (2 * cfg.train.batch / 1000)
        cfgs[name] = cfg
    # The two models take turns, `repeats` times, and each keeps its median: a machine whose speed drifts (a shared
    # CPU, clocks) then slows both alike instead of biasing the ratio.
    train_ips: dict = {name: [] for name in cfgs}
    for r in range(args.repeats):
        for name, cfg in cfgs.items():
            train_ips[name].append(training_images_per_s(cfg, data, device, args.ticks))
            print(f"  round {r + 1}/{args.repeats} {name:10s} train {train_ips[name][-1]:9.1f} img/s", flush=True)
    setups = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = DiscoDiff(cfg.model).to(device).eval()  # untrained: sampling speed does not depend on the weights
        prior = ARPrior.for_model(cfg.model, cfg.prior_train.network).to(device).eval() if cfg.model.num_latents else None
        setups[name] = (model, prior, 0.0)
    setups["discodiff_guided"] = (*setups["discodiff"][:2], 1.0)  # w = 1: the guided passes batched into one call
    samples = sampling(setups, device, args.num, args.steps, min(args.num, 256), args.repeats)
    results["guided_sampling"] = samples["discodiff_guided"]
    for name, cfg in cfgs.items():
        model = setups[name][0]
        params = sum(p.numel() for p in model.parameters())
        sample = samples[name]
        ips = statistics.median(train_ips[name])
        results["models"][name] = {"num_latents": cfg.model.num_latents, "parameters_stage1": params,
                                   "train_images_per_s": ips, "train_images_per_s_rounds": train_ips[name],
                                   "sampling": sample}
        print(f"{name:10s} m={cfg.model.num_latents:<3d} params {params:>10,}  train {ips:9.1f} img/s (median)  "
              f"sample {sample['images_per_s']:9.1f} img/s ({args.steps} Heun steps)  "
              f"prior {100 * sample['prior_fraction']:.3f}% of sampling time", flush=True)
    b, d = results["models"]["baseline"], results["models"]["discodiff"]
    overhead = b["train_images_per_s"] / d["train_images_per_s"] - 1
    sampling_gap = 1 - d["sampling"]["images_per_s"] / b["sampling"]["images_per_s"]
    results["targets"] = {
        "training_overhead": overhead, "training_overhead_ok": overhead <= 0.15,
        "prior_fraction": d["sampling"]["prior_fraction"], "prior_fraction_ok": d["sampling"]["prior_fraction"] <= 0.01,
        "sampling_gap": sampling_gap, "sampling_gap_ok": sampling_gap <= 0.03,
    }
    g = results["guided_sampling"]
    print(f"DisCo-Diff sampling speed vs baseline: {-100 * sampling_gap:+.1f}% (target within 3%: "
          f"{'PASS' if sampling_gap <= 0.03 else 'FAIL'}); with latent guidance w = 1: {g['images_per_s']:.1f} img/s "
          f"({g['images_per_s'] / d['sampling']['images_per_s']:.2f}x unguided, {g['nfe_per_image']} evaluations in "
          f"{g['network_calls_per_image']} batched calls per image)")
    print(f"DisCo-Diff training cost vs baseline: {100 * overhead:+.1f}% (target <= +15%: "
          f"{'PASS' if overhead <= 0.15 else 'FAIL'})")
    print(f"prior share of sampling time: {100 * d['sampling']['prior_fraction']:.3f}% (target <= 1%: "
          f"{'PASS' if results['targets']['prior_fraction_ok'] else 'FAIL'})")
    write_report(results, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
