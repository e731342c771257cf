"""`discodiff import-edm`: EDM's DhariwalUNet snapshots converted into plain runs, with nothing in the pickle run
(SongUNet snapshots: test_import_edm_song.py).

No EDM code is used here. The snapshots are made by a stand-in `torch_utils.persistence` module written below and
registered in sys.modules only while pickling: objects reduce to its reconstruct function, with a meta record
holding module source (which would leave a marker file if it were ever executed), the class name and the state, as
EDM's persistence module does. The network is a tiny DhariwalUNet-shaped state dict in EDM's naming, and the
converted network is checked against an independent forward of EDM's layout written here from its description
(EDM's attention splits the qkv channels as (head, channel, q/k/v)).
"""
from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import run_cli
from discodiff.errors import CheckpointError, ConfigError
from discodiff.edm_import import convert, read_snapshot
from discodiff.runs import Run

pytestmark = [pytest.mark.usefixtures("one_thread")]

RES, CHANNELS, LABELS = 16, 3, 5
NET = dict(model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16, 8], dropout=0.1)


# ---- a stand-in for EDM's persistence module, and snapshots made with it ----------------------------------------

def _marker_source(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('EDM module source was executed')\n"


@contextlib.contextmanager
def fake_persistence(marker):
    """`torch_utils.persistence` with a `_reconstruct_persistent_obj` that leaves `marker` if it is ever called."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        open(marker, "w").write("the pickle's reconstruct function was called")
        raise RuntimeError("EDM's reconstruct function must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class FakeModule(torch.nn.Module):
    """Pickles as EDM's persistent classes do: reduce -> (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, class_name, *, params=None, buffers=None, modules=None, init_kwargs=None, **attrs):
        super().__init__()
        self._class_name = class_name
        for k, v in (params or {}).items():
            self.register_parameter(k, None if v is None else torch.nn.Parameter(v, requires_grad=False))
        for k, v in (buffers or {}).items():
            self.register_buffer(k, v)
        for k, v in (modules or {}).items():
            self.add_module(k, v)
        self._init_args, self._init_kwargs = (), dict(init_kwargs or {})
        self.__dict__.update(attrs)

    def __reduce__(self):
        state = dict(self.__dict__)
        name = state.pop("_class_name")
        meta = dict(type="class", version=6, module_src=_marker_source(self._marker), class_name=name, state=state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def _leaf(name, tensors):
    kind = ("GroupNorm" if "norm" in name else "Linear" if tensors.get("weight") is not None
            and tensors["weight"].ndim == 2 else "Conv2d")
    params = {k: v for k, v in tensors.items() if k in ("weight", "bias")}
    buffers = {"resample_filter": tensors.get("resample_filter")} if kind == "Conv2d" else {}
    return FakeModule(kind, params=params, buffers=buffers, init_kwargs={"init_weight": np.float64(np.sqrt(1 / 3))})


def _tree(flat: dict[str, torch.Tensor], prefix: str):
    """{'conv0.weight': t, ...} under `prefix` -> FakeModule children."""
    groups = collections.OrderedDict()
    for key, value in flat.items():
        if key.startswith(prefix):
            head, _, rest = key[len(prefix):].partition(".")
            groups.setdefault(head, collections.OrderedDict())[rest] = value
    return groups


def edm_snapshot(edm_state: dict[str, torch.Tensor], marker, *, model_type="DhariwalUNet", extra=None) -> bytes:
    """An EDM-format snapshot pickle of a DhariwalUNet with state `edm_state` (EDM's names)."""
    FakeModule._marker = marker
    blocks = {}
    for part in ("enc", "dec"):
        md = torch.nn.ModuleDict()  # EDM's enc/dec are torch ModuleDicts of persistent blocks
        for name, sub in _tree(edm_state, f"{part}.").items():
            if name.endswith("_conv"):
                md[name] = _leaf(name, {k.split(".")[-1]: v for k, v in sub.items()})
            else:
                parts = {n: _leaf(n, {k.split(".")[-1]: v for k, v in s.items()})
                         for n, s in _tree(sub, "").items()}
                md[name] = FakeModule("UNetBlock", modules=parts, init_kwargs={"eps": 1e-5},
                                      num_heads=0, skip_scale=1, dropout=NET["dropout"])
        blocks[part] = md
    top = {n: _leaf(n, {k: v for k, v in s.items()}) for n, s in _tree(edm_state, "").items()
           if n not in ("enc", "dec")}
    unet = FakeModule(model_type, modules={"map_noise": FakeModule("PositionalEmbedding", num_channels=64),
                                           "map_augment": None, **top, **blocks},
                      init_kwargs=dict(img_resolution=RES, in_channels=CHANNELS, out_channels=CHANNELS,
                                       label_dim=LABELS, **NET),
                      label_dropout=0)
    precond = FakeModule("EDMPrecond", modules={"model": unet}, img_resolution=RES, img_channels=CHANNELS,
                         label_dim=LABELS, use_fp16=False, sigma_min=0, sigma_max=float("inf"), sigma_data=0.5,
                         init_kwargs=dict(img_resolution=RES, img_channels=CHANNELS, label_dim=LABELS,
                                          model_type=model_type, **NET))
    loss = FakeModule("EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    data = dict(ema=precond, loss_fn=loss, augment_pipe=None,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="imagenet.zip"),
                **(extra or {}))
    with fake_persistence(marker):
        return pickle.dumps(data)


# ---- a DhariwalUNet state dict in EDM's naming, and an independent forward of EDM's layout ----------------------

def edm_block_names():
    """(enc names, dec names) in DhariwalUNet's order at the tiny configuration."""
    enc, dec = [], []
    levels = list(enumerate(NET["channel_mult"]))
    for level, _ in levels:
        res = RES >> level
        enc.append(f"{res}x{res}_conv" if level == 0 else f"{res}x{res}_down")
        enc += [f"{res}x{res}_block{i}" for i in range(NET["num_blocks"])]
    for level, _ in reversed(levels):
        res = RES >> level
        dec += [f"{res}x{res}_in0", f"{res}x{res}_in1"] if level == len(levels) - 1 else [f"{res}x{res}_up"]
        dec += [f"{res}x{res}_block{i}" for i in range(NET["num_blocks"] + 1)]
    return enc, dec


def random_edm_state(seed=0) -> dict[str, torch.Tensor]:
    """Random weights for every tensor of the tiny DhariwalUNet, in EDM's names and shapes (the shapes taken from our
    U-Net of the same configuration with EDM's three attention names, plus EDM's [1, 1] resampling filters)."""
    from discodiff.networks.unet import UNet
    with torch.device("meta"):
        ours = UNet(RES, CHANNELS, num_classes=LABELS, channels_per_head=64, norm_eps=1e-5, **NET)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in ours.state_dict().items():
        key = key.replace(".attn.norm.", ".norm2.").replace(".attn.qkv.", ".qkv.").replace(".attn.proj.", ".proj.")
        fan_in = math.prod(t.shape[1:]) if t.ndim > 1 else 1
        scale = 1 / math.sqrt(fan_in) if t.ndim > 1 else 0.3
        base = 1.0 if ("norm" in key and key.endswith("weight")) else 0.0
        state[key] = base + torch.randn(t.shape, generator=g) * scale
    f = torch.full((1, 1, 2, 2), 0.25)
    for name in edm_block_names()[0] + edm_block_names()[1]:
        if name.endswith(("_down", "_up")):
            part = "enc" if name.endswith("_down") else "dec"
            state[f"{part}.{name}.conv0.resample_filter"] = f.clone()
            state[f"{part}.{name}.skip.resample_filter"] = f.clone()
    return state


def edm_forward(sd, x, noise_labels, class_labels):
    """DhariwalUNet's F(x, c_noise, class) on state dict `sd` (EDM's names), written from EDM's layout."""
    def linear(name, h):
        return F.linear(h, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    def norm(name, h):
        return F.group_norm(h, min(32, h.shape[1] // 4), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)

    def conv(name, h):
        w = sd[f"{name}.weight"]
        return F.conv2d(h, w, sd.get(f"{name}.bias"), padding=w.shape[-1] // 2)

    half = NET["model_channels"] // 2
    freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / half)
    angles = noise_labels[:, None] * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    emb = linear("map_layer1", F.silu(linear("map_layer0", emb)))
    emb = F.silu(emb + class_labels @ sd["map_label.weight"].T)

    def resample(h, kind):
        if kind == "down":  # EDM's [1, 1] filter at stride 2
            return F.avg_pool2d(h, 2)
        if kind == "up":    # its transposed convolution with the filter: nearest neighbour
            return F.interpolate(h, scale_factor=2, mode="nearest")
        return h

    def block(name, h):
        kind = "down" if name.endswith("_down") else "up" if name.endswith("_up") else None
        orig = h
        h = conv(f"{name}.conv0", resample(F.silu(norm(f"{name}.norm0", h)), kind))
        scale, shift = linear(f"{name}.affine", emb)[:, :, None, None].chunk(2, dim=1)
        h = conv(f"{name}.conv1", F.silu(shift + norm(f"{name}.norm1", h) * (scale + 1)))
        orig = resample(orig, kind)
        h = h + (conv(f"{name}.skip", orig) if f"{name}.skip.weight" in sd else orig)
        if f"{name}.qkv.weight" in sd:
            B, C, H, W = h.shape
            heads = C // 64
            q, k, v = conv(f"{name}.qkv", norm(f"{name}.norm2", h)).reshape(B * heads, C // heads, 3, -1).unbind(2)
            w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(C // heads)).softmax(dim=2)
            h = conv(f"{name}.proj", torch.einsum("nqk,nck->ncq", w, v).reshape(B, C, H, W)) + h
        return h

    enc, dec = edm_block_names()
    skips, h = [], x
    for name in enc:
        h = conv(f"enc.{name}", h) if name.endswith("_conv") else block(f"enc.{name}", h)
        skips.append(h)
    for name in dec:
        if "_block" in name:
            h = torch.cat([h, skips.pop()], dim=1)
        h = block(f"dec.{name}", h)
    return conv("out_conv", F.silu(norm("out_norm", h)))


def edm_precond(sd, x, sigma, class_labels, sigma_data=0.5):
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + s**2).sqrt()
    return c_skip * x + c_out * edm_forward(sd, c_in * x, sigma.log() / 4, class_labels)


# ---- the tests ---------------------------------------------------------------------------------------------------

def _convert(tmp_path, state=None, **kw):
    marker = tmp_path / "executed"
    pkl = tmp_path / "network-snapshot-000100.pkl"
    pkl.write_bytes(edm_snapshot(state if state is not None else random_edm_state(), marker, **kw))
    return pkl, marker


def test_converted_network_matches_edms_layout(tmp_path):
    state = random_edm_state()
    pkl, marker = _convert(tmp_path, state)
    run_dir = tmp_path / "run"
    cfg = convert(pkl, run_dir)
    assert not marker.exists() and "torch_utils" not in sys.modules  # nothing in the pickle ran or was imported
    assert cfg.model.num_latents == 0 and cfg.model.num_classes == LABELS
    assert cfg.model.data_shape == [CHANNELS, RES, RES] and cfg.model.network["norm_eps"] == 1e-5
    assert cfg.train.kimg == 100  # from network-snapshot-000100.pkl: the run counts as finished
    assert cfg.sample.guidance == 0 and cfg.sample.steps == 40

    model = Run(run_dir).load_model()  # the layout `sample`, `fid gen` and `--init-from` read
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, CHANNELS, RES, RES, generator=g)
    sigma = torch.tensor([0.02, 0.5, 3.0, 60.0])
    labels = torch.tensor([0, 3, 4, 1])
    onehot = F.one_hot(labels, LABELS).float()
    with torch.no_grad():
        ref = edm_precond(state, x * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt(), sigma, onehot)
        ours = model.denoise(x * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt(), sigma, class_labels=labels)
        f_ref = edm_forward(state, x, sigma.log() / 4, onehot)
        f_ours = model.denoiser.net(x, sigma.log() / 4, class_labels=onehot)
    assert f_ref.abs().mean() > 0.1  # a non-trivial function of x (every zero-initialised layer has weights here)
    assert (f_ours - f_ref).abs().max() < 1e-4
    assert (ours - ref).abs().max() < 1e-4
    # the qkv rows are really reordered: EDM's order read as ours gives another function
    renames = {".norm2.": ".attn.norm.", ".qkv.": ".attn.qkv.", ".proj.": ".attn.proj."}
    unpermuted = {}
    for k, v in state.items():
        if not k.endswith("resample_filter"):
            for a, b in renames.items():
                k = k.replace(a, b)
            unpermuted[k] = v
    other = Run(run_dir).load_model()
    other.denoiser.net.load_state_dict(unpermuted)
    other.eval()
    with torch.no_grad():
        assert (other.denoiser.net(x, sigma.log() / 4, class_labels=onehot) - f_ref).abs().max() > 1e-3


def test_converted_run_starts_a_fine_tune(tmp_path):
    """`train --init-from` accepts the converted run as a finished plain run of the same backbone."""
    from discodiff import finetune
    pkl, _ = _convert(tmp_path)
    cfg = convert(pkl, tmp_path / "run")
    new = Run(tmp_path / "run").config
    new.model.num_latents, new.model.codebook_size = 2, 4
    new.model.encoder = {"name": "vit", "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
    new.model.network = {**cfg.model.network, "latent_dim": 32, "latent_depth": 1, "latent_heads": 2}
    new.train.init_from = finetune.base_record(tmp_path / "run")
    finetune.check_base(new)


def test_refuses_other_globals_without_running_them(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    pkl, _ = _convert(tmp_path, extra={"evil": Evil()})
    with pytest.raises(CheckpointError, match=r"refusing the global (posix|os|nt)\.system"):
        read_snapshot(pkl)
    code, _, err = run_cli(["import-edm", str(pkl), "--run-dir", str(tmp_path / "run")], capsys)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and "system" in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "executed").exists()


def test_refuses_what_it_cannot_convert(tmp_path, capsys):
    pkl, _ = _convert(tmp_path, model_type="FooUNet")
    code, _, err = run_cli(["import-edm", str(pkl), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "FooUNet" in err and "SongUNet" in err, err
    assert not (tmp_path / "run").exists()
    # not a pickle at all; a torch.save file (persistent ids); an existing run
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable EDM snapshot"):
        read_snapshot(junk)
    saved = tmp_path / "saved.pkl"
    torch.save({"ema": torch.zeros(2)}, saved, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="persistent id|refusing|not an EDM"):
        read_snapshot(saved)
    good, _ = _convert(tmp_path)
    convert(good, tmp_path / "r2")
    with pytest.raises(ConfigError, match="already holds a run"):
        convert(good, tmp_path / "r2")


def test_cli_writes_a_plain_run(tmp_path, capsys):
    pkl, marker = _convert(tmp_path)
    code, out, err = run_cli(["import-edm", str(pkl), "--run-dir", str(tmp_path / "run")], capsys)
    assert code in (0, None), err
    assert "CC BY-NC-SA 4.0" in out and not marker.exists()
    from discodiff.checkpoint import read_metadata
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert meta["kimg"] == "100.0" and len(meta["source_sha256"]) == 64 and "CC BY-NC-SA" in meta["licence"]
