"""A model's deployment record: its C library exported, built and measured with real tools.

``bsoc benchmark`` puts one record per exportable model into ``benchmark.json`` (and
``benchmarks/edge_deployment.py`` adds a QEMU run to it), so that a BMS engineer reads
what deploying the network costs next to its accuracy:

* ``weight_bytes`` and ``macs_per_step``: from the model, always there;
* ``c_check``: the host build (``cc -O2``) streamed over the first samples of a test cycle,
  its SOCs against the Python estimator's (max |difference|): the C computes the model;
* ``x86_instructions_per_step``: callgrind's count inside ``bsoc_step`` (repeatable);
* ``cortex_m4``: flash and RAM bytes of the Cortex-M4F build (``arm-none-eabi-size``);
* ``cortex_m4_instructions_per_step``: the Cortex-M4 build on QEMU's MPS2 AN386 board,
  instructions counted by QEMU's instruction clock (repeatable, like callgrind's);
* ``qemu``: the Cortex-M4 build run on QEMU over more samples, against Python.

A figure whose tool is absent is not estimated: its key is left out and ``not_measured``
says which tool was missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bsoc.estimator import SocEstimator
from bsoc.export import measure
from bsoc.export.write import export_model

CHECK_SAMPLES = 2000
COUNT_SAMPLES = 100  # instructions per step: x86 (callgrind) and Cortex-M4 (QEMU)


def exportable(estimator: SocEstimator) -> bool:
    """True for the models ``bsoc export`` takes (the LSTM kinds and their int8 versions)."""
    from bsoc.nn.network import SocNetwork

    return isinstance(getattr(estimator, "network", None), SocNetwork)


def _absent(tools: list[str]) -> str:
    return f"{', '.join(tools)} not installed (make edge-tools)"


def deployment_record(model: Path, estimator: SocEstimator, samples: np.ndarray, work: Path, *,
                      check_samples: int = CHECK_SAMPLES,
                      count_samples: int = COUNT_SAMPLES,
                      qemu_samples: int = 0) -> dict[str, Any]:
    """Export the model folder ``model`` (loaded as ``estimator``) as C into ``work`` and
    measure it over the first samples of ``samples`` (rows of one test cycle); no QEMU run
    unless ``qemu_samples`` > 0 (it takes minutes)."""
    folder = work / "c"
    export = export_model(model, folder, "c", force=True)
    record: dict[str, Any] = {
        "format": "c", "weights": export["weights"], "weight_bytes": export["weight_bytes"],
        "macs_per_step": export["macs_per_sample"], "state_bytes": 4 * export["state_size"],
        "instruction_count_samples": min(len(samples), count_samples)}
    not_measured: dict[str, str] = {}
    if missing := measure.missing_tools("host"):
        not_measured["c_check"] = _absent(missing)
    else:
        prefix = samples[:check_samples]
        soc, _ = measure.host_run(folder, prefix)
        record["c_check"] = {"samples": len(prefix), "max_abs_diff": float(
            np.abs(soc - estimator.predict(prefix)).max())}
    if missing := measure.missing_tools("callgrind"):
        not_measured["x86_instructions_per_step"] = _absent(missing)
    else:
        record["x86_instructions_per_step"] = round(
            measure.instructions_per_step(folder, samples[:count_samples]))
    if missing := measure.missing_tools("cortex-m4"):
        not_measured["cortex_m4"] = _absent(missing)
    else:
        record["cortex_m4"] = measure.cortex_m4_sizes(folder, export["state_size"])
        record["cortex_m4_flags"] = list(measure.CORTEX_M4_FLAGS)
    if missing := measure.missing_tools("qemu"):
        not_measured["cortex_m4_instructions_per_step"] = _absent(missing)
        if qemu_samples > 0:
            not_measured["qemu"] = _absent(missing)
    else:
        record["cortex_m4_instructions_per_step"] = round(
            measure.cortex_m4_instructions_per_step(folder, samples[:count_samples]))
        if qemu_samples > 0:
            prefix = samples[:qemu_samples]
            soc, _ = measure.qemu_run(folder, prefix)
            record["qemu"] = {"samples": len(prefix), "max_abs_diff": float(
                np.abs(soc - estimator.predict(prefix)).max())}
    record["compilers"] = measure.compiler_versions()
    record["not_measured"] = not_measured
    return record
