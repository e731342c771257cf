"""Figures, written to files with matplotlib's Agg backend. matplotlib is imported inside each function (through
`_pyplot`), so the core library does not need it.

- `toy`: the 2D toy experiment, the paper's Fig. 3 (samples and ODE trajectories) and Fig. 4 (ODE profiles);
- `analysis`: the analyses of `discodiff analyze` (loss against sigma, latent switching, codebook use, FID curves)
  and the uint8 picture grids they write.
"""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi: int = 120) -> Path:
    """Lay out, write (creating the folder) and close `fig`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path
