"""Figures for the 2D toy experiment: the paper's Fig. 3 (samples and ODE trajectories) and Fig. 4 (curvature,
turning rate and Jacobian norm against t)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _pyplot, _save

LIMIT = 4.6  # half-width of the plotted square: the ring has radius 3 and std 0.2


def _square(ax, title: str) -> None:
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def _trajectories(ax, traj: np.ndarray | None, colours, num: int) -> None:
    """Draws the first `num` trajectories [steps + 1, N, 2]; lines from far away are clipped by the axes."""
    if traj is None:
        return
    for i in range(min(num, traj.shape[1])):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.7, color=colours[i] if len(colours) > 1 else colours[0])


def plot_samples(path: Path, data: np.ndarray, baseline: np.ndarray, disco: np.ndarray, z: np.ndarray, *,
                 baseline_traj: np.ndarray | None = None, disco_traj: np.ndarray | None = None,
                 num_traj: int = 48, titles: tuple[str, str] = ("DM (baseline)", "DisCo-Diff")) -> Path:
    """Fig. 3: data | baseline samples | DisCo-Diff samples coloured by their latent, each with ODE trajectories."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    z = np.asarray(z).reshape(len(disco), -1)[:, 0] if len(z) else np.zeros(len(disco), dtype=int)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].scatter(data[:, 0], data[:, 1], s=1, color="0.3", alpha=0.4)
    _square(axes[0], f"data ({len(data)} points)")
    _trajectories(axes[1], baseline_traj, ["tab:blue"], num_traj)
    axes[1].scatter(baseline[:, 0], baseline[:, 1], s=1, color="tab:blue", alpha=0.4)
    _square(axes[1], f"{titles[0]}: {len(baseline)} samples")
    _trajectories(axes[2], disco_traj, [cmap(int(c) % 10) for c in z], num_traj)
    axes[2].scatter(disco[:, 0], disco[:, 1], s=1, c=[cmap(int(c) % 10) for c in z], alpha=0.4)
    _square(axes[2], f"{titles[1]}: {len(disco)} samples, colour = latent")
    return _save(fig, path)


def plot_ode_profiles(path: Path, profiles: dict[str, dict], styles: dict[str, tuple[str, str]] | None = None) -> Path:
    """Fig. 4: mean curvature E[kappa], mean turning rate E|dT/dt| and mean squared Jacobian norm E||grad_x G||_F^2
    against t (log-log). `profiles` maps a label (e.g. "DM, 50 steps") to the dict of `metrics.toy.ode_profile`;
    `styles` maps a label to its (line style, colour), e.g. ("--", "tab:blue"); a label it lacks gets a solid line
    in the next colour of matplotlib's cycle."""
    plt = _pyplot()
    panels = [("curvature", "mean curvature  E[kappa(x(t))]"),
              ("turning_rate", "mean turning rate  E|dT/dt|  (rad per unit t)"),
              ("jacobian_fro_sq", "E ||grad_x G(x, t)||_F^2")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.2))
    for i, (label, prof) in enumerate(profiles.items()):
        style, colour = (styles or {}).get(label, ("-", f"C{i}"))
        for ax, (key, _) in zip(axes, panels):
            ax.plot(prof["t"], prof[key], style, color=colour, marker=".", ms=3, label=label)
    for ax, (_, title) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t (= sigma); sampling runs from right to left")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, dpi=110)
