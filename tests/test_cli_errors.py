"""The command line's contract with its user, for every command the app has.

A bad command line (unknown command or option, a missing required parameter, a value of
the wrong type) exits with code 2 and one line on stderr, never a traceback; help texts
show what they say; results go to stdout. Commands are enumerated from the app's own
registrations and their parameters from the command functions' signatures, and the CLI is
driven through its entry point (in-process and as the installed console script), so
nothing here depends on which exception classes typer or the click it vendors raise.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.models
from test_serve_helpers import CoulombEstimator

from bsoc.cli import app, main


@dataclass(frozen=True)
class Option:
    name: str  # the first spelling, e.g. "--out"
    takes_value: bool
    required: bool
    kind: type | None  # int or float for numeric options
    help: str


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    options: tuple[Option, ...]
    required_arguments: int

    @property
    def id(self) -> str:
        return " ".join(self.path)


def _numeric(annotation: object) -> type | None:
    for kind in (int, float):
        if annotation is kind or kind in typing.get_args(annotation):
            return kind
    return None


def _command(path: tuple[str, ...], callback: typing.Callable) -> Command:
    hints = typing.get_type_hints(callback)
    options, required_arguments = [], 0
    for parameter in inspect.signature(callback).parameters.values():
        declared = parameter.default
        if isinstance(declared, typer.models.ArgumentInfo):
            required_arguments += declared.default is ...
        elif isinstance(declared, typer.models.OptionInfo):
            spelling = (declared.param_decls or (f"--{parameter.name.replace('_', '-')}",))[0]
            annotation = hints.get(parameter.name)
            options.append(Option(
                name=spelling.split("/")[0],
                takes_value=annotation is not bool,
                required=declared.default is ...,
                kind=_numeric(annotation),
                help=declared.help or "",
            ))  # fmt: skip
    return Command(path, tuple(options), required_arguments)


def _commands(group: typer.Typer, path: tuple[str, ...] = ()) -> list[Command]:
    found = []
    for info in group.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        found.append(_command((*path, name), info.callback))
    for sub in group.registered_groups:
        found.extend(_commands(sub.typer_instance, (*path, sub.name)))
    return found


COMMANDS = _commands(app)
GROUPS = [(info.name,) for info in app.registered_groups]
VALUE_OPTIONS = [(c, o) for c in COMMANDS for o in c.options if o.takes_value]
NUMERIC_OPTIONS = [(c, o) for c in COMMANDS for o in c.options if o.kind is not None]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The entry point's exit code, stdout and stderr; any other exception fails the test."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def assert_usage_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in out + err and out == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_the_app_has_the_commands_the_readme_lists():
    ids = {command.id for command in COMMANDS}
    assert {"train", "evaluate", "serve", "pipeline", "data ingest", "ekf fit"} <= ids
    assert len(VALUE_OPTIONS) > 40 and len(NUMERIC_OPTIONS) > 10


def test_no_command_shows_the_commands_and_exits_2(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and "Traceback" not in err and out == ""
    for info in app.registered_commands:
        assert f"  {info.name} " in err


@pytest.mark.parametrize("group", GROUPS, ids=" ".join)
def test_a_group_without_a_command_shows_its_commands_and_exits_2(group, capsys):
    code, out, err = run(list(group), capsys)
    assert code == 2 and "Traceback" not in err and out == ""
    for command in COMMANDS:
        if command.path[:-1] == group:
            assert command.path[-1] in err


def test_a_misspelt_command_is_one_line_with_the_suggestion(capsys):
    assert_usage_error(run(["trian"], capsys), "No such command 'trian'", "'train'", "--help")
    assert_usage_error(run(["data", "ingset"], capsys), "'ingest'", "bsoc data --help")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_an_unknown_option_is_one_line(command, capsys):
    line = assert_usage_error(run([*command.path, "--bogus"], capsys), "--bogus")
    assert f"bsoc {command.id} --help" in line


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c.required_arguments or any(o.required for o in c.options)],
    ids=lambda c: c.id,
)
def test_missing_required_parameters_are_one_line(command, capsys):
    assert_usage_error(run(list(command.path), capsys), "Missing")


@pytest.mark.parametrize(("command", "option"), VALUE_OPTIONS,
                         ids=[f"{c.id} {o.name}" for c, o in VALUE_OPTIONS])
def test_an_option_without_its_value_is_one_line(command, option, capsys):
    assert_usage_error(run([*command.path, option.name], capsys), option.name)


@pytest.mark.parametrize(("command", "option"), NUMERIC_OPTIONS,
                         ids=[f"{c.id} {o.name}" for c, o in NUMERIC_OPTIONS])
def test_a_number_that_is_not_a_number_is_one_line(command, option, capsys):
    assert_usage_error(run([*command.path, option.name, "abc"], capsys), option.name)


@pytest.mark.parametrize(
    "argv", [["trian"], ["serve", "--port", "abc"], ["data", "ingest"], ["train", "--bogus"]]
)
def test_the_installed_console_script_keeps_the_contract(argv):
    script = Path(sys.executable).parent / "bsoc"
    done = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_version_and_help_exit_0(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("bsoc ")
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "Usage: bsoc" in out


def _squeezed(text: str) -> str:
    """Without white space, so the help formatter's line breaks (also after hyphens) vanish."""
    return "".join(text.split())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_help_shows_bracketed_text_as_written(command, capsys):
    """Rich markup once swallowed '[default: ...]' in help texts ('Torch threads .')."""
    code, out, _ = run([*command.path, "--help"], capsys)
    assert code == 0
    shown = _squeezed(out)
    for option in command.options:
        for bracketed in re.findall(r"\[[^\]]*\]", option.help):
            assert _squeezed(bracketed) in shown, (option.name, bracketed)
        assert _squeezed(option.help) in shown, option.name


def test_threads_help_keeps_its_default_note(capsys):
    _, out, _ = run(["train", "--help"], capsys)
    assert _squeezed("Torch threads [default: the profile's, 2 for quick/full].") in _squeezed(out)


def test_evaluate_prints_its_table_on_stdout(toy_dataset, tmp_path, capsys):
    model = CoulombEstimator(capacity_ah=0.5, name="counting").save(tmp_path / "coulomb")
    argv = ["evaluate", str(model), str(toy_dataset), "--out", str(tmp_path / "eval")]
    code, out, err = run(argv, capsys)
    assert code == 0
    assert "counting (test-coulomb) on" in out and "[test]" in out
    for scenario in ("from_start", "cold_start", "degraded_sensors"):
        assert scenario in out and scenario not in err
    assert err.lstrip().startswith("results in")


def _model(name: str, kind: str, rmse: float) -> dict:
    return {"name": name, "kind": kind, "learnables": 463_233, "rmse_pct": rmse,
            "scenarios": {"cold_start": {"rmse_pct": 5.5}, "degraded_sensors": {"rmse_pct": 6.1}},
            "step_latency_us": 123.4, "throughput_samples_per_s": 1_234_567.0,
            "ratios_to_reference": {"step_speedup": 5.3}}  # fmt: skip


def test_summary_table_never_cuts_model_names_or_numbers_at_80_columns(monkeypatch, capsys):
    from rich.console import Console

    import bsoc.commands.bench as bench

    names = ["lstm", "projected", "projected-ft", "svd", "svd-ft", "ekf"]
    kinds = ["lstm", "projected-lstm", "projected-lstm", "svd-lstm", "svd-lstm", "ekf"]
    result = {"dataset": "panasonic", "cycles": 10, "split": "test", "reference": "lstm",
              "models": [_model(n, k, 4.0 + i / 100) for i, (n, k) in
                         enumerate(zip(names, kinds, strict=True))]}  # fmt: skip
    monkeypatch.setattr(bench, "out_console", Console(width=80, force_terminal=False))
    bench.print_summary(result)
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line.rstrip()) for line in out.splitlines()) <= 80
    starts = [line.split()[0] for line in out.splitlines() if line[:1].isalpha()]
    assert [s for s in starts if s in names] == names
    for i in range(len(names)):
        assert f"{4.0 + i / 100:.2f}" in out
    assert out.count("463,233") == len(names) and out.count("1,234,567") == len(names)
