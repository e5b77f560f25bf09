"""Command lines spelled from the commands' own parameters: recorded and planned alike."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bsoc.command_lines import CommandLines, running_command


def _app(recorded: list[str]) -> typer.Typer:
    app = typer.Typer()

    @app.command("go")
    def go(
        ctx: typer.Context,
        source: Path = typer.Argument(...),
        models: list[str] = typer.Option(None, "--models"),
        trim: bool = typer.Option(True, "--trim-rest/--keep-rest"),
        minutes: float = typer.Option(None, "--max-minutes"),
        quick: bool = typer.Option(False, "--quick"),
    ) -> None:
        recorded.append(running_command(ctx))

    @app.command("keep")
    def keep(force: bool = typer.Option(False, "--force")) -> None:
        """A second command, so that the app is a group of commands as bsoc is."""

    return app


def test_the_running_command_is_recorded_with_every_parameter_value() -> None:
    recorded: list[str] = []
    runner = CliRunner()
    argv = ["go", "src dir", "--models", "a", "--models", "b", "--keep-rest",
            "--max-minutes", "2.0"]
    assert runner.invoke(_app(recorded), argv).exit_code == 0
    assert runner.invoke(_app(recorded), ["go", "src"]).exit_code == 0
    assert recorded == ["bsoc go 'src dir' --models a --models b --keep-rest --max-minutes 2",
                        "bsoc go src --trim-rest"]


def test_planned_lines_use_the_declared_spelling_and_read_back_the_same() -> None:
    recorded: list[str] = []
    app = _app(recorded)
    lines = CommandLines(typer.main.get_command(app))
    argv = lines("go", Path("src"), models=["a", "b"], trim=False, minutes=2.0, quick=True)
    assert argv == ["go", "src", "--models", "a", "--models", "b", "--keep-rest",
                    "--max-minutes", "2", "--quick"]
    assert CliRunner().invoke(app, argv).exit_code == 0
    assert recorded == ["bsoc " + shlex.join(argv)]
    assert lines.force("keep") == ["--force"] and lines.force("go") == []


@pytest.mark.parametrize(("words", "arguments", "options", "message"), [
    ("go", (), {"minute": 2.0}, "no parameter 'minute'"),
    ("go", (), {"source": "src"}, "is an argument"),
    ("go", ("a", "b"), {}, "takes 1 arguments"),
    ("went", (), {}, "no command 'went'"),
])
def test_a_parameter_or_command_that_is_not_there_fails_when_a_line_is_spelled(
    words: str, arguments: tuple, options: dict, message: str,
) -> None:
    lines = CommandLines(typer.main.get_command(_app([])))
    with pytest.raises(LookupError, match=message):
        lines(words, *arguments, **options)
