"""The README's fusion figure: SOC with its +-2 sigma band for chosen models of a benchmark.

    python benchmarks/fusion_figures.py reports/pan-fusion/benchmark \\
        --models lstm,ekf,fusion-ekf-lstm --out docs/figures/fusion-traces.png
"""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.report import figures
from bsoc.report.render import pick_cycles, load_benchmark


def main(
    benchmark: Path = typer.Argument(..., help="Benchmark folder (benchmark.json, traces.npz)."),
    models: str = typer.Option(..., help="Comma-separated model names, in plotting order."),
    out: Path = typer.Option(..., help="PNG to write."),
) -> None:
    bench, traces, _ = load_benchmark(benchmark)
    wanted = models.split(",")
    chosen = sorted((m for m in bench["models"] if m["name"] in wanted),
                    key=lambda m: wanted.index(m["name"]))
    figure = figures.soc_traces(chosen, traces, list(pick_cycles(bench)))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    typer.run(main)
