"""Edge deployment figures of exported C libraries: instructions, flash, RAM, a Cortex-M4 run.

For each model folder: export it as C (``bsoc export --format c``), then measure with
:mod:`bsoc.export.measure`

* x86 instructions per ``bsoc_step`` (callgrind, over the first ``--callgrind-samples`` of
  the first test cycle), next to the model's multiply-accumulates per step;
* Cortex-M4F flash (text + rodata + data) and RAM (data + bss + the cell's state);
* the Cortex-M4 build on QEMU's MPS2 AN386 board over the first ``--qemu-samples`` of the
  same cycle, its SOCs compared with the Python estimator's (max |difference|).

Prints a Markdown table and writes ``deployment.json`` into ``--out``.

    .venv/bin/python benchmarks/edge_deployment.py --data data/panasonic \\
        --models models/lstm models/projected models/projected-int8 --out /tmp/edge
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.export import measure
from bsoc.export.write import export_model


def measure_model(model: Path, out: Path, samples: np.ndarray, callgrind_samples: int,
                  qemu_samples: int) -> dict[str, Any]:
    estimator = load_estimator(model)
    folder = out / model.name
    record = export_model(model, folder, "c", force=True)
    row: dict[str, Any] = {"model": model.name, "kind": estimator.kind,
                           "weight_bytes": record["weight_bytes"],
                           "macs_per_step": record["macs_per_sample"]}
    if not measure.missing_tools("callgrind"):
        row["x86_instructions_per_step"] = round(
            measure.instructions_per_step(folder, samples[:callgrind_samples]))
    if not measure.missing_tools("cortex-m4"):
        row["cortex_m4"] = measure.cortex_m4_sizes(folder, record["state_size"])
    if not measure.missing_tools("qemu"):
        prefix = samples[:qemu_samples]
        soc, _ = measure.qemu_run(folder, prefix)
        row["qemu_samples"] = len(prefix)
        row["qemu_max_abs_diff"] = float(np.abs(soc - estimator.predict(prefix)).max())
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [("| model | kind | weights [B] | MACs/step | x86 instr./step | instr./MAC | "
              "M4 flash [B] | M4 RAM [B] | QEMU max abs diff (samples) |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        instructions = r.get("x86_instructions_per_step")
        per_mac = f"{instructions / r['macs_per_step']:.2f}" if instructions else "-"
        m4 = r.get("cortex_m4", {})
        qemu = (f"{r['qemu_max_abs_diff']:.1e} ({r['qemu_samples']})" if "qemu_samples" in r
                else "-")
        cells = [r["model"], r["kind"], f"{r['weight_bytes']:,}", f"{r['macs_per_step']:,}",
                 f"{instructions:,}" if instructions else "-", per_mac,
                 f"{m4['flash']:,}" if m4 else "-", f"{m4['ram']:,}" if m4 else "-", qemu]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with a test split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--callgrind-samples", type=int, default=100)
    parser.add_argument("--qemu-samples", type=int, default=2000)
    args = parser.parse_args()
    for what in ("callgrind", "cortex-m4", "qemu"):
        missing = measure.missing_tools(what)
        if missing:
            print(f"skipping {what}: {', '.join(missing)} not installed (make edge-tools)")
    cycle = Dataset.load(args.data).split("test")[0]
    samples = cycle.samples()
    rows = [measure_model(m, args.out, samples, args.callgrind_samples, args.qemu_samples)
            for m in args.models]
    meta = {"data": str(args.data), "cycle": cycle.meta.name, "rows": rows,
            "cortex_m4_flags": list(measure.CORTEX_M4_FLAGS)}
    (args.out / "deployment.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"test cycle {cycle.meta.name} ({len(samples)} samples)\n{table(rows)}")


if __name__ == "__main__":
    main()
