"""A run: one folder that holds a model's configuration, its weights and its training state.

This module owns the rules of a run, and every entry point (the CLI, the demo, the experiments, the benchmarks)
goes through it:
- `resolve_run` turns a preset or an existing run, overrides and data into a validated RunConfig and the dataset.
  A new run takes its input shape and class count from the data; with `init_from` it starts from a finished plain
  run's weights (finetune.py), and, when no preset is named, from that run's config. An existing run is resumed:
  only its training duration and schedule (`train`, `prior_train`) and its sampling defaults (`sample`) may change,
  never its model, its data, its seed or the run it started from.
- `Run` opens the folder: config.json written atomically and only once the model builds, a lock that keeps a
  second training process out, and loading of the model and of a prior that belongs to the current stage-I weights.

Layout of a run folder R (checkpoint.py writes and reads the files):
    R/config.json              the full RunConfig
    R/model.safetensors        EMA weights of the denoiser and encoder (stage I), written at every snapshot
    R/prior.safetensors        the prior (stage II); its metadata names the model.safetensors it was fitted to
    R/state/stage1-<nimg>/     resumable stage-I state (the newest two are kept)
    R/state/prior-<nimg>/      resumable stage-II state
    R/stats.jsonl, R/log.txt   training statistics and the human log
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .checkpoint import CONFIG, MODEL, PRIOR, CheckpointError, newest_training_state_nimg
from .config import PRESETS, DataConfig, RunConfig, merge, preset_config, validate
from .errors import ConfigError, RunLockedError
from .fileio import file_sha256  # noqa: F401  (re-exported for the benchmarks and tests)

LOCK = ".lock"
STAGE1_HASH_KEY = "stage1_sha256"
PRIOR_NETWORK_KEY = "prior_network"  # the prior file's record of prior_train.network, as `network_record` writes it
# What may change when a run is resumed; everything else (the model, the data, the seed) makes another run.
RESUMABLE_SECTIONS = ("train", "prior_train", "sample")


def network_record(network: dict) -> str:
    """prior_train.network as the prior's files record it (canonical JSON)."""
    return json.dumps(network, sort_keys=True)


def differences(old: RunConfig, new: RunConfig) -> list[str]:
    """The keys whose change would make `new` another run than `old` (model, data, training seed, the run its
    weights started from)."""
    a, b = old.to_dict(), new.to_dict()
    changed = [f"{sec}.{k}" for sec in ("model", "data") for k in b[sec] if b[sec][k] != a[sec].get(k)]
    changed += [f"train.{k}" for k in ("seed", "init_from", "encoder_from")
                if getattr(old.train, k) != getattr(new.train, k)]
    return changed


def resolve_run(run_dir: Path, *, preset: str | None = None, overrides: dict | None = None,
                data: DataConfig | None = None, cond: bool | None = None, init_from: Path | None = None,
                encoder_from: Path | None = None):
    """(RunConfig, ArrayDataset) for training in `run_dir`: a new run from `preset` + `overrides` (+ `data` instead
    of the preset's data; `cond` to switch class conditioning; `init_from`, a finished plain run, to fine-tune it
    into DisCo-Diff), or the run already there with `overrides` applied (`init_from` must then name the run it
    started from). `encoder_from`, a DisCo-Diff run: this run is autoguidance's weak model of it, on its frozen
    encoder, its latents and, unless `data` says otherwise, its data (autoguidance.py). Validates everything,
    including that the model builds, before anything is written."""
    from . import finetune
    from .data import load_dataset
    from .model import DiscoDiff

    run_dir = Path(run_dir)
    overrides = dict(overrides or {})
    new_run = not (run_dir / CONFIG).exists()
    if encoder_from is not None and new_run:  # the weak run takes the strong run's latents, encoder and data
        from . import autoguidance
        if init_from is not None:
            raise ConfigError("--encoder-from and --init-from do not go together: a fine-tuned run trains its new "
                              "encoder")
        record = autoguidance.encoder_record(encoder_from)
        strong = Run(encoder_from).config
        autoguidance.check_given_overrides(strong, overrides)
        overrides = merge(overrides, {**autoguidance.encoder_overrides(strong), "train": {"encoder_from": record}})
        if data is None:
            data = DataConfig(**{**strong.data.__dict__, "options": dict(strong.data.options)})
        cond = bool(strong.model.num_classes) if cond is None else cond
    if data is not None:  # --set data.options.* still apply to a user's data
        options = {**data.options, **overrides.get("data", {}).get("options", {})}
        overrides["data"] = {"name": data.name, "path": data.path, "options": options}
    if new_run:
        if preset is None and init_from is None:
            raise ConfigError(f"{run_dir} is not a run directory yet: name a --preset ({', '.join(sorted(PRESETS))})")
        if init_from is not None:
            overrides = merge(overrides, {"train": {"init_from": finetune.base_record(init_from)}})

        def configured(ov):  # --init-from without --preset: RUN's own config is the starting point
            return preset_config(preset, ov) if preset is not None else finetune.config_from_base(init_from, ov)
        if data is not None:  # a user's data replace the preset's data section whole: its options were for its own
            cfg = configured({k: v for k, v in overrides.items() if k != "data"})
            cfg.data = DataConfig(**overrides["data"])
        else:
            cfg = configured(overrides)
    else:
        old = Run(run_dir).config
        if preset is not None and preset != old.preset:
            raise ConfigError(f"{run_dir} was created with preset {old.preset!r}, not {preset!r}")
        cfg = RunConfig.from_dict(merge(old.to_dict(), overrides))
        changed = differences(old, cfg)
        if any(key.startswith("data.") for key in changed):
            raise ConfigError(f"{run_dir} was trained on other data ({old.data.name} {old.data.path or ''}); use a "
                              f"new --run-dir")
        if changed:
            raise ConfigError(f"{run_dir} already holds a run with different {', '.join(changed)}; use a new --run-dir "
                              f"(only {', '.join(RESUMABLE_SECTIONS)} settings can change on resume)")
        validate(cfg)
        if init_from is not None:
            finetune.check_same_base(cfg, init_from, run_dir)
        if encoder_from is not None and (cfg.train.encoder_from is None or
                                         Path(encoder_from).resolve() != Path(cfg.train.encoder_from["run"])):
            raise ConfigError(f"{run_dir} does not take its encoder from {encoder_from}; use a new --run-dir")
    dataset = load_dataset(cfg.data)
    if new_run:  # the data decide the model's input shape and, when conditioning, its number of classes
        cfg.model.data_shape = dataset.shape
        wants_classes = bool(cfg.model.num_classes) if cond is None else cond
        if wants_classes and dataset.labels is None:
            raise ConfigError(f"class conditioning needs labels, and dataset {cfg.data.name!r} has none; use --uncond")
        cfg.model.num_classes = dataset.num_classes if wants_classes else 0
        validate(cfg)
        DiscoDiff(cfg.model)  # a configuration whose network cannot be built fails here, before any file exists
        if cfg.train.init_from is not None:
            finetune.check_base(cfg)
        if cfg.train.encoder_from is not None:
            from . import autoguidance
            autoguidance.check_encoder_source(cfg)
    else:
        check_data_matches(cfg, dataset, run_dir)
        if cond is not None and cond != bool(cfg.model.num_classes):
            raise ConfigError(f"{run_dir} was trained {'with' if cfg.model.num_classes else 'without'} class "
                              f"conditioning; --{'cond' if cond else 'uncond'} cannot change that on resume")
    return cfg, dataset


def check_data_matches(cfg: RunConfig, dataset, where) -> None:
    """The data of a resumed run must still fit its model: the same shape, and the same classes if conditional."""
    if list(cfg.model.data_shape) != list(dataset.shape):
        raise ConfigError(f"the data now have shape {dataset.shape}, but {where} was trained on {cfg.model.data_shape}")
    if cfg.model.num_classes:
        if dataset.labels is None:
            raise ConfigError(f"{where} is class-conditional, but its data now have no labels")
        if dataset.num_classes != cfg.model.num_classes:
            raise ConfigError(f"{where} was trained on {cfg.model.num_classes} classes, but its data now have "
                              f"{dataset.num_classes}")


class Run:
    """An existing (or, with `create`, a new) run folder and its configuration."""

    def __init__(self, path: Path, config: RunConfig | None = None):
        self.path = Path(path)
        if config is None:
            if not self.path.is_dir():
                raise CheckpointError(f"run directory {self.path} does not exist; create one with `discodiff train`")
            if not (self.path / CONFIG).is_file():
                raise CheckpointError(f"{self.path} is not a discodiff run directory (no {CONFIG})")
            config = RunConfig.load(self.path / CONFIG)
        self.config = config

    @classmethod
    def create(cls, path: Path, config: RunConfig) -> "Run":
        """Writes config.json (atomically) into `path`, made if needed; resolve_run has checked the config."""
        from .fileio import OutputError, describe_os_error
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(describe_os_error(e, path)) from None
        run = cls(path, config)
        run.save_config()
        return run

    def save_config(self) -> None:
        self.config.save(self.path / CONFIG)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def prior_path(self) -> Path:
        return self.path / PRIOR

    def trained_nimg(self, stage: str) -> int:
        """Images seen by the newest training state of `stage` ("stage1" or "prior"); 0 when there is none."""
        return newest_training_state_nimg(self.path, stage)

    def stage1_sha256(self) -> str:
        return file_sha256(self.model_path)

    # ---- loading ---------------------------------------------------------------------------------------------

    def load_model(self, device="cpu"):
        """The stage-I EMA model (denoiser + encoder) in eval mode."""
        from .model import DiscoDiff
        if not self.model_path.is_file():
            raise CheckpointError(f"{self.path} has no trained model yet; run `discodiff train --run-dir {self.path}` "
                                  f"first")
        return DiscoDiff.load(self.model_path, self.config.model).to(device).eval()

    def prior_status(self) -> str:
        """"none" (a plain model needs none), "missing", "stale" (fitted to other stage-I weights), "other" (of
        another network than prior_train.network says, or written before the prior recorded its network) or "ok"."""
        from .checkpoint import read_metadata
        if self.config.model.num_latents == 0:
            return "none"
        if not self.prior_path.is_file():
            return "missing"
        meta = read_metadata(self.prior_path)
        if not (self.model_path.is_file() and meta.get(STAGE1_HASH_KEY) == self.stage1_sha256()):
            return "stale"
        return "ok" if meta.get(PRIOR_NETWORK_KEY) == network_record(self.config.prior_train.network) else "other"

    def load_prior(self, device="cpu"):
        """The prior in eval mode (None for a plain model, m = 0). A missing prior, or one fitted to other stage-I
        weights than the current model.safetensors, is refused with one line that names `discodiff train-prior`."""
        from .latents import prior_class
        status = self.prior_status()
        if status == "none":
            return None
        if status == "missing":
            raise CheckpointError(f"{self.path} has no trained prior yet; run `discodiff train-prior --run-dir "
                                  f"{self.path}` (or pass latents explicitly)")
        if status == "stale":
            raise CheckpointError(f"the prior in {self.path} was fitted to older stage-I weights (training continued "
                                  f"since); run `discodiff train-prior --run-dir {self.path}` to fit it again")
        if status == "other":
            raise CheckpointError(f"the prior in {self.path} is not of the network prior_train.network names (it was "
                                  f"changed since, or the prior predates the record); run `discodiff train-prior "
                                  f"--run-dir {self.path}` to fit it again")
        cfg = self.config
        return prior_class(cfg.model).load(self.prior_path, cfg.model, cfg.prior_train.network).to(device).eval()

    # ---- one training process at a time ------------------------------------------------------------------------

    def lock(self):
        """See `run_lock`."""
        return run_lock(self.path)


_HELD: dict[Path, int] = {}  # run folders this process has locked, with the nesting depth


@contextlib.contextmanager
def run_lock(path: Path):
    """Holds R/.lock (made with its folder if needed) while a process writes the run; a second process gets a
    RunLockedError at once instead of interleaving its writes with ours. Re-entrant within a process, so the CLI can
    lock before it writes config.json and the trainer inside it can lock again. The lock goes with the process, so a
    killed run leaves nothing to clean up."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX): no lock
        yield
        return
    from .fileio import OutputError, describe_os_error
    key = Path(path).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        key.mkdir(parents=True, exist_ok=True)
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(describe_os_error(e, key / LOCK)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(f"another discodiff process (pid {holder}) is training in {path}; wait for it to "
                                 f"finish or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing releases the lock
