"""What the commands share: option parsers, the device, seeds, output checks, messages and tables."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import click

from ..config import MAX_SEED, ConfigError
from ..sampling import RESTART_PRESETS, SAMPLERS


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


def autoguidance_options(f):
    """--autoguide-run, --autoguidance, --autoguidance-interval and --autoguide-latents (autoguidance.py)."""
    f = click.option("--autoguide-latents", type=click.Choice(["z", "null"]), default=None,
                     help="What the weak model is given: z, the run's latents (only for a weak run trained on the "
                          "run's frozen encoder, `train --weak-of`), or null, its null latent (default: z when its "
                          "encoder is the run's, else null; a plain weak run gets none).")(f)
    f = click.option("--autoguidance-interval", default=None, metavar="LO,HI",
                     help="Autoguide only at noise levels LO < sigma <= HI (default: every step).")(f)
    f = click.option("--autoguidance", type=float, default=None, metavar="W",
                     help="With --autoguide-run: the autoguidance weight w, D~ = D + w (D - D_weak), added to any "
                          "latent or class guidance (0: none).")(f)
    f = click.option("--autoguide-run", type=RUN_DIR, default=None,
                     help="Autoguidance (Karras et al. 2024): a weak run of the same data (smaller, trained for less; "
                          "`discodiff train --weak-of RUN`) that guides this run's model; one more network evaluation "
                          "per step, counted.")(f)
    return f


def guidance_interval_option(f):
    return click.option("--guidance-interval", default=None, metavar="LO,HI",
                        help="Guide only at noise levels LO < sigma <= HI, conditional sampling elsewhere (one "
                             "network pass there), e.g. 0.28,5.42 (default: guidance at every step).")(f)


def parse_guidance_interval(text: str | None, flag: str = "--guidance-interval") -> tuple[float, float] | None:
    """(lo, hi) of --guidance-interval "LO,HI" (or another `flag`), 0 <= lo < hi; None when not given."""
    if text is None:
        return None
    values = parse_list(text, float, flag)
    if len(values) != 2 or not 0 <= values[0] < values[1]:
        raise ConfigError(f"{flag} takes LO,HI with 0 <= LO < HI, got {text!r}")
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


# ---- the sampling options: one set for every command that samples ----------------------------------------------

@dataclass(frozen=True)
class SamplingArgs:
    """The sampling options as the command line gave them (`sampling_options`); None: the run's config."""
    steps: int | None = None
    sampler: str | None = None
    churn: float = 0.0
    guidance: float | None = None
    guidance_interval: str | None = None
    prior_temperature: float | None = None
    restart_preset: str | None = None
    restart_intervals: str | None = None
    hybrid_run: Path | None = None
    switch_sigma: float | None = None
    autoguide_run: Path | None = None
    autoguidance: float | None = None
    autoguidance_interval: str | None = None
    autoguide_latents: str | None = None


SAMPLING_PARAMS = tuple(f.name for f in fields(SamplingArgs))


@dataclass
class Sampling:
    """Resolved sampling settings (`resolve_sampling`): everything the sampler call gets. `options` are the sampler
    function's keywords (S_churn for edm, restart's intervals); `hybrid` is (second model, switch sigma) once
    `load_hybrid` has loaded it, `autoguide` the autoguidance.Autoguide once `load_autoguide` has (w = 0: None)."""
    sampler: str
    steps: int
    options: dict
    guidance: float
    guidance_interval: tuple[float, float] | None
    prior_temperature: float
    restart_preset: str | None = None
    hybrid_run: Path | None = None
    switch_sigma: float | None = None
    hybrid: tuple | None = None
    autoguide_run: Path | None = None
    autoguidance: float = 0.0
    autoguidance_interval: tuple[float, float] | None = None
    autoguide_latents: str | None = None
    autoguide: object | None = None

    @property
    def churn(self) -> float | None:
        """S_churn of the stochastic sampler; None for the others."""
        return self.options.get("S_churn") if self.sampler == "edm" else None

    def sampler_fn(self) -> Callable:
        """The sampler function with its options bound, for `pipeline.generate` (the sampler call)."""
        from ..pipeline import sampler_from_name
        return sampler_from_name(self.sampler, **self.options)

    def generate_options(self) -> dict:
        """Keywords of `pipeline.generate` / `generate_batches` (with the sigmas of `self.steps`)."""
        return {"sampler": self.sampler_fn(), "guidance": self.guidance, "guidance_interval": self.guidance_interval,
                "prior_temperature": self.prior_temperature, "hybrid": self.hybrid, "autoguide": self.autoguide}

    def extra_options(self) -> dict:
        """The keywords of `analysis.quality.sample_batches` and `sample_fid` beyond steps, sampler and guidance:
        what the analyses take as their `sampling` argument."""
        return {"sampler_options": dict(self.options), "guidance_interval": self.guidance_interval,
                "prior_temperature": self.prior_temperature, "hybrid": self.hybrid, "autoguide": self.autoguide}

    def batch_options(self) -> dict:
        """Keywords of `analysis.quality.sample_batches` and `sample_fid`, which take the sampler by name."""
        return {"steps": self.steps, "sampler": self.sampler, "guidance": self.guidance, **self.extra_options()}

    def nfe(self) -> int:
        from ..sampling import nfe
        return nfe(self.sampler, self.steps, **self.options)

    def describe(self) -> str:
        """"edm (churn 40), 18 steps" for the status lines."""
        if self.sampler == "edm":
            name = f"edm (churn {self.churn:g})"
        elif self.sampler == "restart":
            name = f"restart {self.restart_preset or 'intervals'}"
        else:
            name = self.sampler
        guided = "" if self.autoguide is None else f", {self.describe_autoguidance()}"
        return f"{name}, {self.steps} steps{guided}"

    def describe_autoguidance(self) -> str:
        """"autoguidance 1.5 by R0 (null latent) at 0.1 < sigma <= 5" for the status lines; "" without it."""
        if self.autoguide is None:
            return ""
        given = {"z": "the run's latents", "null": "null latent", None: "no latents"}[self.autoguide.latents]
        return (f"autoguidance {self.autoguidance:g} by {self.autoguide_run} ({given})"
                f"{describe_guidance_interval(self.autoguidance_interval)}")

    def record(self) -> dict:
        """What a results file records of the sampling settings."""
        return {"sampler": self.sampler, "steps": self.steps, "nfe": self.nfe(), "churn": self.churn,
                "sampler_options": dict(self.options), "guidance": self.guidance,
                "guidance_interval": None if self.guidance_interval is None else list(self.guidance_interval),
                "prior_temperature": self.prior_temperature,
                "hybrid_run": None if self.hybrid is None else str(self.hybrid_run),
                "switch_sigma": None if self.hybrid is None else self.switch_sigma,
                **self.record_autoguidance()}

    def record_autoguidance(self) -> dict:
        """What a results file records of autoguidance (the weak run, w, its interval, what the weak model is given:
        "z", "null" or "none")."""
        on = self.autoguide is not None
        return {"autoguide_run": str(self.autoguide_run) if on else None, "autoguidance": self.autoguidance if on else 0.0,
                "autoguidance_interval": list(self.autoguidance_interval) if on and self.autoguidance_interval else None,
                "autoguide_latents": (self.autoguide.latents or "none") if on else None}


def resolve_sampling(args: SamplingArgs, defaults) -> Sampling:
    """The settings of the sampling options, defaulting to the run's `sample` config (`defaults`), checked before
    any work: restart's settings against the grid, --churn only with --sampler edm, the guidance interval, and
    --hybrid-run with --switch-sigma (the second model is loaded by `load_sampling_hybrid`)."""
    sampler, steps, options = resolve_sampler(args.sampler, args.steps, defaults, restart_preset=args.restart_preset,
                                              restart_intervals=args.restart_intervals)
    if args.churn and sampler != "edm":
        raise ConfigError(f"--churn applies to the stochastic sampler (--sampler edm), not {sampler}")
    if sampler == "edm":
        options = {**options, "S_churn": float(args.churn)}
    if (args.hybrid_run is None) != (args.switch_sigma is None):
        raise ConfigError("--hybrid-run and --switch-sigma go together: give both or neither")
    if (args.autoguide_run is None) != (args.autoguidance is None):
        raise ConfigError("--autoguide-run and --autoguidance go together: give both or neither")
    if args.autoguide_run is None and (args.autoguidance_interval or args.autoguide_latents):
        raise ConfigError("--autoguidance-interval and --autoguide-latents apply to --autoguide-run")
    if args.autoguide_run is not None and args.hybrid_run is not None:
        raise ConfigError("--autoguide-run and --hybrid-run do not go together (the hybrid's second model would go "
                          "unguided)")
    return Sampling(sampler=sampler, steps=steps, options=options,
                    guidance=defaults.guidance if args.guidance is None else args.guidance,
                    guidance_interval=parse_guidance_interval(args.guidance_interval),
                    prior_temperature=(defaults.prior_temperature if args.prior_temperature is None
                                       else args.prior_temperature),
                    restart_preset=args.restart_preset, hybrid_run=args.hybrid_run, switch_sigma=args.switch_sigma,
                    autoguide_run=args.autoguide_run, autoguidance=args.autoguidance or 0.0,
                    autoguidance_interval=parse_guidance_interval(args.autoguidance_interval,
                                                                  "--autoguidance-interval"),
                    autoguide_latents=args.autoguide_latents)


def load_sampling_hybrid(sampling: Sampling, run, device) -> Sampling:
    """Loads the second model of --hybrid-run into `sampling.hybrid` (see `load_hybrid`) and the weak model of
    --autoguide-run into `sampling.autoguide` (see `load_autoguide`); returns `sampling`."""
    sampling.hybrid = load_hybrid(run, sampling.hybrid_run, sampling.switch_sigma, device)
    sampling.autoguide = load_autoguide(run, sampling, device)
    return sampling


def load_autoguide(run, sampling: Sampling, device):
    """The autoguidance.Autoguide of --autoguide-run / --autoguidance / --autoguidance-interval /
    --autoguide-latents, or None (none asked, or w = 0). Refused in one line, before the weak model is loaded, when
    the weak run does not fit `run` (autoguidance.check_runs: another data set, shape, class count, sigma_data,
    process, or latents of another structure for --autoguide-latents z); the weak model is given z only when its
    encoder is the run's (else refused if asked for, or the null latent by default)."""
    from ..autoguidance import Autoguide, check_runs, latent_form
    from ..runs import Run

    if sampling.autoguide_run is None:
        return None
    weak_run = Run(sampling.autoguide_run)
    check_runs(run.config, weak_run.config, sampling.autoguide_run, sampling.autoguide_latents)
    if not sampling.autoguidance:
        return None
    weak = weak_run.load_model(device)
    if not weak.num_latents or sampling.autoguide_latents == "null":
        form = "null" if weak.num_latents else "none"
    else:  # z if the weak model's encoder is the run's (compared on the CPU)
        form = latent_form(run.load_model("cpu"), weak, sampling.autoguide_latents)
    return Autoguide(weak, sampling.autoguidance, sampling.autoguidance_interval, None if form == "none" else form)


def sampling_options(f=None, *, guidance: bool = True):
    """The sampling options of every command that samples (`sample`, `fid gen`, the analyses that sample): --steps,
    --sampler, --churn, Restart's --restart-preset / --restart-intervals, --guidance (left out with
    `guidance=False`, for a command that sets the weight itself), --guidance-interval, --prior-temperature,
    --hybrid-run / --switch-sigma and autoguidance's --autoguide-run / --autoguidance / --autoguidance-interval /
    --autoguide-latents. The command gets them as one argument, `sampling` (a SamplingArgs), which
    `resolve_sampling` turns into the sampler call's settings. Use as `@sampling_options` or
    `@sampling_options(guidance=False)`."""
    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in SAMPLING_PARAMS if name in kwargs}
            return f(*args, sampling=SamplingArgs(**values), **kwargs)

        opts = [
            click.option("--steps", type=click.IntRange(min=1), default=None,
                         help="Sampler steps (default: the restart preset's, else the run's config)."),
            click.option("--sampler", type=SAMPLER_CHOICE, default=None,
                         help="Sampler (default: the run's config): " + "; ".join(
                             f"{k}: {v.description}" for k, v in SAMPLERS.items()) + "."),
            click.option("--churn", type=click.FloatRange(min=0), default=0.0,
                         help="S_churn of the stochastic sampler (--sampler edm): the noise it adds back at each "
                              "step (0: the deterministic Heun sampler)."),
            restart_options,
            *([click.option("--guidance", type=float, default=None,
                            help="Guidance weight w on the latents (default: the run's config; 0: conditional "
                                 "sampling).")] if guidance else []),
            guidance_interval_option,
            click.option("--prior-temperature", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Temperature of the prior's draws (> 0; default: the run's config): of its categorical "
                              "draws, or for continuous latents the scale of the diffusion prior's initial noise."),
            hybrid_options,
            autoguidance_options,
        ]
        for opt in reversed(opts):  # listed in this order in --help
            command = opt(command)
        return command

    return decorate(f) if f is not None else decorate
