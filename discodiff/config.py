"""Run configuration: nested dataclasses, strict JSON round trip, and the named presets."""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .errors import ConfigError  # noqa: F401  (re-exported: the error of an unusable configuration)


@dataclass
class ModelConfig:
    data_shape: list = field(default_factory=lambda: [2])  # [D] for vectors, [C, H, W] for images
    num_classes: int = 0              # 0: unconditional
    sigma_data: float = 0.5
    num_latents: int = 0              # m; 0 gives a plain EDM model through the same code path
    codebook_size: int = 8            # k
    tau: float = 1.0                  # Gumbel-Softmax temperature in stage I (the paper: 1, no annealing)
    hard: bool = True                 # straight-through one-hot samples (False: soft relaxation)
    p_null: float = 0.1               # latent dropout to the learned null latent
    # Stage I's extra loss terms, {name: weight} (latents.REGULARISERS); the paper uses none. "information": log k -
    # I(y; z), against codebook collapse (variants/information.py).
    regularisers: dict = field(default_factory=dict)
    p_class_drop: float = 0.0         # class-label dropout, for guidance on the class
    P_mean: float = -1.2              # ln(sigma) ~ N(P_mean, P_std^2) during training
    P_std: float = 1.2
    process: str = "edm"              # forward process: "edm" (Gaussian) or "pfgmpp" (PFGM++, D extra dimensions)
    pfgm_D: int = 128                 # PFGM++'s D (process "pfgmpp"); D -> infinity is EDM
    network: dict = field(default_factory=lambda: {"name": "mlp"})
    encoder: dict = field(default_factory=lambda: {"name": "mlp"})
    # The paper's Table 3 ablation (docs/continuous_latents.md): "continuous" replaces the m categorical latents by a
    # Gaussian vector of D entries, cut into m tokens of D / m, with a KL penalty, and a diffusion prior in stage II.
    latent_type: str = "discrete"     # "discrete" (DisCo-Diff) or "continuous"
    latent_dim: int | None = None     # D of a continuous latent (None: m * k, the discrete one-hots' size)
    kl_weight: float | None = None    # beta on the KL per data entry, continuous latents only (None: 1, the ELBO's)

    @property
    def continuous(self) -> bool:
        return self.latent_type == "continuous"

    @property
    def latent_size(self) -> int:
        """The length of one z: m integer codes (discrete latents), or D real numbers (continuous)."""
        if not self.continuous:
            return self.num_latents
        return self.latent_dim if self.latent_dim is not None else self.num_latents * self.codebook_size

    @property
    def token_width(self) -> int:
        """The entries of one latent token, what the denoiser's latent embedding reads: a one-hot over k codes, or a
        slice of D / m coordinates of a continuous z."""
        return self.latent_size // max(self.num_latents, 1) if self.continuous else self.codebook_size

    @property
    def beta(self) -> float:
        """The KL weight in force: 0 for discrete latents (they have none), else kl_weight (None: 1)."""
        if not self.continuous:
            return 0.0
        return 1.0 if self.kl_weight is None else self.kl_weight

    def latent_summary(self) -> str:
        """The latents in a few words, for log lines."""
        if self.continuous:
            return (f"continuous latent D={self.latent_size} as m={self.num_latents} tokens of {self.token_width}, "
                    f"KL weight {self.beta:g}")
        terms = [f"{name} {w:g}" for name, w in self.regularisers.items() if w]
        return f"m={self.num_latents} k={self.codebook_size}" + (f" (regularisers: {', '.join(terms)})" if terms else "")


@dataclass
class DataConfig:
    name: str = "toy2d"               # a built-in dataset, or "path" for a user's folder / zip / npz
    path: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    kimg: float = 100.0               # duration in thousands of training examples
    batch: int = 512                  # total batch over all processes and accumulation rounds
    batch_gpu: int | None = None      # per-process micro-batch (None: batch / world size)
    lr: float = 1e-3
    lr_rampup_kimg: float = 0.0
    ema_halflife_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    seed: int = 0
    tick_kimg: float = 10.0           # status line and stats.jsonl every tick
    snapshot_ticks: int = 5           # inference snapshot (config.json + model.safetensors)
    state_ticks: int = 5              # resumable training state
    bf16: bool = True                 # bf16 autocast on GPU (CPU always runs fp32)
    tf32: bool = False                # TF32 matmuls and convolutions on GPU for what runs in fp32 (EDM: off)
    compile: bool = False             # torch.compile the stage-I loss (denoiser + encoder); same results, faster on GPU
    # `--init-from RUN` (finetune.py): {"run": the plain run's resolved path, "sha256": of its model.safetensors}.
    # The weights start from there; like the seed, it cannot change on resume.
    init_from: dict | None = None
    new_parts_lr: float | None = None  # with init_from: the learning rate of the encoder and the latent path (null: lr)
    # `--encoder-from RUN` / `--weak-of RUN` (autoguidance.py): {"run": the strong run's resolved path, "sha256": of
    # its model.safetensors}. This run (autoguidance's weak model) takes RUN's encoder, frozen, so that its latents
    # mean the same; like the seed, it cannot change on resume.
    encoder_from: dict | None = None
    # Stage I trains the encoder until this many kimg, then only the denoiser (None: to the end). The codes' meanings
    # stop moving, so the EMA denoiser, an average over the last tens of kimg, learns the very codes of the EMA encoder
    # that the prior is fitted to (see `code_churn` in stats.jsonl for how much they still move). Not in the paper;
    # on fashion16 it left the samples' distance from the data unchanged (docs/research-log.md).
    freeze_encoder_kimg: float | None = None


@dataclass
class PriorTrainConfig:
    """Stage II: the prior's network (the transformer's sizes, for either kind of prior) and its training. All of it
    may change on an existing run: `discodiff train-prior --set prior_train.network.depth=4` fits another prior to
    the same stage-I model, in place."""
    network: dict = field(default_factory=lambda: {"depth": 4, "width": 128, "heads": 4, "dropout": 0.0})
    kimg: float = 100.0
    batch: int = 256
    lr: float = 1e-3
    tau: float = 0.01                 # Gumbel temperature of the latents the prior learns from
    seed: int = 0
    tick_kimg: float = 10.0


@dataclass
class SampleConfig:
    steps: int = 50
    sampler: str = "heun"
    guidance: float = 0.0
    prior_temperature: float = 1.0


@dataclass
class RunConfig:
    preset: str = "toy2d"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prior_train: PriorTrainConfig = field(default_factory=PriorTrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return _from_dict(cls, upgrade(d), "config")

    def save(self, path: Path) -> None:
        """Writes config.json atomically: a kill or a full disk leaves the previous file whole."""
        from .fileio import atomic_write_text
        atomic_write_text(path, json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} is not a discodiff config")
        version = d.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ConfigError(f"{path} is not a discodiff run config (format_version {version!r})")
        cfg = cls.from_dict(d)
        validate(cfg)
        return cfg


FORMAT_VERSION = 1


def _from_dict(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        sub = _NESTED.get((cls, name))
        kwargs[name] = _from_dict(sub, value, f"{where}.{name}") if sub else _checked(value, hints[name],
                                                                                       f"{where}.{name}")
    return cls(**kwargs)


def _checked(value, annotation, where: str):
    """`value` if it has the field's type (an int is taken for a float), else a ConfigError naming the key."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for t in options:
        if t is type(None) and value is None:
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str, list, dict) and isinstance(value, t):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in options)
    raise ConfigError(f"{where.removeprefix('config.')} must be {names}, got {json.dumps(value)}")


_NESTED = {(RunConfig, "model"): ModelConfig, (RunConfig, "data"): DataConfig, (RunConfig, "train"): TrainConfig,
           (RunConfig, "prior_train"): PriorTrainConfig, (RunConfig, "sample"): SampleConfig}


# Options that the project measured not to help and removed at commit 8b0f46c's successor. A config that still names
# one at its neutral value loads without it; at any other value it is refused, naming that commit (where the option
# and the results measured with it live: docs/research-log.md).
REMOVED_OPTIONS = {
    ("model", "latent_sigma_focus"): 0.0, ("model", "invariance_weight"): 0.0, ("model", "invariance_shift"): None,
    ("model", "invariance_flip"): None, ("prior_train", "ema_halflife_kimg"): 0.0,
    ("model.encoder", "balanced"): False, ("model.encoder", "gain_rate"): None, ("model.encoder", "head_init"): "random",
}
REMOVED_AT = "8b0f46c"


def upgrade(d: dict) -> dict:
    """A config dict written before the last change of its options, brought up to date: the anti-collapse weights
    usage_weight and confidence_weight, at equal values, are the "information" regulariser; model.prior is
    prior_train.network; removed options at their neutral value are dropped; anything else is refused in one line.
    (Also what lets `--set model.prior.depth=2` keep working.)"""
    if not isinstance(d, dict):
        return d
    d = copy.deepcopy(d)
    model = d.get("model")
    if isinstance(model, dict):
        usage, confidence = model.pop("usage_weight", 0.0), model.pop("confidence_weight", 0.0)
        if usage != confidence:
            raise ConfigError(f"model.usage_weight {usage} and model.confidence_weight {confidence} differ; they are "
                              f"now one term, model.regularisers.information (their sum at equal weights; unequal "
                              f"weights ran at commit {REMOVED_AT})")
        if usage:
            model["regularisers"] = {**model.get("regularisers", {}), "information": usage}
        if "prior" in model:  # the prior's sizes moved to stage II's section, where they may change on resume
            prior_train = d.setdefault("prior_train", {})
            if isinstance(prior_train, dict):
                prior_train["network"] = merge(prior_train.get("network") or {}, model.pop("prior"))
    for (section, key), neutral in REMOVED_OPTIONS.items():
        where = d
        for part in section.split("."):
            where = where.get(part) if isinstance(where, dict) else None
        if not isinstance(where, dict) or key not in where:
            continue
        value = where.pop(key)
        if neutral is not None and value != neutral:
            raise ConfigError(f"{section}.{key} was removed (measured not to help; it ran at commit {REMOVED_AT}, see "
                              f"docs/research-log.md); this config sets it to {json.dumps(value)}")
    return d


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# Presets are overrides on the defaults above. Each names its dataset, network sizes and training budget.
PRESETS: dict[str, dict] = {
    # The paper's 2D experiment: 8 Gaussians, m = 1, k = 8, 4-layer MLP denoiser,
    # 3-layer MLP encoder, Adam at lr 1e-3, Heun with 50 steps. Two choices make the 8 codes name the 8 modes
    # on every seed tried (docs/toy2d.md): soft Gumbel-Softmax samples in stage I (straight-through gradients
    # pull even a correct partition apart), and encoder prototypes seeded by k-means++ on the first batch (from
    # a random start, codes die or take two modes within ~40 steps and never recover).
    "toy2d": {
        "model": {"data_shape": [2], "sigma_data": 2.0, "num_latents": 1, "codebook_size": 8, "hard": False,
                  "P_mean": 0.0, "P_std": 1.4,
                  "network": {"name": "mlp", "hidden": 128, "depth": 4, "emb_dim": 64, "centred": True,
                              "centre_init_std": 1.0},
                  "encoder": {"name": "mlp", "hidden": 128, "depth": 3, "prototypes": True}},
        "data": {"name": "toy2d"},
        "train": {"kimg": 1000, "batch": 512, "lr": 1e-3, "ema_halflife_kimg": 50, "tick_kimg": 100,
                  "snapshot_ticks": 5, "state_ticks": 5},
        # The prior has no EMA: at lr 1e-3 its last iterate is off uniform by a TV of ~0.03, which W2 sees as mass
        # moved between modes; a large batch at a low lr brings that to ~0.007 (docs/toy2d.md).
        "prior_train": {"network": {"depth": 2, "width": 64, "heads": 4, "dropout": 0.0},
                        "kimg": 400, "batch": 4096, "lr": 1e-4, "tick_kimg": 100},
        "sample": {"steps": 50, "sampler": "heun"},
    },
    # 8x8 grey digits that ship with scikit-learn: DisCo-Diff on images in minutes on a CPU. At this budget the
    # latents collapsed to 1-2 codes each through cross-attention, and stayed in use through the embedding
    # (measured in a 64 kimg trial: 1.2-1.8 vs 2.7-5.9 codes in use), so this CPU preset injects them through the embedding.
    "digits": {
        "model": {"sigma_data": 0.5, "num_latents": 4, "codebook_size": 16,
                  "network": {"name": "unet", "model_channels": 24, "channel_mult": [1, 2, 2], "num_blocks": 1,
                              "attn_resolutions": [4, 2], "dropout": 0.1, "channels_per_head": 48,
                              "latent_dim": 64, "latent_depth": 2, "latent_heads": 4, "latent_injection": "embedding"},
                  "encoder": {"name": "vit", "patch_size": 4, "width": 64, "depth": 2, "heads": 4}},
        "data": {"name": "digits"},
        "train": {"kimg": 96, "batch": 64, "lr": 1e-3, "lr_rampup_kimg": 2, "ema_halflife_kimg": 5, "ema_rampup": 0.1,
                  "tick_kimg": 8, "snapshot_ticks": 4, "state_ticks": 4},
        # The prior needs far more than stage I's images: at 30 kimg its marginals were 0.07-0.14 (TV) off the
        # encoder's; 1,000 kimg at a large batch and a low lr bring them to 0.01-0.05 in about 40 s.
        "prior_train": {"network": {"depth": 2, "width": 64, "heads": 4, "dropout": 0.0},
                        "kimg": 1000, "batch": 1024, "lr": 1e-4, "tick_kimg": 100},
        "sample": {"steps": 18, "sampler": "heun"},
    },
    # Fashion-MNIST's 60,000 training images reduced to 16x16 by area averaging: harder than the digits (more
    # images, more varied shapes and textures) and still trained on 2 CPU cores in about half an hour, prior
    # included. Unconditional; the labels are there with --cond. The prior follows what fitted the digits' latent
    # tuples best, a long run at a large batch and a low learning rate, three times longer: with m = 4 on two
    # training seeds, 3,000 kimg (about 2 minutes) brought the worst per-latent marginal TV from 0.021-0.024 to
    # 0.011-0.021 and the unseen tuples from 3-4% to 0.6-1.1%; an EMA, a higher lr and a 4x128 transformer did not
    # (benchmarks/prior_fit.py). With m = 8 the same prior reaches 0.030-0.035 and 8-17% unseen (a second draw of
    # the data's own tuples: 0.008, 5-13%). m = 8 latents, not 4: with 4 the denoiser made the classes in the wrong
    # mix (class TV 0.067-0.075 against EDM's 0.044-0.056 in a classifier's features) and scored 2.8x and 1.6x EDM's
    # distance there on two seeds; with 8, 1.6x and 0.73x, and by Inception FID 0.92 against m = 4's 0.97
    # (docs/results.md), for about 2% more training time per image.
    "fashion16": {
        "model": {"sigma_data": 0.5, "num_latents": 8, "codebook_size": 16,
                  "network": {"name": "unet", "model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1,
                              "attn_resolutions": [4], "dropout": 0.1, "channels_per_head": 32,
                              "latent_dim": 64, "latent_depth": 2, "latent_heads": 4, "latent_injection": "embedding"},
                  "encoder": {"name": "vit", "patch_size": 4, "width": 64, "depth": 2, "heads": 4}},
        "data": {"name": "fashion-mnist", "options": {"resolution": 16}},
        "train": {"kimg": 320, "batch": 128, "lr": 1e-3, "lr_rampup_kimg": 5, "ema_halflife_kimg": 10,
                  "ema_rampup": 0.1, "tick_kimg": 16, "snapshot_ticks": 4, "state_ticks": 4},
        "prior_train": {"network": {"depth": 2, "width": 64, "heads": 4, "dropout": 0.0},
                        "kimg": 3000, "batch": 1024, "lr": 1e-4, "tick_kimg": 100},
        "sample": {"steps": 18, "sampler": "heun"},
    },
    # 28x28 grey: sized for a GPU, runnable on a CPU with a smaller --kimg. The GPU presets inject the latents by
    # cross-attention (the paper's way), which collapsed on digits to 2-3 codes per latent; the soft relaxation with
    # the information term at 0.1 (usage + confidence) kept 13-15 of 16 in use there and made the latents carry the
    # most of any cross-attention variant (benchmarks/latent_injection.py).
    "mnist": {
        "model": {"sigma_data": 0.5, "num_latents": 10, "codebook_size": 32, "p_class_drop": 0.1,
                  "hard": False, "regularisers": {"information": 0.1},
                  "network": {"name": "unet", "model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 2,
                              "attn_resolutions": [7], "dropout": 0.1, "channels_per_head": 32,
                              "latent_dim": 64, "latent_depth": 2, "latent_heads": 4},
                  "encoder": {"name": "vit", "patch_size": 4, "width": 128, "depth": 4, "heads": 4}},
        "data": {"name": "mnist"},
        "train": {"kimg": 2000, "batch": 256, "lr": 5e-4, "lr_rampup_kimg": 50, "ema_halflife_kimg": 50,
                  "tick_kimg": 50, "snapshot_ticks": 4, "state_ticks": 4},
        "prior_train": {"network": {"depth": 4, "width": 256, "heads": 8, "dropout": 0.1},
                        "kimg": 500, "batch": 512, "lr": 5e-4, "tick_kimg": 50},
        "sample": {"steps": 18, "sampler": "heun"},
    },
    # 32x32 RGB emoji from Debian's colour emoji font: our small colour benchmark, sized for a GPU.
    "emoji": {
        "model": {"sigma_data": 0.5, "num_latents": 10, "codebook_size": 32,
                  "hard": False, "regularisers": {"information": 0.1},
                  "network": {"name": "unet", "model_channels": 64, "channel_mult": [1, 2, 2, 2], "num_blocks": 2,
                              "attn_resolutions": [16, 8], "dropout": 0.1, "channels_per_head": 64,
                              "latent_dim": 128, "latent_depth": 4, "latent_heads": 4},
                  "encoder": {"name": "vit", "patch_size": 4, "width": 192, "depth": 6, "heads": 6}},
        "data": {"name": "emoji"},
        "train": {"kimg": 5000, "batch": 256, "lr": 5e-4, "lr_rampup_kimg": 100, "ema_halflife_kimg": 100,
                  "tick_kimg": 50, "snapshot_ticks": 4, "state_ticks": 4},
        "prior_train": {"network": {"depth": 6, "width": 256, "heads": 8, "dropout": 0.1},
                        "kimg": 500, "batch": 512, "lr": 5e-4, "tick_kimg": 50},
        "sample": {"steps": 18, "sampler": "heun"},
    },
}
PRESETS["fashion-mnist"] = merge(PRESETS["mnist"], {"data": {"name": "fashion-mnist"}})


def merge_overrides(base: dict, overrides: dict) -> dict:
    """`merge`, except that an override of model.network or model.encoder naming another architecture replaces that
    entry whole: the preset's options belong to its own architecture (--set model.encoder.name=kmeans on a preset
    with a ViT encoder gives the k-means encoder with its defaults, not one handed the ViT's patch_size)."""
    out = merge(base, overrides)
    for key in ("network", "encoder"):
        new = overrides.get("model", {}).get(key, {})
        if isinstance(new, dict) and "name" in new and new["name"] != base["model"][key].get("name"):
            out["model"][key] = copy.deepcopy(new)
    return out


# fashion16 with what won there: one latent whose 256 codes are a k-means partition of the training images, fitted
# once before stage I, in place of the learned ViT encoder. Sampled as fashion16 (Heun, 18 steps, no guidance): in the
# classifier's features (docs/fid.md) that scored 0.98 against plain EDM's 2.03 on seed 1 (docs/results.md), while
# the earlier default, DPM-Solver++(2M) at 17 steps with latent guidance w = 1 (chosen by Inception FID: 11.25
# against EDM's 13.45 on seed 0), scored 4.68, 2.3x EDM's distance: guidance makes the classes surer and the samples
# further from the data.
PRESETS["fashion16-kmeans"] = merge_overrides(PRESETS["fashion16"], {
    "model": {"num_latents": 1, "codebook_size": 256, "encoder": {"name": "kmeans"}}})

# The paper's ImageNet-64 configuration (the paper's section 4.1, App. D): EDM's ADM U-Net
# (DhariwalUNet) at 64x64, class-conditional on the 1000 classes, with the discrete latents added, and EDM's ImageNet-64
# recipe (its README: --cond=1 --arch=adm --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10 --augment=0). The paper
# fine-tunes EDM's pretrained network: `discodiff import-edm` converts EDM's snapshot into a plain run (m = 0) of this
# preset's backbone, and `train --preset imagenet64 --init-from THAT_RUN --data IMAGENET64` fine-tunes it (docs/gpu.md).
# The data are the user's ImageNet-64 folder or zip (data.name "path"): train refuses to start without --data.
# Values marked "ours" are our choice: the paper leaves them open.
PRESETS["imagenet64"] = {
    "model": {"data_shape": [3, 64, 64], "num_classes": 1000,  # both replaced by what the data say
              "sigma_data": 0.5, "P_mean": -1.2, "P_std": 1.2,  # EDM's preconditioning and noise distribution
              "num_latents": 10, "codebook_size": 100,          # m = 10, k = 100 (App. D.1's 1000 read as a typo)
              "tau": 1.0, "hard": True, "p_null": 0.1,          # straight-through Gumbel-Softmax at tau = 1 (hard: the
              "p_class_drop": 0.0,                              # docking code's; images: ours); EDM's label dropout 0
              "network": {"name": "unet", "model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4,
                          "num_blocks": 3, "attn_resolutions": [32, 16, 8], "dropout": 0.1, "channels_per_head": 64,
                          "norm_eps": 1e-5,  # EDM's group norms
                          # the 6-layer width-192 latent transformer; cross-attention after every self-attention
                          "latent_dim": 192, "latent_depth": 6,
                          "latent_heads": 3,  # ours: 64 channels per head, as the U-Net's attention
                          "latent_injection": "cross_attention"},
              "encoder": {"name": "vit", "patch_size": 8, "width": 768, "depth": 12, "heads": 12}},  # ViT-B/8
    "data": {"name": "path", "path": None},
    "train": {"kimg": 100000,  # ours: the fine-tuning duration (100 Mimg, 4% of EDM's 2.5 Gimg)
              "batch": 4096, "lr": 1e-4, "lr_rampup_kimg": 10000, "ema_halflife_kimg": 50000,  # EDM's recipe
              "ema_rampup": None,  # EDM's --transfer: no EMA ramp-up when starting from a trained network
              "batch_gpu": 64,  # ours: fits an 80 GB GPU in bf16 (gradient accumulation makes up the batch)
              "tick_kimg": 200, "snapshot_ticks": 50, "state_ticks": 50},  # EDM's --tick=200 --snap=50 (states: ours)
    "prior_train": {"network": {"depth": 12, "width": 512, "heads": 8,  # the paper's 12-layer width-512 prior
                                "dropout": 0.0},  # ours
                    "kimg": 50000, "batch": 1024, "lr": 1e-4, "tick_kimg": 1000,  # ours
                    "tau": 0.01},  # the paper's latents for stage II (Alg. 2)
    "sample": {"steps": 40, "sampler": "heun",  # EDM's 40 Heun steps (79 evaluations)
               "guidance": 1.0},  # latent guidance w = 1, the paper's FID 1.65
}


# The paper's 2D experiment as the paper ran it (its App. F): 8 Gaussians, m = 1, k = 8, a 4-layer MLP denoiser with
# the reparameterised output G = (F(z) - x) / (t^2 + sigma_1^2) + H(x, t) (the centred MLP, whose H does not see z),
# a 3-layer MLP encoder from a random start, straight-through Gumbel-Softmax at tau = 1 (the paper's images and its
# docking code), Adam at lr 1e-3, Heun with 50 steps. The paper does not give the noise schedule, the budget or the
# prior: those are toy2d's.
PRESETS["toy2d-paper"] = merge_overrides(PRESETS["toy2d"], {
    "model": {"hard": True,
              "network": {"name": "mlp", "hidden": 128, "depth": 4, "emb_dim": 64, "centred": True,
                          "centre_init_std": 1.0, "latent_embedding": False},
              "encoder": {"name": "mlp", "hidden": 128, "depth": 3, "prototypes": False}}})

# DisCo-DiffDock's design on dock3d, a seeded docking ANALOGUE (data/dock3d.py, docs/docking.md):
# m = 2 pointer latents whose codebook is each receptor's points (codebook_size: the largest receptor, 64), straight-
# through Gumbel-Softmax at tau = 1 and latent dropout 0.1 (the docking code's), a prior over the receptor's points that
# starts from the denoiser's set encoder, frozen at first. The networks are a small distance-biased set transformer,
# not DiffDock's e3nn model, and the pose is the ligand's atom coordinates, not translation / rotation / torsions
# (the card lists every deviation). Sized for 2 CPU cores (benchmarks/docking.py).
PRESETS["dock3d"] = {
    "model": {"data_shape": [36], "sigma_data": 3.0, "P_mean": 0.5, "P_std": 1.4,
              "num_latents": 2, "codebook_size": 64, "latent_type": "pointer", "tau": 1.0, "hard": True, "p_null": 0.1,
              "network": {"name": "set_transformer", "width": 64, "depth": 3, "heads": 4, "set_depth": 2},
              "encoder": {"name": "set_pointer", "width": 64, "heads": 4, "depth": 1}},
    "data": {"name": "dock3d", "options": {"seed": 0}},
    "train": {"kimg": 80, "batch": 32, "lr": 1e-3, "lr_rampup_kimg": 1, "ema_halflife_kimg": 4, "ema_rampup": 0.1,
              "tick_kimg": 8, "snapshot_ticks": 1, "state_ticks": 1},
    "prior_train": {"network": {"depth": 1, "width": 64, "heads": 4, "dropout": 0.0, "share": True,
                                "freeze_fraction": 0.25},
                    "kimg": 16, "batch": 64, "lr": 1e-3, "tau": 0.01, "tick_kimg": 8},
    "sample": {"steps": 20, "sampler": "heun"},
}


@dataclass(frozen=True)
class PresetCard:
    """What a preset is, for `discodiff presets` and the docs: the paper's configuration, or ours with each
    deviation from the paper and its reason; the data's shape and classes (for the parameter counts, before any data
    are loaded); and where it has been trained at length, if anywhere."""
    summary: str
    data_shape: tuple
    num_classes: int = 0
    paper: bool = False
    deviations: tuple = ()            # ("what differs from the paper", "why"), ...
    trained: str = ""                 # where it was trained at length and measured ("" if never)


PRESET_CARDS: dict[str, PresetCard] = {
    "toy2d-paper": PresetCard(
        "the paper's 2D toy (App. F): 8 Gaussians, m = 1, k = 8", (2,), paper=True,
        deviations=(("noise schedule (sigma_data 2, ln sigma ~ N(0, 1.4^2)), budget and prior are toy2d's",
                     "the paper does not give them"),)),
    "toy2d": PresetCard(
        "the 2D toy of the demo: 8 Gaussians, m = 1, k = 8", (2,),
        deviations=(("soft Gumbel-Softmax samples instead of straight-through",
                     "straight-through gradients pulled even a correct partition of the modes apart"),
                    ("encoder prototypes seeded by k-means++ on the first batch",
                     "from a random start codes die or take two modes within ~40 steps, and never recover"),
                    ("z also enters the MLP's embedding, not only its centre F(z)", "learns the modes faster"),
                    ("noise schedule sigma_data 2, ln sigma ~ N(0, 1.4^2)", "fitted to the data's scale; the "
                     "paper does not give one")),
        trained="the demo: CPU, about 5 minutes (docs/toy2d.md)"),
    "digits": PresetCard(
        "scikit-learn's 8x8 digits, a small U-Net, m = 4, k = 16", (1, 8, 8),
        deviations=(("latents through the noise embedding instead of cross-attention",
                     "at this budget cross-attention collapsed to 1-2 codes a latent"),
                    ("m = 4, k = 16, a 2-layer ViT encoder with 4x4 patches", "1,797 images of 8x8 pixels")),
        trained="CPU, minutes (docs/results.md)"),
    "fashion16": PresetCard(
        "Fashion-MNIST at 16x16, a small U-Net, m = 8, k = 16", (1, 16, 16),
        deviations=(("latents through the noise embedding instead of cross-attention",
                     "cross-attention collapsed on the digits at CPU budgets"),
                    ("m = 8, k = 16, a 2-layer ViT encoder with 4x4 patches", "sized for 2 CPU cores; with m = 4 the "
                     "samples came in the wrong mix of classes (docs/results.md)")),
        trained="CPU, about half an hour a run, two seeds (docs/results.md); at 18 Heun steps, by Inception FID 0.92x "
                "EDM's; in a classifier's features 1.6x (seed 0) and 0.73x (seed 1) EDM's distance from the data "
                "(with the former m = 4: 2.8x and 1.6x)"),
    "fashion16-kmeans": PresetCard(
        "fashion16 with one fixed k-means latent of 256 codes", (1, 16, 16),
        deviations=(("no learned encoder: the codes are a k-means partition of the training images",
                     "it scored best by Inception FID among the latents tried on fashion16"),
                    ("sampled without latent guidance (Heun, 18 steps)", "the paper's w = 1 more than doubled the "
                     "distance in a classifier's features (4.68 against 0.98, seed 1), though Inception FID "
                     "rewarded it (docs/results.md)")),
        trained="CPU, two seeds (docs/results.md); in a classifier's features 0.48x EDM's distance at 18 Heun steps "
                "(0.98 against 2.03, seed 1)"),
    "mnist": PresetCard(
        "MNIST 28x28, class-conditional, m = 10, k = 32", (1, 28, 28), num_classes=10,
        deviations=(("soft Gumbel-Softmax and the information term (weight 0.1) against collapse",
                     "through cross-attention the codebooks collapsed to 2-3 codes a latent without them"),
                    ("a 2M-parameter U-Net, k = 32", "sized for one GPU"))),
    "fashion-mnist": PresetCard(
        "Fashion-MNIST 28x28, class-conditional, m = 10, k = 32", (1, 28, 28), num_classes=10,
        deviations=(("soft Gumbel-Softmax and the information term (weight 0.1)", "as mnist: through "
                     "cross-attention the codebooks collapsed without them"),
                    ("a 2M-parameter U-Net, k = 32", "sized for one GPU"))),
    "emoji": PresetCard(
        "Noto colour emoji at 32x32 RGB, m = 10, k = 32", (3, 32, 32),
        deviations=(("soft Gumbel-Softmax and the information term (weight 0.1)", "as mnist"),
                    ("a 13M-parameter U-Net, k = 32", "sized for one GPU"))),
    "imagenet64": PresetCard(
        "the paper's ImageNet-64 configuration: EDM's ADM U-Net, m = 10, k = 100, ViT-B/8", (3, 64, 64),
        num_classes=1000, paper=True,
        deviations=(("fine-tuning budget, prior training, the latent transformer's heads", "the paper leaves them "
                     "open (values marked 'ours' in discodiff/config.py)"),)),
    "dock3d": PresetCard(
        "a docking ANALOGUE (not molecular docking): DisCo-DiffDock's m = 2 pointer latents on seeded 3D receptors "
        "with 2-4 pockets", (36,),
        deviations=(("seeded synthetic receptors and rigid ligands (data/dock3d.py) instead of PDBBind",
                     "PDBBind cannot be installed here; the analogue keeps what the latents act on: several "
                     "binding modes per receptor, held-out receptors"),
                    ("the pose is the ligand's 12 x 3 atom coordinates, not translation, rotation and torsions",
                     "rigid ligands; a plain EDM model over coordinates"),
                    ("a distance-biased set transformer (no e3nn, not E(3)-equivariant), width 64",
                     "sized for 2 CPU cores; permutation equivariance over the set is kept"),
                    ("the codebook is the receptor's points only, not ligand atoms and residues together",
                     "the receptor's points are what locate a pocket here"),
                    ("the prior copies the denoiser's set encoder and freezes it for the first quarter of its steps, "
                     "not 5 epochs; targets are tau = 0.01 samples, not soft labels",
                     "the same guard against overfitting at this budget; the core's stage-II target"),
                    ("a one-layer encoder over the receptor's points and the bound ligand's atoms, no batch norm",
                     "sized for 2 CPU cores"),
                    ("stage I 80 kimg at batch 32, lr 1e-3 (the paper's), EMA half-life 4 kimg; no early stopping on "
                     "docking RMSD", "sized for 2 CPU cores (5-10 minutes a run); at 40 kimg under 3% of poses "
                     "reached a pocket"),
                    ("EDM's noise levels over coordinates: sigma_data 3, ln sigma ~ N(0.5, 1.4^2), the ODE from sigma "
                     "30 (not 80)", "fitted to the analogue's scale (ligand coordinates' std about 3 A)"),
                    ("Heun, 20 steps (39 evaluations), prior temperature 1, no low-temperature sampling",
                     "the paper's 20 steps; its tuned temperatures are DiffDock's"))),
}


def preset_config(name: str, overrides: dict | None = None) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from: {', '.join(sorted(PRESETS))}")
    d = merge(RunConfig(preset=name).to_dict(), PRESETS[name])
    if overrides:
        d = merge_overrides(d, overrides)
    cfg = RunConfig.from_dict(d)
    validate(cfg)
    return cfg


MAX_SEED = 2**63 - 1  # torch generators take seeds below 2**63


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    """Checks every value's range at once, when the config is resolved, not at its first use."""
    from .process import PROCESSES
    from .sampling import NAMED_SAMPLERS, SAMPLERS, required_options
    m = cfg.model
    _require(0 <= m.num_latents <= 256, f"--latents (model.num_latents) must be between 0 and 256, got {m.num_latents}")
    _require(not m.num_latents or 2 <= m.codebook_size <= 65536,
             f"--codebook (model.codebook_size) must be between 2 and 65536, got {m.codebook_size}")
    _require(m.num_classes >= 0, f"model.num_classes must be >= 0, got {m.num_classes}")
    _require(len(m.data_shape) in (1, 3) and all(isinstance(n, int) and n > 0 for n in m.data_shape),
             f"model.data_shape must be [D] or [C, H, W] of positive ints, got {m.data_shape}")
    for key in ("tau", "sigma_data", "P_std"):
        _require(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    for key in ("p_null", "p_class_drop"):
        _require(0 <= getattr(m, key) < 1, f"model.{key} must lie in [0, 1), got {getattr(m, key)}")
    _require(m.process in PROCESSES, f"unknown model.process {m.process!r}; choose from: {', '.join(PROCESSES)}")
    _require(m.pfgm_D >= 1, f"model.pfgm_D must be an integer >= 1, got {m.pfgm_D} (D -> infinity is EDM: "
                            f"model.process=edm)")
    for key in ("network", "encoder"):
        _require("name" in getattr(m, key), f"model.{key} must name its architecture (a 'name' entry)")
    from .latents import LATENT_TYPES, REGULARISERS
    for name, weight in m.regularisers.items():
        _require(name in REGULARISERS, f"unknown regulariser model.regularisers.{name}; choose from: "
                                       f"{', '.join(sorted(REGULARISERS))}")
        _require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0,
                 f"model.regularisers.{name} must be a weight >= 0, got {json.dumps(weight)}")
    _require(m.latent_type in LATENT_TYPES, f"--latent-type (model.latent_type) must be one of "
                                            f"{', '.join(LATENT_TYPES)}, got {m.latent_type!r}")
    _validate_latent_type(m)
    t = cfg.train
    _require(t.kimg >= 0, f"train.kimg must be >= 0, got {t.kimg}")
    _require(t.batch >= 1, f"train.batch must be >= 1, got {t.batch}")
    _require(t.batch_gpu is None or t.batch_gpu >= 1, f"train.batch_gpu must be >= 1, got {t.batch_gpu}")
    _require(t.lr > 0, f"the learning rate (train.lr) must be positive, got {t.lr}")
    _require(0 <= t.seed <= MAX_SEED, f"train.seed must lie in [0, 2**63), got {t.seed}")
    _require(t.new_parts_lr is None or t.new_parts_lr > 0,
             f"train.new_parts_lr must be positive or null, got {t.new_parts_lr}")
    _require(t.new_parts_lr is None or t.init_from is not None,
             "train.new_parts_lr sets the learning rate of the parts a fine-tuned run adds; it needs --init-from")
    if t.init_from is not None:
        _require(set(t.init_from) == {"run", "sha256"} and all(isinstance(v, str) for v in t.init_from.values()),
                 f"train.init_from must be {{\"run\": path, \"sha256\": hash}} (set by --init-from), got {t.init_from}")
        _require(m.num_latents > 0, "--init-from turns a plain run into DisCo-Diff, so this run needs latents "
                 "(--latents M > 0); to train a plain run further, resume it with a larger --kimg")
    if t.freeze_encoder_kimg is not None:
        _require(t.freeze_encoder_kimg >= 0, f"train.freeze_encoder_kimg must be >= 0 or null, got "
                                             f"{t.freeze_encoder_kimg}")
        _require(m.num_latents > 0, "train.freeze_encoder_kimg stops training the encoder, and a plain run "
                                    "(no latents) has none")
    for key in ("lr_rampup_kimg",):
        _require(getattr(t, key) >= 0, f"train.{key} must be >= 0, got {getattr(t, key)}")
    for key in ("ema_halflife_kimg", "tick_kimg"):
        _require(getattr(t, key) > 0, f"train.{key} must be positive, got {getattr(t, key)}")
    _require(t.ema_rampup is None or t.ema_rampup > 0, f"train.ema_rampup must be positive or null, got {t.ema_rampup}")
    for key in ("snapshot_ticks", "state_ticks"):
        _require(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    p = cfg.prior_train
    _require(p.kimg >= 0, f"prior_train.kimg must be >= 0, got {p.kimg}")
    _require(p.batch >= 1, f"prior_train.batch must be >= 1, got {p.batch}")
    for key in ("lr", "tau", "tick_kimg"):
        _require(getattr(p, key) > 0, f"prior_train.{key} must be positive, got {getattr(p, key)}")
    _require(0 <= p.seed <= MAX_SEED, f"prior_train.seed must lie in [0, 2**63), got {p.seed}")
    s = cfg.sample
    _require(s.steps >= 1, f"sample.steps must be >= 1, got {s.steps}")
    _require(s.sampler in SAMPLERS, f"unknown sampler {s.sampler!r}; choose from: {', '.join(SAMPLERS)}")
    _require(s.sampler in NAMED_SAMPLERS,  # restart's intervals are options of `discodiff sample`, not of a run
             f"sample.sampler {s.sampler!r} needs {', '.join(required_options(s.sampler))}, which a run config does "
             f"not hold; choose from: {', '.join(NAMED_SAMPLERS)} (and pass --sampler {s.sampler} to sample)")
    _require(s.prior_temperature > 0, f"sample.prior_temperature must be positive, got {s.prior_temperature}")


def _validate_latent_type(m: ModelConfig) -> None:
    if not m.continuous:
        for flag, key in (("--latent-dim", "latent_dim"), ("--kl-weight", "kl_weight")):
            _require(getattr(m, key) is None, f"{flag} (model.{key}) applies to --latent-type continuous only; this "
                                              f"model's latents are {m.latent_type}")
        return
    _require(not m.regularisers.get("information"), "model.regularisers.information acts on a discrete latent's "
             "codes; continuous latents have none (their KL weight, --kl-weight, regularises the encoder)")
    _require(m.num_latents >= 1, "--latent-type continuous needs m >= 1 latent tokens (--latents); for a model "
                                 "without latents use --latents 0 with the default --latent-type discrete")
    D = m.latent_size
    _require(D >= 1, f"--latent-dim (model.latent_dim) must be positive, got {D}")
    _require(D % m.num_latents == 0, f"--latent-dim {D} must be a multiple of the {m.num_latents} latent tokens "
                                     f"(--latents): each token holds D / m coordinates")
    _require(m.beta >= 0, f"--kl-weight (model.kl_weight) must be >= 0, got {m.kl_weight}")
