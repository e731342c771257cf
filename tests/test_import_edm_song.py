"""`discodiff import-edm` on EDM's SongUNet (DDPM++ / NCSN++) snapshots, and the song_unet backbone they become.

No EDM code is used here. The snapshots are made with test_import_edm.py's stand-in persistence module; the network
is a tiny SongUNet state dict in EDM's naming, its keys and shapes written here from SongUNet's layout (not taken
from discodiff's network), and the converted network is checked against an independent forward of that layout
written here: the noise embedding as [cos, sin] then swapped, resampling by average pooling for the [1, 1] filter and
by zero insertion and convolution for up-sampling, attention with EDM's (channel, q/k/v) split of one head.
"""
from __future__ import annotations

import collections
import math
import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import run_cli
from test_import_edm import FakeModule, _tree, fake_persistence

from discodiff import finetune
from discodiff.edm_import import convert
from discodiff.model import DiscoDiff
from discodiff.runs import Run

pytestmark = [pytest.mark.usefixtures("one_thread")]

RES, CHANNELS, LABELS = 16, 3, 5
BASE = dict(model_channels=32, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1)
VARIANTS = {
    # EDM's DDPM++ (its CIFAR-10 "-vp" networks), with the 9 augmentation labels EDM trained them with
    "ddpmpp": dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                   decoder_type="standard", resample_filter=[1, 1], augment_dim=9),
    # EDM's NCSN++ as its train.py builds it ("-ve" networks): residual encoder, standard decoder
    "ncsnpp": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   decoder_type="standard", resample_filter=[1, 3, 3, 1]),
    # Song et al.'s NCSN++ decoder (skip) and the skip encoder
    "ncsnpp-skip": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="skip",
                        decoder_type="skip", resample_filter=[1, 3, 3, 1]),
}


# ---- SongUNet's state dict in EDM's naming, from its layout -----------------------------------------------------

def song_layout(opts):
    """[(part, name, kind, cin, cout, extra)] in SongUNet's module order: kind is 'conv', 'block', 'aux_down',
    'aux_skip', 'aux_residual', 'aux_up', 'aux_norm' or 'aux_conv'."""
    mc, mults = opts["model_channels"], opts["channel_mult"]
    out, cout, caux = [], CHANNELS, CHANNELS
    for level, mult in enumerate(mults):
        res = RES >> level
        if level == 0:
            out.append(("enc", f"{res}x{res}_conv", "conv", CHANNELS, mc, {}))
            cout = mc
        else:
            out.append(("enc", f"{res}x{res}_down", "block", cout, cout, {"down": True}))
            if opts["encoder_type"] == "skip":
                out.append(("enc", f"{res}x{res}_aux_down", "aux_down", caux, caux, {}))
                out.append(("enc", f"{res}x{res}_aux_skip", "aux_skip", caux, cout, {}))
            if opts["encoder_type"] == "residual":
                out.append(("enc", f"{res}x{res}_aux_residual", "aux_residual", caux, cout, {}))
                caux = cout
        for i in range(opts["num_blocks"]):
            out.append(("enc", f"{res}x{res}_block{i}", "block", cout, mc * mult,
                        {"attn": res in opts["attn_resolutions"]}))
            cout = mc * mult
    skips = [c for part, _, kind, _, c, _ in out if not kind.startswith("aux")]
    for level, mult in reversed(list(enumerate(mults))):
        res = RES >> level
        if level == len(mults) - 1:
            out.append(("dec", f"{res}x{res}_in0", "block", cout, cout, {"attn": True}))
            out.append(("dec", f"{res}x{res}_in1", "block", cout, cout, {}))
        else:
            out.append(("dec", f"{res}x{res}_up", "block", cout, cout, {"up": True}))
        for i in range(opts["num_blocks"] + 1):
            cin = cout + skips.pop()
            out.append(("dec", f"{res}x{res}_block{i}", "block", cin, mc * mult,
                        {"attn": i == opts["num_blocks"] and res in opts["attn_resolutions"], "skip": True}))
            cout = mc * mult
        if opts["decoder_type"] == "skip" or level == 0:
            if opts["decoder_type"] == "skip" and level < len(mults) - 1:
                out.append(("dec", f"{res}x{res}_aux_up", "aux_up", CHANNELS, CHANNELS, {}))
            out.append(("dec", f"{res}x{res}_aux_norm", "aux_norm", cout, cout, {}))
            out.append(("dec", f"{res}x{res}_aux_conv", "aux_conv", cout, CHANNELS, {}))
    return out


def song_edm_state(opts, seed=0) -> dict[str, torch.Tensor]:
    """Random weights for every tensor of a SongUNet with options `opts`, in EDM's names, plus its filter buffers."""
    g = torch.Generator().manual_seed(seed)
    mc = opts["model_channels"]
    emb, noise = mc * 4, mc * opts["channel_mult_noise"]
    taps = torch.tensor(opts["resample_filter"], dtype=torch.float32)
    filt = (torch.outer(taps, taps) / taps.sum() ** 2)[None, None]
    state = {}

    def w(key, *shape, scale=None):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        state[key] = torch.randn(shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(fan_in))

    def lin(name, cin, cout, bias=True):
        w(f"{name}.weight", cout, cin)
        if bias:
            w(f"{name}.bias", cout, scale=0.3)

    def cnv(name, cin, cout, k, resample=False):
        w(f"{name}.weight", cout, cin, k, k)
        w(f"{name}.bias", cout, scale=0.3)
        if resample:
            state[f"{name}.resample_filter"] = filt.clone()

    def norm(name, c):
        state[f"{name}.weight"] = 1 + torch.randn(c, generator=g) * 0.3
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.3

    if opts["embedding_type"] == "fourier":
        state["map_noise.freqs"] = torch.randn(noise // 2, generator=g) * 16
    lin("map_label", LABELS, noise)
    if opts.get("augment_dim"):
        lin("map_augment", opts["augment_dim"], noise, bias=False)
    lin("map_layer0", noise, emb)
    lin("map_layer1", emb, emb)
    for part, name, kind, cin, cout, extra in song_layout(opts):
        key = f"{part}.{name}"
        if kind == "conv":
            cnv(key, cin, cout, 3)
        elif kind in ("aux_down", "aux_up"):
            state[f"{key}.resample_filter"] = filt.clone()
        elif kind == "aux_skip":
            cnv(key, cin, cout, 1)
        elif kind == "aux_residual":
            cnv(key, cin, cout, 3, resample=True)
        elif kind == "aux_norm":
            norm(key, cin)
        elif kind == "aux_conv":
            cnv(key, cin, cout, 3)
        else:
            resample = extra.get("up", False) or extra.get("down", False)
            norm(f"{key}.norm0", cin)
            cnv(f"{key}.conv0", cin, cout, 3, resample=resample)
            lin(f"{key}.affine", emb, cout)
            norm(f"{key}.norm1", cout)
            cnv(f"{key}.conv1", cout, cout, 3)
            if cin != cout or resample:
                cnv(f"{key}.skip", cin, cout, 1, resample=resample)
            if extra.get("attn"):
                norm(f"{key}.norm2", cout)
                cnv(f"{key}.qkv", cout, 3 * cout, 1)
                cnv(f"{key}.proj", cout, cout, 1)
    return state


def song_snapshot(state, opts, marker, *, label_dim=LABELS) -> bytes:
    """An EDM-format snapshot pickle of EDMPrecond(SongUNet) with `state` (EDM's names)."""
    FakeModule._marker = marker

    def leaf(name, tensors):
        kind = "GroupNorm" if name.endswith("norm") or "_aux_norm" in name or name.startswith("norm") else (
            "Linear" if tensors.get("weight") is not None and tensors["weight"].ndim == 2 else "Conv2d")
        params = {k: tensors.get(k) for k in ("weight", "bias")}  # a filter-only Conv2d has both None, as EDM's
        buffers = {"resample_filter": tensors.get("resample_filter")} if kind == "Conv2d" else {}
        return FakeModule(kind, params=params, buffers=buffers, init_kwargs={"init_mode": "xavier_uniform"})

    layout = {f"{p}.{n}": kind for p, n, kind, *_ in song_layout(opts)}
    blocks = {}
    for part in ("enc", "dec"):
        md = torch.nn.ModuleDict()
        for p, name, kind, *_ in song_layout(opts):
            if p != part:
                continue
            sub = collections.OrderedDict((k[len(f"{part}.{name}."):], v) for k, v in state.items()
                                          if k.startswith(f"{part}.{name}."))
            if kind == "block":
                parts = {n: leaf(n, dict(s)) for n, s in _tree(sub, "").items()}
                md[name] = FakeModule("UNetBlock", modules=parts, init_kwargs={"eps": 1e-6}, num_heads=1,
                                      skip_scale=np.sqrt(0.5), dropout=opts["dropout"])
            else:
                md[name] = leaf(name, dict(sub))
        blocks[part] = md
    assert set(layout) == {f"{p}.{n}" for p in blocks for n in blocks[p]}
    if opts["embedding_type"] == "fourier":
        noise = FakeModule("FourierEmbedding", buffers={"freqs": state["map_noise.freqs"]})
    else:
        noise = FakeModule("PositionalEmbedding", num_channels=opts["model_channels"], endpoint=True)
    top = {n: leaf(n, dict(s)) for n, s in _tree(state, "").items() if n not in ("enc", "dec", "map_noise")}
    if "map_augment" not in top:
        top["map_augment"] = None
    kwargs = dict(opts)
    unet = FakeModule("SongUNet", modules={"map_noise": noise, **top, **blocks},
                      init_kwargs=dict(img_resolution=RES, in_channels=CHANNELS, out_channels=CHANNELS,
                                       label_dim=label_dim, **kwargs), label_dropout=0)
    precond = FakeModule("EDMPrecond", modules={"model": unet}, img_resolution=RES, img_channels=CHANNELS,
                         label_dim=label_dim, use_fp16=False, sigma_min=0, sigma_max=float("inf"), sigma_data=0.5,
                         init_kwargs=dict(img_resolution=RES, img_channels=CHANNELS, label_dim=label_dim,
                                          model_type="SongUNet", **kwargs))
    data = dict(ema=precond, loss_fn=FakeModule("EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5),
                augment_pipe=None, dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                                       path="cifar10-32x32.zip"))
    with fake_persistence(marker):
        return pickle.dumps(data)


# ---- an independent forward of SongUNet's layout -----------------------------------------------------------------

def song_edm_forward(sd, opts, x, noise_labels, class_labels):
    """SongUNet's F(x, c_noise, class) on state dict `sd` (EDM's names), written from its layout (no augment labels,
    as at EDM's sampling time)."""
    def linear(name, h):
        return F.linear(h, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    def norm(name, h):
        return F.group_norm(h, min(32, h.shape[1] // 4), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    def conv(name, h, pad=None):
        wt = sd[f"{name}.weight"]
        return F.conv2d(h, wt, sd.get(f"{name}.bias"), padding=wt.shape[-1] // 2 if pad is None else pad)

    taps = opts["resample_filter"]

    def down(h):
        if taps == [1, 1]:
            return F.avg_pool2d(h, 2)
        f = sd_filter().expand(h.shape[1], 1, len(taps), len(taps))
        return F.conv2d(h, f, stride=2, padding=(len(taps) - 1) // 2, groups=h.shape[1])

    def up(h):  # zero insertion, then the filter times 4 over a border of n - 1 - pad: the transposed convolution
        B, C, H, W = h.shape
        z = h.new_zeros(B, C, 2 * H - 1, 2 * W - 1)
        z[:, :, ::2, ::2] = h
        n = len(taps)
        border = n - 1 - (n - 1) // 2
        f = (4 * sd_filter()).flip(-1, -2).expand(C, 1, n, n)
        return F.conv2d(F.pad(z, (border,) * 4), f, groups=C)

    def sd_filter():
        t = torch.tensor(taps, dtype=torch.float32)
        return (torch.outer(t, t) / t.sum() ** 2)[None, None]

    noise = opts["model_channels"] * opts["channel_mult_noise"]
    if opts["embedding_type"] == "fourier":
        angles = noise_labels[:, None] * (2 * np.pi * sd["map_noise.freqs"])[None]
    else:
        half = noise // 2
        angles = noise_labels[:, None] * ((1 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1)))[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos]
    emb = emb + linear("map_label", class_labels * np.sqrt(class_labels.shape[1]))
    emb = F.silu(linear("map_layer1", F.silu(linear("map_layer0", emb))))

    def block(name, h, extra):
        orig = h
        h = F.silu(norm(f"{name}.norm0", h))
        if extra.get("down"):
            h, orig = down(h), down(orig)
        if extra.get("up"):
            h, orig = up(h), up(orig)
        h = conv(f"{name}.conv0", h)
        h = F.silu(norm(f"{name}.norm1", h + linear(f"{name}.affine", emb)[:, :, None, None]))
        h = conv(f"{name}.conv1", h)
        h = (h + (conv(f"{name}.skip", orig) if f"{name}.skip.weight" in sd else orig)) * np.sqrt(0.5)
        if extra.get("attn"):
            B, C, H, W = h.shape
            q, k, v = conv(f"{name}.qkv", norm(f"{name}.norm2", h)).reshape(B, C, 3, -1).unbind(2)
            wts = torch.einsum("ncq,nck->nqk", q, k / np.sqrt(C)).softmax(dim=2)
            h = (conv(f"{name}.proj", torch.einsum("nqk,nck->ncq", wts, v).reshape(B, C, H, W)) + h) * np.sqrt(0.5)
        return h

    skips, h, aux = [], x, x
    layout = song_layout(opts)
    for part, name, kind, cin, cout, extra in layout:
        if part != "enc":
            continue
        key = f"enc.{name}"
        if kind == "aux_down":
            aux = down(aux)
        elif kind == "aux_skip":
            h = skips[-1] = h + conv(key, aux)
        elif kind == "aux_residual":  # conv first over a widened border, then the filter at stride 2
            n = len(taps)
            c = F.conv2d(aux, sd[f"{key}.weight"], padding=1 + (n - 1) // 2)
            c = F.conv2d(c, sd_filter().expand(c.shape[1], 1, n, n), stride=2, groups=c.shape[1])
            h = skips[-1] = aux = (h + c + sd[f"{key}.bias"][None, :, None, None]) / np.sqrt(2)
        else:
            h = conv(key, h) if kind == "conv" else block(key, h, extra)
            skips.append(h)
    out = None
    for part, name, kind, cin, cout, extra in layout:
        if part != "dec":
            continue
        key = f"dec.{name}"
        if kind == "aux_up":
            out = up(out)
        elif kind == "aux_norm":
            tmp = norm(key, h)
        elif kind == "aux_conv":
            tmp = conv(key, F.silu(tmp))
            out = tmp if out is None else out + tmp
        else:
            if extra.get("skip"):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(key, h, extra)
    return out


def _options(variant):
    return {**BASE, **VARIANTS[variant]}


def _convert(tmp_path, variant, seed=0, name="edm-cifar10-32x32-cond-vp.pkl"):
    opts = _options(variant)
    state = song_edm_state(opts, seed)
    marker = tmp_path / "executed"
    pkl = tmp_path / name
    pkl.write_bytes(song_snapshot(state, opts, marker))
    cfg = convert(pkl, tmp_path / "run")
    assert not marker.exists()
    return state, opts, cfg, tmp_path / "run"


def _inputs(seed=1, B=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, CHANNELS, RES, RES, generator=g)
    sigma = torch.tensor([0.02, 0.5, 3.0, 60.0])[:B]
    labels = torch.tensor([0, 3, 4, 1])[:B]
    return x, sigma, labels, F.one_hot(labels, LABELS).float()


# ---- the tests ---------------------------------------------------------------------------------------------------

def test_resampling_is_edms_fir_filter():
    """Ours is the FIR filter at stride 2 and its transposed convolution; with [1, 1], average pooling and nearest
    neighbour."""
    from discodiff.networks.song_unet import Resample
    h = torch.randn(2, 3, 4, 4)
    for taps in ([1, 1], [1, 3, 3, 1]):
        t = torch.tensor(taps, dtype=torch.float32)
        f = (torch.outer(t, t) / t.sum() ** 2)[None, None].expand(3, 1, len(taps), len(taps))
        pad = (len(taps) - 1) // 2
        assert torch.allclose(Resample(taps, "up")(h), F.conv_transpose2d(h, 4 * f, stride=2, padding=pad, groups=3),
                              atol=1e-6)
        assert torch.allclose(Resample(taps, "down")(h), F.conv2d(h, f, stride=2, padding=pad, groups=3), atol=1e-6)
    assert torch.allclose(Resample([1, 1], "up")(h), F.interpolate(h, scale_factor=2, mode="nearest"), atol=1e-6)
    assert torch.allclose(Resample([1, 1], "down")(h), F.avg_pool2d(h, 2), atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_song_network_matches_edms_layout(tmp_path, variant):
    state, opts, cfg, run_dir = _convert(tmp_path, variant)
    net_opts = cfg.model.network
    assert net_opts["name"] == "song_unet" and net_opts["norm_eps"] == 1e-6
    assert all(net_opts[k] == v for k, v in opts.items())
    assert cfg.model.num_latents == 0 and cfg.model.num_classes == LABELS and cfg.model.data_shape == [3, RES, RES]
    assert cfg.train.kimg == 200_000 and cfg.sample.steps == 18 and cfg.sample.guidance == 0
    model = Run(run_dir).load_model().eval()
    net = model.denoiser.net
    # the same parameters: EDM's weights (its filter buffers and Fourier frequencies are not parameters)
    edm_params = sum(v.numel() for k, v in state.items() if not k.endswith((".resample_filter", "map_noise.freqs")))
    assert sum(p.numel() for p in net.parameters()) == edm_params
    x, sigma, labels, onehot = _inputs()
    with torch.no_grad():
        f_ref = song_edm_forward(state, opts, x, sigma.log() / 4, onehot)
        f_ours = net(x, sigma.log() / 4, class_labels=onehot)
        xn = x * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
        s = sigma.reshape(-1, 1, 1, 1)
        d_ref = (0.25 / (s**2 + 0.25)) * xn + (s * 0.5 / (s**2 + 0.25).sqrt()) * song_edm_forward(
            state, opts, xn / (s**2 + 0.25).sqrt(), sigma.log() / 4, onehot)
        d_ours = model.denoise(xn, sigma, class_labels=labels)
    assert f_ref.abs().mean() > 0.1  # a non-trivial function (every zero-initialised layer has weights here)
    err_f, err_d = (f_ours - f_ref).abs().max().item(), (d_ours - d_ref).abs().max().item()
    assert err_f < 1e-5 and err_d < 1e-5, (err_f, err_d)
    # the qkv rows are really reordered: EDM's (channel, q/k/v) read as ours gives another function
    other = Run(run_dir).load_model().eval()
    sd = other.denoiser.net.state_dict()
    for key in [k for k in sd if k.endswith(".attn.qkv.weight")]:
        edm_key = key.replace(".attn.qkv.", ".qkv.")
        sd[key] = state[edm_key]
    other.denoiser.net.load_state_dict(sd)
    with torch.no_grad():
        assert (other.denoiser.net(x, sigma.log() / 4, class_labels=onehot) - f_ref).abs().max() > 1e-3


def test_sample_runs_on_a_converted_song_run(tmp_path, capsys):
    _, _, _, run_dir = _convert(tmp_path, "ddpmpp")
    out = tmp_path / "s.npz"
    code, _, err = run_cli(["sample", "--run-dir", str(run_dir), "--num", "2", "--steps", "2", "--out", str(out),
                            "--class", "3"], capsys)
    assert code in (0, None), err
    with np.load(out) as f:
        assert f["x"].shape[0] == 2 and np.isfinite(f["x"]).all()


def test_a_fine_tune_of_a_song_run_starts_silent(tmp_path):
    """`--init-from` takes the converted run with its own config: the latent path starts with no effect."""
    _, _, cfg0, run_dir = _convert(tmp_path, "ncsnpp")
    cfg = finetune.config_from_base(run_dir, {"model": {"num_latents": 3, "codebook_size": 4,
                                                        "network": {"latent_dim": 16, "latent_depth": 1,
                                                                    "latent_heads": 2},
                                                        "encoder": {"width": 16, "depth": 1, "heads": 2}},
                                              "train": {"init_from": finetune.base_record(run_dir)}})
    assert cfg.model.network["name"] == "song_unet" and cfg.model.network["resample_filter"] == [1, 3, 3, 1]
    finetune.check_base(cfg)
    torch.manual_seed(5)
    new = DiscoDiff(cfg.model)
    finetune.load_base_weights(new, cfg.train.init_from)
    new.eval()
    plain = Run(run_dir).load_model().eval()
    x, sigma, labels, _ = _inputs()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        expected = plain.denoise(x, sigma, class_labels=labels)
        for z in (torch.randint(0, 4, (4, 3), generator=g), torch.zeros(4, 3, dtype=torch.long)):
            assert torch.equal(new.denoise(x, sigma, z=z, class_labels=labels), expected)
        assert torch.equal(new.denoise(x, sigma, class_labels=labels), expected)  # the null latent
    assert sum(1 for n, _ in new.named_parameters() if ".cross_attn." in n) > 0


def test_train_init_from_a_song_run_starts(tmp_path, capsys):
    """`discodiff train --init-from R` without --preset: R's config; with a preset of another backbone: one line."""
    _, _, _, run_dir = _convert(tmp_path, "ddpmpp")
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 255, (8, RES, RES, 3), dtype=np.uint8), labels=np.arange(8) % LABELS)
    tiny = ["--set", "model.network.latent_dim=16", "--set", "model.network.latent_depth=1",
            "--set", "model.network.latent_heads=2", "--set", "model.encoder.width=16",
            "--set", "model.encoder.depth=1", "--set", "model.encoder.heads=2", "--set", "train.tick_kimg=0.004",
            "--set", "train.lr_rampup_kimg=0", "--set", "sample.steps=2"]
    new = tmp_path / "ft"
    code, _, err = run_cli(["train", "--init-from", str(run_dir), "--run-dir", str(new), "--data", str(data),
                            "--latents", "2", "--codebook", "4", "--kimg", "0.008", "--batch", "4", "--quiet", *tiny],
                           capsys)
    assert code in (0, None), err
    cfg = Run(new).config
    assert cfg.model.network["name"] == "song_unet" and cfg.model.num_latents == 2
    assert cfg.train.init_from["run"] == str(run_dir.resolve()) and (new / "model.safetensors").is_file()
    code, _, err = run_cli(["train", "--preset", "digits", "--init-from", str(run_dir), "--run-dir",
                            str(tmp_path / "ft2"), "--data", str(data), "--latents", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "song_unet backbone" in err and "leave out --preset" in err, err


@pytest.mark.parametrize("injection", ["cross_attention", "embedding"])
def test_the_song_backbone_with_latents_trains_a_step(injection):
    from discodiff.networks.song_unet import SongUNet
    torch.manual_seed(0)
    kw = dict(num_classes=LABELS, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
              latent_dim=16, latent_depth=1, latent_heads=2, latent_injection=injection, dropout=0.0,
              **{k: v for k, v in VARIANTS["ncsnpp"].items()})
    plain = SongUNet(RES, CHANNELS, **kw)
    torch.manual_seed(0)
    net = SongUNet(RES, CHANNELS, num_latents=3, codebook_size=4, **kw)
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())  # the latent path is built last
    x, sigma, _, onehot = _inputs()
    latents = F.one_hot(torch.randint(0, 4, (4, 3)), 4).float()
    null = torch.tensor([False, True, False, False])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):  # the zero-initialised layers move first, then the latents act
        loss = (net(x, sigma.log() / 4, class_labels=onehot, latents=latents, null_latent=null) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    with torch.no_grad():
        a = net(x, sigma.log() / 4, class_labels=onehot, latents=latents, null_latent=null)
        b = net(x, sigma.log() / 4, class_labels=onehot, latents=latents.roll(1, dims=2), null_latent=null)
    assert (a - b).abs().max() > 0  # after training, z changes the output
