"""`discodiff import-edm`: one of NVlabs/edm's network snapshots as a plain discodiff run (edm_import.py)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import RUN_DIR


@click.command("import-edm")
@click.argument("pkl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-dir", type=RUN_DIR, required=True, help="The new run folder to write (config.json + model.safetensors).")
def import_edm(pkl, run_dir):
    """Convert an EDM snapshot PKL (network-snapshot-*.pkl, edm-imagenet-64x64-cond-adm.pkl,
    edm-cifar10-32x32-cond-vp.pkl: EDMPrecond around EDM's ADM U-Net, DhariwalUNet, or its DDPM++/NCSN++, SongUNet)
    into a plain run (m = 0) of discodiff's U-Net or SongUNet, for `sample`, `fid gen` and `train --init-from`. Nothing in the pickle is executed: only tensors and plain state are read, and
    any other content is refused. The weights keep EDM's licence (CC BY-NC-SA 4.0, non-commercial)."""
    from ..edm_import import convert
    cfg = convert(pkl, run_dir)
    m = cfg.model
    net = m.network
    click.echo(f"wrote {run_dir}: EDM's {Path(pkl).name} as a plain run (m = 0), {m.data_shape[1]}x{m.data_shape[2]} "
               f"px, {m.num_classes or 'no'} classes, {net['name']} {net['model_channels']} x {net['channel_mult']}, "
               f"norm_eps {net['norm_eps']:g}; the weights keep EDM's licence (CC BY-NC-SA 4.0)")
