"""Figures of an ECM fit: measured vs modelled voltage per temperature, and the OCV tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bsoc.ekf.ecm import EcmTables


def write_fit_figures(
    tables: EcmTables, traces: list[dict[str, Any]], directory: str | Path
) -> list[Path]:
    """Write ``fit_voltage_<T>C.png`` per training temperature and ``ocv.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    written = []
    for trace in traces:
        error_mv = 1e3 * (trace["model_v"] - trace["measured_v"])
        hours = (trace["time_s"] - trace["time_s"][0]) / 3600.0
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=[3, 1])
        top.plot(hours, trace["measured_v"], lw=0.8, label="measured")
        top.plot(hours, trace["model_v"], lw=0.8, label="ECM (reference SOC)")
        top.set_ylabel("voltage (V)")
        top.set_title(
            f"{trace['cycle']} at {trace['ambient_c']:g} degC: "
            f"RMSE {np.sqrt(np.mean(error_mv**2)):.1f} mV"
        )
        top.legend(loc="upper right")
        bottom.plot(hours, error_mv, lw=0.6, color="tab:red")
        bottom.set_ylabel("model - measured (mV)")
        bottom.set_xlabel("time (h)")
        fig.tight_layout()
        path = directory / f"fit_voltage_{trace['ambient_c']:g}C.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for temperature, row in zip(tables.temperature_c, tables.ocv_v, strict=True):
        ax.plot(100 * tables.soc_grid, row, label=f"{temperature:.1f} degC")
    ax.set_xlabel("SOC (%)")
    ax.set_ylabel("OCV (V)")
    ax.set_title("Identified open-circuit voltage")
    ax.legend()
    fig.tight_layout()
    path = directory / "ocv.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
