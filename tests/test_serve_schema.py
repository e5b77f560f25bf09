"""Property-based fuzzing of the live service on 127.0.0.1: no input makes it fail.

HTTP: schemathesis generates requests from the service's own OpenAPI schema, valid and
invalid ones (wrong types, odd headers, binary bodies, ids with control characters), and
checks every answer against the schema: never a 5xx, only documented status codes, bodies
of the documented shape, the key enforced. Left out is the check that every schema-valid
request is accepted, because the service rightly refuses some (out-of-order times, which a
schema cannot express). WebSocket, which OpenAPI does not describe: any JSON value or text
as a message gets one answer frame, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from bsoc.serve.app import create_app
from bsoc.serve.service import ServeConfig, describe_model
from test_serve_helpers import CoulombEstimator, ThreadServer

KEY = "s" * 24
_ESTIMATOR = CoulombEstimator()
APP = create_app(_ESTIMATOR, ServeConfig(api_key=KEY), describe_model(_ESTIMATOR, None))
schema = schemathesis.openapi.from_dict(APP.openapi())
FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def live():
    with ThreadServer(APP) as server:
        assert httpx.get(f"{server.url}/openapi.json").json() == APP.openapi()  # what is fuzzed
        yield server


@schema.parametrize()
@FUZZ
def test_no_generated_request_makes_the_service_fail(case, live):
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {KEY}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
SAMPLE_LIKE = st.fixed_dictionaries(
    {k: st.floats() | st.integers() | st.text(max_size=3) | st.none()
     for k in ("time_s", "voltage_v", "current_a", "temperature_c")}
)  # fmt: skip
MESSAGES = (
    JSON_VALUES.map(lambda v: json.dumps(v))
    | SAMPLE_LIKE.map(lambda v: json.dumps(v))
    | st.lists(SAMPLE_LIKE, max_size=4).map(lambda v: json.dumps(v))
    | st.text(max_size=200)
    | st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)
)


def test_no_websocket_message_drops_the_connection(live):
    url = live.url.replace("http", "ws") + "/v1/streams/fuzzed"

    async def answer_all(messages: list[str]) -> list[dict]:
        answers = []
        async with connect(url, additional_headers={"X-API-Key": KEY}) as ws:
            for message in messages:
                await ws.send(message)
                answers.append(json.loads(await ws.recv()))
        return answers

    @given(st.lists(MESSAGES, min_size=1, max_size=8))
    @FUZZ
    def check(messages: list[str]) -> None:
        for answer in asyncio.run(answer_all(messages)):
            assert "soc" in answer or (400 <= answer["status"] < 500 and answer["reason"])

    check()
