"""Terminal output shared by all commands: messages on stderr, results on stdout.

Progress bars and messages go to stderr so that ``--json`` output on stdout stays
machine-readable when piped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

err_console = Console(stderr=True)
out_console = Console()


def progress(transient: bool = False) -> Progress:
    """A Rich progress bar on stderr with a free-text field for live metrics."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=transient,
    )


def training_progress(bar: Progress, task: Any) -> Callable[[dict[str, Any]], None]:
    """The ``on_step`` callback of :func:`bsoc.train.fit` that drives a progress bar."""

    def on_step(info: dict[str, Any]) -> None:
        bar.update(task, completed=info["step"], total=info["total_steps"],
                   info=f"epoch {info['epoch']} loss {100 * info['loss'] ** 0.5:.2f} % "
                        f"val {info['val_rmse_pct']:.2f} %")

    return on_step


def stage_progress(bar: Progress) -> Callable[[str, float], None]:
    """An ``on_progress(stage, fraction)`` callback that gives each stage its own bar."""
    tasks: dict[str, Any] = {}

    def on_progress(stage: str, fraction: float) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=100, info="")
        bar.update(tasks[stage], completed=round(100 * fraction))

    return on_progress


def emit_json(payload: Any) -> None:
    """Print one JSON document on stdout (nothing else goes to stdout with --json)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
