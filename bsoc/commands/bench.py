"""``bsoc benchmark`` and ``bsoc report``."""

from __future__ import annotations

from pathlib import Path

import typer

from bsoc.console import command_line, emit_json, err_console, out_console


def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset folder; its test split is used."),
    models: list[Path] = typer.Option(
        ..., "--models", help="Model folders to compare (repeat the option for each)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for benchmark.json and traces.npz."),
    split: str = typer.Option("test", help="Dataset split to measure on."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized speed runs (fewer repeats)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing benchmark.json."),
    json_output: bool = typer.Option(False, "--json", help="Print benchmark.json on stdout."),
) -> None:
    """Measure RMSE (three scenarios), size and speed of every model, side by side in one run."""
    from bsoc.bench.run import run_benchmark

    with err_console.status("benchmarking...") as status:
        result = run_benchmark(data, models, out, quick=quick, split=split, force=force,
                               command=command_line(), log=lambda m: status.update(m))
    if json_output:
        emit_json(result)
        return
    print_summary(result)
    out_console.print(f"wrote {out / 'benchmark.json'}")


def print_summary(result: dict) -> None:
    """The benchmark's summary table on the terminal."""
    from rich.table import Table

    from bsoc.bench.run import summary_table

    rows = summary_table(result)
    table = Table(title=f"{result['dataset']}: {result['cycles']} {result['split']} cycles "
                  f"(ratios vs {result['reference']})")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("model", "kind") else "right")
    for row in rows:
        table.add_row(*[_cell(v) for v in row.values()])
    out_console.print(table)


def report(
    benchmarks: list[Path] = typer.Argument(..., help="Benchmark folders (with benchmark.json)."),
    out: Path = typer.Option(..., "--out", help="Report folder, e.g. reports/<run>."),
    title: str = typer.Option("bsoc comparison report", help="Title of the report."),
    sweep: list[Path] = typer.Option(
        None, "--sweep", help="sweep.json of 'bsoc compress --sweep' for the Pareto figure, "
        "one per benchmark in order (default: a sweep.json beside each benchmark.json)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing report."),
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
