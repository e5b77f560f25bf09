"""Exact recovery: a float LSTM's streams across a hand-back, a kill -9 and a takeover.

Worker A applies the first part of every stream and hands its partitions back (SIGTERM:
checkpoint, release). Worker B takes them over, is killed with SIGKILL in the middle of the
second part, with no checkpoint since A's, so worker C restores A's checkpoint and replays
every message after it, B's already-answered ones included. Then duplicates and stale
samples arrive. The SOC of every stream, collected from the answers on ``bsoc.soc.>``, must
equal stepping the model offline through the stream's samples once each, to the last bit;
every stream's sample count must be the number sent (none lost, none applied twice); and
a message answered twice (by B, then again by C) must have got the same numbers both times.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from bsoc.estimator import load_estimator
from bsoc.fleet.connection import NatsTarget
from bsoc.fleet.gateway import FleetGateway, GatewayConfig
from bsoc.fleet.nats_server import NatsCluster
from fleet_helpers import AnswerLog, WorkerProcess, interleaved, publish, wait_until_owned
from stream_set import StreamSet
from test_serve_helpers import as_json, rows_of

pytest.importorskip("nats", reason="nats-py is in the fleet extra: pip install '.[fleet]'")
torch = pytest.importorskip("torch")

PARTITIONS = 4
OPTIONS = ("--partitions", str(PARTITIONS), "--lease-seconds", "1", "--checkpoint-interval", "0")
STREAMS = {f"pack{k // 3}.cell{k % 3}": rows_of(120, seed=10 + k, soc0=0.9) for k in range(6)}


@pytest.fixture
def lstm_model(tmp_path):
    from bsoc.nn.estimator import LstmSocEstimator
    from bsoc.nn.network import NetworkConfig, SocNetwork

    torch.manual_seed(7)
    network = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    network.set_normalisation(np.array([3.7, -0.5, 15.0]), np.array([0.3, 0.6, 10.0]))
    return LstmSocEstimator(network.eval(), name="tiny-lstm").save(tmp_path / "lstm")


def _offline(model) -> dict[str, list[float]]:
    """Each stream stepped alone, one sample at a time: what an uninterrupted run gives."""
    estimator = load_estimator(model)
    out = {}
    for stream_id, rows in STREAMS.items():
        stream = StreamSet(estimator)
        out[stream_id] = [stream.step(row) for row in rows]
    return out


def _status(url: str) -> dict[str, dict]:
    async def ask() -> dict[str, dict]:
        gateway = FleetGateway(GatewayConfig(target=NatsTarget(url)))
        await gateway.start()
        try:
            return {i: (await gateway.stream_status(i, 0)).model_dump() for i in STREAMS}
        finally:
            await gateway.stop()

    return asyncio.run(ask())


def test_kill_9_mid_stream_then_takeover_is_exact(tmp_path, lstm_model):
    reference = _offline(lstm_model)  # first, so the workers find the compiled kernel cached
    with NatsCluster(tmp_path / "nats") as cluster, AnswerLog(cluster.url) as log:
        url, logs = cluster.url, tmp_path
        first = interleaved(STREAMS, 0, 40)
        with WorkerProcess(lstm_model, url, *OPTIONS, log=logs / "a.log") as a:
            wait_until_owned(url, PARTITIONS)
            publish(url, first)
            log.wait_for(len(first))
            assert a.terminate() == 0  # checkpoint + hand back
        second = interleaved(STREAMS, 40, 100)
        with WorkerProcess(lstm_model, url, *OPTIONS, log=logs / "b.log") as b:
            wait_until_owned(url, PARTITIONS)
            sender = threading.Thread(target=publish, args=(url, second))
            sender.start()
            log.wait_for(len(first) + 60)
            b.kill()  # SIGKILL, mid-stream
            killed_at = time.monotonic()
            answered_by_b = {a["seq"] for a in log.answers} - {a["seq"] for a in log.answers[: len(first)]}
            sender.join()
        assert 0 < len(answered_by_b) < len(second)
        third = interleaved(STREAMS, 100, 120)
        stale = [(sid, as_json(rows[k : k + 1])[0]) for sid, rows in STREAMS.items() for k in (5, 99)]
        with WorkerProcess(lstm_model, url, *OPTIONS, log=logs / "c.log"):
            wait_until_owned(url, PARTITIONS)
            log.wait_for(len(first) + len(second))
            recovery_s = time.monotonic() - killed_at
            publish(url, stale + third + stale)
            log.wait_for(len(first) + len(second) + len(third) + 2 * len(stale))
            status = _status(url)
    print(f"recovered {len(second)} messages {recovery_s:.1f} s after the kill")

    by_seq: dict[int, dict] = {}
    repeated = 0
    for answer in log.answers:
        if answer["seq"] in by_seq:
            assert by_seq[answer["seq"]] == answer  # a repeat is the same answer, bit for bit
            repeated += 1
        by_seq[answer["seq"]] = answer
    assert repeated >= len(answered_by_b)  # C replayed what B had answered
    served = {sid: [] for sid in STREAMS}
    refused = 0
    for seq in sorted(by_seq):
        answer = by_seq[seq]
        if "error" in answer:
            assert answer["error"] == "out_of_order"
            refused += 1
            continue
        served[answer["stream_id"]] += [e["soc"] for e in answer["estimates"]]
    assert refused == 2 * len(stale)
    assert served == reference  # exact: no sample lost, none applied twice
    for stream_id, rows in STREAMS.items():
        assert status[stream_id]["samples"] == len(rows)
        assert status[stream_id]["last_time_s"] == rows[-1, 0]
