"""``EkfSocEstimator``: the EKF on an identified ECM behind the common SocEstimator interface.

A stream's state is the flat vector of :mod:`bsoc.ekf.filter` (``STATE_SIZE`` = 17 floats:
SOC, V1, V2, the 3x3 covariance, last time, last current, last temperature, capacity, status,
every one finite from the first), so streams batch, snapshot and restore like the LSTM's.
``dt`` comes from consecutive ``time_s`` of a stream. The model folder holds only
``config.json`` (tables as JSON lists) plus figures: loading never unpickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bsoc import __version__
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.filter import (
    FRESH,
    P_SLICE,
    STATE_SIZE,
    STATUS,
    InitSettings,
    NoiseSettings,
    init_array,
    new_state,
    noise_arrays,
    run_sequence,
    step_streams,
)
from bsoc.errors import BsocError, ModelFileError
from bsoc.estimator import CONFIG_FILE, SocEstimator, read_config

# Arithmetic of one streaming step (multiplies/adds, plus exp and divisions counted as one op
# each), read off ekf_step: two ECM look-ups (bilinear: 6 per fine/coarse quantity, 2 per
# per-temperature quantity, 3 exp, ~6 for weights), prediction (a_i, B u, F P F' + Q),
# update (h(x), P H', S, K, x, I - K H, two 3x3 products, K R K', symmetrisation, gating).
MACS_BREAKDOWN: dict[str, int] = {
    "lookup_previous_state": 2 * 6 + 3 * 6 + 3 * 2 + 3 + 6,
    "lookup_predicted_state": 2 * 6 + 3 * 6 + 3 * 2 + 3 + 6,
    "predict": 2 * 2 + 10 + 18 + 6,
    "update": 5 + 9 + 4 + 4 + 3 + 3 + 9 + 27 + 27 + 12 + 9,
}


class EkfSocEstimator(SocEstimator):
    """Extended Kalman filter on a two-RC Thevenin ECM (see :mod:`bsoc.ekf.filter`)."""

    kind: ClassVar[str] = "ekf"

    def __init__(
        self,
        tables: EcmTables,
        noise: NoiseSettings,
        init: InitSettings | None = None,
        *,
        name: str = "ekf",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.tables = tables
        self.noise = noise.validate(len(tables.temperature_c))
        self.init = (init or InitSettings()).validate()
        self.name = name
        self.metadata = dict(metadata or {})
        self._noise = noise_arrays(tables, self.noise, 1)
        self._rules = init_array(self.init, float(self.noise.gate_sigma))

    def initial_state(
        self,
        *,
        soc: float | None = None,
        soc_std: float | None = None,
        capacity_ah: float | None = None,
    ) -> np.ndarray:
        """A new stream. By default it initialises itself from its first sample.

        ``soc`` presets the initial SOC (std ``soc_std``, default the wide "unknown" std);
        ``capacity_ah`` fixes this cell's capacity instead of the model's capacity(T).
        """
        return new_state(
            soc=soc,
            soc_std=self.init.unknown_soc_std if soc_std is None else soc_std,
            rc_std=self.init.rc_std,
            capacity_ah=capacity_ah,
        )

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One sample per stream, one compiled call (:func:`bsoc.ekf.filter.step_streams`)."""
        samples = np.ascontiguousarray(samples, dtype=np.float64)
        states = np.ascontiguousarray(states, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[1] != 4 or states.shape != (len(samples), STATE_SIZE):
            raise BsocError(
                f"EKF step needs samples (B, 4) and states (B, {STATE_SIZE}), "
                f"got {samples.shape} and {states.shape}",
                remedy="pass one [time_s, voltage_v, current_a, temperature_c] row per stream",
            )
        soc, new = np.empty(len(samples)), np.empty(states.shape)
        step_streams(self.tables.block, *self._noise, self._rules, samples, states, soc, new)
        return soc, new

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """SOC along one sequence, the streaming step in one compiled loop (equal to it)."""
        return self.predict_with_std(samples)[0]

    def soc_std(self, states: np.ndarray) -> np.ndarray:
        """sqrt of each stream's SOC variance; a fresh stream's is the "unknown" std."""
        states = np.asarray(states, dtype=np.float64)
        std = np.sqrt(np.maximum(states[:, P_SLICE.start], 0.0))
        return np.where(states[:, STATUS] == FRESH, self.init.unknown_soc_std, std)

    def predict_with_std(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        samples = np.ascontiguousarray(samples, dtype=np.float64)
        soc, std = np.empty(len(samples)), np.empty(len(samples))
        run_sequence(self.tables.block, *self._noise, self._rules, samples, self.initial_state(),
                     soc, std)
        return soc, std

    def learnables(self) -> int:
        return self.tables.n_parameters()

    def weight_bytes(self) -> int:
        return 4 * self.learnables()

    def macs_per_sample(self) -> int:
        return int(sum(MACS_BREAKDOWN.values()))

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "ecm": self.tables.to_json(),
            "noise": self.noise.to_json(),
            "init": self.init.to_json(),
            "learnables": self.learnables(),
            "macs_per_sample": self.macs_per_sample(),
            "bsoc_version": __version__,
            **self.metadata,
        }

    @classmethod
    def load(cls, directory: str | Path) -> EkfSocEstimator:
        config = read_config(directory)
        if config.get("kind") != cls.kind:
            raise ModelFileError(
                f"{directory} holds a {config.get('kind')!r} model, not an EKF",
                remedy="load it with bsoc.estimator.load_estimator",
            )
        try:
            tables = EcmTables.from_json(config["ecm"])
            noise = NoiseSettings(**config["noise"])
            init = InitSettings(**config.get("init", {}))
            metadata = {
                k: v
                for k, v in config.items()
                if k
                not in (
                    "kind",
                    "name",
                    "ecm",
                    "noise",
                    "init",
                    "learnables",
                    "macs_per_sample",
                    "bsoc_version",
                )
            }
            return cls(tables, noise, init, name=config.get("name", "ekf"), metadata=metadata)
        except (KeyError, TypeError, BsocError) as error:
            raise ModelFileError(
                f"{Path(directory) / CONFIG_FILE} is not a valid EKF config ({error})",
                remedy="re-create it with 'bsoc ekf fit'",
            ) from None
