"""``bsoc export``'s job: a model folder in, an export folder out (ONNX graphs or C sources).

The folder holds the format's files and ``export.json``, which says what was exported and
how to feed it: the source model, its kind, the weight type, the state layout, the sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bsoc import __version__
from bsoc.errors import ConfigError
from bsoc.estimator import load_estimator
from bsoc.compress.arrays import NetworkArrays
from bsoc.lazy import import_target
from bsoc.outputs import OutputKind, check_output, write_output

EXPORT_FILE = "export.json"
EXPORT_OUTPUT = OutputKind("export", signature=EXPORT_FILE, legacy_files=(),
                           legacy_mark="bsoc_version")
# format -> "module:function" writing its files (imported lazily: onnx only when asked for)
FORMATS: dict[str, str] = {"onnx": "bsoc.export.onnx_graph:write_onnx",
                           "c": "bsoc.export.c_source:write_c"}


def check_export(out: Path, model: Path, fmt: str, *, force: bool) -> None:
    """Refuse a bad format or output before any work."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", remedy=f"use one of {sorted(FORMATS)}")
    check_output(out, EXPORT_OUTPUT, force=force, inputs=[model])


def export_model(model: Path, out: Path, fmt: str, *, force: bool = False,
                 command: str = "") -> dict[str, Any]:
    """Export the model folder ``model`` as ``fmt`` into ``out``; returns export.json's record."""
    check_export(out, model, fmt, force=force)
    estimator = load_estimator(model)
    arrays = NetworkArrays.of(estimator)
    record: dict[str, Any] = {
        "format": fmt, "model": str(model), "name": estimator.name, "kind": estimator.kind,
        "weights": "int8" if arrays.int8 else "float32",
        "activations": "int16" if arrays.int16_activations else "float32",
        "state_size": arrays.state_size,
        "state_layout": [f"{part}_{k}" for k in range(1, len(arrays.lstm) + 1)
                         for part in ("h", "c")],
        "hidden_sizes": [layer.hidden for layer in arrays.lstm],
        "learnables": estimator.learnables(), "weight_bytes": estimator.weight_bytes(),
        "macs_per_sample": estimator.macs_per_sample(),
        "command": command, "bsoc_version": __version__,
    }
    with write_output(out, EXPORT_OUTPUT, force=force) as folder:
        record["files"] = import_target(FORMATS[fmt])(arrays, folder, record)
        (folder / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
