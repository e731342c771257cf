"""Benchmark: what Inception and the data set's own classifier see. Known changes of real images,
measured in both feature spaces against one reference, so that docs/fid.md can say when to trust which measure.

    .venv/bin/python benchmarks/feature_spaces.py [--data fashion16|digits] [--num 1000] [--ref-num 2000]
        [--bootstrap 10] [--rows real,blurred,...] [--skip-inception] [--results PATH]

The reference: --ref-num held-out images (fashion16: the test split; digits: a seeded half of the images). Each row
takes --num other real images (the training split; digits: the other half), seeded, and changes them:

- real: unchanged (the floor: what --num real images score);
- class mix: drawn with classes 0-4 three times as often as classes 5-9 (the class frequencies' total variation
  from balanced is 0.25): every image is a real one, only the mix of classes is off;
- one class missing: class 0 left out, the others in its place;
- blurred: a 3x3 box blur (edges repeated): the classes intact, the images softer;
- noisy: Gaussian noise of 8 grey levels added, rounded and clipped;
- shifted: every image moved one pixel right (its first column repeated).

For each row: the Fréchet distance ± its bootstrap std and KID in the classifier's features (with the class TV and
the classifier's mean confidence), and the Inception FID ± std and KID (unless --skip-inception), and each distance
over its floor. Inception runs on a CPU at about 16 images/s, so the defaults keep it to a few minutes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/__init__.py
from benchmarks.common import RESULTS, log, write_report  # noqa: E402

ROWS = ("real", "class mix", "one class missing", "blurred", "noisy", "shifted")
DATA = {"fashion16": {"name": "fashion-mnist", "options": {"resolution": 16}}, "digits": {"name": "digits"}}


def sets(data: str, num: int, ref_num: int, seed: int = 0):
    """(reference uint8 images, labels of the pool, pool uint8 images, the DataConfig of the training data)."""
    import torch

    from discodiff.config import DataConfig
    from discodiff.data import load_dataset, to_uint8

    cfg = DataConfig(**DATA[data])
    train = load_dataset(cfg)
    g = torch.Generator().manual_seed(seed)
    images, labels = to_uint8(train.x) if train.pixels is None else train.pixels, train.labels
    if data == "fashion16":
        test = load_dataset(DataConfig(name=cfg.name, options={**cfg.options, "split": "test"}))
        ref = test.pixels[torch.randperm(len(test.pixels), generator=g)[:ref_num].sort().values]
        return ref, labels, images, cfg
    order = torch.randperm(len(images), generator=g)
    half = len(images) // 2
    ref = images[order[:half].sort().values][:ref_num]
    pool = order[half:].sort().values
    return ref, labels[pool], images[pool], cfg


def perturbations(pool, labels, num: int, seed: int = 0) -> dict:
    """{row name: uint8 images [num, C, H, W]} (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed + 1)

    def draw(weights):
        w = weights[labels].double()
        return pool[torch.multinomial(w, num, replacement=False, generator=g).sort().values]

    ones = torch.ones(int(labels.max()) + 1)
    real = draw(ones)
    mix = ones.clone()
    mix[:5] = 3.0
    missing = ones.clone()
    missing[0] = 0.0
    x = real.float()
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noisy = x + 8 * torch.randn(x.shape, generator=g)
    shifted = torch.cat([x[..., :1], x[..., :-1]], dim=-1)

    def u8(t):
        return t.round().clamp(0, 255).to(torch.uint8)

    return {"real": real, "class mix": draw(mix), "one class missing": draw(missing), "blurred": u8(blurred),
            "noisy": u8(noisy), "shifted": u8(shifted)}


def measure(det, ref_images, rows: dict, bootstrap: int, batch: int) -> dict:
    from discodiff.metrics import kid
    from discodiff.metrics.fid import scores, stats_of_images

    ref = stats_of_images(ref_images, det, batch=batch, progress=True, desc="reference features")
    ref.kid_self_mean = kid.self_kernel_mean(ref.features)
    out = {}
    for name, images in rows.items():
        t0 = time.perf_counter()
        st = stats_of_images(images, det, batch=batch, progress=True, desc=name)
        res = scores(st, ref, bootstrap=bootstrap)
        if hasattr(det, "class_balance"):
            res.update(det.class_balance(st.features, ref.features))
        out[name] = {k: v for k, v in res.items() if k not in ("class_frequencies", "data_class_frequencies")}
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"[feature_spaces] {det.backend} {name}: FD {res['fid']:.3f} ± {res.get('fid_std', 0):.3f}, "
            f"KID {res['kid']:.5f}" + (f", class TV {res['class_tv']:.3f}" if "class_tv" in res else ""))
    for r in out.values():
        r["over_floor"] = r["fid"] / out["real"]["fid"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(DATA), default="fashion16")
    ap.add_argument("--num", type=int, default=1000, help="images per row")
    ap.add_argument("--ref-num", type=int, default=2000, help="reference images")
    ap.add_argument("--bootstrap", type=int, default=10, help="bootstrap resamples for each distance's std")
    ap.add_argument("--rows", default=None, help=f"comma-separated rows (default: all of {', '.join(ROWS)}; "
                    f"real is always measured, as the floor)")
    ap.add_argument("--skip-inception", action="store_true", help="the classifier's features only (seconds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=None, help="default: results/feature-spaces-<data>.json")
    args = ap.parse_args(argv)

    import torch

    from discodiff.metrics.classifier import classifier_features
    from discodiff.metrics.fid import InceptionDetector

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ref_images, labels, pool, cfg = sets(args.data, args.num, args.ref_num)
    rows = perturbations(pool, labels, args.num)
    if args.rows:
        wanted = {"real", *(r.strip() for r in args.rows.split(","))}
        unknown = sorted(wanted - set(rows))
        if unknown:
            ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
        rows = {k: v for k, v in rows.items() if k in wanted}
    clf = classifier_features(cfg, notice=log)
    report = {"data": args.data, "num": args.num, "ref_num": len(ref_images), "bootstrap": args.bootstrap,
              "classifier": {k: clf.config[k] for k in ("data", "held_out", "held_out_accuracy", "recipe",
                                                        "weights_sha256")},
              "classifier_features": measure(clf, ref_images, rows, args.bootstrap, 500)}
    if not args.skip_inception:
        det = InceptionDetector.from_file()
        report["inception"] = measure(det, ref_images, rows, args.bootstrap, 32)
        report["inception_backend"] = det.backend
    log(f"\n{'row':<18} {'classifier FD':>16} {'/floor':>7} {'class TV':>8} {'conf.':>6}"
        + ("" if args.skip_inception else f" {'Inception FID':>16} {'/floor':>7}"))
    for name in rows:
        c = report["classifier_features"][name]
        line = (f"{name:<18} {c['fid']:>8.3f} ± {c.get('fid_std', 0):<5.3f} {c['over_floor']:>7.2f} "
                f"{c['class_tv']:>8.3f} {c['confidence']:>6.3f}")
        if not args.skip_inception:
            i = report["inception"][name]
            line += f" {i['fid']:>8.2f} ± {i.get('fid_std', 0):<5.2f} {i['over_floor']:>7.2f}"
        log(line)
    report["seconds"] = round(time.perf_counter() - start, 1)
    out = args.results or RESULTS / f"feature-spaces-{args.data}.json"
    write_report(report, out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
