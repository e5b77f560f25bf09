"""Stream states on disk, so a restarted service continues every stream where it was.

One ``.npz`` file (plain arrays, loaded with ``allow_pickle=False``): stream ids, state
vectors, last sample time and counters, plus a JSON header naming the model it belongs to.
It is written to a temporary file and renamed, so a crash mid-write leaves the previous
snapshot intact. A snapshot made with another model (different fingerprint or state size)
is refused rather than fed to the wrong network; a damaged one (truncated, corrupt,
inconsistent arrays) is refused too, because starting empty over it would silently drop
every stream: only the user decides to set it aside (:func:`set_aside`). The same bytes
(:func:`encode_snapshot`, :func:`decode_snapshot`) are the fleet's partition checkpoints.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from bsoc import __version__
from bsoc.errors import ConfigError
from bsoc.serve.errors import InvalidStreamId
from bsoc.serve.schemas import check_stream_id

FORMAT_VERSION = 1
ARRAYS = ("stream_ids", "states", "last_time_s", "samples", "gaps", "soc", "last_sample")
DISCARD_FLAG = "--discard-bad-snapshot"


class DamagedSnapshotError(ConfigError):
    """A snapshot file exists but does not hold a readable, consistent set of stream states."""


def temporary_path(path: Path) -> Path:
    """Where this process writes a snapshot before renaming it over ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_own_temporary(candidate: Path, path: Path) -> bool:
    """True for the temporary name any bsoc process (any pid) uses for ``path``."""
    prefix, suffix, name = f".{path.name}.", ".tmp", candidate.name
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return False
    return re.fullmatch(r"[0-9]+", name[len(prefix) : -len(suffix)]) is not None


def encode_snapshot(arrays: dict[str, np.ndarray], model: dict, extra: dict | None = None) -> bytes:
    """The ``.npz`` bytes of ``arrays`` (from :meth:`StreamRegistry.export`) for ``model``.

    ``extra`` goes into the JSON header beside the model (the fleet records there which
    partition and log sequence a checkpoint holds).
    """
    header = {
        "format_version": FORMAT_VERSION,
        "bsoc_version": __version__,
        "written_unix_s": time.time(),
        "model": model,
        **(extra or {}),
    }
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(json.dumps(header)), **arrays)
    return buffer.getvalue()


def write_snapshot(path: str | Path, arrays: dict[str, np.ndarray], model: dict) -> Path:
    """Atomically write ``arrays`` (from :meth:`StreamRegistry.export`) for ``model``."""
    path = Path(path)
    data = encode_snapshot(arrays, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | Path) -> None:
    """Refuse, at start-up, a snapshot path that no periodic snapshot could be written to.

    Probes by writing (and removing) this process's own temporary file, the way every
    snapshot is written, so read-only mounts and full disks are caught too, as root as well.
    """
    path = Path(path)
    remedy = "give a --snapshot file path in a writable folder, or pass --no-snapshot"
    if path.exists() and not path.is_file():
        raise ConfigError(f"snapshot path {path} exists and is not a regular file", remedy=remedy)
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"cannot write snapshots to {path}: {blocking} is a file", remedy=remedy)
    probe = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"probe")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write snapshots to {path} ({error.strerror or error})", remedy=remedy
        ) from None


def remove_leftover_temporaries(path: str | Path) -> list[Path]:
    """Delete half-written snapshots that a killed bsoc left beside ``path`` (only bsoc's names)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    leftovers = [p for p in path.parent.iterdir() if is_own_temporary(p, path) and p.is_file()]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def set_aside(path: str | Path) -> Path:
    """Rename a damaged snapshot to ``<name>.damaged-<time>`` (never over an existing file)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    os.rename(path, target)
    return target


def read_snapshot(path: str | Path, model: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a snapshot written for ``model``; None when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except PermissionError as error:
        raise ConfigError(
            f"snapshot {path} cannot be read ({error.strerror})",
            remedy="let the service's user read it, or give another --snapshot path",
        ) from None
    return decode_snapshot(data, model, f"snapshot {path}", _damaged_remedy(path))[1]


def decode_snapshot(
    data: bytes, model: dict, source: str, damaged_remedy: str
) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of snapshot bytes made for ``model``, checked as :func:`read_snapshot`
    says; ``source`` names them in errors, ``damaged_remedy`` says what to do with bad ones."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
            header = json.loads(str(loaded["header"]))
            arrays = {name: loaded[name] for name in ARRAYS}
    except Exception as error:  # zipfile, zlib, numpy and json each raise their own kinds
        raise _damaged(source, f"{type(error).__name__}: {error}", damaged_remedy) from None
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise _damaged(source, f"format {version!r}, expected {FORMAT_VERSION}", damaged_remedy)
    saved = header.get("model") if isinstance(header.get("model"), dict) else {}
    if (
        saved.get("fingerprint") != model["fingerprint"]
        or saved.get("state_size") != model["state_size"]
    ):
        raise ConfigError(
            f"{source} holds states of model {saved.get('name')!r} "
            f"({saved.get('fingerprint')}), not of the served model {model['name']!r} "
            f"({model['fingerprint']})",
            remedy="serve the model the snapshot was made with, or give another --snapshot path",
        )
    problem = _inconsistency(arrays, model["state_size"])
    if problem is not None:
        raise _damaged(source, problem, damaged_remedy)
    return header, arrays


def _inconsistency(arrays: dict[str, np.ndarray], state_size: int) -> str | None:
    """What makes the arrays unusable as a set of streams, or None."""
    ids = arrays["stream_ids"]
    n = len(ids) if ids.ndim == 1 else -1
    shapes = {
        "stream_ids": (n,),
        "states": (n, state_size),
        "last_time_s": (n,),
        "samples": (n,),
        "gaps": (n,),
        "soc": (n,),
        "last_sample": (n, 4),
    }
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            return f"{name} has shape {arrays[name].shape}, expected {shape}"
    if ids.dtype.kind != "U" or len(set(ids.tolist())) != n:
        return "stream ids are not distinct strings"
    for name in ("states", "last_time_s", "soc", "last_sample"):
        if arrays[name].dtype.kind != "f" or not np.isfinite(arrays[name]).all():
            return f"{name} holds non-finite or non-float values"
    for name in ("samples", "gaps"):
        if arrays[name].dtype.kind != "i" or (arrays[name] < 0).any():
            return f"{name} holds negative or non-integer counts"
    try:
        for stream_id in ids.tolist():
            check_stream_id(stream_id)
    except InvalidStreamId as error:
        return error.message
    return None


def _damaged_remedy(path: Path) -> str:
    return (
        f"move it aside to start with no streams (or restore a good copy), or restart "
        f"with {DISCARD_FLAG} to have bsoc rename it to {path.name}.damaged-<time> and start "
        "with no streams"
    )


def _damaged(source: str, problem: str, remedy: str) -> DamagedSnapshotError:
    return DamagedSnapshotError(f"{source} is damaged ({problem[:200]})", remedy=remedy)
