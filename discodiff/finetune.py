"""Fine-tuning a finished plain EDM run (m = 0) into DisCo-Diff: `discodiff train --init-from RUN`.

The paper reached its ImageNet results this way: the pretrained EDM network, latent
cross-attention added with zero-initialised output projections, and a fresh encoder, all fine-tuned together.
Here a new run starts from RUN's EMA weights, and everything the plain network lacks (the encoder, the latent
embedding and transformer, the cross-attention or embedding projection) starts fresh, with the latent path's
output projections at zero: the new denoiser computes exactly RUN's function, for any z and for the null latent,
until training moves those projections.

The new run's config records where it came from, in `train.init_from`: RUN's resolved path and the sha256 of its
model.safetensors. The weights are read only at the new run's first start; a resumed run reads its own state.

- `base_record(RUN)`: what the new run records of RUN;
- `config_from_base(RUN, overrides)`: the new run's config when no --preset is named: RUN's own, with RUN's network
  (its latent options included), encoder, data and training settings, and the overrides on top. This is the way to
  fine-tune a run whose backbone no preset has (import-edm's SongUNet runs); a --preset of another backbone is
  refused in one line that says so;
- `check_base(cfg)`: RUN is readable, plain, finished and has this run's backbone (one-line errors otherwise);
- `check_same_base(cfg, RUN, NEW)`: `--init-from` on an existing run resumes it, if RUN is the one it started from;
- `load_base_weights(model, record)`: RUN's weights into the model, the latent path silenced;
- `parameter_groups(model, cfg)` and `group_lrs(cfg)`: the pretrained weights at `train.lr`, the new parts at
  `train.new_parts_lr` (the paper fine-tunes a converged network: the new parts may want a larger step).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import CONFIG, MODEL, load_tensors, newest_training_state_nimg, read_metadata
from .config import ModelConfig, RunConfig, merge_overrides, validate
from .errors import CheckpointError, ConfigError
from .fileio import file_sha256
from .process import kernel_D

LATENT_OPTION_PREFIX = "latent_"  # network options of the latent path only: free to differ from RUN's
WEIGHTLESS_OPTIONS = ("dropout",)  # network options that shape no weight: free to differ as well


def base_record(path) -> dict:
    """{"run": RUN's resolved path, "sha256": of its model.safetensors}: what `train.init_from` holds."""
    base = _open_base(Path(path))
    return {"run": str(base.path.resolve()), "sha256": file_sha256(base.model_path)}


def config_from_base(path, overrides: dict) -> RunConfig:
    """The config of a new run that fine-tunes RUN with no --preset named: RUN's config with `overrides` on top, as
    a preset's would be (merge_overrides), and nothing of where RUN itself came from (`init_from`, `encoder_from`).
    RUN is plain (m = 0, checked later), so the overrides must give the latents (--latents M)."""
    d = _open_base(Path(path)).config.to_dict()
    d["train"].update(init_from=None, encoder_from=None, new_parts_lr=None)
    cfg = RunConfig.from_dict(merge_overrides(d, overrides))
    validate(cfg)
    return cfg


@dataclasses.dataclass
class _Base:
    """The run a fine-tuned run starts from, as read here (runs.Run builds on this module, so it is not used)."""
    path: Path
    config: RunConfig

    @property
    def model_path(self) -> Path:
        return self.path / MODEL


def _open_base(path: Path) -> _Base:
    if not path.is_dir():
        raise CheckpointError(f"--init-from: run directory {path} does not exist")
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"--init-from: {path} is not a discodiff run directory (no {CONFIG})")
    try:
        base = _Base(path, RunConfig.load(path / CONFIG))
    except ConfigError as e:  # an unreadable config.json
        raise CheckpointError(f"--init-from: {e}") from None
    if not base.model_path.is_file():
        raise CheckpointError(f"--init-from: {path} has no trained weights ({MODEL}); finish training it first")
    return base


def check_same_base(cfg: RunConfig, path, run_dir) -> None:
    """`--init-from RUN` again on an existing run: it resumes, provided RUN is the run it started from (RUN is not
    read again: the run's own state holds its weights now)."""
    record = cfg.train.init_from
    if record is None:
        raise ConfigError(f"{run_dir} already holds a run that did not start from another; use a new --run-dir to "
                          f"fine-tune {path}")
    if Path(path).resolve() != Path(record["run"]):
        raise ConfigError(f"{run_dir} started from {record['run']}, not {path}; use a new --run-dir")


def trained_nimg(run: _Base) -> int:
    """Images behind RUN's model.safetensors: the snapshot records them; else the newest training state says."""
    kimg = read_metadata(run.model_path).get("kimg")
    try:
        return round(float(kimg) * 1000)
    except (TypeError, ValueError):
        return newest_training_state_nimg(run.path, "stage1")


def check_base(cfg: RunConfig) -> None:
    """Refuses, in one line, a run whose `train.init_from` names a run that cannot start it: unreadable, not plain
    (m > 0), unfinished, of another data shape, class conditioning, sigma_data, process or backbone, or whose
    weights are not the file recorded or do not fit the network. Also refuses a backbone whose latents cannot start
    silent."""
    record = cfg.train.init_from
    path = Path(record["run"])
    run = _open_base(path)
    a, b = run.config.model, cfg.model
    if a.num_latents:
        raise ConfigError(f"--init-from: {path} is a DisCo-Diff run (m = {a.num_latents}); fine-tuning starts from "
                          f"a plain EDM run (m = 0)")
    if a.network.get("name") != b.network.get("name"):
        raise ConfigError(f"--init-from: {path} has the {a.network.get('name')} backbone, this run (preset "
                          f"{cfg.preset}) the {b.network.get('name')} one; leave out --preset to fine-tune {path} "
                          f"with its own network and settings")
    done, total = trained_nimg(run), int(run.config.train.kimg * 1000)
    if done < total:
        raise ConfigError(f"--init-from: {path} is unfinished ({done / 1000:g} of {total / 1000:g} kimg); finish it "
                          f"with `discodiff train --run-dir {path}` first")
    if list(a.data_shape) != list(b.data_shape):
        raise ConfigError(f"--init-from: {path} was trained on data of shape {list(a.data_shape)}, this run's data "
                          f"have shape {list(b.data_shape)}")
    if a.num_classes != b.num_classes:
        def has(n):
            return f"{n} classes" if n else "no class conditioning"
        raise ConfigError(f"--init-from: {path} has {has(a.num_classes)}, this run {has(b.num_classes)}; pass "
                          f"{'--cond' if a.num_classes else '--uncond'} (and data with the same classes)")
    if a.sigma_data != b.sigma_data:
        raise ConfigError(f"--init-from: {path} has sigma_data {a.sigma_data:g}, this run {b.sigma_data:g}")
    if kernel_D(a) != kernel_D(b):  # the pretrained denoiser is the posterior mean under its own noise kernel
        raise ConfigError(f"--init-from: {path} was trained with model.process {_process(a)}, this run has "
                          f"{_process(b)}; give this run the same process")
    changed = backbone_differences(a.network, b.network)
    if changed:
        raise ConfigError(f"--init-from: {path} has another backbone: {'; '.join(changed)}; give this run the same "
                          f"network (e.g. --set model.network.KEY=VALUE)")
    _checked_weights(path / MODEL, record["sha256"], b)
    with torch.device("meta"):  # no memory, no random draws: only whether the latent path can start silent
        silence_latents(_build(b))


def _process(m: ModelConfig) -> str:
    return f"{m.process} (D={m.pfgm_D})" if m.process != "edm" else m.process


def backbone_differences(base: dict, new: dict) -> list[str]:
    """'KEY: RUN's value vs this run's' for each network option that makes another backbone (every option but the
    latent path's and the weightless ones)."""
    keys = sorted(set(base) | set(new))
    return [f"network.{k} {base.get(k)!r} there, {new.get(k)!r} here" for k in keys
            if not k.startswith(LATENT_OPTION_PREFIX) and k not in WEIGHTLESS_OPTIONS and base.get(k) != new.get(k)]


def plain_counterpart(cfg: ModelConfig) -> ModelConfig:
    """The same backbone without latents: the network RUN must have trained."""
    network = {k: v for k, v in cfg.network.items() if not k.startswith(LATENT_OPTION_PREFIX)}
    return dataclasses.replace(cfg, num_latents=0, network=network)


def _build(cfg: ModelConfig):
    from .model import DiscoDiff
    return DiscoDiff(cfg)


def _plain_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    # On the meta device: the shapes without the memory, and without a random draw (fork_rng makes sure), so a
    # seeded run's weights do not depend on whether this was asked.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return {k: tuple(v.shape) for k, v in _build(plain_counterpart(cfg)).state_dict().items()}


def _checked_weights(path: Path, sha256: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """RUN's weights, refused unless they are the recorded file and exactly the plain backbone's tensors."""
    if not path.is_file():
        raise CheckpointError(f"--init-from: {path} is gone; this run starts from it")
    if file_sha256(path) != sha256:
        raise CheckpointError(f"--init-from: {path} changed since this run was created from it (sha256 "
                              f"{sha256[:12]}... recorded); start a new run from it")
    tensors = load_tensors(path)
    expected = _plain_shapes(cfg)
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    wrong = [k for k in set(tensors) & set(expected) if tuple(tensors[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"--init-from: {path} does not fit this backbone ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(wrong)} differently shaped tensors)")
    return tensors


def silence_latents(model) -> None:
    """Sets the latent path so that it has no effect: the backbone's `silence_latents` (the U-Net zeroes the
    output projections of its cross-attention or latent embedding)."""
    net = model.denoiser.net
    fn = getattr(net, "silence_latents", None)
    if fn is None:
        raise ConfigError(f"the {type(net).__name__} network cannot start with latents that have no effect, so it "
                          f"cannot be fine-tuned from a plain run")
    try:
        fn()
    except ValueError as e:
        raise ConfigError(f"--init-from: {e}") from None


def load_base_weights(model, record: dict) -> None:
    """The first start of a fine-tuned run: RUN's EMA weights into `model`'s denoiser (checked against the recorded
    sha256), the new parts (encoder, latent path) kept as built, the latent path silenced, so that the model's
    output is RUN's for any z and for the null latent."""
    tensors = _checked_weights(Path(record["run"]) / MODEL, record["sha256"], model.config)
    model.load_state_dict(tensors, strict=False)  # exactly the plain tensors (checked); the rest are the new parts
    silence_latents(model)


def new_parameter_names(cfg: ModelConfig) -> set[str]:
    """Names of the parameters the plain counterpart lacks: the encoder's and the latent path's."""
    plain = _plain_shapes(cfg)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        names = [n for n, _ in _build(cfg).named_parameters()]
    return {n for n in names if n not in plain}


def parameter_groups(model, cfg: RunConfig) -> list[dict]:
    """The optimizer's groups: one for a run from scratch; for a fine-tuned run, the pretrained weights first and
    the new parts second (always two, so that a resumed state matches whatever `train.new_parts_lr` says)."""
    if cfg.train.init_from is None:
        return [{"params": list(model.parameters())}]
    new = new_parameter_names(cfg.model)
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in new]}, {"params": [p for n, p in named if n in new]}]


def group_lrs(cfg: RunConfig) -> list[float]:
    """The learning rate of each of `parameter_groups`, before the ramp-up."""
    t = cfg.train
    if t.init_from is None:
        return [t.lr]
    return [t.lr, t.new_parts_lr if t.new_parts_lr is not None else t.lr]
