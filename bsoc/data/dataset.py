"""A dataset on disk: one Parquet file per cycle plus ``manifest.json``.

The manifest records every cycle's metadata and split, how the data was made
(command, seed, resampling, conversions) and a content fingerprint, so models
trained on it can record exactly what they saw. Loading validates every cycle
again: a hand-edited file is caught here, not inside a training run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bsoc import __version__
from bsoc.data.readers.common import unreadable
from bsoc.data.schema import SPLITS, Cycle, CycleMeta, validate_frame
from bsoc.errors import DatasetNotFoundError, DataValidationError
from bsoc.outputs import OutputKind, write_output

MANIFEST = "manifest.json"
# 2: a cycle's kind of load is "load_kind" (format 1 called it "profile"; both load)
FORMAT_VERSION = 2
# A dataset gets a folder of its own: without --force, any file there refuses the write.
DATASET_OUTPUT = OutputKind("dataset", signature=MANIFEST,
                            legacy_files=(MANIFEST, "cycles/*.parquet"),
                            legacy_mark="bsoc_version", refuse_nonempty=True)


@dataclass
class Dataset:
    """Cycles plus provenance. ``provenance`` is free-form JSON describing how it was made."""

    name: str
    cycles: list[Cycle]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Cycle]:
        return iter(self.cycles)

    def __len__(self) -> int:
        return len(self.cycles)

    def split(self, name: str) -> list[Cycle]:
        if name not in SPLITS:
            raise DataValidationError(f"unknown split '{name}'", remedy=f"use one of {SPLITS}")
        return [c for c in self.cycles if c.meta.split == name]

    def fingerprint(self) -> str:
        """Content hash of all cycles' data and metadata (order-independent of dict keys)."""
        digest = hashlib.sha256()
        for cycle in sorted(self.cycles, key=lambda c: c.meta.name):
            digest.update(json.dumps(cycle.meta.to_dict(), sort_keys=True).encode())
            digest.update(pd.util.hash_pandas_object(cycle.frame, index=False).values.tobytes())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path, *, force: bool = False) -> Path:
        """Write the dataset; refuses a non-empty folder unless ``force``.

        ``force`` replaces only a dataset bsoc wrote there (see :mod:`bsoc.outputs`).
        """
        names = [c.meta.name for c in self.cycles]
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise DataValidationError(
                f"cycle names must be unique, repeated: {duplicated}",
                remedy="give each cycle its own name",
            )
        with write_output(directory, DATASET_OUTPUT, force=force) as folder:
            (folder / "cycles").mkdir()
            entries = []
            files = _unique_filenames([c.meta.name for c in self.cycles])
            for cycle, file in zip(self.cycles, files):
                relative = f"cycles/{file}.parquet"
                cycle.frame.to_parquet(folder / relative, index=False)
                entries.append({"file": relative, "rows": len(cycle.frame),
                                **cycle.meta.to_dict()})
            manifest = {
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "bsoc_version": __version__,
                "fingerprint": self.fingerprint(),
                "provenance": self.provenance,
                "cycles": entries,
            }
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        directory = Path(directory)
        manifest = _read_manifest(directory)
        cycles = []
        for entry in _cycle_entries(manifest, directory / MANIFEST):
            path = _cycle_path(directory, entry["file"])
            meta = CycleMeta.from_dict(entry)
            frame = validate_frame(
                _read_cycle(path), file=str(path), nominal_capacity_ah=meta.nominal_capacity_ah
            )
            cycles.append(Cycle(frame=frame, meta=meta))
        return cls(name=manifest["name"], cycles=cycles, provenance=manifest.get("provenance", {}))

    @staticmethod
    def manifest(directory: str | Path) -> dict[str, Any]:
        """The raw manifest (cheap: reads no cycle data)."""
        return _read_manifest(Path(directory))


# What every cycle entry of a manifest must hold for the cycle to be usable.
_ENTRY_TEXT = ("file", "name", "cell")
_ENTRY_NUMBERS = ("nominal_capacity_ah", "ambient_c")
_RESTORE = "restore the manifest or re-create the dataset"


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise DatasetNotFoundError(
            f"no dataset at {directory} (missing {MANIFEST})",
            remedy="create one with 'bsoc data simulate' or 'bsoc data ingest'",
        )
    try:  # bytes that are not UTF-8 become U+FFFD and so fail as JSON, or stay inside a string
        manifest = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        raise DataValidationError(
            f"manifest is not valid JSON ({error.msg} at line {error.lineno})",
            file=str(path),
            remedy=_RESTORE,
        ) from None
    if not isinstance(manifest, dict):
        raise DataValidationError(
            f"manifest is a JSON {type(manifest).__name__}, not an object", file=str(path),
            remedy=_RESTORE,
        )
    if not isinstance(manifest.get("name"), str):
        raise DataValidationError("manifest has no dataset name", file=str(path), remedy=_RESTORE)
    return manifest


def _cycle_entries(manifest: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The manifest's cycle entries, each checked for the fields loading relies on."""
    entries = manifest.get("cycles")
    if not isinstance(entries, list):
        raise DataValidationError(
            f"'cycles' is a JSON {type(entries).__name__}, not a list", file=str(path),
            remedy=_RESTORE,
        )
    for number, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise DataValidationError(
                f"cycle entry {number} {problem}", file=str(path), remedy=_RESTORE
            )
    return entries


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    for key in _ENTRY_TEXT:
        if not isinstance(entry.get(key), str):
            return f"has no text '{key}'"
    for key in _ENTRY_NUMBERS:
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"has no number '{key}'"
        if not math.isfinite(value):
            return f"has a '{key}' that is not finite"
    if not entry["nominal_capacity_ah"] > 0:
        return "has a 'nominal_capacity_ah' that is not positive"
    if entry.get("split", "train") not in SPLITS:
        return f"has split {entry.get('split')!r}, not one of {list(SPLITS)}"
    return None


def _cycle_path(directory: Path, relative: str) -> Path:
    path = directory / relative
    if not path.resolve().is_relative_to(directory.resolve()):
        raise DataValidationError(
            f"cycle file '{relative}' lies outside the dataset folder",
            file=str(directory / MANIFEST), remedy=_RESTORE,
        )
    if not path.is_file():
        raise DatasetNotFoundError(
            f"cycle file {path} listed in the manifest is missing",
            remedy="re-create the dataset",
        )
    return path


def _read_cycle(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # see bsoc.data.readers.common.unreadable
        raise unreadable("Parquet", str(path), error, "re-create the dataset") from None


def _safe_filename(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "cycle"


def _unique_filenames(names: list[str]) -> list[str]:
    """A file name per cycle name; names that differ only in characters a file name cannot
    hold ("a b", "a_b") or in case (on a case-insensitive disk) get numbered, never one
    file for two cycles (the manifest maps each cycle to its file)."""
    taken: set[str] = set()
    files = []
    for name in names:
        base = candidate = _safe_filename(name)
        number = 2
        while candidate.lower() in taken:
            candidate, number = f"{base}-{number}", number + 1
        taken.add(candidate.lower())
        files.append(candidate)
    return files
