"""What the commands share: option parsers, the device, seeds, output checks, messages and tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from ..config import MAX_SEED, ConfigError
from ..sampling import SAMPLERS


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
