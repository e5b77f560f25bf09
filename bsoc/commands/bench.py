"""``bsoc benchmark`` and ``bsoc report``."""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, out_console


def benchmark(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset folder; its test split is used."),
    models: list[Path] = typer.Option(
        ..., "--models", help="Model folders to compare (repeat the option for each)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for benchmark.json and traces.npz."),
    split: str = typer.Option("test", help="Dataset split to measure on."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized speed runs (fewer repeats)."),
    deployment: bool = typer.Option(True, "--deployment/--no-deployment", help="Export every "
                                    "network model as C and measure it: host build against "
                                    "Python, x86 instructions per step (valgrind), Cortex-M4 "
                                    "flash and RAM (arm-none-eabi-gcc); absent tools are "
                                    "recorded as not measured."),
    force: bool = typer.Option(False, "--force", help="Replace the benchmark bsoc wrote at "
                               "--out (other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print benchmark.json on stdout."),
) -> None:
    """Measure RMSE (three scenarios), size and speed of every model, side by side in one run."""
    from bsoc.bench.run import run_benchmark

    with err_console.status("benchmarking...") as status:
        result = run_benchmark(data, models, out, quick=quick, split=split,
                               deployment=deployment, force=force, command=running_command(ctx),
                               log=lambda m: status.update(m))
    if json_output:
        emit_json(result)
        return
    print_summary(result)
    out_console.print(f"wrote {out / 'benchmark.json'}")


def print_summary(result: dict) -> None:
    """The benchmark's summary table on the terminal.

    Model names and numbers are never cut short (``projected`` and ``projected-ft`` must
    stay apart on an 80-column terminal): every column gets the width of its widest value
    and header word, headers wrap at spaces, and only the kind folds when space runs out.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from bsoc.bench.run import summary_table

    rows = [{column: _cell(v) for column, v in row.items()} for row in summary_table(result)]
    columns = list(rows[0])
    widths = {column: max(*(len(row[column]) for row in rows), *map(len, column.split()))
              for column in columns}
    separators = len(columns) - 1
    gap = 2 if sum(widths.values()) + 2 * separators <= out_console.width else 1
    excess = sum(widths.values()) + gap * separators - out_console.width
    if excess > 0 and "kind" in widths:
        widths["kind"] = max(4, widths["kind"] - excess)
    table = Table(title=escape(f"{result['dataset']}: {result['cycles']} {result['split']} "
                               f"cycles (ratios vs {result['reference']})"),
                  box=box.SIMPLE_HEAD, padding=(0, gap - 1, 0, 0), pad_edge=False,
                  show_edge=False)
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "kind") else "right",
                         width=widths[column], overflow="fold")
    for row in rows:
        table.add_row(*(escape(text) for text in row.values()))
    out_console.print(table)


def report(
    benchmarks: list[Path] = typer.Argument(..., help="Benchmark folders (with benchmark.json)."),
    out: Path = typer.Option(..., "--out", help="Report folder, e.g. reports/<run>."),
    title: str = typer.Option("bsoc comparison report", help="Title of the report."),
    sweep: list[Path] = typer.Option(
        None, "--sweep", help="sweep.json of 'bsoc compress --sweep' for the Pareto figure, "
        "one per benchmark in order (default: a sweep.json beside each benchmark.json)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace the report bsoc wrote at --out "
                               "(other files there are kept)."),
    json_output: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
) -> None:
    """Write report.html (self-contained) and report.md with figures from benchmark results."""
    from bsoc.report.render import write_report

    html_path = write_report(benchmarks, out, title=title, sweeps=sweep, force=force)
    if json_output:
        emit_json({"html": html_path, "markdown": out / "report.md"})
    else:
        out_console.print(f"wrote {html_path} and {out / 'report.md'}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)
    app.command("report")(report)
