"""Image data stay uint8: the decode cache (memory-mapped, keyed by the source, shared by the processes of a
machine), per-batch conversion on the device, xflip, and stage-I training that gives the same weights as float
data held whole."""
import os
import threading
import time
import zipfile

import numpy as np
import pytest
import torch

from discodiff.config import DataConfig, preset_config
from discodiff.data import ArrayDataset, DataError, cache, files, load_dataset

PIL = pytest.importorskip("PIL.Image")


def write_zip(path, n=12, size=(6, 5), grey_first=0, seed=0):
    """n RGB PNGs (the first `grey_first` of them grey) in a zip, with labels; returns the uint8 [N, H, W, 3]."""
    import io
    import json

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size[1], size[0], 3), dtype=np.uint8)
    imgs[:grey_first] = imgs[:grey_first, ..., :1]
    with zipfile.ZipFile(path, "w") as z:
        for i, a in enumerate(imgs):
            buf = io.BytesIO()
            PIL.fromarray(a[..., 0] if i < grey_first else a).save(buf, format="PNG")
            z.writestr(f"img{i:04d}.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": [[f"img{i:04d}.png", i % 3] for i in range(n)]}))
    return imgs


def load(path, **options):
    return load_dataset(DataConfig(name="path", path=str(path), options=options))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(d))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return d


def test_zip_decodes_once_into_a_memory_mapped_uint8_cache(tmp_path, cache_dir, monkeypatch):
    imgs = write_zip(tmp_path / "d.zip")
    d = load(tmp_path / "d.zip")
    assert d.pixels.dtype == torch.uint8 and d.shape == [3, 5, 6] and d.kind == "image"
    assert np.array_equal(d.pixels.permute(0, 2, 3, 1).numpy(), imgs)
    assert d.labels.tolist() == [i % 3 for i in range(12)]
    # x (made on first use) is exactly what the loaders used to hold: x / 127.5 - 1 in float32
    assert d.x.dtype == torch.float32 and torch.equal(d.x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1)
    cached = list(cache_dir.glob("d.zip-*.npy"))
    assert len(cached) == 1 and not list(cache_dir.glob("*.tmp"))
    # a second load memory-maps the file and decodes nothing
    monkeypatch.setattr(files, "_decode_all", lambda *a: pytest.fail("decoded again"))
    again = load(tmp_path / "d.zip")
    assert isinstance(np.load(cached[0], mmap_mode="r"), np.memmap)
    assert torch.equal(again.pixels, d.pixels)
    # max_images is part of the key: 5 images are a file of their own
    monkeypatch.undo()
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_dir))
    assert len(load(tmp_path / "d.zip", max_images=5)) == 5 and len(list(cache_dir.glob("d.zip-*.npy"))) == 2


def test_a_changed_source_gets_a_new_cache_file(tmp_path, cache_dir):
    write_zip(tmp_path / "d.zip", seed=0)
    a = load(tmp_path / "d.zip").pixels.clone()
    imgs = write_zip(tmp_path / "d.zip", seed=1)
    os.utime(tmp_path / "d.zip", ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    b = load(tmp_path / "d.zip")
    assert not torch.equal(a, b.pixels) and np.array_equal(b.pixels.permute(0, 2, 3, 1).numpy(), imgs)
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_cache_next_to_the_data_and_off(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    (tmp_path / "data").mkdir()
    write_zip(tmp_path / "data" / "d.zip")
    load(tmp_path / "data" / "d.zip")
    assert len(list((tmp_path / "data" / cache.FOLDER_NAME).glob("d.zip-*.npy"))) == 1
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    write_zip(tmp_path / "e.zip")
    d = load(tmp_path / "e.zip")
    assert not isinstance(d.pixels.numpy(), np.memmap) and not (tmp_path / cache.FOLDER_NAME).exists()


def test_grey_then_colour_widens_and_a_folder_is_keyed_by_its_files(tmp_path, cache_dir):
    imgs = write_zip(tmp_path / "d.zip", n=70, grey_first=66)  # enough to go through the decoding threads
    d = load(tmp_path / "d.zip")
    assert d.shape == [3, 5, 6] and np.array_equal(d.pixels.permute(0, 2, 3, 1).numpy(), imgs)
    folder = tmp_path / "f"
    with zipfile.ZipFile(tmp_path / "d.zip") as z:
        z.extractall(folder)
    assert torch.equal(load(folder).pixels, d.pixels)
    PIL.fromarray(np.zeros((5, 6, 3), np.uint8)).save(folder / "img0003.png")
    os.utime(folder / "img0003.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert int(load(folder).pixels[3].max()) == 0  # the changed file is seen: a new cache file


def test_other_local_ranks_wait_for_rank_0(tmp_path, cache_dir, monkeypatch):
    imgs = write_zip(tmp_path / "d.zip")
    monkeypatch.setenv("LOCAL_RANK", "1")
    got = {}
    waiter = threading.Thread(target=lambda: got.update(d=load(tmp_path / "d.zip")))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # rank 1 decodes nothing: it waits for the file
    monkeypatch.setenv("LOCAL_RANK", "0")
    load(tmp_path / "d.zip")
    waiter.join(10)
    assert np.array_equal(got["d"].pixels.permute(0, 2, 3, 1).numpy(), imgs)


def test_a_failure_of_rank_0_reaches_the_waiting_ranks(tmp_path, cache_dir, monkeypatch):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("a.png", b"not a png")
    with pytest.raises(DataError, match="cannot read image") as first:
        load(tmp_path / "bad.zip")
    assert not list(cache_dir.glob("*.npy")) and not list(cache_dir.glob("*.tmp"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DataError) as waited:
        load(tmp_path / "bad.zip")
    assert str(waited.value) == str(first.value)


def test_reader_converts_per_batch_and_xflip_draws_only_when_asked():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 3, 4, 5), generator=g, dtype=torch.uint8)
    d = ArrayDataset(pixels=pixels, labels=torch.arange(20) % 4)
    r = d.reader("cpu")
    idx = torch.tensor([3, 1, 3, 19])
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(r.images(idx, gen), d.x[idx]) and r.labels(idx).tolist() == [3, 1, 3, 3]
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())  # no draw without xflip
    f = ArrayDataset(pixels=pixels, xflip=True).reader("cpu")
    y = f.images(torch.arange(20), torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(y[i], d.x[i].flip(-1))) for i in range(20)]
    assert all(flipped[i] or torch.equal(y[i], d.x[i]) for i in range(20)) and 0 < sum(flipped) < 20
    assert torch.equal(y, f.images(torch.arange(20), torch.Generator().manual_seed(1)))  # seeded
    assert torch.equal(torch.cat([b for _, b in f.batches(7)]), d.x)  # whole-set passes never flip
    r.on_host = True  # the path of a set too large for the GPU: rows gathered on the host, then copied
    assert torch.equal(r.images(idx), d.x[idx])


def test_xflip_is_a_data_option(tmp_path, cache_dir):
    write_zip(tmp_path / "d.zip")
    assert load(tmp_path / "d.zip", xflip=True).xflip and not load(tmp_path / "d.zip").xflip
    with pytest.raises(DataError, match="xflip"):
        load(tmp_path / "d.zip", xflip="yes")


def test_stage1_on_uint8_pixels_equals_float_data_held_whole(tmp_path):
    """The per-batch conversion gives the floats the loaders used to hold, so training is bit-identical."""
    from discodiff.checkpoint import load_tensors
    from discodiff.train.stage1 import train_stage1

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    overrides = {"model": {"network": {"model_channels": 8, "channels_per_head": 8, "latent_dim": 16,
                                       "latent_heads": 2, "latent_depth": 1, "dropout": 0.0},
                           "encoder": {"width": 16, "heads": 2, "depth": 1}},
                 "train": {"batch": 16, "kimg": 0.048, "tick_kimg": 0.048, "lr_rampup_kimg": 0}}
    weights = []
    for name, data in [("u8", ArrayDataset(pixels=pixels, name="u8")),
                       ("f32", ArrayDataset(x=pixels.float() / 127.5 - 1, kind="image", name="f32"))]:
        cfg = preset_config("digits", overrides)
        cfg.model.data_shape, cfg.model.num_classes = [1, 8, 8], 0
        (tmp_path / name).mkdir()
        train_stage1(tmp_path / name, cfg, data, quiet=True)
        weights.append(load_tensors(tmp_path / name / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_cache_dir_option(tmp_path, monkeypatch, capsys):
    from discodiff.cli import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "elsewhere"))  # restored after the test; the option wins
    write_zip(tmp_path / "d.zip", size=(8, 8))
    try:
        main(["train", "--preset", "digits", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "d.zip"),
              "--cache-dir", str(tmp_path / "mine"), "--dry-run"])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    assert len(list((tmp_path / "mine").glob("d.zip-*.npy"))) == 1 and not (tmp_path / "elsewhere").exists()
