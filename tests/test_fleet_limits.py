"""Per-stream rate limits and the dead-letter subject, over a real nats-server on 127.0.0.1.

Every refusal a worker makes (each kind the stream rules have) is answered with its kind and
status and goes to ``bsoc.dead.<token>`` with the reason and the log sequence; the rate
limit is decided by the log's clock, so replaying the log gives the same refusals.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.metrics import render_worker_metrics
from bsoc.fleet.nats_server import NatsCluster
from bsoc.fleet.ratelimit import StreamRateLimit
from bsoc.fleet.subjects import (
    CHECKPOINTS_BUCKET,
    DELETE_OP,
    OP_HEADER,
    REPLY_HEADER,
    samples_subject,
)
from bsoc.serve.errors import StreamRateLimited
from fleet_helpers import AnswerLog, ThreadWorker, dead_letters, fleet_status, wait_until_owned
from test_serve_helpers import CoulombEstimator, as_json, rows_of

pytest.importorskip("nats", reason="nats-py is in the fleet extra: pip install '.[fleet]'")

FAILING_CURRENT_A = 0.777  # the model below fails on this current (a model bug, say)


class FailingEstimator(CoulombEstimator):
    """The coulomb model, except that it raises a ValueError on one current value."""

    def step_batch(self, samples: np.ndarray, states: np.ndarray):
        if (samples[:, 2] == FAILING_CURRENT_A).any():
            raise ValueError("the model cannot step this current")
        return super().step_batch(samples, states)


def test_rate_limit_allows_the_rate_and_a_burst_and_refuses_the_rest():
    limit = StreamRateLimit(rate_hz=2.0, burst=3)  # a sample every 0.5 s, three at once
    limit.admit("a", 3, now_us=0)
    with pytest.raises(StreamRateLimited, match="limit of 2 samples/s"):
        limit.admit("a", 1, now_us=100_000)  # refused whole, and it costs nothing
    limit.admit("b", 1, now_us=100_000)  # another stream has its own allowance
    limit.admit("a", 1, now_us=500_000)  # half a second later: room for one more
    with pytest.raises(StreamRateLimited):
        limit.admit("a", 1, now_us=600_000)
    with pytest.raises(StreamRateLimited):
        limit.admit("c", 4, now_us=0)  # more than a burst never fits
    # exported at a log time: streams whose allowance is whole again are dropped (as unseen)
    assert limit.export(now_us=1_400_000) == {"a": 2_000_000}
    restored = StreamRateLimit(rate_hz=2.0, burst=3)
    restored.restore(limit.export(now_us=1_400_000))
    for copy in (limit, restored):  # the same decision from the restored state
        with pytest.raises(StreamRateLimited):
            copy.admit("a", 3, now_us=1_400_000)
        copy.admit("a", 2, now_us=1_500_000)
    unlimited = StreamRateLimit(rate_hz=0.0, burst=1)
    unlimited.admit("a", 10_000, now_us=0)
    assert unlimited.export(now_us=0) == {}


def _publish_each(url: str, messages: list[tuple[str, bytes, dict]]) -> list[dict]:
    """Publish in order all at once (so the log stores them within milliseconds), then
    collect each message's answer from its reply subject."""

    async def send() -> list[dict]:
        nc = await connect(NatsTarget(url), "test-limits")
        inbox, answers, done = nc.new_inbox(), {}, asyncio.Event()

        async def keep(message) -> None:
            answers[message.subject] = json.loads(message.data)
            if len(answers) == len(messages):
                done.set()

        await nc.subscribe(f"{inbox}.*", cb=keep)
        js = nc.jetstream()
        for k, (stream_id, data, headers) in enumerate(messages):
            await js.publish(samples_subject(stream_id), data,
                             headers={**headers, REPLY_HEADER: f"{inbox}.{k}"})  # fmt: skip
        await asyncio.wait_for(done.wait(), 60)
        await nc.close()
        return [answers[f"{inbox}.{k}"] for k in range(len(messages))]

    return asyncio.run(send())


def _body(rows: np.ndarray) -> bytes:
    return json.dumps(as_json(rows)).encode()


def test_every_refusal_goes_to_the_dead_letter_subject_and_replay_refuses_the_same(tmp_path):
    rows = rows_of(12, seed=4)
    failing = rows[:1].copy()
    failing[0, 2] = FAILING_CURRENT_A
    messages = [
        ("fast", _body(rows[0:4]), {}),  # a burst of four: applied
        ("fast", _body(rows[4:5]), {}),  # a fifth, 2 s (of log time) later: room for it
        ("fast", _body(rows[5:6]), {}),  # a sixth at once: over 0.5 samples/s
        ("calm", _body(rows[0:1]), {}),  # other streams keep their own allowance
        ("calm", _body(rows[[2, 1]]), {}),  # not increasing within the message
        ("calm", _body(rows[0:1]), {}),  # not after the stream's last sample
        ("calm", b'[{"time_s": 5}]', {}),  # fields missing
        ("calm", b"\xff not json", {}),
        ("gone", b"", {OP_HEADER: DELETE_OP}),  # delete of a stream that never was
        ("crash", _body(failing), {}),  # the model fails
        ("third", _body(rows[0:1]), {}),  # the partition's third stream: its limit
        ("fourth", _body(rows[0:1]), {}),  # one too many
        ("third", _body(rows[1:2]), {}),  # the partition goes on after all of that
    ]
    expected = [None, None, ("rate_limited", 429), None, ("out_of_order", 422), ("out_of_order", 409),
                ("validation", 422), ("validation", 422), ("not_found", 404), ("internal", 500),
                None, ("too_many_streams", 429), None]  # fmt: skip
    # one job per model step, so that the failing sample fails no other message's batch
    options = dict(partitions=1, lease_s=1.0, max_stream_rate_hz=0.5, stream_burst=4,
                   max_streams_per_partition=3, max_batch=1)  # fmt: skip
    refused = sum(e is not None for e in expected)
    with NatsCluster(tmp_path / "nats") as cluster:
        url = cluster.url
        with ThreadWorker(FailingEstimator(), url, **options):
            wait_until_owned(url, 1)
            answers = _publish_each(url, messages[:1])
            time.sleep(2.1)  # the replay below comes at once: only the log's clock says 2 s
            answers += _publish_each(url, messages[1:])
            (status,), _ = fleet_status(url, 1)
        letters = sorted(dead_letters(url, refused), key=lambda d: d["seq"])
        asyncio.run(_forget_checkpoints(url))
        with AnswerLog(url) as log, ThreadWorker(FailingEstimator(), url, **options):
            log.wait_for(len(messages))  # a new owner with no checkpoint replays the whole log
        letters_after_replay = dead_letters(url, refused)
    assert "limit of 0.5 samples/s" in answers[2]["reason"]
    assert "the model failed" in answers[9]["reason"]
    by_seq = {a["seq"]: a for a in answers}
    assert all(by_seq[a["seq"]] == a for a in log.answers)  # replayed faster, decided the same
    assert [(d["seq"], d["error"], d["reason"]) for d in letters] == [
        (a["seq"], a["error"], a["reason"][:500]) for a in answers if "error" in a]
    assert [(d["subject"], d["data"]) for d in letters] == [
        (f"bsoc.dead.{m[0]}", m[1]) for m, e in zip(messages, expected) if e]
    assert len(letters_after_replay) == refused  # repeats of a sequence are stored once
    assert status["metrics"]["refused"] == {kind: 1 for kind in ("rate_limited", "not_found",
                                            "internal", "too_many_streams")} | {
        "out_of_order": 2, "validation": 2}  # fmt: skip
    text = render_worker_metrics([status], [])
    assert f'bsoc_fleet_refused_total{{worker="{status["worker"]}",kind="rate_limited"}} 1' in text


async def _forget_checkpoints(url: str) -> None:
    nc = await connect(NatsTarget(url), "test-forget")
    try:
        store = await nc.jetstream().object_store(CHECKPOINTS_BUCKET)
        await store.delete("partition-0")
    finally:
        await nc.close()


def test_gateway_answers_a_rate_limited_request_with_429(tmp_path):
    from bsoc.fleet.gateway import FleetGateway, GatewayConfig
    from bsoc.serve.app import build_app
    from test_serve_helpers import ThreadServer

    rows = rows_of(3, seed=5)
    with NatsCluster(tmp_path / "nats") as cluster:
        with ThreadWorker(CoulombEstimator(), cluster.url, partitions=1, lease_s=1.0,
                          max_stream_rate_hz=1.0, stream_burst=2):  # fmt: skip
            wait_until_owned(cluster.url, 1)
            gateway = FleetGateway(GatewayConfig(target=NatsTarget(cluster.url)))
            with ThreadServer(build_app(gateway)) as served:
                post = f"{served.url}/v1/streams/cell-1/samples"
                over = httpx.post(post, json=as_json(rows), timeout=30)  # three, burst two
                within = httpx.post(post, json=as_json(rows[:2]), timeout=30)
    assert over.status_code == 429 and over.json()["error"] == "rate_limited", over.text
    assert "limit of 1 samples/s (bursts of 2)" in over.json()["reason"]
    assert within.status_code == 200, within.text
