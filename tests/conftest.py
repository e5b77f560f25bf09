"""Shared fixtures.

``toy_dataset`` is a tiny, fast, deterministic dataset from a first-order equivalent
circuit (numpy only) so that model tests never wait for PyBaMM; the physics-based
simulated data has its own tests. ``panasonic_dir`` is the shared real data (``../shared`` beside
the checkout, or ``$BSOC_PANASONIC_DIR``), skipped when that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle, CycleMeta, coulomb_soc

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

PANASONIC_DIR = Path(
    os.environ.get(
        "BSOC_PANASONIC_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "panasonic-18650pf",
    )
)


@pytest.fixture(scope="session")
def panasonic_dir() -> Path:
    if not PANASONIC_DIR.is_dir():
        pytest.skip(f"real Panasonic data not present at {PANASONIC_DIR}")
    return PANASONIC_DIR


def toy_ocv(soc: np.ndarray) -> np.ndarray:
    """A smooth, monotonic Li-ion-like open-circuit voltage curve (V)."""
    soc = np.clip(soc, 0.0, 1.0)
    return 3.0 + 1.1 * soc + 0.12 * np.log((soc + 0.02) / (1.02 - soc)) * 0.3


def make_toy_cycle(
    name: str,
    *,
    seed: int,
    ambient_c: float = 25.0,
    seconds: int = 1200,
    soc0: float = 1.0,
    capacity_ah: float = 0.5,
    split: str = "train",
) -> Cycle:
    """A 1 Hz drive-like cycle on a small (0.5 Ah) toy cell so SOC moves a lot quickly."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds, dtype=np.float64)
    levels = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.3], size=seconds // 20 + 1) * capacity_ah
    current = np.repeat(levels, 20)[:seconds]
    soc = coulomb_soc(t, current, capacity_ah, soc0)
    keep = soc > 0.05
    t, current, soc = t[keep], current[keep], soc[keep]
    r0 = 0.05 * np.exp(0.03 * (25.0 - ambient_c))
    v_rc = np.zeros_like(current)
    for k in range(1, len(current)):
        v_rc[k] = v_rc[k - 1] * np.exp(-1 / 30.0) + 0.02 * current[k - 1] * (1 - np.exp(-1 / 30.0))
    voltage = toy_ocv(soc) + r0 * current + v_rc + rng.normal(0, 0.002, len(t))
    temperature = ambient_c + 0.5 * np.abs(current).cumsum() / len(t)
    frame = pd.DataFrame(
        {
            "time_s": t,
            "voltage_v": voltage,
            "current_a": current,
            "temperature_c": temperature,
            "soc": np.clip(soc, 0.0, 1.0),
        }
    )
    meta = CycleMeta(
        name=name,
        cell="toy-ecm",
        nominal_capacity_ah=capacity_ah,
        capacity_ah=capacity_ah,
        ambient_c=ambient_c,
        split=split,
        load_kind="toy-drive",
    )
    return Cycle(frame=frame, meta=meta)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saved toy dataset: 6 train, 2 val, 2 test cycles at three temperatures."""
    cycles = []
    for i in range(10):
        split = "train" if i < 6 else ("val" if i < 8 else "test")
        cycles.append(
            make_toy_cycle(
                f"toy_{i}",
                seed=i,
                ambient_c=(0.0, 10.0, 25.0)[i % 3],
                soc0=(1.0, 0.8, 0.6)[i % 3],
                split=split,
            )
        )
    directory = tmp_path_factory.mktemp("toy") / "dataset"
    Dataset(name="toy", cycles=cycles, provenance={"made_by": "tests/conftest.py"}).save(directory)
    return directory
