"""Edge deployment figures of exported C libraries: instructions, flash, RAM, a Cortex-M4 run.

For each model folder, the deployment record that ``bsoc benchmark`` writes
(:mod:`bsoc.export.deployment`: the model exported as C, its host build checked against
Python, x86 instructions per ``bsoc_step`` by callgrind over the first
``--count-samples`` of the first test cycle, Cortex-M4F flash and RAM and Cortex-M4
instructions per step counted on QEMU over the same samples), plus the
Cortex-M4 build run on QEMU's MPS2 AN386 board over the first ``--qemu-samples`` of the
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

from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.export import measure
from bsoc.export.deployment import deployment_record


def table(rows: list[dict[str, Any]]) -> str:
    lines = [("| model | kind | weights [B] | MACs/step | x86 instr./step | M4 instr./step | "
              "M4 flash [B] | M4 RAM [B] | QEMU max abs diff (samples) |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m4 = r.get("cortex_m4", {})
        qemu = r.get("qemu")
        cells = [r["model"], r["kind"], f"{r['weight_bytes']:,}", f"{r['macs_per_step']:,}",
                 *(f"{r[key]:,}" if key in r else "-" for key in (
                     "x86_instructions_per_step", "cortex_m4_instructions_per_step")),
                 f"{m4['flash']:,}" if m4 else "-", f"{m4['ram']:,}" if m4 else "-",
                 f"{qemu['max_abs_diff']:.1e} ({qemu['samples']})" if qemu else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with a test split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count-samples", type=int, default=100)
    parser.add_argument("--qemu-samples", type=int, default=2000)
    args = parser.parse_args()
    for what in ("callgrind", "cortex-m4", "qemu"):
        missing = measure.missing_tools(what)
        if missing:
            print(f"skipping {what}: {', '.join(missing)} not installed (make edge-tools)")
    cycle = Dataset.load(args.data).split("test")[0]
    samples = cycle.samples()
    rows = []
    for model in args.models:
        estimator = load_estimator(model)
        record = deployment_record(model, estimator, samples, args.out / model.name,
                                   count_samples=args.count_samples,
                                   qemu_samples=args.qemu_samples)
        rows.append({"model": model.name, "kind": estimator.kind, **record})
    meta = {"data": str(args.data), "cycle": cycle.meta.name, "rows": rows}
    (args.out / "deployment.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"test cycle {cycle.meta.name} ({len(samples)} samples)\n{table(rows)}")


if __name__ == "__main__":
    main()
