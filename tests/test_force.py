"""``--force`` on every command that writes: it replaces bsoc's own output and nothing else.

Each command, driven through ``bsoc.cli.main``: a user's files in the output folder
survive ``--force``; an input survives when ``--out`` is the input or its parent; ``--out``
naming an existing file is a one-line error (exit 2); a run that fails while writing
leaves the previous output byte-identical.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_toy_cycle

from bsoc.bench.speed import SpeedPlan
from bsoc.cli import main
from bsoc.data.dataset import Dataset

TINY_PLAN = SpeedPlan(repeats=2, latency_steps=20, batch_sizes=(1, 8), batch_samples=64,
                      sequence_samples=100)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return int(done.value.code or 0), capsys.readouterr().err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    """Exit code 2 and the error in one line, last (notes of the run may come before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert needle in lines[-1], lines[-1]


def contents(path: Path, skip: str | None = None) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) by relative name, with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.relative_to(path).parts)}


def stages_beside(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.bsoc-*"))


def fail_when_writing(patch: pytest.MonkeyPatch, name: str) -> None:
    """Make the write of ``name`` into a staging folder fail as a full disk would."""
    real = Path.write_text

    def write_text(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if self.name == name and any(".bsoc-" in part for part in self.parts):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    patch.setattr(Path, "write_text", write_text)


def write_csv(path: Path, name: str, seed: int) -> Path:
    cycle = make_toy_cycle(name, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cycle.frame.drop(columns="soc").to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class Inputs:
    """Private copies of every input, side by side in one folder (their common parent)."""

    source: Path  # a folder with one CSV, for ingest
    data: Path
    model: Path
    bench: Path


@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Inputs, Path], list[str]]
    inputs: Callable[[Inputs], list[Path]]
    signature: str  # the file that says "this output is here"
    record: str  # bsoc's list of the files it wrote
    last_file: str  # written last: where a failure is injected
    transient: str | None = None  # a folder the run writes outside its output (checkpoints)
    shares_folder: bool = False  # may be written beside its inputs (a run's report)


def _model(name: str, argv: Callable[[Inputs, Path], list[str]],
           inputs: Callable[[Inputs], list[Path]], **extra: str) -> Command:
    return Command(name, argv, inputs, "config.json", ".bsoc-model.json", "config.json", **extra)


COMMANDS = [
    Command("ingest", lambda i, out: ["data", "ingest", str(i.source), "--format", "csv",
                                      "--capacity", "0.5", "--out", str(out)],
            lambda i: [i.source], "manifest.json", ".bsoc-dataset.json", "manifest.json"),
    Command("simulate", lambda i, out: ["data", "simulate", "--profile", "tiny", "--workers", "1",
                                        "--out", str(out)],
            lambda i: [], "manifest.json", ".bsoc-dataset.json", "manifest.json"),
    _model("train", lambda i, out: ["train", "--data", str(i.data), "--out", str(out),
                                    "--profile", "tiny", "--epochs", "1"],
           lambda i: [i.data], transient="checkpoint"),
    _model("compress", lambda i, out: ["compress", str(i.model), "--data", str(i.data), "--out",
                                       str(out), "--learnables-reduction", "0.5"],
           lambda i: [i.model, i.data]),
    Command("compress --analyze", lambda i, out: ["compress", str(i.model), "--data", str(i.data),
                                                  "--analyze", "--out", str(out)],
            lambda i: [i.model, i.data], "analysis.json", ".bsoc-analysis.json", "analysis.json"),
    Command("compress --sweep", lambda i, out: ["compress", str(i.model), "--data", str(i.data),
                                                "--sweep", "--out", str(out)],
            lambda i: [i.model, i.data], "sweep.json", ".bsoc-sweep.json", "sweep.meta.json"),
    _model("finetune", lambda i, out: ["finetune", str(i.model), "--data", str(i.data), "--out",
                                       str(out), "--epochs", "1"],
           lambda i: [i.model, i.data]),
    _model("unpack", lambda i, out: ["unpack", str(i.model), "--out", str(out)],
           lambda i: [i.model]),
    _model("ekf fit", lambda i, out: ["ekf", "fit", str(i.data), "--out", str(out)],
           lambda i: [i.data]),
    Command("benchmark", lambda i, out: ["benchmark", "--data", str(i.data), "--models",
                                         str(i.model), "--out", str(out), "--quick"],
            lambda i: [i.data, i.model], "benchmark.json", ".bsoc-benchmark.json",
            "benchmark.json"),
    Command("report", lambda i, out: ["report", str(i.bench), "--out", str(out)],
            lambda i: [i.bench], "report.html", ".bsoc-report.json", "report.html",
            shares_folder=True),
]
BY_NAME = {command.name: command for command in COMMANDS}


@pytest.fixture(autouse=True)
def fast_commands(monkeypatch: pytest.MonkeyPatch, toy_dataset: Path) -> None:
    """A tiny speed plan, and the toy data for 'simulate' (PyBaMM takes 30 s; where its output
    goes is what is tested here)."""
    import bsoc.data.simulate

    monkeypatch.setattr(SpeedPlan, "quick", classmethod(lambda cls: TINY_PLAN))

    def simulate_dataset(*args, **kwargs) -> Dataset:  # noqa: ANN002, ANN003
        data = Dataset.load(toy_dataset)
        data.provenance["cell_hours"] = 1.0
        return data

    monkeypatch.setattr(bsoc.data.simulate, "simulate_dataset", simulate_dataset)


@pytest.fixture(scope="module")
def originals(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("force-inputs")
    model, bench = root / "model", root / "bench"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SpeedPlan, "quick", classmethod(lambda cls: TINY_PLAN))
        for argv in (["train", "--data", str(toy_dataset), "--out", str(model), "--profile",
                      "tiny", "--epochs", "2"],
                     ["benchmark", "--data", str(toy_dataset), "--models", str(model), "--out",
                      str(bench), "--quick"]):
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code == 0
    source = write_csv(root / "source" / "good.csv", "good", seed=0).parent
    return Inputs(source=source, data=toy_dataset, model=model, bench=bench)


@pytest.fixture
def inputs(originals: Inputs, tmp_path: Path) -> Inputs:
    root = tmp_path / "inputs"
    copies = {}
    for field, path in vars(originals).items():
        copies[field] = root / field
        shutil.copytree(path, copies[field])
    return Inputs(**copies)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_force_keeps_users_files_and_a_failed_run_keeps_the_old_output(
    command: Command, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = command.argv(inputs, out)
    code, err = run(argv, capsys)
    assert code == 0, err
    (out / "notes.md").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "notebook.ipynb").write_text("{}")
    before = contents(out)

    with pytest.MonkeyPatch.context() as patch:
        fail_when_writing(patch, command.last_file)
        code, err = run([*argv, "--force"], capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert contents(out, skip=command.transient) == before
    assert stages_beside(out) == []

    replaced = (out / command.signature).stat().st_ino
    code, err = run([*argv, "--force"], capsys)
    assert code == 0, err
    assert (out / "notes.md").read_text() == "my notes"
    assert (out / "mine" / "notebook.ipynb").read_text() == "{}"
    assert (out / command.signature).stat().st_ino != replaced
    files = json.loads((out / command.record).read_text())["files"]
    assert command.signature in files and all((out / f).is_file() for f in files)
    assert not {"notes.md", "mine/notebook.ipynb"} & set(files)
    assert stages_beside(out) == []

    code, err = run(argv, capsys)  # without --force an existing output is still refused
    assert_one_line_error(code, err, "--force")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.name != "simulate"],  # no inputs
                         ids=lambda c: c.name)
def test_force_never_writes_over_an_input_or_its_parent(
    command: Command, inputs: Inputs, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = inputs.data.parent
    before = contents(parent)
    for given in command.inputs(inputs):
        code, err = run([*command.argv(inputs, given), "--force"], capsys)
        assert_one_line_error(code, err, "is the input")
        assert contents(parent) == before
    code, err = run([*command.argv(inputs, parent), "--force"], capsys)
    if command.shares_folder:  # a report beside its benchmark: written, the input untouched
        assert code == 0, err
        assert all(contents(parent)[name] == data for name, data in before.items())
    else:
        assert_one_line_error(code, err, "holds the input")
        assert contents(parent) == before
    assert stages_beside(parent) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_out_that_is_a_file_is_a_one_line_error(
    command: Command, force: bool, inputs: Inputs, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine")
    code, err = run([*command.argv(inputs, target), *(["--force"] if force else [])], capsys)
    assert_one_line_error(code, err, "is a file")
    assert target.read_text() == "mine" and sorted(tmp_path.iterdir()) == [
        tmp_path / "inputs", target]


def test_ingest_into_its_own_source_folder_keeps_the_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's reproduction: the raw CSV was deleted by the --force re-ingest."""
    source = write_csv(tmp_path / "x" / "src" / "good.csv", "good", seed=0)
    raw = source.read_bytes()
    for out in (source.parent, source.parent.parent):
        code, err = run(["data", "ingest", str(source.parent), "--format", "csv", "--capacity",
                         "0.5", "--out", str(out), "--force"], capsys)
        assert_one_line_error(code, err, "input")
        assert sorted(p.name for p in (tmp_path / "x").rglob("*")) == ["good.csv", "src"]
        assert source.read_bytes() == raw


def test_force_replaces_the_dataset_and_keeps_a_file_in_its_cycles_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    write_csv(source / "first.csv", "first", seed=0)
    write_csv(source / "second.csv", "second", seed=1)
    out = tmp_path / "ds"
    argv = ["data", "ingest", str(source), "--format", "csv", "--capacity", "0.5", "--out",
            str(out)]
    assert run(argv, capsys)[0] == 0
    assert {c.meta.name for c in Dataset.load(out)} == {"first", "second"}
    (out / "cycles" / "README.txt").write_text("where the cycles came from")
    (source / "second.csv").unlink()
    assert run([*argv, "--force"], capsys)[0] == 0
    assert [c.meta.name for c in Dataset.load(out)] == ["first"]
    assert sorted(p.name for p in (out / "cycles").iterdir()) == ["README.txt", "first.parquet"]


def test_force_replaces_an_output_made_before_bsoc_recorded_its_files(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset or model without the record is known by its manifest or config."""
    for command in (BY_NAME["ingest"], BY_NAME["unpack"]):
        out = tmp_path / command.name
        argv = command.argv(inputs, out)
        assert run(argv, capsys)[0] == 0
        (out / command.record).unlink()
        (out / "notes.md").write_text("mine")
        assert run([*argv, "--force"], capsys)[0] == 0
        assert (out / "notes.md").read_text() == "mine"
        assert "notes.md" not in json.loads((out / command.record).read_text())["files"]


@pytest.mark.parametrize(("name", "data"), [("model.safetensors", b"someone's weights"),
                                            ("config.json", b'{"learning_rate": 0.1}')])
def test_a_users_file_where_bsoc_would_write_is_never_replaced(
    name: str, data: bytes, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plain"
    out.mkdir()
    (out / name).write_bytes(data)
    code, err = run(["unpack", str(inputs.model), "--out", str(out), "--force"], capsys)
    assert_one_line_error(code, err, "was not written by bsoc")
    assert contents(out) == {name: data}
    assert stages_beside(out) == []


def test_a_swap_that_fails_half_way_is_undone(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bsoc.outputs

    out = tmp_path / "ds"
    argv = [*BY_NAME["ingest"].argv(inputs, out), "--force"]
    assert run(argv, capsys)[0] == 0
    (out / "notes.md").write_text("mine")
    before = contents(out)
    real, calls = os.replace, []

    def replace(source: Path, target: Path) -> None:
        calls.append(source)
        if len(calls) == 4:  # the old dataset's 3 files moved aside, then the first new one
            raise OSError(errno.EIO, "Input/output error")
        real(source, target)

    monkeypatch.setattr(bsoc.outputs.os, "replace", replace)
    code, err = run(argv, capsys)
    assert_one_line_error(code, err, "Input/output error")
    monkeypatch.setattr(bsoc.outputs.os, "replace", real)
    assert contents(out) == before and stages_beside(out) == []


def test_staging_left_by_a_killed_run_is_removed(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = 2**22 + 1  # above Linux's largest pid: no process has it
    stale = tmp_path / f".ds.bsoc-{dead}-new-0123abcd"
    running = tmp_path / f".ds.bsoc-{os.getpid()}-new-4567cdef"
    other = tmp_path / f".dsx.bsoc-{dead}-new-89abcdef"
    for folder in (stale, running, other):
        (folder / "cycles").mkdir(parents=True)
    assert run(BY_NAME["ingest"].argv(inputs, tmp_path / "ds"), capsys)[0] == 0
    assert not stale.exists() and running.is_dir() and other.is_dir()


def test_pipeline_refuses_a_dataset_inside_the_runs_folders(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "reports" / "mine" / "dataset"
    shutil.copytree(inputs.data, data)
    before = contents(tmp_path / "reports")
    monkeypatch.chdir(tmp_path)
    code, err = run(["pipeline", "--profile", "tiny", "--data", str(data), "--run", "mine",
                     "--force"], capsys)
    assert_one_line_error(code, err, "holds the input")
    assert contents(tmp_path / "reports") == before and not (tmp_path / "models").exists()
