"""``bsoc data ingest`` and ``bsoc data inspect`` through the real entry point."""

from __future__ import annotations

import json
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
