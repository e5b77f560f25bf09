"""Snapshot faults: a path that breaks while serving, paths refused at start, damaged files.

Paths are made unwritable by putting a directory where the snapshot file goes, or a file
where its folder goes, because tests may run as root (chmod does not stop root).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from bsoc.serve.service import describe_model
from bsoc.serve.snapshot import write_snapshot
from test_serve_helpers import CoulombEstimator, ProcessServer, as_json, rows_of, run_cli, socs


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def put_directory_at(path: Path) -> None:
    """Replace the snapshot file by a directory (racing the server's own rename into place)."""
    while True:
        path.unlink(missing_ok=True)
        try:
            path.mkdir()
            return
        except FileExistsError:
            continue


def health(url: str) -> dict:
    return httpx.get(f"{url}/healthz").json()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return CoulombEstimator().save(tmp_path / "m")


def test_a_snapshot_path_that_breaks_is_retried_reported_and_recovers(model, tmp_path):
    snapshot = tmp_path / "state" / "streams.npz"
    args = ("--model", str(model), "--snapshot", str(snapshot), "--snapshot-interval", "0.1")
    rows, est = rows_of(60), CoulombEstimator()
    served: list[float] = []
    first = ProcessServer(*args).start()
    url, post = first.url, f"{first.url}/v1/streams/cell/samples"
    try:
        served += socs(httpx.post(post, json=as_json(rows[:20])))
        wait_for(lambda: metric(url, "bsoc_snapshots_total") >= 1, "a first snapshot")
        assert health(url)["status"] == "ok" and metric(url, "bsoc_snapshot_errors_total") == 0

        put_directory_at(snapshot)
        wait_for(lambda: metric(url, "bsoc_snapshot_errors_total") >= 3, "retried failures")
        broken = health(url)
        assert broken["status"] == "degraded" and str(snapshot) in broken["reason"]
        good_before = metric(url, "bsoc_snapshots_total")
        served += socs(httpx.post(post, json=as_json(rows[20:40])))  # still answers
        age_broken = metric(url, "bsoc_last_snapshot_age_seconds")
        assert metric(url, "bsoc_snapshots_total") == good_before

        snapshot.rmdir()
        wait_for(lambda: metric(url, "bsoc_snapshots_total") > good_before, "a snapshot again")
        recovered = health(url)
        assert recovered["status"] == "ok" and recovered["reason"] is None
        assert metric(url, "bsoc_last_snapshot_age_seconds") < age_broken
        served += socs(httpx.post(post, json=as_json(rows[40:50])))
        term_sent = time.time()
        assert first.terminate() in (0, -15)
        stderr = first.process.stderr.read()
    finally:
        first.__exit__()
    assert "Traceback" not in stderr and "shutdown failed" not in stderr, stderr
    with np.load(snapshot) as saved:  # the shutdown snapshot, not an earlier periodic one
        assert json.loads(str(saved["header"]))["written_unix_s"] >= term_sent
    with ProcessServer(*args) as second:
        served += socs(httpx.post(f"{second.url}/v1/streams/cell/samples",
                                  json=as_json(rows[50:])))  # fmt: skip
    assert served == est.predict(rows).tolist()


def test_the_shutdown_snapshot_is_attempted_and_its_failure_reported(model, tmp_path):
    snapshot = tmp_path / "streams.npz"
    server = ProcessServer("--model", str(model), "--snapshot", str(snapshot),
                           "--snapshot-interval", "0").start()  # fmt: skip
    try:
        socs(httpx.post(f"{server.url}/v1/streams/c/samples", json=as_json(rows_of(5))))
        snapshot.mkdir()
        server.terminate()
        stderr = server.process.stderr.read()
    finally:
        server.__exit__()
    assert f"the last snapshot write to {snapshot} failed" in stderr and "1 streams" in stderr
    assert "Traceback" not in stderr and "shutdown failed" not in stderr, stderr


@pytest.mark.parametrize("where", ["parent is a file", "path is a directory"])
def test_an_unwritable_snapshot_path_is_refused_at_start(model, tmp_path, where):
    if where == "parent is a file":
        (tmp_path / "state").write_text("a user's file")
        snapshot = tmp_path / "state" / "streams.npz"
    else:
        snapshot = tmp_path / "streams.npz"
        snapshot.mkdir()
    result = run_cli("serve", "--model", str(model), "--snapshot", str(snapshot))
    assert result.returncode == 2
    assert "snapshot" in one_line(result.stderr) and "--no-snapshot" in result.stderr
    if where == "parent is a file":
        assert (tmp_path / "state").read_text() == "a user's file"


MARK = 0.123456789  # a state value whose bytes are easy to find in the file


def _good_snapshot(model: Path, path: Path, streams: int = 3, short: str | None = None) -> bytes:
    ids = [f"cell-{k}" for k in range(streams)]
    arrays = {
        "stream_ids": np.array(ids, dtype=str),
        "states": np.full((streams, 3), MARK),
        "last_time_s": np.arange(streams, dtype=np.float64),
        "samples": np.ones(streams, np.int64),
        "gaps": np.zeros(streams, np.int64),
        "soc": np.full(streams, 0.5),
        "last_sample": np.tile([0.0, 3.7, 0.0, 25.0], (streams, 1)),
    }
    if short is not None:
        arrays[short] = arrays[short][:-1]
    estimator = CoulombEstimator.load(model)
    write_snapshot(path, arrays, describe_model(estimator, model))
    return path.read_bytes()


def _bad_crc(data: bytes) -> bytes:
    at = data.find(np.float64(MARK).tobytes())
    assert at > 0
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "bad CRC": _bad_crc,
    "not a snapshot": lambda data: b"PK\x03\x04" + b"\x00" * 64,
}


@pytest.mark.parametrize("damage", [*DAMAGE, "short array"])
def test_a_damaged_snapshot_is_refused_with_one_line_and_kept(model, tmp_path, damage):
    snapshot = tmp_path / "streams.npz"
    good = _good_snapshot(model, snapshot, short="soc" if damage == "short array" else None)
    if damage in DAMAGE:
        snapshot.write_bytes(DAMAGE[damage](good))
    before = snapshot.read_bytes()
    result = run_cli("serve", "--model", str(model), "--snapshot", str(snapshot))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "damaged" in line and "move it aside" in line and "--discard-bad-snapshot" in line
    assert snapshot.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "streams.npz"]


def test_discard_bad_snapshot_sets_it_aside_and_starts_empty(model, tmp_path):
    snapshot = tmp_path / "streams.npz"
    damaged = _good_snapshot(model, snapshot)[:100]
    snapshot.write_bytes(damaged)
    args = ("--model", str(model), "--snapshot", str(snapshot), "--snapshot-interval", "0")
    server = ProcessServer(*args, "--discard-bad-snapshot").start()
    try:
        assert httpx.get(f"{server.url}/v1/streams").json()["count"] == 0
        socs(httpx.post(f"{server.url}/v1/streams/new/samples", json=as_json(rows_of(5))))
        server.terminate()
        stderr = server.process.stderr.read()
    finally:
        server.__exit__()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("streams.npz.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert str(aside[0]) in stderr
    with ProcessServer(*args) as again:  # the new snapshot holds the new stream
        assert httpx.get(f"{again.url}/v1/streams/new").json()["samples"] == 5


def test_start_removes_only_bsocs_own_leftover_temporary_files(model, tmp_path):
    snapshot = tmp_path / "streams.npz"
    _good_snapshot(model, snapshot)
    stale = tmp_path / ".streams.npz.424242.tmp"  # a write a kill -9 interrupted
    stale.write_bytes(b"half a snapshot")
    users = [tmp_path / n for n in (".streams.npz.mine.tmp", "streams.npz.tmp", ".other.1.tmp")]
    for path in users:
        path.write_text(f"kept: {path.name}")
    with ProcessServer("--model", str(model), "--snapshot", str(snapshot)) as server:
        assert httpx.get(f"{server.url}/v1/streams").json()["count"] == 3
    assert not stale.exists()
    for path in users:
        assert path.read_text() == f"kept: {path.name}"
