"""Autoguidance (Karras et al., NeurIPS 2024, "Guiding a diffusion model with a bad version of itself").

A model D_1 is guided by a weaker version of itself D_0 (smaller, trained for less): D~ = D_1 + w (D_1 - D_0). The
two models err alike where the task is hard, D_0 more so, and the difference pushes the sample away from those
errors; unlike guidance on a condition it does not narrow the samples to the condition's dominant images.

How it composes with the guidance of `DiscoDiff.make_denoiser` (on the latents, w_l, and on the class, w_c):
additively, on the strong model's conditional prediction,

    D~ = G_1 + w (D_1(x, sigma, z, c) - D_0(x, sigma, z_0, c)),

where G_1 is the strong model's latent- and class-guided output (`make_denoiser`), D_1(x, sigma, z, c) its
conditional output (the first pass of the same network call) and z_0 what the weak model is given (below). Each
guidance term is a direction away from the same conditional prediction, and the terms add: with w = 0 the sampler is
exactly the guided sampler without autoguidance, with w_l = w_c = 0 it is exactly Karras et al.'s formula, and the
three weights stay separately meaningful (a nested form, D~ = G_1 + w (G_1 - D_0), would scale the latent guidance
by 1 + w as well, so sweeping w would also sweep w_l). Each term keeps its own noise interval: latent guidance
`guidance_interval`, autoguidance `Autoguide.interval` (lo < sigma <= hi; None: every step).

What the weak model is given (`Autoguide.latents`), in three forms:
- "z": the strong model's latents. Only meaningful when the two models read z the same way: the weak run was
  trained on the strong run's frozen encoder (`discodiff train --weak-of R1` or `--encoder-from R1`), so its encoder
  is the strong model's, which is checked (equal weights) before any work.
- "null": the weak model's learned null latent (any DisCo-Diff weak model: its own latents mean something else).
- "none": a plain EDM weak model (m = 0) has no latents; it gets the class only.
By default "z" when the weak model's encoder equals the strong model's, else "null" (or "none" for m = 0).

Cost: one pass of the weak model per denoiser call inside the autoguidance interval, as a second network call (the
two models have different weights, so they cannot share one), besides the strong model's passes (1, or 2-3 on a
stacked batch with latent/class guidance). `pipeline.PassCounter` counts both models' passes.

Stage I of the weak model on the strong run's frozen encoder: `encoder_record` (what train.encoder_from holds),
`encoder_overrides` (the latent structure and encoder the weak run takes from the strong one), `check_encoder_source`
(one-line refusals, before any file is written) and `freeze_encoder` (the strong run's encoder weights, checked by
sha256, loaded at the first start and never trained). `weak_overrides` builds a cheap weak run's configuration from
a strong run's (`discodiff train --weak-of R1 --width-scale 0.5 --kimg-scale 0.25`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import CONFIG, MODEL, load_tensors
from .config import ModelConfig, RunConfig
from .errors import CheckpointError, ConfigError
from .fileio import file_sha256
from .process import kernel_D

LATENT_FORMS = ("z", "null")  # what a DisCo-Diff weak model may be given; a plain one gets "none"
ENCODER_PREFIX = "encoder."
# What a weak run trained on the strong run's encoder takes from it: the latents' structure, how stage I draws them
# (Gumbel temperature, straight-through, the null latent's rate) and the encoder itself.
SHARED_MODEL_KEYS = ("num_latents", "codebook_size", "latent_type", "latent_dim", "kl_weight", "tau", "hard", "p_null",
                     "encoder")


@dataclasses.dataclass(frozen=True)
class Autoguide:
    """Autoguidance settings for `pipeline.generate(..., autoguide=...)`: the weak model D_0, the weight w, the noise
    interval (lo, hi] where it acts (None: every step) and what the weak model is given ("z", "null"; None: chosen
    by the models, see the module's docstring)."""
    model: Any
    weight: float
    interval: tuple[float, float] | None = None
    latents: str | None = None


def as_autoguide(value) -> Autoguide | None:
    """An `Autoguide` from `generate`'s `autoguide`: None, an Autoguide, (weak model, w) or (weak model, w, (lo,
    hi)). None when w = 0: exactly the sampler without autoguidance, and no pass of the weak model."""
    if value is None:
        return None
    if not isinstance(value, Autoguide):
        if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
            raise ConfigError("autoguide takes (weak model, w), (weak model, w, (lo, hi)) or an Autoguide")
        value = Autoguide(value[0], *value[1:])
    if value.interval is not None:
        lo, hi = value.interval
        if not 0 <= lo < hi:
            raise ConfigError(f"the autoguidance interval takes (lo, hi) with 0 <= lo < hi, got {value.interval}")
    if value.latents is not None and value.latents not in LATENT_FORMS:
        raise ConfigError(f"autoguidance latents must be one of {', '.join(LATENT_FORMS)}, got {value.latents!r}")
    return value if float(value.weight) else None


# ---- which models fit together -----------------------------------------------------------------------------------

def _describe_process(m: ModelConfig) -> str:
    return f"{m.process} (D={m.pfgm_D})" if m.process != "edm" else m.process


def check_model_configs(strong: ModelConfig, weak: ModelConfig, what: str = "the weak model") -> None:
    """The weak model must denoise the same data the same way: data shape, class count, sigma_data and process."""
    if list(strong.data_shape) != list(weak.data_shape):
        raise ConfigError(f"{what} draws data of shape {list(weak.data_shape)}, the model {list(strong.data_shape)}")
    if strong.num_classes != weak.num_classes:
        raise ConfigError(f"{what} has {weak.num_classes} classes, the model {strong.num_classes}")
    if strong.sigma_data != weak.sigma_data:
        raise ConfigError(f"{what} has sigma_data {weak.sigma_data:g}, the model {strong.sigma_data:g}")
    if kernel_D(strong) != kernel_D(weak):
        raise ConfigError(f"{what} was trained with process {_describe_process(weak)}, the model with "
                          f"{_describe_process(strong)}")


def latent_structure_differences(strong: ModelConfig, weak: ModelConfig) -> list[str]:
    """'key: weak's vs strong's' for each part of the latents' structure that differs (m, k, kind, size)."""
    pairs = (("m", strong.num_latents, weak.num_latents), ("k", strong.codebook_size, weak.codebook_size),
             ("latent_type", strong.latent_type, weak.latent_type), ("latent size", strong.latent_size,
                                                                      weak.latent_size))
    return [f"{name} {b} vs {a}" for name, a, b in pairs if a != b]


def same_encoder(strong, weak) -> bool:
    """Whether two DisCo-Diff models hold the same encoder weights (a weak run trained on the strong run's frozen
    encoder does, as long as the strong run has not trained on since)."""
    if strong.encoder is None or weak.encoder is None:
        return False
    a, b = strong.encoder.state_dict(), weak.encoder.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k].to(a[k].device))
                                        for k in a)


def latent_form(strong, weak, requested: str | None = None) -> str:
    """What the weak model is given: "none" (a plain weak model), "z" or "null" (see the module's docstring),
    refusing in one line "z" for a weak model whose latents do not fit or do not mean the same."""
    if not weak.num_latents:
        return "none"  # (a plain weak model has no latents: given none, whatever was asked)
    if requested == "null":
        return "null"
    fits = not latent_structure_differences(strong.config, weak.config) and strong.num_latents > 0
    if requested is None:
        return "z" if fits and same_encoder(strong, weak) else "null"
    if not strong.num_latents:
        raise ConfigError("the weak model cannot be given the model's latents: the model is plain (m = 0)")
    if not fits:
        raise ConfigError(f"the weak model's latents have another structure "
                          f"({', '.join(latent_structure_differences(strong.config, weak.config))}); give it the "
                          f"null latent (--autoguide-latents null) or train it with --weak-of")
    if not same_encoder(strong, weak):
        raise ConfigError("the weak model's encoder is not the model's, so its latents mean something else; train it "
                          "on the model's frozen encoder (discodiff train --weak-of RUN) or give it the null latent "
                          "(--autoguide-latents null)")
    return "z"


def check_runs(strong: RunConfig, weak: RunConfig, weak_path, latents: str | None = None) -> None:
    """The command line's checks, before any model is loaded: the weak run was trained on the same data set (name,
    path and options) and fits the strong run's model (`check_model_configs`); with `latents` "z" its latents have
    the same structure (whether its encoder is the strong one's is checked once both are loaded)."""
    what = f"--autoguide-run {weak_path}"
    if dataclasses.asdict(strong.data) != dataclasses.asdict(weak.data):
        def name(d):
            return " ".join(str(v) for v in (d.name, d.path, d.options or "") if v)
        raise ConfigError(f"{what} was trained on other data ({name(weak.data)}, the run on {name(strong.data)}); "
                          f"autoguidance needs a weak model of the same data")
    check_model_configs(strong.model, weak.model, what)
    if latents == "z":
        if not weak.model.num_latents:
            raise ConfigError(f"{what} is a plain run (m = 0): it has no latents to be given (drop "
                              f"--autoguide-latents)")
        changed = latent_structure_differences(strong.model, weak.model)
        if changed:
            raise ConfigError(f"{what} has latents of another structure ({', '.join(changed)}): it cannot be given "
                              f"the run's latents; use --autoguide-latents null")


# ---- the guided denoiser -----------------------------------------------------------------------------------------

def _inside(sigma, interval, x):
    if interval is None:
        return None
    s = torch.as_tensor(sigma, device=x.device).reshape(-1)
    return ((s > interval[0]) & (s <= interval[1])).reshape(-1, *([1] * (x.ndim - 1)))


def autoguided_denoiser(strong: Callable, weak: Callable, weight: float,
                        interval: tuple[float, float] | None = None) -> Callable:
    """D~ = G_1 + w (D_1 - D_0) from `strong(x, sigma) -> (G_1, D_1)` (the guided and the conditional output, as
    `make_denoiser(conditional_too=True)` gives them) and `weak(x, sigma) -> D_0`; outside `interval` (lo, hi] G_1
    alone, without a pass of the weak model."""
    def denoise(x, sigma):
        guided, conditional = strong(x, sigma)
        inside = _inside(sigma, interval, x)
        if inside is not None and not inside.any():
            return guided
        d = guided + weight * (conditional - weak(x, sigma))
        return d if inside is None else torch.where(inside, d, guided)

    return denoise


def make_denoiser(model, guide: Autoguide, z=None, class_labels=None, *, guidance: float = 0.0,
                  class_guidance: float = 0.0, guidance_interval: tuple[float, float] | None = None) -> Callable:
    """`model.make_denoiser(...)` with autoguidance by `guide.model` on top (`autoguided_denoiser`), after checking
    that the two models fit together (one line otherwise). The weak model gets z, the null latent or nothing
    (`latent_form`) and the same class, without guidance of its own."""
    weak = guide.model
    check_model_configs(model.config, weak.config)
    form = latent_form(model, weak, guide.latents)
    strong = model.make_denoiser(z, class_labels, guidance=guidance, class_guidance=class_guidance,
                                 guidance_interval=guidance_interval, conditional_too=True)
    weak_denoise = weak.make_denoiser(z if form == "z" else None, class_labels)
    return autoguided_denoiser(strong, weak_denoise, float(guide.weight), guide.interval)


# ---- stage I of a weak model on the strong run's frozen encoder --------------------------------------------------

def _open_strong(path, flag: str = "--encoder-from") -> RunConfig:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{flag}: {path} is not a discodiff run directory (no {CONFIG})")
    try:
        cfg = RunConfig.load(path / CONFIG)
    except ConfigError as e:
        raise CheckpointError(f"{flag}: {e}") from None
    if not (path / MODEL).is_file():
        raise CheckpointError(f"{flag}: {path} has no trained weights ({MODEL}); train it first")
    return cfg


def encoder_record(path) -> dict:
    """{"run": the strong run's resolved path, "sha256": of its model.safetensors}: what `train.encoder_from` holds.
    The strong run must be a DisCo-Diff run with trained weights."""
    cfg = _open_strong(path)
    if not cfg.model.num_latents:
        raise ConfigError(f"--encoder-from: {path} is a plain run (m = 0): it has no encoder to share")
    path = Path(path).resolve()
    return {"run": str(path), "sha256": file_sha256(path / MODEL)}


def encoder_overrides(strong: RunConfig) -> dict:
    """The model settings a weak run takes from the strong run whose encoder it shares (SHARED_MODEL_KEYS); no
    regularisers (they act on the encoder, which is frozen)."""
    m = dataclasses.asdict(strong.model)
    return {"model": {**{k: copy.deepcopy(m[k]) for k in SHARED_MODEL_KEYS}, "regularisers": {}}}


def check_given_overrides(strong: RunConfig, overrides: dict) -> None:
    """Refuses options that would give the weak run other latents than the strong run's (--latents, --codebook,
    --set model.encoder...), which --encoder-from takes from it."""
    given = overrides.get("model", {})
    shared = encoder_overrides(strong)["model"]
    clash = [k for k in SHARED_MODEL_KEYS if k in given and given[k] != shared[k] and k != "encoder"]
    if isinstance(given.get("encoder"), dict) and any(shared["encoder"].get(k) != v for k, v in given["encoder"].items()):
        clash.append("encoder")
    if clash:
        raise ConfigError(f"--encoder-from takes the latents and the encoder from the strong run; drop the options "
                          f"that set model.{', model.'.join(clash)}")


def check_encoder_source(cfg: RunConfig) -> None:
    """Refuses, in one line, a new run whose `train.encoder_from` names a run that cannot lend it its encoder: gone or
    changed since (sha256), trained on other data (set, shape, classes), of another latent structure or encoder, or
    whose encoder weights do not fit; and --init-from with it (a fine-tuned run trains its new encoder)."""
    record = cfg.train.encoder_from
    if set(record) != {"run", "sha256"}:
        raise ConfigError(f"train.encoder_from must be {{\"run\": path, \"sha256\": hash}} (set by --encoder-from), "
                          f"got {record}")
    if cfg.train.init_from is not None:
        raise ConfigError("--encoder-from and --init-from do not go together: a fine-tuned run trains its new encoder")
    path = Path(record["run"])
    strong = _open_strong(path)
    if dataclasses.asdict(strong.data) != dataclasses.asdict(cfg.data):
        raise ConfigError(f"--encoder-from: {path} was trained on other data ({strong.data.name} "
                          f"{strong.data.path or ''} {strong.data.options or ''}); the weak run must use the same")
    check_model_configs(strong.model, cfg.model, f"this run (--encoder-from {path})")
    shared = encoder_overrides(strong)["model"]
    mine = dataclasses.asdict(cfg.model)
    differ = [k for k in SHARED_MODEL_KEYS if mine[k] != shared[k]]
    if differ:
        raise ConfigError(f"--encoder-from: this run's model.{', model.'.join(differ)} differ from {path}'s; its "
                          f"latents and encoder must be the strong run's")
    _encoder_tensors(record, cfg.model)


def _encoder_tensors(record: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The strong run's encoder tensors (keys without the "encoder." prefix), checked against the recorded sha256
    and against the shapes of this model's encoder."""
    from .networks import build_encoder

    path = Path(record["run"]) / MODEL
    if not path.is_file():
        raise CheckpointError(f"--encoder-from: {path} is gone; this run takes its encoder from it")
    if file_sha256(path) != record["sha256"]:
        raise CheckpointError(f"--encoder-from: {path} changed since this run was created from it (sha256 "
                              f"{record['sha256'][:12]}... recorded); start a new weak run from it")
    tensors = {k[len(ENCODER_PREFIX):]: v for k, v in load_tensors(path).items() if k.startswith(ENCODER_PREFIX)}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # shapes only: no memory, no random draw
        expected = {k: tuple(v.shape) for k, v in build_encoder(cfg).state_dict().items()}
    if set(tensors) != set(expected) or any(tuple(tensors[k].shape) != expected[k] for k in expected):
        raise CheckpointError(f"--encoder-from: the encoder in {path} does not fit this run's encoder")
    return tensors


def freeze_encoder(model, record: dict, *, load: bool) -> None:
    """A weak run's encoder: with `load` (the first start) the strong run's weights, checked by sha256; in every
    start frozen (no gradients, so the optimizer leaves it as it is and the EMA keeps it exactly) and marked so
    that the encoder's data-dependent initialisation leaves it alone (`networks.init_encoder_from_data`)."""
    if load:
        model.encoder.load_state_dict(_encoder_tensors(record, model.config), strict=True)
    model.encoder.requires_grad_(False)
    model.encoder.frozen = True


# ---- a cheap weak run from a strong one --------------------------------------------------------------------------

WIDTH_KEYS = ("model_channels", "hidden")  # the U-Net's base width, the MLP's hidden width


def scaled_width(value: int, scale: float) -> int:
    """A width times `scale`, rounded to a multiple of 4 (the U-Net's group norms take groups of 4), at least 4."""
    return max(4, int(round(value * scale / 4)) * 4)


def weak_overrides(strong: RunConfig, *, width_scale: float = 0.5, kimg_scale: float = 0.25,
                   plain: bool = False) -> dict:
    """A full configuration (as overrides on the strong run's preset) of a weak run for autoguidance: the strong
    run's, with the denoiser's width (model_channels, or an MLP's hidden) times `width_scale`, train.kimg times
    `kimg_scale`, no --init-from; the latents and the encoder the strong run's (train.encoder_from is set by the
    caller), or with `plain` a plain EDM model (m = 0)."""
    if not 0 < width_scale <= 1 or not 0 < kimg_scale <= 1:
        raise ConfigError(f"--width-scale and --kimg-scale take values in (0, 1], got {width_scale:g} and "
                          f"{kimg_scale:g}")
    d = strong.to_dict()
    d.pop("preset")
    network = d["model"]["network"]
    keys = [k for k in WIDTH_KEYS if isinstance(network.get(k), int)]
    if not keys:
        raise ConfigError(f"--width-scale: the {network.get('name')} network has no width to scale "
                          f"({' or '.join(WIDTH_KEYS)})")
    for k in keys:
        network[k] = scaled_width(network[k], width_scale)
    d["train"]["kimg"] = strong.train.kimg * kimg_scale
    d["train"]["init_from"] = d["train"]["new_parts_lr"] = None
    d["model"]["regularisers"] = {}  # they act on the encoder: frozen, or absent
    if plain:
        d["model"]["num_latents"] = 0
        d["model"]["latent_type"], d["model"]["latent_dim"], d["model"]["kl_weight"] = "discrete", None, None
    return d


def weak_kimg_note(strong: RunConfig, kimg: float) -> str:
    """The share of the strong run's training budget a weak run spends, for the status line."""
    share = kimg / strong.train.kimg if strong.train.kimg else math.nan
    return f"{kimg:g} kimg ({share:.0%} of the strong run's {strong.train.kimg:g})"
