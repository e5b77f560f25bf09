"""``bsoc fleet up --auth`` as a user runs it: a password-protected local fleet on loopback,
a gateway in front of it, and ``bsoc replay --nats`` logging in as the client it prints."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from fleet_helpers import HELPER_SCRIPT, child_env, run_bsoc
from test_serve_helpers import CoulombEstimator, as_json, free_port, rows_of

pytest.importorskip("nats", reason="nats-py is in the fleet extra: pip install '.[fleet]'")


def test_fleet_up_with_passwords_serves_the_gateway_and_replay(tmp_path, toy_dataset):
    model = CoulombEstimator().save(tmp_path / "model")
    state, port = tmp_path / "fleet-state", free_port()
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen(
            [sys.executable, str(HELPER_SCRIPT), "fleet", "up", "--model", str(model), "--auth",
             "--workers", "1", "--partitions", "2", "--gateway-port", str(port),
             "--dir", str(state)],  # fmt: skip
            env=child_env(), stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops" not in (text := (tmp_path / "up.log").read_text()):
            assert up.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.3)
        url = re.search(r"NATS\s+(nats://\S+)", text).group(1)
        # each line whole, however long its paths (a wrapped path cannot be copied)
        assert f"password in {state / 'credentials' / 'client'})" in text
        gateway = f"http://127.0.0.1:{port}"
        posted = httpx.post(f"{gateway}/v1/streams/up.cell/samples", json=as_json(rows_of(4)),
                            timeout=30)  # fmt: skip
        assert posted.status_code == 200, posted.text
        client = state / "credentials" / "client"
        assert client.stat().st_mode & 0o077 == 0  # only its owner can read the password
        anonymous = run_bsoc("replay", str(toy_dataset), "--nats", url, "--streams", "2")
        assert anonymous.returncode == 2 and "refused the login" in anonymous.stderr
        replay = run_bsoc("replay", str(toy_dataset), "--nats", url, "--nats-user", "client",
                          "--nats-password-file", str(client), "--streams", "3", "--rate", "0",
                          "--batch", "20", "--max-seconds", "5", "--json")  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        report = json.loads(replay.stdout)
        assert report["error_count"] == 0 and report["samples_ok"] == report["samples_sent"] > 0
        health = httpx.get(f"{gateway}/healthz").json()
        assert health["status"] == "ok" and health["streams"] == 4
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0
