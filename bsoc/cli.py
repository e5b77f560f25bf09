"""The ``bsoc`` command line: one entry point, one verb per job.

Failures we can explain (:class:`bsoc.errors.BsocError`) are caught here, at the edge,
and shown as one line with the remedy; bad input exits with code 2.
"""

from __future__ import annotations

import sys

import click
import typer

from bsoc import __version__
from bsoc.console import err_console, set_command_line
from bsoc.errors import BsocError

app = typer.Typer(
    name="bsoc",
    help="Battery state-of-charge virtual sensor: simulate or ingest cell data, train an LSTM, "
    "compress it by projection, compare it with an EKF, and serve live SOC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Simulate, ingest, validate and inspect cycle datasets.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

from bsoc.commands import data as _data_commands  # noqa: E402

_data_commands.register(data_app)

from bsoc.commands import simulate as _simulate_commands  # noqa: E402

_simulate_commands.register(data_app)

from bsoc.commands import serve as _serve_commands  # noqa: E402

_serve_commands.register(app)

from bsoc.commands import ekf as _ekf_commands  # noqa: E402

_ekf_commands.register(app)

from bsoc.commands import model as _model_commands  # noqa: E402

_model_commands.register(app)

from bsoc.commands import bench as _bench_commands  # noqa: E402

_bench_commands.register(app)

from bsoc.commands import compress as _compress_commands  # noqa: E402

_compress_commands.register(app)

from bsoc.commands import pipeline as _pipeline_commands  # noqa: E402

_pipeline_commands.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bsoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Battery SOC virtual sensor."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; exits with the command's code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    set_command_line(argv)
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as usage:
        usage.show()
        sys.exit(usage.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except BsocError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
