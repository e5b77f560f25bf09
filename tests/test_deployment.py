"""Deployment records: a model's exported C measured with the tools there are, and the
report's deployment table, which says what was not measured instead of guessing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_models import cycle_samples, estimator_of_kind

from bsoc.export import deployment, measure
from bsoc.export.deployment import deployment_record, exportable
from bsoc.report.render import deployment_table

pytestmark = pytest.mark.skipif(bool(measure.missing_tools("host")),
                                reason="no C compiler (gcc or cc) on this machine")


def _record(kind: str, tmp_path: Path, toy_dataset: Path) -> dict:
    """The record of a ``kind`` model, measured in a folder given relative to the cwd."""
    estimator = estimator_of_kind(kind)
    estimator.save(tmp_path / "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        return deployment_record(Path("model"), estimator, cycle_samples(toy_dataset),
                                 Path("work"), check_samples=300, count_samples=20)


def test_record_checks_the_c_against_python_and_measures_what_the_tools_allow(
        tmp_path: Path, toy_dataset: Path) -> None:
    estimator = estimator_of_kind("projected-lstm-int8")
    record = _record("projected-lstm-int8", tmp_path, toy_dataset)
    assert record["weights"] == "int8" and record["weight_bytes"] == estimator.weight_bytes()
    assert record["macs_per_step"] == estimator.macs_per_sample()
    assert record["c_check"]["samples"] == 300 and record["c_check"]["max_abs_diff"] <= 1e-5
    assert record["state_bytes"] == 4 * 48  # h and c of 16 + 8 units
    for key, tool in (("x86_instructions_per_step", "callgrind"), ("cortex_m4", "cortex-m4"),
                      ("cortex_m4_instructions_per_step", "qemu")):
        if measure.missing_tools(tool):
            assert key not in record and "not installed" in record["not_measured"][key]
        else:
            assert key in record and key not in record["not_measured"]
    assert record["instruction_count_samples"] == 20
    for key in ("x86_instructions_per_step", "cortex_m4_instructions_per_step"):
        if key in record:
            assert record[key] > record["macs_per_step"]
    if "cortex_m4" in record:
        m4 = record["cortex_m4"]
        assert m4["flash"] >= record["weight_bytes"]
        assert m4["ram"] == m4["bss"] + m4["data"] + record["state_bytes"]
    assert "qemu" not in record  # only when asked for (minutes per model)


def test_absent_tools_are_reported_never_estimated(tmp_path: Path, toy_dataset: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    absent = {"callgrind": ["valgrind"], "cortex-m4": ["arm-none-eabi-gcc"],
              "qemu": ["arm-none-eabi-gcc", "qemu-system-arm"]}
    monkeypatch.setattr(deployment.measure, "missing_tools", lambda what: absent.get(what, []))
    record = _record("lstm", tmp_path, toy_dataset)
    assert not {"x86_instructions_per_step", "cortex_m4", "cortex_m4_instructions_per_step"} & set(
        record)
    assert record["not_measured"] == {
        "x86_instructions_per_step": "valgrind not installed (make edge-tools)",
        "cortex_m4": "arm-none-eabi-gcc not installed (make edge-tools)",
        "cortex_m4_instructions_per_step":
            "arm-none-eabi-gcc, qemu-system-arm not installed (make edge-tools)"}
    bench = {"reference": "lstm", "deployment_cycle": "toy_8", "models": [
        {"name": "lstm", "kind": "lstm", "rmse_pct": 2.5, "deployment": record},
        {"name": "ekf", "kind": "ekf", "rmse_pct": 3.0}]}
    table = deployment_table(bench)
    assert table is not None and [row[0] for row in table.rows] == ["lstm"]  # no C for the EKF
    cells = dict(zip(table.header, table.rows[0], strict=True))
    assert cells["x86 instructions/step"] == "not measured: valgrind not installed (make edge-tools)"
    assert cells["Cortex-M4 flash [B]"].startswith("not measured: arm-none-eabi-gcc")
    assert cells["RMSE from start [%]"] == "2.50"
    assert cells["weights [B]"] == f"{record['weight_bytes']:,}"


def test_only_networks_are_exportable() -> None:
    from bsoc.ekf.estimator import EkfSocEstimator

    assert exportable(estimator_of_kind("svd-lstm-int8"))
    assert not exportable(object.__new__(EkfSocEstimator))
