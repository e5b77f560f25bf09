"""``FusionSocEstimator``: an LSTM of any kind inside the fusion filter, behind the common
SocEstimator interface (kind ``fusion``).

A stream's state is ``concat(LSTM state, filter state)`` (:mod:`bsoc.fusion.filter`), so
streams batch, snapshot and restore like any model's. One streaming step is one compiled
call: the LSTM's packed kernel, then the filter. ``predict`` runs the LSTM over the whole
sequence in one batched forward pass and the filter after it (equal to stepping within the
LSTM's own 1e-5); a sequence with samples the filter would skip (not finite, out of range,
time not increasing) is stepped instead, so both paths treat bad samples alike.

The model folder holds ``config.json`` (the LSTM's config embedded under ``lstm``, the noise
model, the settings, and the ECM's tables when the voltage is a measurement) and the LSTM's
weights as ``model.safetensors``: self-contained, and loading never unpickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bsoc import __version__
from bsoc.data.schema import MAX_CURRENT_C_RATE, VOLTAGE_RANGE_V
from bsoc.ekf.ecm import EcmTables
from bsoc.errors import BsocError, ConfigError, ModelFileError
from bsoc.estimator import CONFIG_FILE, WEIGHTS_FILE, SocEstimator, read_config
from bsoc.fusion import filter as kernel
from bsoc.fusion.noise import NoiseModel
from bsoc.fusion.settings import FusionSettings, pack_buffer
from bsoc.nn.estimator import LstmSocEstimator

_OWN_KEYS = ("kind", "name", "lstm", "capacity_ah", "noise", "settings", "ecm", "voltage_std",
             "learnables", "weight_bytes", "macs_per_sample", "bsoc_version")
# Hyperparameters the fit tunes (counted as learnables with the noise coefficients).
TUNED_SETTINGS = ("variance_scale", "bias_fraction", "bias_tau_s", "noise_tau_s",
                  "offset_std_c", "voltage_factor")
# ... and with the ECM: its slow voltage error and the RC voltages' start.
ECM_TUNED_SETTINGS = ("voltage_bias_std_v", "rc_std_v", "rc_load_fraction")


class FusionSocEstimator(SocEstimator):
    """Coulomb counting + current offset + the LSTM's SOC (+ the ECM's voltage) in one filter."""

    kind: ClassVar[str] = "fusion"

    def __init__(
        self,
        lstm: LstmSocEstimator,
        noise: NoiseModel,
        settings: FusionSettings,
        capacity_ah: float,
        *,
        ecm: EcmTables | None = None,
        voltage_std: Any = None,
        name: str = "fusion",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.lstm = lstm
        self.noise = noise
        self.settings = settings.validate()
        self.capacity_ah = float(capacity_ah)
        self.ecm = ecm
        self.voltage_std = None if ecm is None else np.asarray(voltage_std, np.float64).reshape(-1)
        if ecm is not None and len(self.voltage_std) not in (1, len(ecm.temperature_c)):
            raise ConfigError(f"{len(self.voltage_std)} voltage noise values for an ECM with "
                              f"{len(ecm.temperature_c)} temperatures",
                              remedy="give one, or one per table temperature")
        self.name = name
        self.metadata = dict(metadata or {})
        self.buffer = pack_buffer(
            self.settings, noise.coef, np.array(noise.knots_c), noise.constants, self.capacity_ah,
            ecm_block=None if ecm is None else ecm.block, voltage_std=self.voltage_std)
        self.n_states = int(self.buffer[kernel.N_STATES])
        self.lstm_size = len(lstm.initial_state())
        self.filter_size = kernel.state_size(self.n_states)
        packed = lstm.packed
        self._weights, self._layout = packed.weights, packed.layout

    def with_settings(self, settings: FusionSettings) -> FusionSocEstimator:
        """The same LSTM, noise model and ECM with other settings (for the tuning)."""
        return FusionSocEstimator(self.lstm, self.noise, settings, self.capacity_ah, ecm=self.ecm,
                                  voltage_std=self.voltage_std, name=self.name,
                                  metadata=self.metadata)

    # ----------------------------------------------------------------- streaming
    def initial_state(
        self, *, soc: float | None = None, soc_std: float | None = None,
        capacity_ah: float | None = None,
    ) -> np.ndarray:
        """A new stream; ``soc`` presets its SOC (std ``soc_std``, default the prior's),
        ``capacity_ah`` fixes this cell's capacity instead of the model's."""
        state = np.zeros(self.lstm_size + self.filter_size)
        filt = state[self.lstm_size:]
        memory = self.n_states + self.n_states**2
        if capacity_ah is not None:
            if not np.isfinite(capacity_ah) or capacity_ah <= 0:
                raise ConfigError(f"capacity {capacity_ah} Ah must be positive",
                                  remedy="give the cell's capacity")
            filt[memory + kernel.CAPACITY] = capacity_ah
        if soc is not None:
            std = self.settings.init_soc_std if soc_std is None else soc_std
            if not np.isfinite(soc) or not 0.0 <= soc <= 1.0 or not std > 0:
                raise ConfigError(f"initial SOC {soc} must be in [0, 1] with a positive std")
            filt[kernel.SOC] = soc
            filt[self.n_states] = std**2
            filt[memory + kernel.STATUS] = kernel.PRESET
        return state

    def _step(self, samples: np.ndarray, states: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        samples = np.ascontiguousarray(samples, dtype=np.float64)
        states = np.ascontiguousarray(states, dtype=np.float64)
        size = self.lstm_size + self.filter_size
        if samples.ndim != 2 or samples.shape[1] != 4 or states.shape != (len(samples), size):
            raise BsocError(
                f"fusion step needs samples (B, 4) and states (B, {size}), "
                f"got {samples.shape} and {states.shape}",
                remedy="pass one [time_s, voltage_v, current_a, temperature_c] row per stream",
            )
        soc, std = np.empty(len(samples)), np.empty(len(samples))
        new = np.empty(states.shape)
        kernel.fusion_step(samples, states, self._weights, self._layout, self.buffer, soc, std,
                           new)
        return soc, std, new

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        soc, _, new = self._step(samples, states)
        return soc, new

    def soc_std(self, states: np.ndarray) -> np.ndarray:
        """sqrt of each stream's SOC variance; a new stream's is its prior's."""
        filt = np.asarray(states, dtype=np.float64)[:, self.lstm_size:]
        status = filt[:, self.n_states + self.n_states**2 + kernel.STATUS]
        std = np.sqrt(np.maximum(filt[:, self.n_states], 0.0))
        return np.where(status == kernel.FRESH, self.settings.init_soc_std, std)

    # ------------------------------------------------------------- whole sequences
    def predict(self, samples: np.ndarray) -> np.ndarray:
        return self.predict_with_std(samples)[0]

    def predict_many(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        return [soc for soc, _ in self.predict_many_with_std(sequences)]

    def predict_with_std(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_many_with_std([samples])[0]

    def predict_many_with_std(
        self, sequences: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The LSTM over the clean sequences in one batch, then the filter along each."""
        sequences = [np.ascontiguousarray(s, dtype=np.float64) for s in sequences]
        for samples in sequences:
            if samples.ndim != 2 or samples.shape[1] != 4:
                raise BsocError(f"predict needs samples (T, 4), got {samples.shape}",
                                remedy="pass rows of [time_s, voltage_v, current_a, "
                                "temperature_c]")
        clean = [k for k, s in enumerate(sequences) if self._is_clean(s)]
        lstm_soc = dict(zip(clean, self.lstm.predict_many([sequences[k] for k in clean])))
        out = []
        for k, samples in enumerate(sequences):
            if k in lstm_soc:
                out.append(self.filter_outputs(samples, lstm_soc[k]))
            else:
                out.append(self._stepped(samples))
        return out

    def filter_outputs(self, samples: np.ndarray, lstm_soc: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The filter along a clean sequence from a new stream, given the LSTM's SOC there
        (the tuning runs many settings over one LSTM pass)."""
        soc, std = np.empty(len(samples)), np.empty(len(samples))
        kernel.filter_sequence(self.buffer, np.ascontiguousarray(samples, dtype=np.float64),
                               np.ascontiguousarray(lstm_soc, dtype=np.float64),
                               np.ones(len(samples), dtype=bool),
                               self.initial_state()[self.lstm_size:], soc, std)
        return soc, std

    def _is_clean(self, samples: np.ndarray) -> bool:
        """True when the filter would use every sample (so the batched LSTM pass is exact)."""
        if len(samples) == 0 or not np.isfinite(samples).all():
            return False
        return bool((np.diff(samples[:, 0]) > 0).all()
                    and (np.abs(samples[:, 2]) <= MAX_CURRENT_C_RATE * self.capacity_ah).all()
                    and (samples[:, 1] >= VOLTAGE_RANGE_V[0]).all()
                    and (samples[:, 1] <= VOLTAGE_RANGE_V[1]).all())

    def _stepped(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = self.initial_state()[None, :]
        soc, std = np.empty(len(samples)), np.empty(len(samples))
        for t in range(len(samples)):
            value, spread, states = self._step(samples[t : t + 1], states)
            soc[t], std[t] = value[0], spread[0]
        return soc, std

    # ------------------------------------------------------------------ size, files
    def _own_parameters(self) -> int:
        ecm = 0 if self.ecm is None else (self.ecm.n_parameters() + len(self.voltage_std)
                                          + len(ECM_TUNED_SETTINGS))
        return len(self.noise.coef) + len(TUNED_SETTINGS) + ecm

    def learnables(self) -> int:
        return self.lstm.learnables() + self._own_parameters()

    def weight_bytes(self) -> int:
        return self.lstm.weight_bytes() + 4 * self._own_parameters()

    def filter_operations(self) -> int:
        """Arithmetic of one filter step, counted off the loops of :mod:`bsoc.fusion.filter`:
        covariance prediction, one or two Joseph updates, the noise model's features and
        variance, and the ECM's two look-ups when the voltage is measured."""
        n, k = self.n_states, len(self.noise.coef)
        updates = 2 if self.ecm is not None else 1
        update = 2 * n**3 + 3 * n**2 + 4 * n
        lookups = 2 * 40 if self.ecm is not None else 0
        return 2 * n**3 + n + updates * update + 2 * k + 30 + lookups

    def macs_per_sample(self) -> int:
        return self.lstm.macs_per_sample() + self.filter_operations()

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "lstm": self.lstm.config(),
            "capacity_ah": self.capacity_ah,
            "noise": self.noise.to_json(),
            "settings": self.settings.to_json(),
            "ecm": None if self.ecm is None else self.ecm.to_json(),
            "voltage_std": None if self.voltage_std is None else self.voltage_std.tolist(),
            "learnables": self.learnables(),
            "weight_bytes": self.weight_bytes(),
            "macs_per_sample": self.macs_per_sample(),
            "bsoc_version": __version__,
            **self.metadata,
        }

    def write_weights(self, path: Path) -> bool:
        """The LSTM's weights: everything else the fusion learned is in ``config.json``."""
        return self.lstm.write_weights(path)

    @classmethod
    def load(cls, directory: str | Path) -> FusionSocEstimator:
        directory = Path(directory)
        config = read_config(directory)
        if config.get("kind") != cls.kind:
            raise ModelFileError(f"{directory} holds a {config.get('kind')!r} model, not a "
                                 "fusion model", remedy="load it with "
                                 "bsoc.estimator.load_estimator")
        try:
            lstm = LstmSocEstimator.from_config(config["lstm"], directory / WEIGHTS_FILE,
                                                default_name="lstm", where=directory)
            ecm = None if config.get("ecm") is None else EcmTables.from_json(config["ecm"])
            metadata = {k: v for k, v in config.items() if k not in _OWN_KEYS}
            return cls(lstm, NoiseModel.from_json(config["noise"]),
                       FusionSettings(**config["settings"]), float(config["capacity_ah"]),
                       ecm=ecm, voltage_std=config.get("voltage_std"),
                       name=str(config.get("name", directory.name)), metadata=metadata)
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, BsocError) as error:
            raise ModelFileError(f"{directory / CONFIG_FILE} is not a valid fusion config "
                                 f"({type(error).__name__}: {error})",
                                 remedy="re-create it with 'bsoc fuse'") from None
