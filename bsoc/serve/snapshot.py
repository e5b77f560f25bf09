"""Stream states on disk, so a restarted service continues every stream where it was.

One ``.npz`` file (plain arrays, loaded with ``allow_pickle=False``): stream ids, state
vectors, last sample time and counters, plus a JSON header naming the model it belongs to.
It is written to a temporary file and renamed, so a crash mid-write leaves the previous
snapshot intact. A snapshot made with another model (different fingerprint or state size)
is refused rather than fed to the wrong network.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np

from bsoc import __version__
from bsoc.errors import ConfigError

FORMAT_VERSION = 1
ARRAYS = ("stream_ids", "states", "last_time_s", "samples", "gaps", "soc", "last_sample")


def write_snapshot(path: str | Path, arrays: dict[str, np.ndarray], model: dict) -> Path:
    """Atomically write ``arrays`` (from :meth:`StreamRegistry.export`) for ``model``."""
    path = Path(path)
    header = {
        "format_version": FORMAT_VERSION,
        "bsoc_version": __version__,
        "written_unix_s": time.time(),
        "model": model,
    }
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(json.dumps(header)), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def read_snapshot(path: str | Path, model: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a snapshot written for ``model``; None when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {name: data[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"snapshot {path} is unreadable ({error})",
            remedy="move it away to start with no streams, or restore a good copy",
        ) from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"snapshot {path} has format {header.get('format_version')}, expected {FORMAT_VERSION}",
            remedy="move it away to start with no streams",
        )
    saved = header.get("model", {})
    if (
        saved.get("fingerprint") != model["fingerprint"]
        or saved.get("state_size") != model["state_size"]
    ):
        raise ConfigError(
            f"snapshot {path} holds states of model {saved.get('name')!r} "
            f"({saved.get('fingerprint')}), not of the served model {model['name']!r} "
            f"({model['fingerprint']})",
            remedy="serve the model the snapshot was made with, or give another --snapshot path",
        )
    states = arrays["states"]
    if states.ndim != 2 or states.shape[1] != model["state_size"] or not np.isfinite(states).all():
        raise ConfigError(
            f"snapshot {path} has malformed states {states.shape}",
            remedy="move it away to start with no streams",
        )
    return arrays
