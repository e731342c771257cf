"""Figures of the analyses (`discodiff analyze`), and the uint8 picture grids they write."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.grid import write_image_grid
from . import _pyplot, _save


def save_grid(images: torch.Tensor, path, cols: int) -> Path:
    """uint8 images [N, C, H, W] as a PNG grid with `cols` images per row."""
    return write_image_grid(images.permute(0, 2, 3, 1).contiguous().numpy(), path, cols)


def plot_loss_vs_sigma(result: dict, path, reference: str | None = None) -> Path:
    """Fig. 7a: the weighted loss against sigma (log-log), and each curve's ratio to `reference` below."""
    from ..analysis.loss_sigma import loss_ratios
    plt = _pyplot()
    sig = result["sigma"]
    fig, axes = plt.subplots(2 if reference else 1, 1, figsize=(6.5, 6.5 if reference else 4), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    colour = {label: f"C{i}" for i, label in enumerate(result["curves"])}  # one colour per curve in both panels
    for label, c in result["curves"].items():
        style = "--" if c["latents"] == "null" else "-"
        ax.errorbar(sig, c["loss"], yerr=c["stderr"], fmt=style, marker=".", capsize=2, label=label,
                    color=colour[label])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("lambda(sigma) * MSE")
    ax.set_title(f"denoising loss against sigma ({result['num_images']} images, same noise)", fontsize=10)
    ax.legend(fontsize=8)
    if reference:
        ax2 = axes[1, 0]
        for label, r in loss_ratios(result, reference).items():
            ax2.plot(sig, r, marker=".", ls="--" if result["curves"][label]["latents"] == "null" else "-", label=label,
                     color=colour[label])
        ax2.axhline(1.0, color="0.5", lw=0.8)
        ax2.set_ylabel(f"loss / loss of {reference}")
        ax2.legend(fontsize=8)
    axes[-1, 0].set_xlabel("sigma")
    return _save(fig, path)


def plot_switching(result: dict, path) -> Path:
    """Fig. 7b as a curve: how far the output moves against the fraction of steps run with the other latent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    f = result["fractions"]
    ax.plot(f, result["rms_ratio"], marker="o", label="RMS change / RMS change at f = 1")
    ax.plot(f, result["closer_to_b"], marker="s", label="fraction of samples nearer the z_b sample")
    ax.set_xlabel("fraction f of the last steps sampled with z_b")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"latent switching ({result['num']} samples, {result['steps']} {result['sampler']} steps)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_codebook(report: dict, path, prior: dict | None = None, sampled: dict | None = None) -> Path:
    """Code frequencies of each latent position: the encoder's argmax (bars), the encoder's sampled latents
    (crosses) and the prior's draws (dots), when given."""
    plt = _pyplot()
    m, k = report["num_latents"], report["codebook_size"]
    cols = min(m, 4)
    rows = -(-m // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols]
        if i >= m:
            ax.axis("off")
            continue
        counts = torch.tensor(report["counts"][i], dtype=torch.float64)
        ax.bar(range(k), (counts / counts.sum()).tolist(), color="tab:blue", label="encoder, argmax")
        for other, style, colour, label in ((sampled, "x", "black", "encoder, sampled"),
                                            (prior, "o", "tab:orange", "prior")):
            if other is not None:
                pc = torch.tensor(other["counts"][i], dtype=torch.float64)
                ax.plot(range(k), (pc / pc.sum()).tolist(), style, color=colour, ms=3, label=label)
        ax.set_title(f"z{i}: perplexity {report['perplexity'][i]:.2f}, {report['dead_codes'][i]} dead", fontsize=9)
        ax.set_xlabel("code")
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_fid_curves(series: dict[str, tuple[list, list]], path, *, xlabel: str, title: str,
                    log_x: bool = False, log_y: bool = False, extra: dict[str, tuple[list, list]] | None = None,
                    extra_label: str = "") -> Path:
    """FID against one setting for one or more series {label: (xs, fids)}; `extra` on a second axis (e.g. diversity)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1, on a log axis
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if extra:
        ax2 = ax.twinx()
        for label, (xs, ys) in extra.items():
            ax2.plot(xs, ys, marker="s", ls="--", color="tab:gray", label=label)
        ax2.set_ylabel(extra_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8)
    return _save(fig, path)
