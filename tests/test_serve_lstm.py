"""A real (small, untrained, fixed-seed) LSTM model folder served by ``bsoc serve``.

The served SOC must be exactly what stepping the loaded estimator gives, and equal to the
offline batched ``predict`` to 1e-6, over HTTP chunks and WebSocket messages alike.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from bsoc.estimator import SAMPLE_FIELDS, StreamSet, load_estimator
from conftest import make_toy_cycle
from test_serve_helpers import ProcessServer

torch = pytest.importorskip("torch")
estimator_module = pytest.importorskip("bsoc.nn.estimator")


@pytest.fixture(scope="module")
def lstm_dir(tmp_path_factory):
    from bsoc.nn.network import NetworkConfig, SocNetwork

    torch.manual_seed(1234)
    network = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    network.set_normalisation(np.array([3.7, -0.5, 15.0]), np.array([0.3, 0.6, 10.0]))
    estimator = estimator_module.LstmSocEstimator(network, name="tiny-lstm")
    return estimator.save(tmp_path_factory.mktemp("lstm") / "tiny")


def test_served_lstm_equals_offline_estimator(lstm_dir, tmp_path):
    rows = make_toy_cycle("c", seed=5, seconds=200, soc0=0.9).frame[list(SAMPLE_FIELDS)].to_numpy()
    offline = load_estimator(lstm_dir)
    predicted = offline.predict(rows)
    stepper = StreamSet(offline)
    stepped = [stepper.step(row) for row in rows]
    samples = [dict(zip(SAMPLE_FIELDS, map(float, r))) for r in rows]

    with ProcessServer("--model", str(lstm_dir), "--snapshot", str(tmp_path / "s.npz")) as server:
        assert httpx.get(f"{server.url}/healthz").json()["model"]["kind"] == "lstm"
        served_http = []
        for lo, hi in [(0, 1), (1, 40), (40, len(rows))]:
            response = httpx.post(f"{server.url}/v1/streams/lstm-http/samples", json=samples[lo:hi])
            assert response.status_code == 200, response.text
            served_http += [e["soc"] for e in response.json()["estimates"]]

        async def socket() -> list[float]:
            from websockets.asyncio.client import connect

            out = []
            async with connect(server.url.replace("http", "ws") + "/v1/streams/lstm-ws") as ws:
                for sample in samples:
                    await ws.send(json.dumps(sample))
                    out.append(json.loads(await ws.recv())["soc"])
            return out

        served_ws = asyncio.run(socket())

    assert served_http == stepped and served_ws == stepped
    np.testing.assert_allclose(served_http, predicted, rtol=0, atol=1e-6)
