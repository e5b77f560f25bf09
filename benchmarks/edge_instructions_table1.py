"""Instructions per C step of a Table-1-size network, no training needed: the dense float LSTM
against its projected, full-integer (``-w8a16``) version, on x86 and the Cortex-M4.

Instruction counts depend on the shapes, not on the weights, so an untrained network of
Table 1's size (hidden (256, 128)) serves: its maps projected onto random orthonormal
bases of the ranks of ``make demo``'s projected model ((3, 16), (16, 12): 45,194
learnables), then quantised as ``bsoc quantize --activations int16`` does. Both are
exported as C and measured as ``bsoc benchmark`` measures
(:func:`bsoc.export.deployment.deployment_record`): callgrind inside ``bsoc_step`` on x86,
QEMU's instruction clock on the MPS2 AN386 Cortex-M4, over the first ``--count-samples``
of the dataset's first test cycle; plus Cortex-M4 flash and RAM, and the full-integer C's
SOCs against bsoc's reference (they must be equal).

    .venv/bin/python benchmarks/edge_instructions_table1.py --data data/panasonic --out /tmp/t1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bsoc.compress.integer import IntegerLstmEstimator
from bsoc.compress.projection import absorb
from bsoc.compress.quantize import quantize_network
from bsoc.data.dataset import Dataset
from bsoc.export import measure
from bsoc.export.deployment import deployment_record
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork

HIDDEN = (256, 128)
RANKS = {"lstm_1.input_map": 3, "lstm_1.recurrent_map": 16,
         "lstm_2.input_map": 16, "lstm_2.recurrent_map": 12}


def networks(samples: np.ndarray, seed: int = 0) -> tuple[SocNetwork, SocNetwork]:
    """An untrained Table-1-size network (normalised on ``samples``) and its projection."""
    torch.manual_seed(seed)
    dense = SocNetwork(NetworkConfig(hidden_sizes=HIDDEN))
    dense.set_normalisation(samples[:, 1:4].mean(axis=0), samples[:, 1:4].std(axis=0))
    projected = SocNetwork(NetworkConfig(hidden_sizes=HIDDEN))
    projected.load_state_dict(dense.state_dict())
    rng = np.random.default_rng(seed)
    for address, layer_map in projected.weight_maps().items():
        if address in RANKS:
            weight = layer_map.dense_weight().detach().double().numpy()
            basis, _ = np.linalg.qr(rng.normal(size=(layer_map.in_features, RANKS[address])))
            projected.set_map(address, absorb(weight, basis))
    return dense.eval(), projected.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset with a test split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count-samples", type=int, default=100)
    args = parser.parse_args()
    cycle = Dataset.load(args.data).split("test")[0]
    samples = cycle.samples()
    dense, projected = networks(samples)
    models = {"lstm": LstmSocEstimator(dense, kind="lstm", name="lstm"),
              "projected-w8a16": IntegerLstmEstimator(quantize_network(projected),
                                                      kind="projected-lstm-w8a16",
                                                      name="projected-w8a16")}
    rows = {}
    for name, estimator in models.items():  # measured as bsoc benchmark measures a model
        folder = args.out / name / "model"
        estimator.save(folder, force=True)
        rows[name] = {"kind": estimator.kind, **deployment_record(
            folder, estimator, samples, args.out / name, count_samples=args.count_samples)}
    for row in rows.values():
        for key in ("x86_instructions_per_step", "cortex_m4_instructions_per_step"):
            if key in row and key in rows["lstm"]:
                row[key.replace("instructions_per_step", "ratio")] = rows["lstm"][key] / row[key]
    record = {"cycle": cycle.meta.name, "count_samples": min(len(samples), args.count_samples),
              "rows": rows, "compilers": measure.compiler_versions()}
    (args.out / "instructions.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
