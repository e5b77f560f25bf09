"""``LstmSocEstimator``: a SOC network behind the common :class:`~bsoc.estimator.SocEstimator`.

One class serves every network variant (kind ``lstm``, ``projected-lstm``, ``svd-lstm`` and
their int8 versions ``<kind>-int8``): the network is rebuilt from the architecture recorded
in ``config.json`` (sizes and each weight map's spec), then its weights are read from
``model.safetensors`` (tensors only, never pickle).

* ``predict`` / ``predict_many``: whole sequences, many at once, through the batched
  compiled step (:meth:`~bsoc.nn.kernel.PackedNetwork.predict`: each map's thin factors as
  products over the sequences, one thread per core), so a compressed network's fewer
  multiply-accumulates are also fewer offline; tests hold it to the network's PyTorch
  forward pass.
* ``step_batch``: the compiled streaming path (:class:`~bsoc.nn.streaming.StreamingStepper`),
  state per stream ``concat(h_1, c_1, h_2, c_2)``, zero for a new stream, exactly as the
  network was trained to start.

The estimator snapshots the weights when it is made: after changing the network (e.g.
fine-tuning), make a new estimator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from bsoc import __version__
from bsoc.data.schema import FEATURE_COLUMNS
from bsoc.errors import BsocError, ModelFileError
from bsoc.estimator import (
    CONFIG_FILE,
    ESTIMATOR_CLASSES,
    WEIGHTS_FILE,
    SocEstimator,
    read_config,
)
from bsoc.nn.kernel import PackedNetwork
from bsoc.nn.network import SocNetwork
from bsoc.nn.streaming import StreamingStepper
from bsoc.outputs import save_tensors

# Padded samples one batched pass may hold (16 bytes each, in and out; no activations kept).
MAX_BATCH_SAMPLES = 2_000_000
# config.json keys this class writes itself; everything else is caller metadata.
_OWN_KEYS = ("kind", "name", "architecture", "normalisation", "learnables", "weight_bytes",
             "macs_per_sample", "bsoc_version")


class LstmSocEstimator(SocEstimator):
    """A trained :class:`SocNetwork` as a batch and streaming SOC estimator."""

    def __init__(
        self,
        network: SocNetwork,
        *,
        kind: str = "lstm",
        name: str = "lstm",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.network = network.eval()
        self.kind = kind
        self.name = name
        self.metadata = dict(metadata or {})
        self._stepper = self._make_stepper(self.network)

    def _make_stepper(self, network: SocNetwork) -> Any:
        """What steps and predicts the network: the compiled float kernels here; a
        full-integer model has its own arithmetic (:mod:`bsoc.compress.integer`)."""
        return StreamingStepper(network)

    def initial_state(self) -> np.ndarray:
        return np.zeros(self._stepper.state_size, dtype=np.float64)

    @property
    def packed(self) -> PackedNetwork:
        """The frozen weights the compiled streaming step runs on (a fusion model steps
        them inside its own compiled call)."""
        return self._stepper.packed

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        samples = np.ascontiguousarray(samples, dtype=np.float64)
        states = np.ascontiguousarray(states, dtype=np.float64)
        if samples.shape[1:] != (4,) or states.shape != (len(samples), self._stepper.state_size):
            raise BsocError(
                f"LSTM step needs samples (B, 4) and states (B, {self._stepper.state_size}), "
                f"got {samples.shape} and {states.shape}",
                remedy="pass one [time_s, voltage_v, current_a, temperature_c] row per stream",
            )
        return self._stepper.step(samples, states)

    def predict(self, samples: np.ndarray) -> np.ndarray:
        return self.predict_many([samples])[0]

    def predict_many(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """Passes over the sequences zero-padded at the end, which a causal network's
        outputs on the real samples never see; grouped by length so that a group holds at
        most ``MAX_BATCH_SAMPLES`` padded samples (a 40-hour test padded beside many short
        ones would mostly compute padding)."""
        for samples in sequences:
            if np.ndim(samples) != 2 or np.shape(samples)[1] != 4:
                raise BsocError(f"predict needs samples (T, 4), got {np.shape(samples)}",
                                remedy="pass rows of [time_s, voltage_v, current_a, "
                                "temperature_c]")
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
        out: dict[int, np.ndarray] = {}
        group: list[int] = []
        for k in [*order, None]:
            if group and (k is None or (len(group) + 1) * len(sequences[k]) > MAX_BATCH_SAMPLES):
                out.update(zip(group, self._forward([sequences[j] for j in group])))
                group = []
            if k is not None:
                group.append(k)
        return [out[k] for k in range(len(sequences))]

    def _forward(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        padded = np.zeros((len(sequences), max(len(s) for s in sequences), 4))
        for row, samples in zip(padded, sequences):
            row[: len(samples)] = samples
        soc = self._stepper.predict(padded)  # (N, T_max)
        return [soc[n, : len(s)] for n, s in enumerate(sequences)]

    def learnables(self) -> int:
        return self.network.learnables()

    def weight_bytes(self) -> int:
        return self.network.weight_bytes()

    def macs_per_sample(self) -> int:
        return self.network.macs_per_sample()

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "architecture": self.network.architecture(),
            "normalisation": {
                "features": list(FEATURE_COLUMNS),
                "mean": self.network.input_mean.tolist(),
                "std": self.network.input_std.tolist(),
            },
            "learnables": self.learnables(),
            "weight_bytes": self.weight_bytes(),
            "macs_per_sample": self.macs_per_sample(),
            "bsoc_version": __version__,
            **self.metadata,
        }

    @classmethod
    def load(cls, directory: str | Path) -> LstmSocEstimator:
        directory = Path(directory)
        config = read_config(directory)
        return cls.from_config(config, directory / WEIGHTS_FILE,
                               default_name=directory.name, where=directory)

    @classmethod
    def from_config(cls, config: dict[str, Any], weights_path: Path, *, default_name: str,
                    where: Path) -> LstmSocEstimator:
        """The network a ``config`` (as :meth:`config` writes it) and its weights file
        describe; ``where`` names the model in errors (a fusion model embeds one)."""
        kind = config.get("kind")
        if ESTIMATOR_CLASSES.get(str(kind)) != f"{cls.__module__}:{cls.__qualname__}":
            raise ModelFileError(
                f"{where} holds a {kind!r} model, not a neural network",
                remedy="load it with bsoc.estimator.load_estimator",
            )
        if "architecture" not in config:
            raise ModelFileError(f"{where / CONFIG_FILE} has no 'architecture'",
                                 remedy="re-create the model with 'bsoc train'")
        network = SocNetwork.from_architecture(config["architecture"])
        if not weights_path.is_file():
            raise ModelFileError(f"{weights_path} is missing",
                                 remedy="re-create the model with 'bsoc train'")
        try:
            network.load_state_dict(load_file(str(weights_path)), strict=True)
        except (RuntimeError, SafetensorError, OSError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise ModelFileError(
                f"{weights_path} does not match the architecture in {CONFIG_FILE} ({first_line})",
                remedy="re-create the model; do not mix files of different models",
            ) from None
        metadata = {k: v for k, v in config.items() if k not in _OWN_KEYS}
        return cls(network, kind=str(kind), name=str(config.get("name", default_name)),
                   metadata=metadata)

    def write_weights(self, path: Path) -> bool:
        """The network's tensors as safetensors (never pickle) at ``path``."""
        tensors = {k: v.detach().contiguous() for k, v in self.network.state_dict().items()}
        save_tensors(tensors, path, metadata={"format": "bsoc-soc-network"})
        return True
