"""What the commands share: option parsers, the device, seeds, output checks, messages and tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from ..config import MAX_SEED, ConfigError
from ..sampling import NAMED_SAMPLERS, RESTART_PRESETS, SAMPLERS


def parse_key_values(items, flag: str = "--set", *, nested: bool = True) -> dict:
    """KEY=VALUE strings to a dict, each value parsed as JSON when it can be, else kept as a string. With `nested`,
    dotted keys make nested dicts (`model.tau=0.5` -> {"model": {"tau": 0.5}})."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parts = key.split(".") if nested else [key]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{flag} {item!r}: {part} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def parse_list(text: str, kind: Callable = float, flag: str = "a list") -> list:
    """A comma-separated list of numbers ("4,8,18"), each converted by `kind` (int or float)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def resolve_device(device: str | None) -> str:
    import torch
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def info(msg: str) -> None:
    """A status line on stderr (stdout carries the results)."""
    click.echo(msg, err=True)


def seed_range(seed: int, num: int) -> list[int]:
    """Seeds seed .. seed + num - 1, all of which must be valid generator seeds."""
    if seed + num - 1 > MAX_SEED:
        raise ConfigError(f"seeds {seed}..{seed + num - 1} go past 2**63 - 1, the largest seed; use a smaller --seed")
    return list(range(seed, seed + num))


def require_module(module: str, extra: str, what: str) -> None:
    """Refuses, before any work, a command whose optional dependency is not installed, naming the extra."""
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"{what} needs {module}, which is not installed: pip install 'discodiff[{extra}]'")


def table(header: list[str], rows: list[list]) -> None:
    """A right-aligned table on stdout."""
    widths = [max(len(str(h)), *(len(_cell(r[i])) for r in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r in rows:
        click.echo("  ".join(f"{_cell(c):>{w}}" for c, w in zip(r, widths)))


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---- option decorators ------------------------------------------------------------------------------------------

SAMPLER_CHOICE = click.Choice(list(SAMPLERS))
NAMED_SAMPLER_CHOICE = click.Choice(list(NAMED_SAMPLERS))  # those that need no options (not restart)
RUN_DIR = click.Path(file_okay=False, path_type=Path)
SEED = click.IntRange(min=0, max=MAX_SEED)


def device_option(f):
    return click.option("--device", type=str, default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")(f)


def sampler_options(f):
    """--steps and --sampler, defaulting to the run's config."""
    f = click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps (default: the run's config).")(f)
    f = click.option("--sampler", type=SAMPLER_CHOICE, default=None,
                     help="Sampler (default: the run's config): " + "; ".join(f"{k}: {v.description}"
                                                                            for k, v in SAMPLERS.items()) + ".")(f)
    return f


def restart_options(f):
    """--restart-preset and --restart-intervals, the settings of --sampler restart."""
    f = click.option("--restart-intervals", default=None, metavar="JSON",
                     help="Restart intervals (--sampler restart), a JSON list of [n_levels, k_repeats, t_min, t_max], "
                          "e.g. '[[10, 3, 1.09, 1.92]]'; with --restart-preset it replaces the preset's "
                          "intervals.")(f)
    f = click.option("--restart-preset", default=None, metavar="NAME",
                     help="Restart settings (--sampler restart): " + ", ".join(RESTART_PRESETS) + " (the Restart "
                          "paper's ImageNet-64 settings, 36 steps, 623 evaluations); its step count is the "
                          "default --steps.")(f)
    return f


def hybrid_options(f):
    """--hybrid-run and --switch-sigma: a second run's model below a noise level (paper App. D)."""
    f = click.option("--switch-sigma", type=click.FloatRange(min=0), default=None,
                     help="With --hybrid-run: the noise level below which the second run's model denoises.")(f)
    f = click.option("--hybrid-run", type=RUN_DIR, default=None,
                     help="A second trained run (typically a plain m = 0 model) whose model takes over below "
                          "--switch-sigma; it gets no latents (the null latent if it has some).")(f)
    return f


def guidance_interval_option(f):
    return click.option("--guidance-interval", default=None, metavar="LO,HI",
                        help="Guide only at noise levels LO < sigma <= HI, conditional sampling elsewhere (one "
                             "network pass there), e.g. 0.28,5.42 (default: guidance at every step).")(f)


def parse_guidance_interval(text: str | None) -> tuple[float, float] | None:
    """(lo, hi) of --guidance-interval "LO,HI", 0 <= lo < hi; None when not given."""
    if text is None:
        return None
    values = parse_list(text, float, "--guidance-interval")
    if len(values) != 2 or not 0 <= values[0] < values[1]:
        raise ConfigError(f"--guidance-interval takes LO,HI with 0 <= LO < HI, got {text!r}")
    return values[0], values[1]


def describe_guidance_interval(interval: tuple[float, float] | None) -> str:
    """" at 0.28 < sigma <= 5.42" for the lines `sample` and `fid gen` print; "" without an interval."""
    return "" if interval is None else f" at {interval[0]:g} < sigma <= {interval[1]:g}"


def parse_restart_intervals(text: str) -> list:
    """The intervals of --restart-intervals: a JSON list of [n_levels, k_repeats, t_min, t_max] (checked later,
    against the main grid, by sampling.restart_points)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--restart-intervals is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not (isinstance(value, list) and value and all(isinstance(v, list) for v in value)):
        raise ConfigError(f"--restart-intervals takes a JSON list of [n_levels, k_repeats, t_min, t_max], got {text!r}")
    return value


def resolve_sampler(sampler: str | None, steps: int | None, defaults, *, restart_preset: str | None = None,
                    restart_intervals: str | None = None) -> tuple[str, int, dict]:
    """(sampler, steps, the sampler's options) from the command line, defaulting to the run's `sample` config.

    Restart takes its settings from --restart-preset and/or --restart-intervals (a preset's step count is then the
    default); its intervals are checked against the main grid here, before any work."""
    from ..sampling import nfe

    sampler = sampler or defaults.sampler
    given = [flag for flag, v in (("--restart-preset", restart_preset), ("--restart-intervals", restart_intervals))
             if v is not None]
    if given and sampler != "restart":
        raise ConfigError(f"{given[0]} applies to --sampler restart, not {sampler}")
    options: dict = {}
    if sampler == "restart":
        if not given:
            raise ConfigError("--sampler restart needs --restart-preset NAME or --restart-intervals JSON")
        if restart_preset is not None:
            if restart_preset not in RESTART_PRESETS:
                raise ConfigError(f"unknown restart preset {restart_preset!r}; choose from: "
                                  f"{', '.join(RESTART_PRESETS)}")
            options = dict(RESTART_PRESETS[restart_preset])
            steps = steps or options.pop("num_steps")
        if restart_intervals is not None:
            options["intervals"] = parse_restart_intervals(restart_intervals)
    steps = steps or defaults.steps
    nfe(sampler, steps, **options)  # refuses intervals that do not fit this grid
    return sampler, steps, options


def load_hybrid(run, hybrid_run: Path | None, switch_sigma: float | None, device):
    """(second model, switch sigma) for --hybrid-run / --switch-sigma, or None; the second run must draw the same
    data (shape and class count) as `run`."""
    from ..runs import Run

    if (hybrid_run is None) != (switch_sigma is None):
        raise ConfigError("--hybrid-run and --switch-sigma go together: give both or neither")
    if hybrid_run is None:
        return None
    other = Run(hybrid_run)
    a, b = run.config.model, other.config.model
    if list(a.data_shape) != list(b.data_shape):
        raise ConfigError(f"--hybrid-run {hybrid_run} draws data of shape {b.data_shape}, but {run.path} draws "
                          f"{a.data_shape}")
    if a.num_classes != b.num_classes:
        raise ConfigError(f"--hybrid-run {hybrid_run} has {b.num_classes} classes, but {run.path} has {a.num_classes}")
    return other.load_model(device), switch_sigma
