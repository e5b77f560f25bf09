"""Look at a dataset: one summary row per cycle, one figure per cycle.

The figure shows voltage, current, temperature and SOC against time on a shared axis,
which is where ingest mistakes show up at a glance (a flipped current sign makes SOC
rise during discharge; a missed unit makes an axis jump by 1000).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data.dataset import Dataset, _safe_filename
from bsoc.data.schema import Cycle

FIGURES_DIR = "figures"


def summarise(cycle: Cycle) -> dict[str, Any]:
    """Numbers a person checks first: duration, SOC/voltage ranges, peak current."""
    frame = cycle.frame
    return {
        "cycle": cycle.meta.name,
        "split": cycle.meta.split,
        "load_kind": cycle.meta.load_kind,
        "ambient_c": cycle.meta.ambient_c,
        "rows": len(frame),
        "duration_s": cycle.duration_s,
        "soc_start": float(frame["soc"].iloc[0]),
        "soc_min": float(frame["soc"].min()),
        "soc_max": float(frame["soc"].max()),
        "voltage_min_v": float(frame["voltage_v"].min()),
        "voltage_max_v": float(frame["voltage_v"].max()),
        "current_abs_max_a": float(np.abs(frame["current_a"]).max()),
        "temperature_min_c": float(frame["temperature_c"].min()),
        "temperature_max_c": float(frame["temperature_c"].max()),
    }


def plot_cycle(cycle: Cycle, path: Path) -> Path:
    """Write a PNG with V, I, T and SOC (percent) against time (hours or minutes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = cycle.frame
    hours = cycle.duration_s > 3 * 3600
    scale, unit = (3600.0, "h") if hours else (60.0, "min")
    t = frame["time_s"].to_numpy() / scale
    panels = (
        ("voltage_v", 1.0, "voltage (V)", "tab:blue"),
        ("current_a", 1.0, "current (A)\ndischarge < 0", "tab:red"),
        ("temperature_c", 1.0, "temperature (°C)", "tab:orange"),
        ("soc", 100.0, "SOC (%)", "tab:green"),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 8), sharex=True)
    for ax, (column, factor, label, colour) in zip(axes, panels, strict=True):
        ax.plot(t, frame[column].to_numpy() * factor, color=colour, linewidth=0.6)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].axhline(0.0, color="black", linewidth=0.5)
    axes[3].set_ylim(-2, 102)
    axes[-1].set_xlabel(f"time ({unit})")
    meta = cycle.meta
    fig.suptitle(
        f"{meta.name} — {meta.split}, {meta.load_kind or 'unknown load'}, "
        f"ambient {meta.ambient_c:g} °C, {meta.cell}, Q = {meta.capacity_ah or 0:.3f} Ah"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure_path(directory: Path, cycle: Cycle) -> Path:
    return Path(directory) / f"{_safe_filename(cycle.meta.name)}.png"


def split_names(dataset: Dataset) -> dict[str, list[str]]:
    """Cycle names per split, in dataset order."""
    return {
        split: [c.meta.name for c in dataset.cycles if c.meta.split == split]
        for split in ("train", "val", "test")
    }
