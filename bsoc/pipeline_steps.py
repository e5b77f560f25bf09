"""Up-to-date checks for the pipeline: skip a step whose output was made from the same inputs.

A step's *inputs* are a JSON-able description (parameters plus the content fingerprints of
the artefacts it reads). Its output folder records the hash of that description in
``.bsoc-step.json``; when the hash matches, the step is skipped. Any change upstream
changes a fingerprint, so everything downstream reruns: no stale model survives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEP_FILE = ".bsoc-step.json"


def fingerprint_path(path: Path) -> str:
    """Content hash of a file or of every file in a folder (names and bytes), ignoring step files."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name == STEP_FILE or "figures" in file.relative_to(path.parent).parts[:-1]:
            continue
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_up_to_date(output: Path, inputs: dict[str, Any]) -> bool:
    record = output / STEP_FILE
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()).get("inputs_hash") == inputs_hash(inputs)
    except json.JSONDecodeError:
        return False


def run_step(
    name: str,
    output: Path,
    inputs: dict[str, Any],
    action: Callable[[], None],
    log: Callable[[str], None],
) -> bool:
    """Run ``action`` unless ``output`` is up to date; returns True when it ran."""
    if is_up_to_date(output, inputs):
        log(f"[dim]{name}: up to date ({output})[/]")
        return False
    log(f"[bold]{name}[/] -> {output}")
    action()
    output.mkdir(parents=True, exist_ok=True)
    (output / STEP_FILE).write_text(
        json.dumps({"step": name, "inputs_hash": inputs_hash(inputs), "inputs": inputs}, indent=2,
                   default=str)
    )
    return True
