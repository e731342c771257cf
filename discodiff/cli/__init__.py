"""The `discodiff` command line: one module per command, shared options in `options`.

Every error meant for the user is one line on stderr and exit status 2, raised before any long work starts.
"""
from __future__ import annotations

import sys

import click

from ..errors import ConfigError
from .analyze import analyze
from .demo import demo
from .fid import fid
from .import_edm import import_edm
from .presets import presets
from .sample import sample
from .train import train
from .train_prior import train_prior


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="discodiff")
def cli():
    """DisCo-Diff: diffusion models with learned discrete latents.

    Typical use: `train` (stage I: denoiser + encoder), `train-prior` (stage II), then `sample`.
    """


for command in (presets, train, train_prior, sample, fid, analyze, demo, import_edm):
    cli.add_command(command)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="discodiff", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # a full disk, a folder that vanished: one line naming the path
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
