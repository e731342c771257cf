"""Converting NVlabs/edm's published network snapshots into plain discodiff runs (`discodiff import-edm`).

EDM's snapshots (`network-snapshot-*.pkl`, `edm-imagenet-64x64-cond-adm.pkl`) are Python pickles of a dict whose
'ema' entry is an `EDMPrecond` network. EDM pickles its networks through its `torch_utils.persistence` module: each
object is rebuilt by a call `torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the source
code of the module that defined the class, the class name and the object's state (its `__dict__`: parameters,
buffers, sub-modules, constructor arguments). Unpickling with EDM's code would execute that source.

Here NOTHING in the file is executed. `SafeUnpickler` resolves only an allow-list of globals, each to something of
ours that builds data and runs no code from the file:
- the persistence function -> `_PersistentStub`, which keeps the class name and the state and ignores the source;
- the tensor rebuild functions of torch (`_rebuild_tensor_v2`, `_rebuild_parameter`), the storage payloads
  (`torch.storage._load_from_bytes`, read here with `torch.load(weights_only=True)`) and torch's storage types;
- `collections.OrderedDict`, and the containers a module's state holds (torch's ModuleDict/ModuleList -> a stub
  holding their state; dnnlib's EasyDict -> dict);
- numpy's dtype and scalar (constructor arguments such as `init_weight=np.sqrt(1/3)`), object scalars refused.
Every other global, and any persistent id, is refused in one line naming it (CheckpointError), before it is called.

The network must be `EDMPrecond` around one of EDM's two backbone families:
- `DhariwalUNet` (EDM's ADM U-Net, its ImageNet-64 backbone) -> our U-Net ("unet", unet.py), which has the same
  modules and parameter count. The run is the imagenet64 preset's with the snapshot's network options. EDM's group
  norms there have eps 1e-5, so the run's network sets norm_eps 1e-5; attention has out_channels // 64 heads.
- `SongUNet` (DDPM++ / NCSN++: EDM's CIFAR-10, FFHQ and AFHQv2 networks) -> our SongUNet ("song_unet",
  song_unet.py), written with EDM's module names and the same parameter count. Its options are the snapshot's
  (embedding, encoder and decoder types, resampling filter, augment_dim), norm_eps 1e-6 (SongUNet's group norms);
  every attention has one head. No preset has this backbone: the run's config is complete by itself
  (`SONG_RUN`: EDM's recipe for the data's size, and our settings for fine-tuning it into DisCo-Diff).
For both, the state dict maps key for key with the same edits (`edm_to_ours`):
- three renames in the attention blocks: norm2 -> attn.norm, qkv -> attn.qkv, proj -> attn.proj;
- the rows of each qkv projection permuted: EDM splits them as (head, channel, q/k/v), ours as (q/k/v, head,
  channel); with SongUNet's one head that is (channel, q/k/v) -> (q/k/v, channel), still a reordering;
- the constant resampling filters (`resample_filter` buffers) dropped: ours are constants of the configuration,
  checked here to be the snapshot's;
- everything else unchanged, NCSN++'s random Fourier frequencies (map_noise.freqs) and SongUNet's augmentation-label
  layer (map_augment, which our SongUNet feeds zero labels, EDM's sampling-time input) included.

Converted weights remain EDM's, under its licence (CC BY-NC-SA 4.0, non-commercial): docs/gpu.md.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CONFIG, MODEL
from .config import RunConfig, merge, preset_config, validate
from .errors import CheckpointError, ConfigError
from .networks.song_unet import SONG_NORM_EPS, fir_kernel

PRESET = "imagenet64"
LICENCE = "CC BY-NC-SA 4.0 (NVlabs/edm); converted weights keep EDM's licence"
EDM_CHANNELS_PER_HEAD = 64      # DhariwalUNet's blocks: num_heads = out_channels // 64
EDM_NORM_EPS = 1e-5             # EDM's GroupNorm
EDM_IMAGENET_KIMG = 2_500_000   # EDM's ImageNet-64 run: --duration=2500 (Mimg)
# DhariwalUNet's constructor options and their defaults (EDM's training/networks.py), as our U-Net's options.
DHARIWAL_DEFAULTS = {"model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4, "num_blocks": 3,
                     "attn_resolutions": [32, 16, 8], "dropout": 0.10}
DHARIWAL_OTHER = {"img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim", "label_dropout"}
ATTENTION_RENAMES = {"norm2": "attn.norm", "qkv": "attn.qkv", "proj": "attn.proj"}
# SongUNet's constructor options and their defaults (EDM's training/networks.py), as our SongUNet's options.
SONG_DEFAULTS = {"model_channels": 128, "channel_mult": [1, 2, 2, 2], "channel_mult_emb": 4, "num_blocks": 4,
                 "attn_resolutions": [16], "dropout": 0.10, "embedding_type": "positional", "channel_mult_noise": 1,
                 "encoder_type": "standard", "decoder_type": "standard", "resample_filter": [1, 1], "augment_dim": 0}
SONG_OTHER = {"img_resolution", "in_channels", "out_channels", "label_dim", "label_dropout"}
EDM_SONG_KIMG = 200_000        # EDM's CIFAR-10, FFHQ and AFHQv2 runs: --duration=200 (Mimg)
# The run made of a SongUNet snapshot: no preset has this backbone, so its config says everything. Training values are
# EDM's recipe for the data's size (its README: CIFAR-10 at 32 px --batch=512 --lr=1e-3; FFHQ and AFHQv2 at 64 px
# --batch=256 --lr=2e-4; --ema=0.5 Mimg; its default lr ramp-up of 10 Mimg; no EMA ramp-up when starting from a trained
# network, as EDM's --transfer), and sampling is EDM's (18 Heun steps at 32 px, 40 at 64 px). What only fine-tuning
# into DisCo-Diff reads (the latent path, the encoder, k, the prior) is ours: the paper gives no SongUNet setting.
SONG_RUN = {
    "model": {"P_mean": -1.2, "P_std": 1.2, "codebook_size": 100, "p_null": 0.1, "tau": 1.0, "hard": True,
              "encoder": {"name": "vit", "width": 384, "depth": 6, "heads": 6}},  # ours; patch: 8 x 8 = 64 tokens
    "data": {"name": "path", "path": None},
    "train": {"lr_rampup_kimg": 10000, "ema_halflife_kimg": 500, "ema_rampup": None,
              "tick_kimg": 50, "snapshot_ticks": 50, "state_ticks": 50},
    "prior_train": {"network": {"depth": 8, "width": 256, "heads": 8, "dropout": 0.0},  # ours
                    "kimg": 20000, "batch": 1024, "lr": 1e-4, "tick_kimg": 500, "tau": 0.01},
}
SONG_LATENT_OPTIONS = {"latent_dim": 128, "latent_depth": 4, "latent_heads": 2,  # ours: 64 channels a head
                       "latent_injection": "cross_attention"}
SONG_PRESET = "import-edm"     # the run's `preset` entry: made by import-edm, not from a preset


# ---- reading the pickle without running it -------------------------------------------------------------------

class _Stub:
    """What an object of the pickle becomes: its class name and its state, nothing callable."""

    def __init__(self, class_name: str, state=None):
        self.class_name, self.state = class_name, state if state is not None else {}

    def __setstate__(self, state):  # pickle's BUILD on a container stub
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self):
        return f"<{self.class_name} (from an EDM pickle)>"


class _PersistentStub(_Stub):
    pass


def _reconstruct_persistent_obj(meta):
    """Stands in for EDM's torch_utils.persistence._reconstruct_persistent_obj: keeps the class name and the state;
    the module source in meta["module_src"] is never looked at, let alone executed."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise CheckpointError("an EDM persistent object without the expected class record")
    state = meta.get("state")
    return _PersistentStub(meta["class_name"], dict(state) if isinstance(state, dict) else {})


def _container(name: str) -> type:
    """A stand-in class for torch's module containers: pickle's NEWOBJ makes an empty instance, BUILD its state."""
    return type(name, (_Stub,), {"class_name": name, "state": None, "__init__": lambda self, *args, **kwargs: None})


def _load_from_bytes(b):
    """A storage's payload (torch's legacy serialisation), read with torch's weights-only unpickler."""
    if not isinstance(b, (bytes, bytearray)):
        raise CheckpointError("a storage payload that is not bytes")
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError(f"a numpy scalar of dtype {dtype!r}")
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    return core.multiarray.scalar(dtype, *args)


def _numpy_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise CheckpointError("a numpy object dtype")
    return dtype


def _allowed() -> dict[tuple[str, str], object]:
    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.nn.modules.container", "ModuleDict"): _container("ModuleDict"),
        ("torch.nn.modules.container", "ModuleList"): _container("ModuleList"),
        ("dnnlib.util", "EasyDict"): dict,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }
    for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage",
                 "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage"):
        if hasattr(torch, name):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickles an EDM snapshot with nothing in it executed: only the allow-listed globals resolve (to the
    stand-ins above); any other global or persistent id is refused with a CheckpointError naming it."""

    ALLOWED = _allowed()

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refusing the global {module}.{name}: an EDM network snapshot has no use for it, "
                                  f"and nothing in the file was run") from None

    def persistent_load(self, pid):
        raise CheckpointError(f"refusing a persistent id ({str(pid)[:60]}): EDM's network snapshots have none (is "
                              f"this a torch.save file?); nothing in the file was run")


def read_snapshot(path) -> dict:
    """The top-level dict of an EDM snapshot pickle, its objects as stubs, its tensors as tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (give an EDM network snapshot, network-snapshot-*.pkl)")
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # a torn or foreign file: whatever the unpickler met, in one line
        why = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path} is not a readable EDM snapshot pickle ({type(e).__name__}: {why})") from None
    if not isinstance(data, dict) or "ema" not in data:
        raise CheckpointError(f"{path} is not an EDM network snapshot (no 'ema' network in it)")
    return data


# ---- the network ----------------------------------------------------------------------------------------------

def module_tensors(obj: _Stub, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a stubbed module: its parameters and buffers, its sub-modules' under 'name.'."""
    out: dict[str, torch.Tensor] = {}
    state = obj.state or {}
    for key in ("_parameters", "_buffers"):
        for name, t in (state.get(key) or {}).items():
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Stub):
            raise CheckpointError(f"sub-module {prefix}{name} is a {type(child).__name__}")
        out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def _kwargs(obj: _Stub) -> dict:
    kw = obj.state.get("_init_kwargs")
    if not isinstance(kw, dict):
        raise CheckpointError(f"the {obj.class_name} in it has no recorded constructor arguments")
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kw.items()}


def _network(data: dict) -> tuple[_Stub, _Stub]:
    """(EDMPrecond, DhariwalUNet or SongUNet) stubs of the snapshot's EMA network, or a one-line refusal."""
    precond = data["ema"]
    if not isinstance(precond, _PersistentStub):
        raise CheckpointError("its 'ema' entry is not an EDM network")
    if precond.class_name != "EDMPrecond":
        raise CheckpointError(f"its network is a {precond.class_name}; only EDMPrecond (EDM's preconditioning) "
                              f"networks convert")
    net = (precond.state.get("_modules") or {}).get("model")
    if not isinstance(net, _PersistentStub):
        raise CheckpointError("its EDMPrecond holds no 'model' network")
    if net.class_name not in ("DhariwalUNet", "SongUNet"):
        raise CheckpointError(f"its backbone is a {net.class_name}; only DhariwalUNet (EDM's ADM U-Net) and SongUNet "
                              f"(DDPM++/NCSN++) convert")
    return precond, net


def network_options(kw: dict) -> dict:
    """Our U-Net's options for DhariwalUNet constructor arguments `kw` (its defaults where absent); refuses what our
    U-Net does not have (augmentation labels, unknown options)."""
    unknown = set(kw) - set(DHARIWAL_DEFAULTS) - DHARIWAL_OTHER
    if unknown:
        raise CheckpointError(f"its DhariwalUNet has options this converter does not know: {', '.join(sorted(unknown))}")
    if kw.get("augment_dim"):
        raise CheckpointError(f"its DhariwalUNet takes augmentation labels (augment_dim={kw['augment_dim']}); "
                              f"discodiff's U-Net has no augmentation input")
    opts = {k: kw.get(k, v) for k, v in DHARIWAL_DEFAULTS.items()}
    opts = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in opts.items()}
    return {"name": "unet", **opts, "channels_per_head": EDM_CHANNELS_PER_HEAD, "norm_eps": EDM_NORM_EPS}


def song_network_options(kw: dict) -> dict:
    """Our SongUNet's options for SongUNet constructor arguments `kw` (its defaults where absent), with our latent
    options for fine-tuning; refuses options this converter does not know."""
    unknown = set(kw) - set(SONG_DEFAULTS) - SONG_OTHER
    if unknown:
        raise CheckpointError(f"its SongUNet has options this converter does not know: {', '.join(sorted(unknown))}")
    opts = {k: kw.get(k, v) for k, v in SONG_DEFAULTS.items()}
    opts = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in opts.items()}
    opts["augment_dim"] = int(opts["augment_dim"] or 0)
    return {"name": "song_unet", **opts, "norm_eps": SONG_NORM_EPS, **SONG_LATENT_OPTIONS}


def song_config(kw: dict, resolution: int, channels: int, label_dim: int, sigma_data: float,
                kimg: float) -> RunConfig:
    """The complete config of the plain run (m = 0) made of a SongUNet snapshot (`SONG_RUN`)."""
    small = resolution <= 32  # CIFAR-10's recipe; FFHQ's and AFHQv2's at 64 px
    d = merge(RunConfig(preset=SONG_PRESET).to_dict(), SONG_RUN)
    d = merge(d, {"model": {"data_shape": [channels, resolution, resolution], "num_classes": label_dim,
                            "sigma_data": sigma_data, "num_latents": 0, "network": song_network_options(kw),
                            "p_class_drop": float(kw.get("label_dropout", 0) or 0),
                            "encoder": {"patch_size": max(resolution // 8, 1)}},
                  "train": {"kimg": kimg, "batch": 512 if small else 256, "lr": 1e-3 if small else 2e-4},
                  "sample": {"steps": 18 if small else 40, "sampler": "heun", "guidance": 0.0}})
    cfg = RunConfig.from_dict(d)
    validate(cfg)
    return cfg


def edm_to_ours(edm: dict[str, torch.Tensor], heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """DhariwalUNet's state dict -> our U-Net's, or SongUNet's -> our SongUNet's: the resampling filters dropped, the
    attention renamed, the qkv rows reordered from EDM's (head, channel, q/k/v) to ours (q/k/v, head, channel).
    `heads`: block name -> heads."""
    out = {}
    for key, value in edm.items():
        if key.endswith(".resample_filter"):  # the constant [1, 1] filters: 2x2 average pooling / nearest up
            continue
        m = re.fullmatch(r"((?:enc|dec)\.[^.]+)\.(norm2|qkv|proj)\.(weight|bias)", key)
        if m:
            block, part, kind = m.groups()
            if part == "qkv":
                h = heads[block]
                value = value.reshape(h, value.shape[0] // (3 * h), 3, *value.shape[1:]).movedim(2, 0)
                value = value.reshape(edm[key].shape)
            key = f"{block}.{ATTENTION_RENAMES[part]}.{kind}"
        out[key] = value.contiguous()
    return out


def ours_to_edm(ours: dict[str, torch.Tensor], heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """The inverse of `edm_to_ours` (without the resampling filters): for tests and for checking a conversion."""
    back = {v: k for k, v in ATTENTION_RENAMES.items()}
    out = {}
    for key, value in ours.items():
        m = re.fullmatch(r"((?:enc|dec)\.[^.]+)\.attn\.(norm|qkv|proj)\.(weight|bias)", key)
        if m:
            block, part, kind = m.groups()
            if part == "qkv":
                h = heads[block]
                value = value.reshape(3, h, value.shape[0] // (3 * h), *value.shape[1:]).movedim(0, 2)
                value = value.reshape(ours[key].shape)
            key = f"{block}.{back['attn.' + part]}.{kind}"
        out[key] = value.contiguous()
    return out


def attention_heads(net, one_head: bool = False) -> dict[str, int]:
    """'enc.32x32_block0' -> EDM's heads for that block, for each block of `net` (our U-Net, or our SongUNet with
    `one_head`) with self-attention: out_channels // 64 in DhariwalUNet, one in SongUNet. Refuses a network whose
    heads differ from EDM's."""
    heads = {}
    for part in ("enc", "dec"):
        for name, block in getattr(net, part).items():
            attn = getattr(block, "attn", None)
            if attn is None:
                continue
            edm_heads = 1 if one_head else block.out_channels // EDM_CHANNELS_PER_HEAD
            if edm_heads < 1 or edm_heads != attn.heads:
                raise CheckpointError(f"block {part}.{name} has {block.out_channels} channels: EDM would give it "
                                      f"{edm_heads} attention heads, discodiff's {attn.heads}")
            heads[f"{part}.{name}"] = edm_heads
    return heads


def check_filters(edm: dict[str, torch.Tensor], taps) -> None:
    """The snapshot's resampling filters (dropped by `edm_to_ours`) must be the ones `taps` make: ours are computed
    from the configuration."""
    want = fir_kernel(taps)
    for key, value in edm.items():
        if key.endswith(".resample_filter") and (value.shape[-2:] != want.shape
                                                 or not torch.allclose(value.float().reshape(want.shape), want)):
            raise CheckpointError(f"its {key} is not the filter of its resample_filter option {list(taps)}")


def _kimg(path: Path, published: int = EDM_IMAGENET_KIMG) -> float:
    """NNNNNN of a network-snapshot-NNNNNN.pkl; else `published`, the length of EDM's run of that network."""
    m = re.fullmatch(r"network-snapshot-(\d+)\.pkl", path.name)
    return float(int(m.group(1))) if m else float(published)


def convert(pkl, run_dir) -> RunConfig:
    """Writes run_dir/model.safetensors and run_dir/config.json: the plain run (m = 0) holding the snapshot's EMA
    network, with the snapshot's network options, data shape, classes and sigma_data: for DhariwalUNet the imagenet64
    preset's other settings, for SongUNet `song_config`'s. Returns its config."""
    from .model import DiscoDiff
    from .runs import Run, file_sha256

    pkl, run_dir = Path(pkl), Path(run_dir)
    if (run_dir / CONFIG).exists() or (run_dir / MODEL).exists():
        raise ConfigError(f"{run_dir} already holds a run; give a new --run-dir")
    precond, net = _network(read_snapshot(pkl))
    pk, kw = _kwargs(precond), _kwargs(net)
    resolution, channels = int(precond.state.get("img_resolution", kw.get("img_resolution"))), \
        int(precond.state.get("img_channels", kw.get("in_channels")))
    if kw.get("out_channels", channels) != channels:
        raise CheckpointError(f"its {net.class_name} outputs {kw['out_channels']} channels for {channels}-channel "
                              f"images")
    label_dim = int(precond.state.get("label_dim", kw.get("label_dim", 0)) or 0)
    sigma_data = float(precond.state.get("sigma_data", pk.get("sigma_data", 0.5)))
    song = net.class_name == "SongUNet"
    try:
        if song:
            cfg = song_config(kw, resolution, channels, label_dim, sigma_data, _kimg(pkl, EDM_SONG_KIMG))
        else:
            overrides = {"model": {"num_latents": 0, "network": network_options(kw),
                                   "p_class_drop": float(kw.get("label_dropout", 0) or 0)},
                         "train": {"kimg": _kimg(pkl)}}
            cfg = preset_config(PRESET, overrides)
            cfg.model.data_shape, cfg.model.num_classes, cfg.model.sigma_data = [channels, resolution, resolution], \
                label_dim, sigma_data
            cfg.sample.guidance = 0.0  # latent guidance: a plain network has no latents to guide
            validate(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{pkl}: its network does not make a discodiff configuration ({e})") from None

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = DiscoDiff(cfg.model)  # no memory and no initialisation: the snapshot's tensors replace every weight
    edm = module_tensors(net)
    if song:
        check_filters(edm, cfg.model.network["resample_filter"])
    tensors = edm_to_ours(edm, attention_heads(model.denoiser.net, one_head=song))
    tensors = {f"denoiser.net.{k}": v.float() for k, v in tensors.items()}
    own = model.state_dict()
    missing, unexpected = set(own) - set(tensors), set(tensors) - set(own)
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        example = (sorted(missing) or sorted(unexpected) or wrong)[0]
        ours = "SongUNet" if song else "U-Net"
        raise CheckpointError(f"{pkl}: its {net.class_name} does not map onto discodiff's {ours} ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(wrong)} differently shaped tensors, e.g. "
                              f"{example})")
    model.load_state_dict(tensors, strict=True, assign=True)
    metadata = {"kimg": str(cfg.train.kimg), "converted_from": pkl.name, "source_sha256": file_sha256(pkl),
                "source_network": f"NVlabs/edm EDMPrecond({net.class_name}), EMA weights", "licence": LICENCE}
    from .fileio import OutputError, describe_os_error
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(describe_os_error(e, run_dir)) from None
    model.save(run_dir / MODEL, metadata=metadata)  # the weights first: a folder with a config always has them
    Run.create(run_dir, cfg)
    return cfg
