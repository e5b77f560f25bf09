"""The fleet over a real nats-server on 127.0.0.1: partitioning, ownership, the gateway, errors.

The gateway is checked against ``bsoc serve`` itself: the same requests sent to both must
get the same statuses and bodies, so today's clients cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.gateway import FleetGateway, GatewayConfig
from bsoc.fleet.leases import LeaseView, lease_key, worker_key
from bsoc.fleet.nats_server import NatsCluster
from bsoc.fleet.subjects import SAMPLES_STREAM, partition_of, token
from bsoc.serve.app import build_app, create_app
from bsoc.serve.service import ServeConfig, describe_model
from fleet_helpers import (
    AnswerLog,
    ThreadWorker,
    WorkerProcess,
    dead_letters,
    fleet_status,
    publish,
    run_bsoc,
    wait_until_owned,
)
from test_serve_helpers import CoulombEstimator, ThreadServer, as_json, free_port, rows_of

pytest.importorskip("nats", reason="nats-py is in the fleet extra: pip install '.[fleet]'")
PARTITIONS = 4


@pytest.fixture
def nats_url(tmp_path):
    with NatsCluster(tmp_path / "nats") as cluster:
        yield cluster.url


# -- partitioning ---------------------------------------------------------------------------


def test_partition_of_is_the_servers_partition(nats_url):
    ids = [f"cell-{k}" for k in range(40)] + ["pack1.cell3", "a:b_c-d", "Z" * 128]

    async def stored_subjects() -> dict[str, int]:
        nc = await connect(NatsTarget(nats_url), "test")
        js = nc.jetstream()
        from bsoc.fleet.log import ensure_log

        await ensure_log(js, PARTITIONS, 1, 3600.0)
        for stream_id in ids:
            await js.publish(f"bsoc.samples.{token(stream_id)}", b"{}")
        info = await js.stream_info(SAMPLES_STREAM, subjects_filter=">")
        await nc.close()
        return info.state.subjects

    subjects = asyncio.run(stored_subjects())
    expected = {f"bsoc.part.{partition_of(i, PARTITIONS)}.{token(i)}": 1 for i in ids}
    assert subjects == expected
    # deterministic, and the same numbers the server gave when this was written
    assert [partition_of(f"cell-{k}", 4) for k in range(4)] == [0, 3, 2, 1]
    assert len({partition_of(i, PARTITIONS) for i in ids}) == PARTITIONS


def test_lease_view_shares_partitions_and_takes_over_stale_ones():
    view = LeaseView(partitions=8, lease_s=3.0, me="a")
    assert view.plan(set(), now=0.0) == (view.free(0.0), [])  # alone: all eight
    assert sorted(view.free(0.0)) == list(range(8))
    view.observe(worker_key("b"), 1, b'{"partitions": []}', now=0.0)
    for p in range(4):
        view.observe(lease_key(p), 10 + p, b'{"owner": "b"}', now=0.0)
    take, give = view.plan(set(), now=1.0)
    assert give == [] and sorted(take) == [4, 5, 6, 7]  # fair share 4 of 8 with b alive
    assert view.plan({0, 4, 5, 6, 7}, now=1.0) == ([], [7])  # one too many: hand one back
    # b stops renewing: after the lease time its leases and heartbeat are stale
    take, _ = view.plan({4, 5, 6, 7}, now=3.5)
    assert sorted(take) == [0, 1, 2, 3] and view.revision(2) == 12
    view.observe(lease_key(2), 13, b'{"owner": "b"}', now=3.4)  # b renewed partition 2
    assert 2 not in view.plan({4, 5, 6, 7}, now=3.5)[0]
    view.observe(lease_key(3), 14, None, now=3.5)  # deleted: free at once
    assert view.owner(3, 3.5) is None and view.revision(3) == 14


def test_joining_waits_while_jetstream_cannot_answer_and_then_says_so():
    """A cluster electing its leaders answers 503 or times out for a few seconds: a worker
    started with it retries; after the wait it stops with one line; other errors at once."""
    from nats.errors import NoRespondersError
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

    from bsoc.fleet.log import FleetError, when_jetstream_answers

    calls: list[int] = []

    async def electing() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise NoRespondersError
        if len(calls) == 2:
            raise ServiceUnavailableError(code=503, description="JetStream not ready")
        if len(calls) == 3:
            raise NoStreamResponseError  # a publish to a bucket without its stream leader yet
        return "joined"

    assert asyncio.run(when_jetstream_answers(electing, "nats://x")) == "joined"
    assert len(calls) == 4

    async def never() -> None:
        calls.append(1)
        raise NoRespondersError

    with pytest.raises(FleetError, match="did not answer within 0.6 s") as refused:
        asyncio.run(when_jetstream_answers(never, "nats://x", wait_s=0.6))
    assert "nats.log" in refused.value.remedy

    async def wrong() -> None:
        calls.append(1)
        raise FleetError("another model", remedy="-")

    calls.clear()
    with pytest.raises(FleetError, match="another model"):
        asyncio.run(when_jetstream_answers(wrong, "nats://x"))
    assert len(calls) == 1


def test_every_partition_has_exactly_one_owner(nats_url, tmp_path):
    model = CoulombEstimator().save(tmp_path / "model")
    options = ("--partitions", "6", "--lease-seconds", "1", "--checkpoint-interval", "0")
    with (
        WorkerProcess(model, nats_url, *options, log=tmp_path / "w1.log"),
        WorkerProcess(model, nats_url, *options, log=tmp_path / "w2.log"),
    ):
        deadline = time.monotonic() + 90
        while True:  # two workers settle on three partitions each
            answers = wait_until_owned(nats_url, 6)
            owned = [sorted(map(int, a["partitions"])) for a in answers]
            if len(owned) == 2 and all(len(o) == 3 for o in owned):
                break
            assert time.monotonic() < deadline, owned
            time.sleep(0.3)
        assert sorted(owned[0] + owned[1]) == list(range(6))


# -- the worker's answers and the dead-letter subject ---------------------------------------


def test_worker_answers_equal_predict_and_refusals_go_to_dead_letter(nats_url):
    est = CoulombEstimator()
    rows = {"a.1": rows_of(30, seed=1), "b-2": rows_of(30, seed=2)}
    with ThreadWorker(est, nats_url, partitions=PARTITIONS, lease_s=1.0):
        wait_until_owned(nats_url, PARTITIONS)
        messages = [(sid, as_json(r[:10])) for sid, r in rows.items()]
        messages += [(sid, as_json(r[k : k + 1])[0]) for k in range(10, 30) for sid, r in rows.items()]
        poison = [("a.1", b"not json"), ("a.1", as_json(rows["a.1"][5:6])[0]),
                  ("b-2", [{"time_s": 99.0, "voltage_v": 3.7}]), ("a/b", b"[]")]  # fmt: skip
        answers = publish(nats_url, messages + poison, reply=True)
    soc = {sid: [] for sid in rows}
    for answer in answers[: len(messages)]:
        soc[answer["stream_id"]] += [e["soc"] for e in answer["estimates"]]
    for sid, r in rows.items():
        assert soc[sid] == est.predict(r).tolist()
    refused = answers[len(messages) :]
    assert [(a["error"], a["status"]) for a in refused] == [
        ("validation", 422), ("out_of_order", 409), ("validation", 422), ("validation", 422)]  # fmt: skip
    assert "not JSON" in refused[0]["reason"] and "current_a" in refused[2]["reason"]
    assert "stream id 'a/b' is invalid" in refused[3]["reason"]

    # in order within a stream; streams of other partitions may come in between
    letters = [(d["subject"], d["error"]) for d in dead_letters(nats_url, 4)]
    assert [kind for subject, kind in letters if subject == "bsoc.dead.a~1"] == [
        "validation", "out_of_order"]  # fmt: skip
    assert sorted(letters) == sorted([
        ("bsoc.dead.a~1", "validation"), ("bsoc.dead.a~1", "out_of_order"),
        ("bsoc.dead.b-2", "validation"), ("bsoc.dead.a/b", "validation")])  # fmt: skip


# -- the gateway answers as bsoc serve does -------------------------------------------------


@pytest.fixture
def serve_and_gateway(nats_url):
    """(bsoc serve, bsoc fleet gateway) for the same estimator, both on loopback ports."""
    est = CoulombEstimator()
    serve = ThreadServer(create_app(est, ServeConfig(gap_limit_s=60.0), describe_model(est, None)))
    with ThreadWorker(est, nats_url, partitions=PARTITIONS, lease_s=1.0, gap_limit_s=60.0):
        wait_until_owned(nats_url, PARTITIONS)
        gateway = FleetGateway(GatewayConfig(target=NatsTarget(nats_url)))
        with serve, ThreadServer(build_app(gateway)) as fleet:
            yield serve.url, fleet.url


def _comparable(response: httpx.Response) -> tuple[int, object]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("updated_unix_s", None)
    return response.status_code, body


def test_gateway_answers_as_serve_does(serve_and_gateway):
    rows = rows_of(90)
    good = as_json(rows)
    requests = [
        ("post", "/v1/streams/pack1.cell1/samples", good[:1]),
        ("post", "/v1/streams/pack1.cell1/samples", good[1:40]),
        ("post", "/v1/streams/pack1.cell1/samples", good[10:12]),  # 409 out_of_order
        ("post", "/v1/streams/pack1.cell1/samples", [good[50], good[45]]),  # 422 out_of_order
        ("post", "/v1/streams/pack1.cell1/samples", [{**good[50], "voltage_v": "3.7"}]),
        ("post", "/v1/streams/pack1.cell1/samples", [{**good[50], "extra": 1}]),
        ("post", "/v1/streams/pack1.cell1/samples", []),
        ("post", "/v1/streams/bad id!/samples", good[:1]),
        ("post", "/v1/streams/pack1.cell1/samples", good[40:]),
        ("post", "/v1/streams/gap/samples", [good[0], {**good[1], "time_s": 500.0}]),
        ("get", "/v1/streams/pack1.cell1?history=5", None),
        ("get", "/v1/streams/nobody", None),
        ("get", "/v1/streams?prefix=pack1", None),
        ("delete", "/v1/streams/gap", None),
        ("delete", "/v1/streams/gap", None),
        ("get", "/v1/streams", None),
        ("post", "/v1/streams/gap/samples", good[:2]),  # starts afresh after DELETE
        ("put", "/v1/streams/gap/samples", good[:1]),
        ("get", "/nowhere", None),
    ]
    serve_url, gateway_url = serve_and_gateway
    for method, path, body in requests:
        answers = [
            _comparable(httpx.request(method, base + path, json=body, timeout=30))
            for base in (serve_url, gateway_url)
        ]
        assert answers[0] == answers[1], (method, path)
    health = [httpx.get(f"{u}/healthz").json() for u in serve_and_gateway]
    for key in ("status", "model", "streams", "gap_limit_s", "gap_policy"):
        assert health[0][key] == health[1][key]
    metrics = httpx.get(f"{gateway_url}/metrics").text
    assert "bsoc_requests_total" in metrics and "bsoc_fleet_partitions_without_owner 0" in metrics
    assert f'partition="{PARTITIONS - 1}"' in metrics


def test_gateway_websocket_answers_as_serve_does(serve_and_gateway):
    rows = rows_of(40)
    messages = [json.dumps(s) for s in as_json(rows[:20])] + [
        json.dumps(as_json(rows[20:])), "not json", json.dumps(as_json(rows[:1])[0])]  # fmt: skip

    async def talk(base: str) -> list[dict]:
        async with ws_connect(base.replace("http", "ws") + "/v1/streams/ws.cell") as ws:
            out = []
            for message in messages:
                await ws.send(message)
                out.append(json.loads(await ws.recv()))
            return out

    assert asyncio.run(talk(serve_and_gateway[0])) == asyncio.run(talk(serve_and_gateway[1]))


# -- bad input: one line, exit code 2 -------------------------------------------------------


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_commands_refuse_with_one_line(nats_url, tmp_path, toy_dataset):
    closed = f"nats://127.0.0.1:{free_port()}"
    model = CoulombEstimator().save(tmp_path / "model")
    _one_line_error(run_bsoc("fleet", "worker", "--model", str(model), "--nats", closed),
                    "no NATS server answers")  # fmt: skip
    _one_line_error(run_bsoc("fleet", "worker", "--model", str(model), "--nats", "http://x"),
                    "must start with nats://")  # fmt: skip
    _one_line_error(run_bsoc("fleet", "gateway", "--nats", nats_url, "--port", str(free_port())),
                    "no bsoc fleet at")  # fmt: skip
    _one_line_error(run_bsoc("replay", str(toy_dataset), "--nats", nats_url), "no bsoc fleet at")
    _one_line_error(run_bsoc("fleet", "gateway", "--host", "0.0.0.0", "--nats", nats_url),
                    "refusing to listen on 0.0.0.0")  # fmt: skip
    _one_line_error(run_bsoc("fleet", "worker", "--model", str(model), "--nats", nats_url,
                             "--nats-user", "w"), "no password for NATS user")  # fmt: skip
    with ThreadWorker(CoulombEstimator(), nats_url, partitions=PARTITIONS):
        other = CoulombEstimator(capacity_ah=2.0).save(tmp_path / "other")
        _one_line_error(run_bsoc("fleet", "worker", "--model", str(other), "--nats", nats_url,
                                 "--partitions", str(PARTITIONS)), "this fleet runs with model")  # fmt: skip
        _one_line_error(run_bsoc("fleet", "worker", "--model", str(model), "--nats", nats_url,
                                 "--partitions", "5"), "not into 5 partitions")  # fmt: skip


def test_replay_drives_load_into_the_log(nats_url, toy_dataset):
    with ThreadWorker(CoulombEstimator(), nats_url, partitions=PARTITIONS, lease_s=1.0):
        wait_until_owned(nats_url, PARTITIONS)
        result = run_bsoc("replay", str(toy_dataset), "--nats", nats_url, "--streams", "6",
                          "--rate", "0", "--batch", "10", "--max-seconds", "5", "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["transport"] == "nats" and report["error_count"] == 0
        assert report["samples_ok"] == report["samples_sent"] > 0
        answers, _ = fleet_status(nats_url, PARTITIONS)
        streams = sum(p["streams"] for a in answers for p in a["partitions"].values())
        assert streams == 6


def test_nats_passwords_are_required_when_configured(tmp_path):
    users = {"worker": "w" * 20, "client": "c" * 20}
    with NatsCluster(tmp_path / "nats", users=users) as cluster:
        async def attempt(user, password) -> str:
            try:
                nc = await connect(NatsTarget(cluster.url, user, password), "test")
            except Exception as error:
                return type(error).__name__
            await nc.close()
            return "ok"

        assert asyncio.run(attempt("client", "c" * 20)) == "ok"
        assert asyncio.run(attempt(None, None)) != "ok"
        assert asyncio.run(attempt("client", "wrong")) != "ok"
    with pytest.raises(Exception, match="without passwords"):
        NatsCluster(tmp_path / "open", host="0.0.0.0")


def test_gateways_and_clients_may_only_publish_samples_and_read(tmp_path):
    """With passwords, a client (or gateway) login publishes samples, reads the fleet's
    settings and answers, and asks queries; it cannot forge answers or touch the log."""
    from bsoc.fleet.log import read_settings
    from bsoc.fleet.subjects import LEASES_BUCKET

    users = {"worker": "w" * 20, "gateway": "g" * 20, "client": "c" * 20}
    rows = rows_of(5)
    with NatsCluster(tmp_path / "nats", users=users) as cluster:
        url = cluster.url
        with ThreadWorker(CoulombEstimator(), url, user="worker", password=users["worker"],
                          partitions=PARTITIONS, lease_s=1.0):  # fmt: skip
            async def as_client() -> dict:
                worker = await connect(NatsTarget(url, "worker", users["worker"]), "test-w")
                client = await connect(NatsTarget(url, "client", users["client"]), "test-c")
                seen: list[str] = []

                async def keep(message) -> None:
                    seen.append(message.subject)

                await worker.subscribe("bsoc.soc.>", cb=keep)
                await worker.flush()
                out = {"settings": (await read_settings(client.jetstream(), url)).partitions}
                answer = await client.request("bsoc.samples.c", json.dumps(as_json(rows)).encode(),
                                              timeout=10)  # fmt: skip
                out["acked"] = json.loads(answer.data).get("stream") == SAMPLES_STREAM
                await client.publish("bsoc.soc.forged", b"{}")  # refused by the server
                for forbidden in (f"$JS.API.STREAM.DELETE.{SAMPLES_STREAM}",
                                  f"$KV.{LEASES_BUCKET}.lease.0"):  # fmt: skip
                    try:
                        await client.request(forbidden, b"", timeout=1)
                        out[forbidden] = "answered"
                    except Exception as error:
                        out[forbidden] = type(error).__name__
                await asyncio.sleep(1.0)
                info = await worker.jetstream().stream_info(SAMPLES_STREAM)
                out["stored"], out["seen"] = info.state.messages, sorted(set(seen))
                await client.close()
                await worker.close()
                return out

            out = asyncio.run(as_client())
    assert out["settings"] == PARTITIONS and out["acked"] and out["stored"] == 1
    assert out["seen"] == ["bsoc.soc.c"]  # the worker's answer, not the forged one
    assert out[f"$JS.API.STREAM.DELETE.{SAMPLES_STREAM}"] != "answered"
    assert out[f"$KV.{LEASES_BUCKET}.lease.0"] != "answered"


def test_answer_log_sees_every_estimate(nats_url):
    rows = rows_of(20)
    with ThreadWorker(CoulombEstimator(), nats_url, partitions=PARTITIONS, lease_s=1.0):
        wait_until_owned(nats_url, PARTITIONS)
        with AnswerLog(nats_url) as answers:
            publish(nats_url, [("c", as_json(rows[k : k + 1])[0]) for k in range(20)])
            answers.wait_for(20)
    socs = [a["estimates"][0]["soc"] for a in sorted(answers.answers, key=lambda a: a["seq"])]
    assert socs == CoulombEstimator().predict(rows).tolist()
    assert np.all(np.diff([a["seq"] for a in answers.answers]) > 0)


def test_worker_and_gateway_publish_soc_std_for_a_model_with_one(nats_url):
    """An EKF's standard deviation reaches ``bsoc.soc.<id>`` and the gateway's answers, with
    the numbers stepping the model offline gives (and null for a model without one)."""
    from bsoc.ekf.estimator import EkfSocEstimator
    from bsoc.ekf.filter import NoiseSettings
    from stream_set import StreamSet
    from test_ekf_synthetic import true_tables

    ekf = EkfSocEstimator(true_tables(), NoiseSettings(soc_std=1e-5, rc_std=1e-4,
                                                       voltage_std=5e-3), name="tiny-ekf")  # fmt: skip
    rows = rows_of(40, seed=4, soc0=0.9)
    stepper, expected = StreamSet(ekf), []
    for row in rows:
        stepper.step(row)
        expected.append(float(ekf.soc_std(stepper.states)[0]))
    with ThreadWorker(ekf, nats_url, partitions=PARTITIONS, lease_s=1.0):
        wait_until_owned(nats_url, PARTITIONS)
        with AnswerLog(nats_url) as published:
            direct = publish(nats_url, [("ekf.direct", as_json(rows[:20]))], reply=True)
            published.wait_for(1)
            gateway = FleetGateway(GatewayConfig(target=NatsTarget(nats_url)))
            with ThreadServer(build_app(gateway)) as fleet:
                through = httpx.post(f"{fleet.url}/v1/streams/ekf.gateway/samples",
                                     json=as_json(rows), timeout=30).json()  # fmt: skip
                status = httpx.get(f"{fleet.url}/v1/streams/ekf.gateway").json()
    assert [e["soc_std"] for e in direct[0]["estimates"]] == expected[:20]
    assert published.answers[0] == direct[0]
    assert [e["soc_std"] for e in through["estimates"]] == expected
    assert status["soc_std"] == expected[-1]


def test_answers_without_soc_std_carry_null(nats_url):
    with ThreadWorker(CoulombEstimator(), nats_url, partitions=PARTITIONS, lease_s=1.0):
        wait_until_owned(nats_url, PARTITIONS)
        answer = publish(nats_url, [("c", as_json(rows_of(3)))], reply=True)[0]
    assert [e["soc_std"] for e in answer["estimates"]] == [None, None, None]
