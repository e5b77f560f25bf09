"""Test support for the service: an honest small estimator and real servers on free ports.

``CoulombEstimator`` is a genuine SOC model (voltage-based first guess through the toy
cell's OCV curve, then coulomb counting), so served numbers can be checked exactly against
``predict``. Run as a script, this file is ``bsoc`` with that estimator registered:
``python tests/test_serve_helpers.py serve --model DIR ...`` (used for subprocess servers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bsoc.estimator import (
    CONFIG_FILE,
    ESTIMATOR_CLASSES,
    SAMPLE_FIELDS,
    SocEstimator,
    prepare_model_dir,
)

HERE = Path(__file__).resolve().parent
COULOMB_KIND = "test-coulomb"
ESTIMATOR_CLASSES.setdefault(COULOMB_KIND, "test_serve_helpers:CoulombEstimator")

_SOC_GRID = np.linspace(0.0, 1.0, 201)


def _toy_ocv(soc: np.ndarray) -> np.ndarray:
    from conftest import toy_ocv

    return toy_ocv(soc)


class CoulombEstimator(SocEstimator):
    """State [soc, last_time_s, started]: first sample inverts the OCV, then counts charge."""

    kind = COULOMB_KIND

    def __init__(self, capacity_ah: float = 0.5, name: str = "coulomb") -> None:
        self.capacity_ah, self.name = capacity_ah, name

    def initial_state(self) -> np.ndarray:
        return np.zeros(3)

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, v, i = samples[:, 0], samples[:, 1], samples[:, 2]
        guess = np.interp(v, _toy_ocv(_SOC_GRID), _SOC_GRID)
        counted = states[:, 0] + i * (t - states[:, 1]) / (3600.0 * self.capacity_ah)
        soc = np.clip(np.where(states[:, 2] > 0, counted, guess), 0.0, 1.0)
        return soc, np.stack([soc, t, np.ones_like(t)], axis=1)

    def learnables(self) -> int:
        return 1

    def weight_bytes(self) -> int:
        return 4

    def macs_per_sample(self) -> int:
        return 3

    def save(self, directory: str | Path, *, force: bool = False) -> Path:
        directory = prepare_model_dir(directory, force=force)
        config = {"kind": self.kind, "name": self.name, "capacity_ah": self.capacity_ah}
        (directory / CONFIG_FILE).write_text(json.dumps(config))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CoulombEstimator:
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
        return cls(capacity_ah=config["capacity_ah"], name=config["name"])


def rows_of(seconds: int = 120, seed: int = 3, soc0: float = 0.8) -> np.ndarray:
    """Samples (T, 4) of a toy drive cycle."""
    from conftest import make_toy_cycle

    frame = make_toy_cycle("t", seed=seed, seconds=seconds, soc0=soc0).frame
    return frame[list(SAMPLE_FIELDS)].to_numpy()


def as_json(rows: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(SAMPLE_FIELDS, map(float, r))) for r in rows]


def socs(response: httpx.Response) -> list[float]:
    """The SOC estimates of a POST that must have been accepted."""
    assert response.status_code == 200, response.text
    return [e["soc"] for e in response.json()["estimates"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no healthy server at {url}")


class ThreadServer:
    """uvicorn in a background thread (no signal handlers) serving one app on a free port."""

    def __init__(self, app, **uvicorn_options) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", **uvicorn_options
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until_healthy(self.url)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def child_pythonpath() -> str:
    """The tests' folder (for this module) ahead of the caller's PYTHONPATH, so that a child
    imports the same bsoc as the tests (a checkout other than the installed one, say)."""
    return os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)


class ProcessServer:
    """``bsoc serve`` (with the test estimator registered) as a real subprocess."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", "--port", str(self.port), *args]
        self.env = {**os.environ, "PYTHONPATH": child_pythonpath(), **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> ProcessServer:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__)), *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until_healthy(self.url, process=self.process)
        return self

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: uvicorn shuts down gracefully and the service snapshots."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0):
    """``bsoc ARGS`` with the test estimator registered; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(Path(__file__)), *args],
        env={**os.environ, "PYTHONPATH": child_pythonpath(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


if __name__ == "__main__":
    from bsoc.cli import main

    main(sys.argv[1:])
