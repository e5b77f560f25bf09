"""``bsoc data ingest`` and ``bsoc data inspect`` through the real entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_readers import drive_profile, write_panasonic

from bsoc.cli import main
from bsoc.data.dataset import Dataset


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    t, i = drive_profile(300.0, 30.0)
    for name in ("25degC_UDDS", "25degC_HWFET", "25degC_NN"):
        write_panasonic(tmp_path / "src" / "25degC" / f"03-21-17_09.38 {name}_Pan18650PF.mat", t, i)
    return tmp_path / "src"


def test_ingest_json_then_refuses_overwrite_then_force(source, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["data", "ingest", str(source), "--format", "panasonic", "--out", str(out), "--json"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["splits"] == {
        "train": ["25degC_NN"], "val": ["25degC_HWFET"], "test": ["25degC_UDDS"]
    }  # fmt: skip
    manifest = Dataset.manifest(out)
    assert manifest["fingerprint"] == summary["fingerprint"]
    assert manifest["provenance"]["options"]["rate_hz"] == 1.0
    assert manifest["provenance"]["command"].startswith("bsoc data ingest")
    assert_one_line_error(*run(argv, capsys)[::2], "--force")
    code, _, _ = run([*argv, "--force", "--rate", "2"], capsys)
    assert code == 0 and Dataset.manifest(out)["provenance"]["options"]["rate_hz"] == 2.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--format", "xlsx"], "unknown format"),
        (["--format", "panasonic", "--units", "current=uA"], "unknown unit"),
        (["--format", "panasonic", "--units", "current"], "NAME=VALUE"),
        (["--format", "panasonic", "--test-pattern", "UDDS("], "regular expression"),
        (["--format", "panasonic", "--column-map", "time_s=T"], "column map"),
        (["--format", "csv"], "capacity"),
        (["--format", "panasonic", "--current-sign", "up"], "current sign"),
    ],
)
def test_bad_options_exit_2_with_one_line(source, tmp_path, capsys, extra, needle):
    argv = ["data", "ingest", str(source), "--out", str(tmp_path / "o"), *extra]
    assert_one_line_error(*run(argv, capsys)[::2], needle)
    assert not (tmp_path / "o").exists()


def test_bad_csv_row_is_named(tmp_path, capsys):
    frame = pd.DataFrame({"t": np.arange(50.0), "v": 3.7, "i": -1.0, "temp": 25.0})
    frame.loc[17, "v"] = np.nan
    path = tmp_path / "cell.csv"
    frame.to_csv(path, index=False)
    columns = "time_s=t,voltage_v=v,current_a=i,temperature_c=temp"
    argv = ["data", "ingest", str(path), "--format", "csv", "--out", str(tmp_path / "o"),
            "--capacity", "2.0", "--column-map", columns]  # fmt: skip
    assert_one_line_error(*run(argv, capsys)[::2], str(path), "row 17", "column 'v'")
    frame.loc[17, "v"] = 3.7
    frame.to_csv(path, index=False)
    code, _, err = run([*argv, "--units", "current=mA", "--keep-rest"], capsys)
    assert code == 0 and "converting current: mA -> A" in err
    cycle = Dataset.load(tmp_path / "o").cycles[0]
    assert cycle.frame["current_a"].iloc[1] == pytest.approx(-1e-3)
    assert (
        cycle.meta.ambient_c == 25.0 and "first temperature" in cycle.meta.extra["ambient_source"]
    )


def test_inspect_table_json_and_figures(source, tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        run(["data", "ingest", str(source), "--format", "panasonic", "--out", str(out)], capsys)[0]
        == 0
    )
    code, stdout, _ = run(["data", "inspect", str(out), "--no-figures"], capsys)
    assert code == 0 and "25degC_UDDS" in stdout and "udds" in stdout
    assert not (out / "figures").exists()
    code, stdout, _ = run(["data", "inspect", str(out), "--json"], capsys)
    report = json.loads(stdout)
    assert code == 0 and [row["cycle"] for row in report["cycles"]] == [
        "25degC_HWFET", "25degC_NN", "25degC_UDDS"
    ]  # fmt: skip
    assert report["cycles"][0]["soc_max"] == 1.0 and report["cycles"][0]["soc_min"] < 0.95
    for figure in report["figures"]:
        assert Path(figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["figures"]) == 3
    assert_one_line_error(
        *run(["data", "inspect", str(tmp_path / "none")], capsys)[::2], "no dataset"
    )


HEADER = "time_s,voltage_v,current_a,temperature_c\n"


def _ingest_csv(path: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "ingest", str(path), "--format", "csv", "--capacity", "3", "--out",
            str(out), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "the file is empty"),
        (b"  \n\t\n   \n", "only white space"),
        (HEADER.encode(), "a header but no samples"),
        ((HEADER + "0,3.7,-1,25\n").encode(), "only 1 sample"),
        ((HEADER + "0,3.7,-1,25\n1,3.7,-1\n2,3.7,-1,25,9\n").encode(), "cannot read as CSV"),
        (b"\x00\xff\xfe garbage \x00" * 20, "column is missing"),
    ],
    ids=["empty", "white-space", "header-only", "one-row", "ragged", "binary"],
)
def test_unusable_csv_files_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "cell.csv"
    path.write_bytes(content)
    assert_one_line_error(*run(_ingest_csv(path, tmp_path / "o"), capsys)[::2], str(path), needle)
    assert path.read_bytes() == content and not (tmp_path / "o").exists()


def _good_csv(path: Path, seconds: int = 300) -> Path:
    rows = "".join(f"{t},{4.1 - t / 1e4:.5f},-1.0,25\n" for t in range(seconds))
    path.write_text(HEADER + rows)
    return path


def test_a_huge_rate_is_refused_before_allocating(tmp_path, capsys):
    argv = _ingest_csv(_good_csv(tmp_path / "c.csv"), tmp_path / "o", "--rate", "1e9")
    assert_one_line_error(*run(argv, capsys)[::2], "would make", "--rate")


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    argv = _ingest_csv(_good_csv(tmp_path / "c.csv"), blocker / "dataset")
    code, err = run(argv, capsys)[::2]
    assert_one_line_error(code, err, str(blocker))
    assert blocker.read_text() == "mine"


def test_a_file_that_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    path = _good_csv(tmp_path / "c.csv")
    reading = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return reading(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    argv = _ingest_csv(path, tmp_path / "o")
    assert_one_line_error(*run(argv, capsys)[::2], str(path), "Permission denied")


def _permissions_enforced(folder: Path) -> bool:
    """False for root with its usual capabilities, which reads any file whatever its mode."""
    probe = folder / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        probe.read_text()
    except PermissionError:
        return True
    finally:
        probe.unlink()
    return False


def test_permissions_really_refused_are_one_line(tmp_path, capsys):
    if not _permissions_enforced(tmp_path):
        pytest.skip("this user reads files whatever their permissions (root)")
    folder = tmp_path / "src"
    folder.mkdir()
    path = _good_csv(folder / "c.csv")
    path.chmod(0)
    refused = re.compile("Permission denied|not readable")
    try:
        code, err = run(_ingest_csv(path, tmp_path / "o"), capsys)[::2]
        assert_one_line_error(code, err, str(path))
        assert refused.search(err), err
        path.chmod(0o644)
        folder.chmod(0)
        code, err = run(_ingest_csv(folder, tmp_path / "o"), capsys)[::2]
        assert_one_line_error(code, err, str(folder))
        assert refused.search(err), err
        folder.chmod(0o555)
        code, err = run(_ingest_csv(folder, folder / "o"), capsys)[::2]
        assert_one_line_error(code, err, "Permission denied")
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)


@pytest.fixture
def dataset(source, tmp_path, capsys) -> Path:
    out = tmp_path / "ds"
    argv = ["data", "ingest", str(source), "--format", "panasonic", "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    return out


def _edit_manifest(dataset: Path, edit) -> None:
    path = dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m["cycles"], "manifest is a JSON list"),
        (lambda m: {k: v for k, v in m.items() if k != "name"}, "no dataset name"),
        (lambda m: {**m, "cycles": {"a": 1}}, "'cycles' is a JSON dict"),
        (lambda m: {**m, "cycles": [{k: v for k, v in m["cycles"][0].items() if k != "file"}]},
         "cycle entry 0 has no text 'file'"),
        (lambda m: {**m, "cycles": [{**m["cycles"][0], "nominal_capacity_ah": "big"}]},
         "no number 'nominal_capacity_ah'"),
        (lambda m: {**m, "cycles": [{**m["cycles"][0], "split": "holdout"}]}, "split 'holdout'"),
        (lambda m: {**m, "cycles": [{**m["cycles"][0], "file": "../../../etc/hostname"}]},
         "outside the dataset folder"),
    ],
    ids=["list", "no-name", "cycles-dict", "no-file", "text-capacity", "bad-split", "escape"],
)
def test_inspect_refuses_a_damaged_manifest_in_one_line(dataset, capsys, edit, needle):
    _edit_manifest(dataset, edit)
    argv = ["data", "inspect", str(dataset), "--no-figures"]
    assert_one_line_error(*run(argv, capsys)[::2], needle)


def test_inspect_refuses_a_garbage_cycle_file_in_one_line(dataset, capsys):
    cycle = next((dataset / "cycles").glob("*.parquet"))
    cycle.write_bytes(b"PAR1 this is not a parquet file")
    argv = ["data", "inspect", str(dataset), "--no-figures"]
    assert_one_line_error(*run(argv, capsys)[::2], str(cycle), "cannot read as Parquet")
    (dataset / "manifest.json").write_bytes(b"\xff\xfe{")
    assert_one_line_error(*run(argv, capsys)[::2], "not valid JSON")
