"""One training step (forward and backward) of discodiff's U-Net at EDM's ADM settings against EDM's own
`DhariwalUNet`, built from EDM's source, side by side in one process.

The two networks have the same blocks: EDM's ImageNet-64 configuration (channel_mult 1-2-3-4, 3 blocks per level,
attention at the three finer levels below the input resolution, 64 channels per head, dropout 0.1, class labels),
scaled to 32x32 and 64 channels by default so that a CPU runs it. EDM's code is under a non-commercial licence and
is not part of discodiff: pass the folder of a checkout of NVlabs/edm (the folder holding `training/networks.py`).

    .venv/bin/python benchmarks/unet_vs_edm.py --edm-source ~/src/edm                 # CPU, 32x32, 64 channels
    .venv/bin/python benchmarks/unet_vs_edm.py --edm-source ~/src/edm --device cuda --resolution 64 --channels 192

It first checks the conversion of `discodiff import-edm`: EDM's network with random weights, and ours given those
weights through edm_import.edm_to_ours, agree on the same inputs and class labels (target: 1e-4 in fp32).

Target: discodiff's step takes at most 1.0x EDM's. The steps alternate between the two networks (a shared machine's
speed drifts between minutes), and each keeps its median; the report says which attention kernels each used.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, log, write_report  # noqa: E402


def edm_unet_class(source: Path):
    """EDM's DhariwalUNet from a checkout of NVlabs/edm at `source` (its `training/networks.py`)."""
    if not (source / "training" / "networks.py").is_file():
        raise SystemExit(f"error: {source} is not a checkout of NVlabs/edm (no training/networks.py)")
    sys.path.insert(0, str(source))
    from training.networks import DhariwalUNet  # noqa: E402  (EDM's code, from the user's checkout)
    return DhariwalUNet


def build_pair(edm_cls, resolution: int, channels: int, num_classes: int, device):
    """(discodiff's U-Net, EDM's DhariwalUNet) at the same settings, in train mode."""
    from discodiff.networks.unet import UNet
    attn = [resolution // 2, resolution // 4, resolution // 8]  # ImageNet-64's (32, 16, 8), scaled
    ours = UNet(resolution, 3, num_classes=num_classes, model_channels=channels, channel_mult=(1, 2, 3, 4),
                channel_mult_emb=4, num_blocks=3, attn_resolutions=attn, dropout=0.1, channels_per_head=64,
                norm_eps=1e-5)
    theirs = edm_cls(img_resolution=resolution, in_channels=3, out_channels=3, label_dim=num_classes,
                     model_channels=channels, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                     attn_resolutions=attn, dropout=0.1)
    return ours.to(device).train(), theirs.to(device).train()


def converted_agreement(ours, theirs, x, noise, labels) -> float:
    """The largest difference between EDM's forward and ours given EDM's weights through `discodiff import-edm`'s
    conversion (edm_import.edm_to_ours), in eval mode. EDM's weights are first drawn at random everywhere (its
    output convolutions start at zero, which would make any two networks agree)."""
    import torch
    from discodiff.edm_import import attention_heads, edm_to_ours
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        ours.load_state_dict(edm_to_ours(theirs.state_dict(), attention_heads(ours)), strict=True)
        ours.eval(), theirs.eval()
        diff = (ours(x, noise, class_labels=labels) - theirs(x, noise, labels)).abs().max().item()
    ours.train(), theirs.train()
    return diff


def step_seconds(net, call, x, device) -> float:
    """The seconds of one forward and backward pass of `call(net, x)`."""
    import torch
    net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call(net, x).square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edm-source", type=Path, required=True, help="a checkout of NVlabs/edm (not shipped here)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=64, help="model_channels (EDM's ImageNet-64: 192)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per network, after 2 warm-up steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "unet_vs_edm.json")
    args = ap.parse_args(argv)
    edm_cls = edm_unet_class(args.edm_source.expanduser())

    import torch
    from discodiff.errors import CheckpointError
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours, theirs = build_pair(edm_cls, args.resolution, args.channels, args.classes, device)
    count = {name: sum(p.numel() for p in net.parameters()) for name, net in (("discodiff", ours), ("edm", theirs))}
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    sigma = torch.rand(args.batch, device=device) + 0.5
    labels = torch.nn.functional.one_hot(torch.arange(args.batch, device=device) % args.classes, args.classes).float()
    calls = {"discodiff": lambda net, x: net(x, sigma.log() / 4, class_labels=labels),
             "edm": lambda net, x: net(x, sigma.log() / 4, labels)}
    try:
        agreement = converted_agreement(ours, theirs, x, sigma.log() / 4, labels)
        log(f"EDM's weights converted as `import-edm` converts them: largest output difference {agreement:.2e} "
            f"(target <= 1e-4: {'met' if agreement <= 1e-4 else 'missed'})")
    except (CheckpointError, RuntimeError) as e:  # e.g. fewer than 64 channels: EDM gives such a block no heads
        agreement = None
        log(f"the conversion was not checked at these settings: {e}")
    nets = {"discodiff": ours, "edm": theirs}
    times = {name: [] for name in nets}
    for i in range(args.steps + 2):
        for name in (("discodiff", "edm") if i % 2 else ("edm", "discodiff")):
            t = step_seconds(nets[name], calls[name], x, device)
            if i >= 2:
                times[name].append(t)
    median = {name: statistics.median(v) for name, v in times.items()}
    ratio = median["discodiff"] / median["edm"]
    log(f"parameters: discodiff {count['discodiff']:,}, EDM {count['edm']:,}")
    log(f"one training step, median of {args.steps}: discodiff {median['discodiff'] * 1000:.1f} ms, EDM "
        f"{median['edm'] * 1000:.1f} ms, ratio {ratio:.3f} (target <= 1.0: {'met' if ratio <= 1.0 else 'missed'})")
    write_report({"device": str(device), "torch": torch.__version__, "resolution": args.resolution,
                  "channels": args.channels, "batch": args.batch, "steps": args.steps, "parameters": count,
                  "median_seconds": median, "ratio": ratio, "seconds": times,
                  "converted_max_abs_diff": agreement}, args.results)


if __name__ == "__main__":
    main()
