"""Every registered model kind, as a real model folder, served by ``bsoc serve``.

The kinds come from the registry (``ESTIMATOR_CLASSES``), so a kind added later fails here
until it has a tiny model in ``TINY_MODELS``. Each is served as a subprocess on 127.0.0.1:
the served SOC (and its standard deviation, for a kind with one) must be exactly what stepping
the loaded estimator gives, over HTTP chunks and WebSocket messages alike, equal to the offline ``predict`` to 1e-6, and after a SIGTERM
a service restored from its snapshot (in this process, to save a second model load in a
subprocess) must continue each stream exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from stream_set import StreamSet
from websockets.asyncio.client import connect

from bsoc.estimator import ESTIMATOR_CLASSES, load_estimator
from bsoc.serve.app import create_app
from bsoc.serve.service import ServeConfig, describe_model
from conftest import make_toy_cycle
from test_serve_helpers import (
    COULOMB_KIND,
    CoulombEstimator,
    ProcessServer,
    ThreadServer,
    as_json,
    rows_of,
    socs,
)

torch = pytest.importorskip("torch")


def _tiny_network():
    from bsoc.nn.network import NetworkConfig, SocNetwork

    torch.manual_seed(1234)
    network = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    network.set_normalisation(np.array([3.7, -0.5, 15.0]), np.array([0.3, 0.6, 10.0]))
    return network.eval()


def _lstm(directory: Path) -> Path:
    from bsoc.nn.estimator import LstmSocEstimator

    return LstmSocEstimator(_tiny_network(), name="tiny-lstm").save(directory)


RANKS = {"lstm_1": (2, 5), "lstm_2": (5, 3)}


def _compressed(directory: Path, kind: str) -> Path:
    from bsoc.compress.goals import Goal, compress_network_using_projection
    from bsoc.compress.projection import NeuronPCA
    from bsoc.compress.svd import compress_network_using_svd
    from bsoc.nn.estimator import LstmSocEstimator

    network, goal = _tiny_network(), Goal(ranks=RANKS)
    if kind == "projected-lstm":
        cycles = [make_toy_cycle(f"pca{k}", seed=k, seconds=300) for k in range(2)]
        compressed, record = compress_network_using_projection(
            network, NeuronPCA().fit(network, cycles), goal
        )
    else:
        compressed, record = compress_network_using_svd(network, goal)
    estimator = LstmSocEstimator(
        compressed, kind=kind, name=f"tiny-{kind}", metadata={"compression": record.to_json()}
    )
    return estimator.save(directory)


def _ekf(directory: Path) -> Path:
    from bsoc.ekf.estimator import EkfSocEstimator
    from bsoc.ekf.filter import NoiseSettings
    from test_ekf_synthetic import true_tables

    noise = NoiseSettings(soc_std=1e-5, rc_std=1e-4, voltage_std=5e-3)
    return EkfSocEstimator(true_tables(), noise, name="tiny-ekf").save(directory)


def _fusion(directory: Path) -> Path:
    """The tiny LSTM inside the fusion filter with the synthetic ECM's voltage."""
    from bsoc.fusion.estimator import FusionSocEstimator
    from bsoc.fusion.filter import N_EXTRA_FEATURES
    from bsoc.fusion.noise import NoiseModel
    from bsoc.fusion.settings import FusionSettings
    from bsoc.nn.estimator import LstmSocEstimator
    from test_ekf_synthetic import true_tables

    coef = np.zeros(2 + N_EXTRA_FEATURES)
    coef[:2] = np.log(0.02**2)
    coef[3] = 1.5  # a larger error in the first minutes
    settings = FusionSettings(offset_std_c=0.01, voltage_factor=10.0)
    return FusionSocEstimator(LstmSocEstimator(_tiny_network()), NoiseModel((0.0, 25.0), coef),
                              settings, 0.5, ecm=true_tables(), voltage_std=[5e-3],
                              name="tiny-fusion").save(directory)


def _int8(directory: Path, kind: str, activations: str = "float32") -> Path:
    from bsoc.compress.quantize_model import quantize_model

    source = TINY_MODELS[kind](directory.with_name(f"{directory.name}-float"))
    quantize_model(source, directory, activations=activations)
    return directory


TINY_MODELS: dict[str, Callable[[Path], Path]] = {
    "lstm": _lstm,
    "projected-lstm": lambda d: _compressed(d, "projected-lstm"),
    "svd-lstm": lambda d: _compressed(d, "svd-lstm"),
    "lstm-int8": lambda d: _int8(d, "lstm"),
    "projected-lstm-int8": lambda d: _int8(d, "projected-lstm"),
    "svd-lstm-int8": lambda d: _int8(d, "svd-lstm"),
    "lstm-w8a16": lambda d: _int8(d, "lstm", "int16"),
    "projected-lstm-w8a16": lambda d: _int8(d, "projected-lstm", "int16"),
    "svd-lstm-w8a16": lambda d: _int8(d, "svd-lstm", "int16"),
    "ekf": _ekf,
    "fusion": _fusion,
    COULOMB_KIND: lambda d: CoulombEstimator().save(d),
}


async def _socket(url: str, stream: str, singles: np.ndarray, batch: np.ndarray) -> list[float]:
    """One message per sample of ``singles``, then ``batch`` as one list message."""
    out = []
    async with connect(url.replace("http", "ws") + f"/v1/streams/{stream}") as ws:
        for sample in as_json(singles):
            await ws.send(json.dumps(sample))
            answer = json.loads(await ws.recv())
            assert "soc" in answer, answer
            out.append(answer["soc"])
        if len(batch):
            await ws.send(json.dumps(as_json(batch)))
            answer = json.loads(await ws.recv())
            assert "estimates" in answer, answer
            out += [e["soc"] for e in answer["estimates"]]
    return out


@pytest.mark.parametrize("kind", sorted(ESTIMATOR_CLASSES))
def test_every_model_kind_serves_what_it_predicts_offline(kind: str, tmp_path: Path) -> None:
    build = TINY_MODELS.get(kind)
    assert build is not None, f"add a tiny {kind!r} model to TINY_MODELS so that it is served"
    model_dir = build(tmp_path / kind)
    rows = rows_of(160, seed=5, soc0=0.9)
    offline = load_estimator(model_dir)
    assert offline.kind == kind
    predicted = offline.predict(rows)
    stepper = StreamSet(offline)
    stepped, stepped_std = [], []
    for row in rows:
        stepped.append(stepper.step(row))
        std = offline.soc_std(stepper.states)
        stepped_std.append(None if std is None else float(std[0]))

    snapshot = tmp_path / "s.npz"
    first = ProcessServer("--model", str(model_dir), "--snapshot", str(snapshot)).start()
    try:
        health = httpx.get(f"{first.url}/healthz").json()
        assert health["model"]["kind"] == kind and health["status"] == "ok"
        served_http, served_std = [], []
        for lo, hi in [(0, 1), (1, 40), (40, len(rows))]:
            url = f"{first.url}/v1/streams/http/samples"
            response = httpx.post(url, json=as_json(rows[lo:hi]))
            served_http += socs(response)
            served_std += [e["soc_std"] for e in response.json()["estimates"]]
        status = httpx.get(f"{first.url}/v1/streams/http", params={"history": 5}).json()
        assert status["soc_std"] == stepped_std[-1]
        assert status["history"]["soc_std"] == (None if stepped_std[-1] is None
                                                else stepped_std[-5:])
        served_ws = asyncio.run(_socket(first.url, "ws", rows[:60], rows[60:80]))
        assert first.terminate() in (0, -15)  # SIGTERM: the shutdown snapshot
    finally:
        first.__exit__()
    restored = create_app(
        offline, ServeConfig(snapshot_path=snapshot), describe_model(offline, model_dir)
    )
    with ThreadServer(restored) as second:
        assert httpx.get(f"{second.url}/v1/streams/ws").json()["samples"] == 80
        served_ws += asyncio.run(_socket(second.url, "ws", rows[80:90], rows[90:]))

    assert served_http == stepped and served_ws == stepped
    assert served_std == stepped_std  # every kind with an uncertainty serves it
    assert (stepped_std[0] is not None) == (kind in ("ekf", "fusion"))
    np.testing.assert_allclose(served_http, predicted, rtol=0, atol=1e-6)
