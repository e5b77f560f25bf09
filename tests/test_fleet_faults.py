"""Faults a fleet must survive without losing a sample or applying one twice (loopback only).

Each case sends every stream's samples once, in order, plus whatever the fault adds
(duplicates, stale samples, poison, retries after a timeout), and counts from the answers
on ``bsoc.soc.>`` (repeats of a log sequence, answered again after a takeover, dropped):

- lost: samples sent and acknowledged by the log that no answer applied;
- applied twice: samples whose time appears more than once in a stream's applied answers;

and checks that every stream's SOC equals stepping the model offline once through its
samples, which holds only if both are zero. The counts are printed for the README's table.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.nats_server import NatsCluster
from bsoc.fleet.subjects import SAMPLES_STREAM, samples_subject
from fleet_helpers import (
    AnswerLog,
    ThreadWorker,
    WorkerProcess,
    dead_letters,
    fleet_status,
    interleaved,
    publish,
    wait_until_owned,
)
from test_serve_helpers import CoulombEstimator, rows_of

pytest.importorskip("nats", reason="nats-py is in the fleet extra: pip install '.[fleet]'")

PARTITIONS = 4
STREAMS = {f"pack{k // 4}.cell{k % 4}": rows_of(60, seed=30 + k, soc0=0.85) for k in range(8)}


def tally(answers: list[dict], streams: dict[str, np.ndarray] = STREAMS) -> dict[str, Any]:
    """Lost and applied-twice counts, refusals by kind, and whether each stream is exact."""
    by_seq: dict[int, dict] = {}
    for answer in answers:
        if answer["seq"] in by_seq:
            assert by_seq[answer["seq"]] == answer, "a repeated answer differs from the first"
        by_seq[answer["seq"]] = answer
    applied: dict[str, list[float]] = {sid: [] for sid in streams}
    soc: dict[str, list[float]] = {sid: [] for sid in streams}
    refused: dict[str, int] = {}
    for seq in sorted(by_seq):
        answer = by_seq[seq]
        if "error" in answer:
            refused[answer["error"]] = refused.get(answer["error"], 0) + 1
            continue
        applied[answer["stream_id"]] += [e["time_s"] for e in answer["estimates"]]
        soc[answer["stream_id"]] += [e["soc"] for e in answer["estimates"]]
    offline = CoulombEstimator()
    return {
        "lost": sum(len(set(rows[:, 0]) - set(applied[sid])) for sid, rows in streams.items()),
        "applied_twice": sum(len(a) - len(set(a)) for a in applied.values()),
        "refused": refused,
        "exact": all(soc[sid] == offline.predict(rows).tolist() for sid, rows in streams.items()),
    }


def publish_until_stored(url: str, messages: list[tuple[str, Any]], deadline_s: float = 120.0,
                         pace_s: float = 0.0) -> int:  # fmt: skip
    """Publish in order, each message again until the log acknowledges it (a NATS node may be
    down meanwhile); returns how many publishes were retried. A retried message may have been
    stored before its acknowledgement was lost: the time rule refuses the second copy."""

    async def send() -> int:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import APIError, NoStreamResponseError

        nc = await connect(NatsTarget(url), "test-reliable-publisher")
        js, retries, stop = nc.jetstream(timeout=2.0), 0, time.monotonic() + deadline_s
        for stream_id, body in messages:
            data = json.dumps(body).encode()
            while True:
                try:
                    await js.publish(samples_subject(stream_id), data)
                    break
                except (NatsTimeout, NoRespondersError, NoStreamResponseError, APIError,
                        asyncio.TimeoutError):
                    assert time.monotonic() < stop, "the log stored nothing for too long"
                    retries += 1
                    await asyncio.sleep(0.2)
            if pace_s:
                await asyncio.sleep(pace_s)
        await nc.close()
        return retries

    return asyncio.run(send())


def wait_until_applied(log: AnswerLog, timeout_s: float = 120.0) -> dict[str, Any]:
    """Until no sent sample is missing from the answers; returns the final tally."""
    deadline = time.monotonic() + timeout_s
    while (counts := tally(list(log.answers)))["lost"]:
        assert time.monotonic() < deadline, f"still missing after {timeout_s:g} s: {counts}"
        time.sleep(0.1)
    return counts


def test_duplicates_out_of_order_and_poison_lose_nothing_and_apply_nothing_twice(tmp_path):
    good = interleaved(STREAMS, 0, 60)
    rng = np.random.default_rng(0)
    mixed: list[tuple[str, Any]] = list(good)
    copies = sorted(rng.choice(len(good), 40, replace=False).tolist(), reverse=True)
    for k in copies:  # a copy of message k, somewhere after it: a duplicate or a stale sample
        position = k + 1 + int(rng.integers(0, len(good) - k))
        mixed.insert(position, good[k])
    poison = [b"not json", b"\xff\xfe", b"[]", b"{}", b'[{"time_s": 1e9}]',
              b'{"time_s": 1, "voltage_v": "x", "current_a": 0, "temperature_c": 25}',
              b'{"time_s": NaN, "voltage_v": 3.7, "current_a": 0, "temperature_c": 25}']  # fmt: skip
    sids = list(STREAMS)
    for k, body in enumerate(poison):
        mixed.insert(int(rng.integers(0, len(mixed))), (sids[k % len(sids)], body))
    with NatsCluster(tmp_path / "nats") as cluster, AnswerLog(cluster.url) as log:
        with ThreadWorker(CoulombEstimator(), cluster.url, partitions=PARTITIONS, lease_s=1.0):
            wait_until_owned(cluster.url, PARTITIONS)
            publish(cluster.url, mixed)
            log.wait_for(len(mixed))
        dead = dead_letters(cluster.url, len(copies) + len(poison))
    counts = tally(log.answers)
    print(f"{len(copies)} duplicates or stale copies, {len(poison)} poison messages: {counts}")
    assert counts == {"lost": 0, "applied_twice": 0, "exact": True,
                      "refused": {"out_of_order": len(copies), "validation": len(poison)}}  # fmt: skip
    assert len(dead) == len(copies) + len(poison)
    assert all(d["reason"] for d in dead)


def test_kill_9_of_every_worker_then_restart_loses_nothing(tmp_path):
    model = CoulombEstimator().save(tmp_path / "model")
    options = ("--partitions", str(PARTITIONS), "--lease-seconds", "1",
               "--checkpoint-interval", "0.5")  # fmt: skip
    messages = interleaved(STREAMS, 0, 60)
    with NatsCluster(tmp_path / "nats") as cluster, AnswerLog(cluster.url) as log:
        url = cluster.url
        first = [WorkerProcess(model, url, *options, log=tmp_path / f"a{k}.log") for k in range(2)]
        for worker in first:
            worker.start()
        try:
            wait_until_owned(url, PARTITIONS)
            sender = threading.Thread(target=publish_until_stored,
                                      args=(url, messages, 120.0, 0.002))  # fmt: skip
            sender.start()
            log.wait_for(len(messages) // 3)
            for worker in first:
                worker.kill()  # SIGKILL, both, in the middle of the stream
            answered_before = len({a["seq"] for a in log.answers})
            sender.join()
        finally:
            for worker in first:
                worker.__exit__()
        assert answered_before < len(messages)
        with (WorkerProcess(model, url, *options, log=tmp_path / "b0.log"),
              WorkerProcess(model, url, *options, log=tmp_path / "b1.log")):  # fmt: skip
            counts = wait_until_applied(log)
    print(f"kill -9 of all workers at {answered_before}/{len(messages)}, restart: {counts}")
    assert counts == {"lost": 0, "applied_twice": 0, "refused": {}, "exact": True}


def test_kill_9_of_one_of_three_nats_nodes_loses_nothing(tmp_path):
    """The answers are read on the nodes that stay up: a core NATS subscriber connected to
    the killed node misses what is published while it reconnects, which no publisher can
    prevent. The workers may be connected to the killed node: they send again what they
    sent just before their connection dropped."""
    messages = interleaved(STREAMS, 0, 60)
    with NatsCluster(tmp_path / "nats", nodes=3) as cluster:
        url, est = cluster.url, CoulombEstimator()
        with (ThreadWorker(est, url, partitions=PARTITIONS, replicas=3, lease_s=1.0),
              ThreadWorker(est, url, partitions=PARTITIONS, replicas=3, lease_s=1.0)):  # fmt: skip
            wait_until_owned(url, PARTITIONS)
            leader = next(n for n in cluster.nodes if n.name == asyncio.run(_stream_leader(url)))
            survivors = ",".join(f"nats://127.0.0.1:{n.client_port}" for n in cluster.nodes
                                 if n is not leader)  # fmt: skip
            with AnswerLog(survivors) as log:
                retries: list[int] = []
                sender = threading.Thread(target=lambda: retries.append(
                    publish_until_stored(url, messages, 120.0, 0.005)))  # fmt: skip
                sender.start()
                log.wait_for(len(messages) // 3)
                cluster.kill(leader)
                sender.join()
                counts = wait_until_applied(log)
                answers, _ = fleet_status(survivors, PARTITIONS)
    resent = sum(a["metrics"]["answers_resent"] for a in answers)
    print(f"kill -9 of the log's leader {leader.name} (1 of 3 nodes), {retries} publish "
          f"retries, {resent} answers sent again: {counts}")
    assert counts["lost"] == 0 and counts["applied_twice"] == 0 and counts["exact"]
    assert set(counts["refused"]) <= {"out_of_order"}  # only a retried copy may be refused


def test_answers_sent_just_before_a_disconnection_are_sent_again():
    """What the worker wrote to a NATS node that then died is lost with it: after the
    reconnection the publisher sends again what it sent within its window before."""
    from types import SimpleNamespace

    from bsoc.fleet.answers import RESEND_WINDOW_S, AnswerPublisher
    from bsoc.fleet.metrics import WorkerMetrics

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes]] = []

        async def publish(self, subject: str, payload: bytes, headers: Any = None) -> None:
            self.sent.append((subject, payload))

    async def scenario() -> tuple[list, list, int]:
        publisher = AnswerPublisher(WorkerMetrics())
        publisher.nc = Recorder()
        message = SimpleNamespace(headers=None, data=b"{}")
        for seq in (1, 2, 3):
            await publisher.publish("c", seq, message, {"stream_id": "c", "seq": seq})
        old = publisher.recent[0]  # the first one, sent longer ago than the window
        publisher.recent[0] = (old[0] - 2 * RESEND_WINDOW_S, *old[1:])
        first = list(publisher.nc.sent)
        await publisher.on_disconnected()
        await publisher.on_reconnected()
        return first, publisher.nc.sent[len(first):], publisher.metrics.answers_resent

    first, again, counted = asyncio.run(scenario())
    assert [json.loads(p)["seq"] for _, p in first] == [1, 2, 3]
    assert [(s, json.loads(p)["seq"]) for s, p in again] == [("bsoc.soc.c", 2), ("bsoc.soc.c", 3)]
    assert counted == 2


async def _stream_leader(url: str) -> str:
    nc = await connect(NatsTarget(url), "test-leader")
    try:
        info = await nc.jetstream().stream_info(SAMPLES_STREAM)
        return info.cluster.leader
    finally:
        await nc.close()


def test_a_burst_is_applied_within_the_workers_in_flight_bound(tmp_path):
    """480 messages published at once to four partitions: the worker applies at most its
    bound at a time (the rest wait in its consumers and the log) and loses none."""
    messages = interleaved(STREAMS, 0, 60)
    with NatsCluster(tmp_path / "nats") as cluster, AnswerLog(cluster.url) as log:
        with ThreadWorker(CoulombEstimator(), cluster.url, partitions=PARTITIONS, lease_s=1.0,
                          max_worker_in_flight=3):  # fmt: skip
            wait_until_owned(cluster.url, PARTITIONS)
            publish(cluster.url, messages)
            log.wait_for(len(messages))
            (answer,), _ = fleet_status(cluster.url, PARTITIONS)
    metrics = answer["metrics"]
    print(f"burst of {len(messages)}: in flight at most {metrics['in_flight_peak']}")
    assert metrics["in_flight_limit"] == 3 and 1 <= metrics["in_flight_peak"] <= 3
    assert tally(log.answers) == {"lost": 0, "applied_twice": 0, "refused": {}, "exact": True}


def test_gateway_says_503_when_the_log_stores_nothing(tmp_path):
    """With no stream to store it (as while a cluster elects the log's leader), a write is
    refused with 503 and 'send it again', never a server error."""
    from bsoc.fleet.gateway import FleetGateway, GatewayConfig
    from bsoc.serve.app import build_app
    from test_serve_helpers import ThreadServer, as_json

    with NatsCluster(tmp_path / "nats") as cluster:
        with ThreadWorker(CoulombEstimator(), cluster.url, partitions=PARTITIONS, lease_s=1.0):
            wait_until_owned(cluster.url, PARTITIONS)
            gateway = FleetGateway(GatewayConfig(target=NatsTarget(cluster.url), timeout_s=2.0))
            with ThreadServer(build_app(gateway)) as served:
                asyncio.run(_delete_log(cluster.url))
                response = httpx.post(f"{served.url}/v1/streams/c/samples",
                                      json=as_json(rows_of(2)), timeout=30)  # fmt: skip
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable"
    assert "nothing was applied, send it again" in response.json()["reason"]


async def _delete_log(url: str) -> None:
    nc = await connect(NatsTarget(url), "test-delete")
    try:
        await nc.jetstream().delete_stream(SAMPLES_STREAM)
    finally:
        await nc.close()
