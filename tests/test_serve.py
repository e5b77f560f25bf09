"""The live SOC service over real HTTP and WebSocket on 127.0.0.1.

Every served number is checked exactly against the offline ``predict`` of the same model
on the samples the service accepted, which is also how "state unchanged after a rejected
request" is proven: the next good sample must give exactly the SOC it would have given
had the bad request never been sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from stream_set import StreamSet
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bsoc.errors import ConfigError
from bsoc.estimator import SAMPLE_FIELDS
from bsoc.serve.app import create_app
from bsoc.serve.auth import resolve_api_key
from bsoc.serve.batching import step_jobs
from bsoc.serve.service import ServeConfig, describe_model
from bsoc.serve.snapshot import write_snapshot
from test_serve_helpers import (
    CoulombEstimator,
    ProcessServer,
    ThreadServer,
    as_json,
    free_port,
    rows_of,
    run_cli,
    socs,
)

KEY = "k" * 24


def start(estimator=None, **config) -> ThreadServer:
    estimator = estimator or CoulombEstimator()
    app = create_app(estimator, ServeConfig(**config), describe_model(estimator, None))
    return ThreadServer(app, ws_max_size=config.get("max_body_bytes", 1 << 20))


@pytest.fixture(scope="module")
def server():
    with start(gap_limit_s=60.0, max_body_bytes=400 * 1024) as running:
        yield running


@pytest.fixture(scope="module")
def keyed():
    with start(api_key=KEY) as running:
        yield running


def test_step_jobs_equals_each_stream_stepped_alone():
    est = CoulombEstimator()
    seqs = [rows_of(30, seed=1), rows_of(7, seed=2), rows_of(19, seed=4)]
    resets = [np.zeros(len(s), bool) for s in seqs]
    resets[0][12] = True
    states = np.stack([est.initial_state()] * 3)
    out, _, final = step_jobs(est, seqs, states, resets)
    assert np.all(states == est.initial_state())  # inputs untouched
    for j in (1, 2):
        assert np.array_equal(out[j], est.predict(seqs[j]))
    # a reset restarts the stream at that sample
    assert np.array_equal(out[0][:12], est.predict(seqs[0][:12]))
    assert np.array_equal(out[0][12:], est.predict(seqs[0][12:]))
    alone = StreamSet(est)
    for row in seqs[1]:
        alone.step(row)
    assert np.array_equal(final[1], alone.states[0])


def test_http_chunks_equal_offline_predict(server):
    rows, est = rows_of(), CoulombEstimator()
    served: list[float] = []
    for lo, hi in [(0, 1), (1, 5), (5, 60), (60, len(rows))]:
        served += socs(
            httpx.post(f"{server.url}/v1/streams/http-a/samples", json=as_json(rows[lo:hi]))
        )
    assert served == est.predict(rows).tolist()
    status = httpx.get(f"{server.url}/v1/streams/http-a?history=10").json()
    assert status["samples"] == len(rows) and status["last_time_s"] == rows[-1, 0]
    assert status["history"]["soc"] == served[-10:]
    assert status["history"]["voltage_v"] == rows[-10:, 1].tolist()


def test_websocket_single_samples_and_batches_equal_predict(server):
    rows, est = rows_of(), CoulombEstimator()

    async def talk() -> list[float]:
        out = []
        async with connect(server.url.replace("http", "ws") + "/v1/streams/ws-a") as ws:
            for row in as_json(rows[:50]):
                await ws.send(json.dumps(row))
                answer = json.loads(await ws.recv())
                assert answer["time_s"] == row["time_s"] and answer["gap"] is False
                out.append(answer["soc"])
            await ws.send(json.dumps(as_json(rows[50:])))
            out += [e["soc"] for e in json.loads(await ws.recv())["estimates"]]
        return out

    assert asyncio.run(talk()) == est.predict(rows).tolist()


BAD_BODIES = {
    "missing field": lambda s: [{k: v for k, v in s.items() if k != "current_a"}],
    "extra field": lambda s: [{**s, "voltage": 3.7}],
    "string number": lambda s: [{**s, "voltage_v": "3.7"}],
    "boolean": lambda s: [{**s, "current_a": True}],
    "null": lambda s: [{**s, "temperature_c": None}],
    "millivolts": lambda s: [{**s, "voltage_v": 3700.0}],
    "kelvin": lambda s: [{**s, "temperature_c": 298.15}],
    "milliamperes": lambda s: [{**s, "current_a": -2500.0}],
    "negative time": lambda s: [{**s, "time_s": -1.0}],
    "empty list": lambda s: [],
    "object not list": lambda s: s,
    "too many samples": lambda s: [{**s, "time_s": s["time_s"] + k} for k in range(3601)],
}
RAW_BODIES = {
    "NaN literal": '[{"time_s": T, "voltage_v": NaN, "current_a": -1, "temperature_c": 25}]',
    "Infinity": '[{"time_s": T, "voltage_v": 3.7, "current_a": Infinity, "temperature_c": 25}]',
    "overflow to inf": '[{"time_s": T, "voltage_v": 3.7, "current_a": 1e999, "temperature_c": 25}]',
    "malformed JSON": '[{"time_s": T, "voltage_v": 3.7,',
}


def _check_rejected_changes_nothing(url: str, stream: str, send, status: int, kind: str):
    rows, est = rows_of(40), CoulombEstimator()
    socs(httpx.post(f"{url}/v1/streams/{stream}/samples", json=as_json(rows[:20])))
    before = httpx.get(f"{url}/v1/streams/{stream}").json()
    response = send(as_json(rows[20:21])[0])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind and len(body["reason"]) > 10
    assert httpx.get(f"{url}/v1/streams/{stream}").json() == before
    # the hidden state is untouched too: the next good sample continues exactly
    after = socs(httpx.post(f"{url}/v1/streams/{stream}/samples", json=as_json(rows[20:])))
    assert after == est.predict(rows)[20:].tolist()


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_422_and_changes_nothing(server, case):
    stream = "bad-" + re.sub(r"\W", "-", case)
    post = lambda s: httpx.post(
        f"{server.url}/v1/streams/{stream}/samples", json=BAD_BODIES[case](s)
    )
    _check_rejected_changes_nothing(server.url, stream, post, 422, "validation")


@pytest.mark.parametrize("case", sorted(RAW_BODIES))
def test_bad_json_is_422_and_changes_nothing(server, case):
    stream = "raw-" + re.sub(r"\W", "-", case)

    def post(sample):
        text = RAW_BODIES[case].replace("T", repr(sample["time_s"]))
        headers = {"content-type": "application/json"}
        return httpx.post(
            f"{server.url}/v1/streams/{stream}/samples", content=text, headers=headers
        )

    _check_rejected_changes_nothing(server.url, stream, post, 422, "validation")


@pytest.mark.parametrize(
    ("case", "status"), [("repeated time", 409), ("older time", 409), ("unsorted batch", 422)]
)
def test_out_of_order_is_rejected_and_changes_nothing(server, case, status):
    stream = "order-" + case.replace(" ", "-")

    def post(sample):
        if case == "repeated time":
            body = [{**sample, "time_s": sample["time_s"] - 1}]
        elif case == "older time":
            body = [{**sample, "time_s": 0.5}]
        else:
            body = [
                sample,
                {**sample, "time_s": sample["time_s"] + 5},
                {**sample, "time_s": sample["time_s"] + 4},
            ]
        return httpx.post(f"{server.url}/v1/streams/{stream}/samples", json=body)

    _check_rejected_changes_nothing(server.url, stream, post, status, "out_of_order")


def test_oversized_bodies_are_413(server):
    def huge(sample):  # 400 kB limit, with and without Content-Length
        return httpx.post(
            f"{server.url}/v1/streams/big/samples",
            json=[{**sample, "time_s": sample["time_s"] + k} for k in range(6000)],
        )

    _check_rejected_changes_nothing(server.url, "big", huge, 413, "payload_too_large")

    def chunked():
        yield b"[" + b" " * (410 * 1024)
        yield b"]"

    response = httpx.post(f"{server.url}/v1/streams/big/samples", content=chunked())
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_bad_stream_id_and_unknown_stream(server):
    response = httpx.post(f"{server.url}/v1/streams/bad id!/samples", json=as_json(rows_of(2)))
    assert response.status_code == 422
    assert httpx.get(f"{server.url}/v1/streams/never-seen").status_code == 404
    assert httpx.get(f"{server.url}/v1/streams/never-seen").json()["error"] == "not_found"


def test_a_stream_id_with_a_trailing_newline_is_refused_everywhere(server):
    """``bad%0A`` passed the WebSocket id check (a regex ``$`` matches before a final newline)."""
    base, body = f"{server.url}/v1/streams/bad%0A", as_json(rows_of(2))
    for response in (httpx.post(f"{base}/samples", json=body), httpx.get(base), httpx.delete(base)):
        assert response.status_code == 422 and response.json()["error"] == "validation"

    async def handshake():
        async with connect(base.replace("http", "ws")):
            pass

    with pytest.raises(InvalidStatus):
        asyncio.run(handshake())
    assert httpx.get(f"{server.url}/v1/streams?prefix=bad%0A").json()["count"] == 0


DEEP = {"list": "[" * 20_000 + "]" * 20_000, "object": '{"a":' * 20_000 + "1" + "}" * 20_000}


@pytest.mark.parametrize("shape", sorted(DEEP))
def test_deeply_nested_json_gets_an_error_and_the_connection_stays(server, shape):
    rows, est = rows_of(4), CoulombEstimator()

    async def talk() -> list[float]:
        out = []
        async with connect(server.url.replace("http", "ws") + f"/v1/streams/deep-{shape}") as ws:
            for k, row in enumerate(as_json(rows)):
                if k == 2:
                    await ws.send(DEEP[shape])
                    answer = json.loads(await ws.recv())
                    assert answer["status"] == 422 and "nests too deeply" in answer["reason"]
                await ws.send(json.dumps(row))
                out.append(json.loads(await ws.recv())["soc"])
        return out

    assert asyncio.run(talk()) == est.predict(rows).tolist()
    response = httpx.post(
        f"{server.url}/v1/streams/deep-http/samples",
        content=DEEP[shape],
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert "nests too deeply" in response.json()["reason"]


def test_the_frameworks_own_refusals_have_the_error_shape_and_are_counted():
    with start() as srv:
        unknown = httpx.get(f"{srv.url}/no/such/path")
        asset = httpx.get(f"{srv.url}/static/missing.js")
        wrong_method = httpx.put(f"{srv.url}/v1/streams/x", json=[])
        unparsable = httpx.post(
            f"{srv.url}/v1/streams/x/samples",
            content=DEEP["list"],
            headers={"content-type": "application/json"},
        )
        metrics = httpx.get(f"{srv.url}/metrics").text
    for response, status, kind in [(unknown, 404, "not_found"), (asset, 404, "not_found"),
                                   (wrong_method, 405, "method_not_allowed"),
                                   (unparsable, 400, "bad_request")]:  # fmt: skip
        assert response.status_code == status
        body = response.json()
        assert set(body) == {"error", "reason"} and body["error"] == kind, body
        assert len(body["reason"]) > 10
    assert wrong_method.headers["allow"] == "DELETE, GET"  # every route on the path
    assert "DELETE, GET" in wrong_method.json()["reason"]
    for kind, count in [("not_found", 2), ("method_not_allowed", 1), ("bad_request", 1)]:
        assert f'bsoc_errors_total{{kind="{kind}"}} {count}' in metrics


def test_websocket_bad_messages_keep_the_connection_and_the_state(server):
    rows, est = rows_of(30), CoulombEstimator()
    good = as_json(rows)

    async def talk() -> list[float]:
        out = []
        async with connect(server.url.replace("http", "ws") + "/v1/streams/ws-bad") as ws:
            for row in good[:10]:
                await ws.send(json.dumps(row))
                out.append(json.loads(await ws.recv())["soc"])
            for bad in (
                "not json",
                json.dumps({**good[10], "voltage_v": "x"}),
                json.dumps({**good[10], "time_s": good[5]["time_s"]}),
                '{"time_s": 99, "voltage_v": NaN, "current_a": 0, "temperature_c": 20}',
                json.dumps([]),
            ):
                await ws.send(bad)
                answer = json.loads(await ws.recv())
                assert answer["status"] in (409, 422) and answer["reason"]
            for row in good[10:]:
                await ws.send(json.dumps(row))
                out.append(json.loads(await ws.recv())["soc"])
            await ws.send(b"\x00binary")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1003
        async with connect(server.url.replace("http", "ws") + "/v1/streams/ws-bad") as ws:
            await ws.send("[" + " " * (410 * 1024) + "]")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1009
        return out

    assert asyncio.run(talk()) == est.predict(rows).tolist()


def test_two_clients_on_one_stream_are_applied_in_arrival_order(server):
    """10 concurrent one-sample requests: accepted ones form an increasing sequence, the
    rest are 409 against the newer time, and the state equals predict over the accepted."""
    rows, est = rows_of(10), CoulombEstimator()
    url = f"{server.url}/v1/streams/shared/samples"

    async def race():
        async with httpx.AsyncClient() as a, httpx.AsyncClient() as b:
            return await asyncio.gather(
                *((a if k % 2 else b).post(url, json=as_json(rows[k : k + 1])) for k in range(10))
            )

    responses = asyncio.run(race())
    accepted = [k for k, r in enumerate(responses) if r.status_code == 200]
    assert all(r.status_code == 409 for r in responses if r.status_code != 200)
    status = httpx.get(f"{server.url}/v1/streams/shared?history=10").json()
    assert status["samples"] == len(accepted) >= 1
    assert status["history"]["time_s"] == sorted(status["history"]["time_s"])
    kept = rows[[int(t) - int(rows[0, 0]) for t in status["history"]["time_s"]]]
    assert status["history"]["soc"] == est.predict(kept).tolist()
    # identical batches from two clients: exactly one wins
    same = as_json(rows_of(5, seed=9))
    pair = asyncio.run(_two_posts(f"{server.url}/v1/streams/same/samples", same))
    assert sorted(r.status_code for r in pair) == [200, 409]


async def _two_posts(url, body):
    async with httpx.AsyncClient() as a, httpx.AsyncClient() as b:
        return await asyncio.gather(a.post(url, json=body), b.post(url, json=body))


@pytest.mark.parametrize("policy", ["reset", "flag"])
def test_gap_policy(policy):
    rows, est = rows_of(20), CoulombEstimator()
    late = rows[10:].copy()
    late[:, 0] += 500.0  # 500 s silence, limit 60 s
    with start(gap_limit_s=60.0, gap_policy=policy) as srv:
        url = f"{srv.url}/v1/streams/gappy/samples"
        first = socs(httpx.post(url, json=as_json(rows[:10])))
        response = httpx.post(url, json=as_json(late))
        assert [e["gap"] for e in response.json()["estimates"]] == [True] + [False] * 9
        second = socs(response)
        assert httpx.get(f"{srv.url}/v1/streams/gappy").json()["gaps"] == 1
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert first == est.predict(rows[:10]).tolist()
    expected = (
        est.predict(late) if policy == "reset" else est.predict(np.vstack([rows[:10], late]))[10:]
    )
    assert second == expected.tolist()
    assert "bsoc_gaps_total 1" in metrics


def test_delete_forgets_the_stream(server):
    rows, est = rows_of(10), CoulombEstimator()
    socs(httpx.post(f"{server.url}/v1/streams/gone/samples", json=as_json(rows)))
    assert httpx.delete(f"{server.url}/v1/streams/gone").json()["samples"] == 10
    assert httpx.get(f"{server.url}/v1/streams/gone").status_code == 404
    assert httpx.delete(f"{server.url}/v1/streams/gone").status_code == 404
    # it starts afresh, so old timestamps are fine again
    again = socs(httpx.post(f"{server.url}/v1/streams/gone/samples", json=as_json(rows[3:])))
    assert again == est.predict(rows[3:]).tolist()


def test_stream_limit_is_429_and_existing_streams_continue():
    rows = rows_of(4)
    with start(max_streams=2) as srv:
        for name in ("one", "two"):
            socs(httpx.post(f"{srv.url}/v1/streams/{name}/samples", json=as_json(rows[:2])))
        response = httpx.post(f"{srv.url}/v1/streams/three/samples", json=as_json(rows[:2]))
        assert response.status_code == 429 and response.json()["error"] == "too_many_streams"
        socs(httpx.post(f"{srv.url}/v1/streams/one/samples", json=as_json(rows[2:])))
        assert httpx.get(f"{srv.url}/v1/streams").json()["count"] == 2


def test_a_model_that_cannot_step_fails_at_start_not_on_the_first_request():
    class Broken(CoulombEstimator):
        def step_batch(self, samples, states):
            raise RuntimeError("kernel failed to load")

    with pytest.raises(RuntimeError, match="kernel failed to load"):
        create_app(Broken(), ServeConfig(), describe_model(Broken(), None))


def test_api_key_guards_writes_and_stream_reads(keyed):
    body, url = as_json(rows_of(3)), f"{keyed.url}/v1/streams/secret/samples"
    assert httpx.post(url, json=body).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer " + "x" * 24})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    assert (
        httpx.post(url, json=body[:1], headers={"Authorization": f"Bearer {KEY}"}).status_code
        == 200
    )
    assert httpx.post(url, json=body[1:2], headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{keyed.url}/v1/streams/secret").status_code == 401
    assert (
        httpx.get(f"{keyed.url}/v1/streams/secret", headers={"X-API-Key": KEY}).json()["samples"]
        == 2
    )
    assert httpx.delete(f"{keyed.url}/v1/streams/secret").status_code == 401
    for open_path in ("/healthz", "/metrics", "/"):
        assert httpx.get(keyed.url + open_path).status_code == 200
    assert 'bsoc_errors_total{kind="unauthorized"} 4' in httpx.get(f"{keyed.url}/metrics").text

    async def sockets():
        ws_url = keyed.url.replace("http", "ws") + "/v1/streams/secret"
        with pytest.raises(InvalidStatus):
            async with connect(ws_url):
                pass
        async with connect(ws_url, additional_headers={"X-API-Key": KEY}) as ws:
            await ws.send(json.dumps(body[2]))
            return json.loads(await ws.recv())

    assert "soc" in asyncio.run(sockets())


def test_the_key_from_a_file_guards_the_service_and_stays_out_of_ps(tmp_path):
    model = CoulombEstimator().save(tmp_path / "m")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")  # an editor's final newline is not part of the key
    body = as_json(rows_of(2))
    with ProcessServer("--model", str(model), "--no-snapshot", "--api-key-file",
                       str(key_file), env={"BSOC_API_KEY": ""}) as srv:  # fmt: skip
        url = f"{srv.url}/v1/streams/filed/samples"
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"X-API-Key": KEY}).status_code == 200
        command_line = Path(f"/proc/{srv.process.pid}/cmdline").read_bytes()
    assert KEY.encode() not in command_line


def test_api_key_sources_and_the_warning_for_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BSOC_API_KEY", "e" * 20)
    assert resolve_api_key(None) == "e" * 20
    (tmp_path / "key").write_text("f" * 20)
    assert resolve_api_key(None, tmp_path / "key") == "f" * 20  # the file wins over the env
    (tmp_path / "empty").write_text("\n")
    for option, key_file, message in [
        ("g" * 20, tmp_path / "key", "both --api-key and --api-key-file"),
        (None, tmp_path / "empty", "is empty"),
        (None, tmp_path / "missing", "cannot read the API key file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_api_key(option, key_file)
    shown = run_cli("serve", "--model", str(tmp_path / "none"), "--api-key", KEY)
    assert shown.returncode == 2 and "--api-key is visible" in shown.stderr
    assert "BSOC_API_KEY" in shown.stderr and "--api-key-file" in shown.stderr
    quiet = run_cli("serve", "--model", str(tmp_path / "none"), env={"BSOC_API_KEY": KEY})
    assert quiet.returncode == 2 and "visible" not in quiet.stderr


def test_serve_refuses_public_bind_without_key_and_short_keys(tmp_path):
    model = CoulombEstimator().save(tmp_path / "m")
    open_public = run_cli(
        "serve", "--model", str(model), "--host", "0.0.0.0", env={"BSOC_API_KEY": ""}
    )
    assert open_public.returncode == 2 and "without an API key" in open_public.stderr
    short = run_cli("serve", "--model", str(model), "--api-key", "short")
    assert short.returncode == 2 and "at least 16" in short.stderr


def test_metrics_are_prometheus_text_and_docs_match_the_contract(server):
    text = httpx.get(f"{server.url}/metrics").text
    sample_line = re.compile(
        r"^[a-z_]+(\{[a-z_]+=\"[^\"]*\"(,[a-z_]+=\"[^\"]*\")*\})? [-+0-9.e]+$|^[a-z_]+\{le=\"\+Inf\"\} \d+$"
    )
    for line in text.strip().splitlines():
        assert (
            line.startswith("# HELP ") or line.startswith("# TYPE ") or sample_line.match(line)
        ), line
    for name in ("bsoc_streams", "bsoc_samples_total", "bsoc_request_latency_seconds_bucket",
                 "bsoc_recent_samples_per_second", "bsoc_errors_total"):  # fmt: skip
        assert name in text
    spec = httpx.get(f"{server.url}/openapi.json").json()
    post = spec["paths"]["/v1/streams/{stream_id}/samples"]["post"]
    assert {"401", "409", "413", "422", "429"} <= set(post["responses"])
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "array" and body["maxItems"] == 3600
    assert set(spec["components"]["schemas"]["Sample"]["required"]) == set(SAMPLE_FIELDS)
    assert {"get", "delete"} <= set(spec["paths"]["/v1/streams/{stream_id}"])
    assert "/healthz" in spec["paths"] and "/metrics" in spec["paths"]
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200
    assert not re.search(r"""(src|href)=['"]https?://""", docs.text)  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in docs.text
        assert httpx.get(f"{server.url}/docs-assets/{asset}").status_code == 200


def test_sigterm_restart_continues_every_stream(tmp_path):
    model = CoulombEstimator().save(tmp_path / "m")
    snapshot = tmp_path / "state" / "streams.npz"
    args = ("--model", str(model), "--snapshot", str(snapshot), "--snapshot-interval", "0")
    cycles = {f"cell-{k}": rows_of(60, seed=k) for k in range(3)}
    est, served = CoulombEstimator(), {name: [] for name in cycles}
    first = ProcessServer(*args).start()
    try:
        for name, rows in cycles.items():
            served[name] += socs(
                httpx.post(f"{first.url}/v1/streams/{name}/samples", json=as_json(rows[:25]))
            )
        assert first.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    finally:
        first.__exit__()
    assert snapshot.is_file()
    with ProcessServer(*args) as second:
        assert httpx.get(f"{second.url}/v1/streams").json()["count"] == 3
        for name, rows in cycles.items():
            served[name] += socs(
                httpx.post(f"{second.url}/v1/streams/{name}/samples", json=as_json(rows[25:]))
            )
    for name, rows in cycles.items():
        assert served[name] == est.predict(rows).tolist()


def test_periodic_snapshot_survives_a_hard_kill(tmp_path):
    model = CoulombEstimator().save(tmp_path / "m")
    snapshot = tmp_path / "streams.npz"
    args = ("--model", str(model), "--snapshot", str(snapshot), "--snapshot-interval", "0.2")
    rows, est = rows_of(30), CoulombEstimator()
    with ProcessServer(*args) as first:
        before = socs(httpx.post(f"{first.url}/v1/streams/hard/samples", json=as_json(rows[:10])))
        # two more periodic snapshots: the second surely began after the samples were committed
        target = _snapshots(first.url) + 2
        while _snapshots(first.url) < target:
            time.sleep(0.05)
    # leaving the block SIGKILLs the process: no shutdown snapshot
    with ProcessServer(*args) as second:
        after = socs(httpx.post(f"{second.url}/v1/streams/hard/samples", json=as_json(rows[10:])))
    assert before + after == est.predict(rows).tolist()


def _snapshots(url: str) -> int:
    return int(re.search(r"bsoc_snapshots_total (\d+)", httpx.get(f"{url}/metrics").text).group(1))


def test_snapshot_of_another_model_is_refused(tmp_path):
    other = CoulombEstimator(capacity_ah=2.0, name="other")
    other_dir = other.save(tmp_path / "other")
    path = tmp_path / "s.npz"
    empty = {
        "stream_ids": np.array([], dtype=str), "states": np.zeros((0, 3)),
        "last_time_s": np.zeros(0), "samples": np.zeros(0, np.int64), "gaps": np.zeros(0, np.int64),
        "soc": np.zeros(0), "last_sample": np.zeros((0, 4)),
    }  # fmt: skip
    write_snapshot(path, empty, describe_model(other, other_dir))
    served = CoulombEstimator()
    with pytest.raises(ConfigError, match="not of the served model"):
        create_app(served, ServeConfig(snapshot_path=path), describe_model(served, tmp_path / "m"))


def test_replay_cli_reports_the_served_error(server, toy_dataset):
    from bsoc.data.dataset import Dataset

    result = run_cli(
        "replay", str(toy_dataset), "--url", server.url, "--streams", "3", "--rate", "0",
        "--batch", "50", "--prefix", "replay-test", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    test_cycles = Dataset.load(toy_dataset).split("test")
    planned = [test_cycles[i % len(test_cycles)] for i in range(3)]
    assert report["error_count"] == 0
    assert report["samples_ok"] == sum(len(c.frame) for c in planned)
    est = CoulombEstimator()
    errors = np.concatenate(
        [(est.predict(c.frame[list(SAMPLE_FIELDS)].to_numpy()) - c.soc()) * 100 for c in planned]
    )
    assert report["soc_error_pct"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-9)
    assert report["latency_ms"]["p99"] >= report["latency_ms"]["p50"] > 0
    listed = httpx.get(f"{server.url}/v1/streams?prefix=replay-test").json()
    assert listed["count"] == 3


def _replay(*args: str, env: dict[str, str] | None = None):
    return run_cli("replay", *args, "--rate", "0", "--batch", "200", "--json", env=env)


def test_replay_exits_2_with_one_line_when_nothing_can_get_through(keyed, toy_dataset):
    dead = f"http://127.0.0.1:{free_port()}"
    for url, key, message in [
        (dead, KEY, "no service answers at"),
        (keyed.url, "w" * 24, "refused the API key"),
        (keyed.url, "", "requires an API key"),
    ]:
        result = _replay(str(toy_dataset), "--url", url, env={"BSOC_API_KEY": key})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    listed = httpx.get(f"{keyed.url}/v1/streams?prefix=replay-", headers={"X-API-Key": KEY})
    assert listed.json()["count"] == 0


def test_replay_exits_nonzero_when_samples_fail_and_still_reports(server, toy_dataset):
    args = (str(toy_dataset), "--url", server.url, "--prefix", "replay-twice")
    assert _replay(*args).returncode == 0
    again = _replay(*args)  # the same streams and times again: every sample is out of order
    assert again.returncode == 1
    report = json.loads(again.stdout)
    assert report["samples_ok"] == 0
    assert report["errors"] == {"out_of_order": report["samples_sent"]}
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and f"accepted 0 of {report['samples_sent']}" in lines[0]
