"""The ``bsoc`` command line: one entry point, one verb per job.

Failures we can explain are caught here, at the edge, and shown as one line with the
remedy: :class:`bsoc.errors.BsocError`, a file the system refuses (``OSError``), and a bad
command line. Bad input exits with code 2; only a bug in bsoc shows a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from bsoc import __version__
from bsoc.console import err_console
from bsoc.errors import BsocError

app = typer.Typer(
    name="bsoc",
    help="Battery state-of-charge virtual sensor: simulate or ingest cell data, train an LSTM, "
    "compress it by projection, compare it with an EKF, and serve live SOC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: Rich markup would swallow "[default: ...]" and the like.
    rich_markup_mode=None,
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

from bsoc.commands import fleet as _fleet_commands  # noqa: E402

_fleet_commands.register(app)

from bsoc.commands import ekf as _ekf_commands  # noqa: E402

_ekf_commands.register(app)

from bsoc.commands import model as _model_commands  # noqa: E402

_model_commands.register(app)

from bsoc.commands import fuse as _fuse_commands  # noqa: E402

_fuse_commands.register(app)

from bsoc.commands import bench as _bench_commands  # noqa: E402

_bench_commands.register(app)

from bsoc.commands import compress as _compress_commands  # noqa: E402

_compress_commands.register(app)

from bsoc.commands import deploy as _deploy_commands  # noqa: E402

_deploy_commands.register(app)

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


USAGE_EXIT_CODE = 2


def _is_command_line_error(error: Exception) -> bool:
    """A bad command line, as raised by click or by the copy of it that typer vendors.

    Recognised by what such errors carry (an exit code and a message formatter) rather than
    by class, so a typer or click upgrade that moves the classes cannot bring tracebacks back.
    """
    return isinstance(getattr(error, "exit_code", None), int) and callable(
        getattr(error, "format_message", None)
    )


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _command_line_failure(error: Exception) -> None:
    message = str(error.format_message())  # type: ignore[attr-defined]
    if "\n" in message.strip():  # the help page of a group called without a command
        sys.stderr.write(message.rstrip() + "\n")
        sys.exit(USAGE_EXIT_CODE)
    command = getattr(getattr(error, "ctx", None), "command_path", None) or "bsoc"
    _fail(f"{message} -> see '{command} --help'", USAGE_EXIT_CODE)


def _os_failure(error: OSError) -> None:
    where = f"{error.filename}: " if error.filename else ""
    _fail(f"{where}{error.strerror or error} -> check the path, its permissions and free space",
          USAGE_EXIT_CODE)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; exits with the command's code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        returned = app(args=argv, prog_name="bsoc", standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except BsocError as error:
        _fail(str(error), error.exit_code)
    except OSError as error:
        _os_failure(error)
    except Exception as error:
        if not _is_command_line_error(error):
            raise
        _command_line_failure(error)
    # typer returns the code of a typer.Exit raised inside a command instead of raising it.
    sys.exit(returned if isinstance(returned, int) else 0)


if __name__ == "__main__":
    main()
