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
    # Claim the folder first: if the step fails half-way, the next run knows the partial
    # output is the pipeline's own (to redo), not a user's (to protect).
    _record(output, name, inputs, done=False)
    action()
    _record(output, name, inputs, done=True)
    return True


def _record(output: Path, name: str, inputs: dict[str, Any], *, done: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    record = {"step": name, "inputs_hash": inputs_hash(inputs) if done else None,
              "status": "done" if done else "started", "inputs": inputs}
    (output / STEP_FILE).write_text(json.dumps(record, indent=2, default=str))
