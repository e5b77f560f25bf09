"""The one interface every SOC model exposes: LSTM, projected LSTM, SVD LSTM, EKF.

Benchmark, evaluation, report and service treat all models alike through it.

A *stream* is one cell's sequence of samples. Its whole memory (LSTM hidden and cell
states, or the EKF's state and covariance) is one flat vector, ``state``; many streams
are a 2-D array ``states`` (B, S). That makes batching many streams, snapshotting them
to disk and restoring them trivial and identical for every model kind.

Samples are rows ``[time_s, voltage_v, current_a, temperature_c]`` (``SAMPLE_FIELDS``),
physical units, discharge current negative. Each model normalises inputs itself.

A model with an uncertainty (the EKF, the fusion filter) also says how sure it is:
``soc_std(states)`` reads each stream's SOC standard deviation from its state, and
``predict_with_std`` returns it along a sequence; the others return None.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bsoc.errors import ModelFileError
from bsoc.lazy import registered
from bsoc.outputs import OutputKind, check_output, make_folder, write_output

SAMPLE_FIELDS: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# A model folder: config.json, the weights (neural models) or the fit figures (the EKF).
MODEL_OUTPUT = OutputKind("model", signature=CONFIG_FILE,
                          legacy_files=(CONFIG_FILE, WEIGHTS_FILE, "ocv.png", "fit_voltage_*C.png"),
                          legacy_mark="bsoc_version")

# kind -> "module:Class"; the class must provide ``load(directory) -> SocEstimator``.
# Imported lazily so that `bsoc --help` and the EKF never import torch.
ESTIMATOR_CLASSES: dict[str, str] = {
    "lstm": "bsoc.nn.estimator:LstmSocEstimator",
    "projected-lstm": "bsoc.nn.estimator:LstmSocEstimator",
    "svd-lstm": "bsoc.nn.estimator:LstmSocEstimator",
    # int8 weights (bsoc.compress.quantize), same network class and streaming path
    "lstm-int8": "bsoc.nn.estimator:LstmSocEstimator",
    "projected-lstm-int8": "bsoc.nn.estimator:LstmSocEstimator",
    "svd-lstm-int8": "bsoc.nn.estimator:LstmSocEstimator",
    # full integer: int8 weights, int16 activations (bsoc.compress.integer), the C's arithmetic
    "lstm-w8a16": "bsoc.compress.integer:IntegerLstmEstimator",
    "projected-lstm-w8a16": "bsoc.compress.integer:IntegerLstmEstimator",
    "svd-lstm-w8a16": "bsoc.compress.integer:IntegerLstmEstimator",
    "ekf": "bsoc.ekf.estimator:EkfSocEstimator",
    # an LSTM of any kind above inside a Kalman filter with coulomb counting
    "fusion": "bsoc.fusion.estimator:FusionSocEstimator",
}


class SocEstimator(ABC):
    """A SOC model usable offline (whole cycles) and online (sample by sample, many streams)."""

    kind: ClassVar[str]
    name: str = "model"

    @abstractmethod
    def initial_state(self) -> np.ndarray:
        """State vector (S,) of a new stream that knows nothing about the cell yet."""

    @abstractmethod
    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance B streams by one sample each.

        ``samples`` (B, 4) rows of ``SAMPLE_FIELDS``; ``states`` (B, S). Returns SOC (B,) as
        fractions and the new states (B, S). Never modifies its arguments, so a rejected
        request leaves every stream exactly as it was.
        """

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """SOC (T,) for one whole sequence (T, 4) started from ``initial_state()``.

        Default: step through the samples. Neural models override it with a batched
        forward pass that must agree with stepping (tested to 1e-5).
        """
        states = self.initial_state()[None, :]
        out = np.empty(len(samples), dtype=np.float64)
        for t in range(len(samples)):
            soc, states = self.step_batch(samples[t : t + 1], states)
            out[t] = soc[0]
        return out

    def predict_many(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`predict` of each sequence; neural models run them as one padded batch,
        which on a CPU costs little more than the longest sequence alone."""
        return [self.predict(samples) for samples in sequences]

    def soc_std(self, states: np.ndarray) -> np.ndarray | None:
        """Standard deviation (B,) of the SOC each stream's state holds (the estimate the
        last step returned), as a fraction; None for a model without an uncertainty."""
        return None

    @property
    def has_uncertainty(self) -> bool:
        return self.soc_std(self.initial_state()[None, :]) is not None

    def predict_with_std(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """SOC (T,) and its standard deviation (T,), or None without an uncertainty.

        Default: step through the samples and read :meth:`soc_std` after each step."""
        if not self.has_uncertainty:
            return self.predict(samples), None
        states = self.initial_state()[None, :]
        soc = np.empty(len(samples), dtype=np.float64)
        std = np.empty(len(samples), dtype=np.float64)
        for t in range(len(samples)):
            value, states = self.step_batch(samples[t : t + 1], states)
            soc[t], std[t] = value[0], self.soc_std(states)[0]
        return soc, std

    def predict_many_with_std(
        self, sequences: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`predict_with_std` of each sequence."""
        if not self.has_uncertainty:
            return [(soc, None) for soc in self.predict_many(sequences)]
        return [self.predict_with_std(samples) for samples in sequences]

    @abstractmethod
    def learnables(self) -> int:
        """Number of learnable parameters, counted as the article's Table 1 does."""

    @abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of the parameters as stored (float32; int8 values plus their scales for a
        quantised model)."""

    @abstractmethod
    def macs_per_sample(self) -> int:
        """Multiply-accumulates one streaming step costs (for the compute-limit comparison)."""

    def config(self) -> dict[str, Any]:
        """What ``config.json`` records: the kind, everything :meth:`load` needs besides the
        weights, and how the model was made."""
        raise NotImplementedError(f"{type(self).__name__} does not write model folders")

    def write_weights(self, path: Path) -> bool:
        """Write the model's tensors to ``path`` (safetensors, never pickle); False for a
        model whose ``config.json`` holds all it learned (the EKF)."""
        return False

    def write(self, folder: Path) -> list[Path]:
        """Write the model's files into the empty ``folder``, the one writer of every model
        folder: its weights, if it has any, and ``config.json``. Returns the paths."""
        weights = folder / WEIGHTS_FILE
        written = [weights] if self.write_weights(weights) else []
        config = folder / CONFIG_FILE
        config.write_text(json.dumps(self.config(), indent=2) + "\n")
        return [*written, config]

    def save(self, directory: str | Path, *, force: bool = False,
             extra: Callable[[Path], object] | None = None) -> Path:
        """Write the model folder (:meth:`write`, staged, then swapped in); refuse an
        existing model. ``force`` replaces only a model bsoc wrote (see :mod:`bsoc.outputs`).
        ``extra(folder)`` writes what the fit adds (its figures) into the same staged
        folder, so the model and its figures are replaced together.
        """
        with write_output(directory, MODEL_OUTPUT, force=force) as folder:
            self.write(Path(folder))
            if extra is not None:
                extra(Path(folder))
        return Path(directory)

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> SocEstimator:
        """Read a model folder written by :meth:`save`. Never unpickles."""


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(
            f"no model at {directory} (missing {CONFIG_FILE})",
            remedy="train one with 'bsoc train' or fit one with 'bsoc ekf fit'",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFileError(
            f"{path} is not valid JSON ({error.msg})", remedy="restore or re-create the model"
        ) from None


def load_estimator(directory: str | Path) -> SocEstimator:
    """Load any model folder by the ``kind`` recorded in its config."""
    kind = read_config(directory).get("kind")
    cls = registered(ESTIMATOR_CLASSES, kind, f"{directory} holds a model of unknown kind {kind!r}")
    return cls.load(directory)


def prepare_model_dir(
    directory: str | Path, *, force: bool, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Create a model folder, refusing early (before minutes of work) what ``save`` would refuse.

    Refused: an existing model without ``force``, a folder that is or holds one of the
    command's ``inputs``, a file (see :mod:`bsoc.outputs`).
    """
    check_output(directory, MODEL_OUTPUT, force=force, inputs=inputs)
    return make_folder(Path(directory))
