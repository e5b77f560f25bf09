"""benchmarks/step_profile.py: the batched step's parts add up to the network's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark_scripts import load
from bsoc.compress.maps import ProjectedMap
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork


@pytest.fixture(scope="module")
def step_profile():
    return load("step_profile")


def _networks() -> dict[str, LstmSocEstimator]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dense = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    projected = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    for layer, attr, rank in (("lstm_1", "recurrent_map", 2), ("lstm_2", "input_map", 3)):
        old = getattr(getattr(projected, layer), attr)
        setattr(getattr(projected, layer), attr, ProjectedMap.from_arrays(
            rng.standard_normal((old.in_features, rank)),
            rng.standard_normal((old.out_features, rank))))
    return {"dense": LstmSocEstimator(dense),
            "projected": LstmSocEstimator(projected, kind="projected-lstm")}


def test_the_parts_add_up_to_the_networks_macs_and_every_part_is_timed(step_profile):
    models = _networks()
    result = step_profile.profile(models, block=32, rounds=1)
    for name, model in models.items():
        record = result["models"][name]
        parts = [row for row in record["parts"] if "macs_per_sample" in row]
        assert sum(row["macs_per_sample"] for row in parts) == model.macs_per_sample()
        assert all(row["ns_per_sample"] > 0 for row in parts)
        assert record["ceiling_samples_per_s"] == pytest.approx(
            record["cores"] * record["ceiling_samples_per_s_one_core"])
    names = [row["part"] for row in result["models"]["projected"]["parts"]]
    assert "layer 1 (16): recurrent inner product" in names
    assert "layer 2 (8): input inner product" in names
    assert not any("inner" in part for part in
                   [row["part"] for row in result["models"]["dense"]["parts"]])
    text = step_profile.markdown(result)
    assert "**projected** (" in text and "| whole step |" in text
