"""``bsoc data ingest`` (real data in, canonical dataset out) and ``bsoc data inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from bsoc.command_lines import running_command
from bsoc.console import emit_json, err_console, out_console, progress


def ingest(
    ctx: typer.Context,
    path: Path = typer.Argument(
        ..., help="A file, or a folder searched recursively for files of the format."
    ),
    fmt: str = typer.Option(
        ...,
        "--format",
        help="Source layout: panasonic (18650PF .mat), lg-hg2 (LG 18650HG2 CSV), csv or "
        "parquet (any table, with --column-map/--map-file).",
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (refused if not empty)."),
    rate: float = typer.Option(
        1.0, "--rate", help="Output sampling rate in Hz (charge-conserving resampling)."
    ),
    capacity: float | None = typer.Option(
        None,
        "--capacity",
        help="Capacity Q (Ah) for SOC = 1 + (charge since full)/Q (required for csv/parquet; "
        "default: see --soc-capacity). Panasonic's OCV test uses its own measured Q.",
        show_default=False,
    ),
    soc_capacity: str | None = typer.Option(
        None,
        "--soc-capacity",
        help="What Q is, unless --capacity gives it: nominal (2.9 panasonic, 3.0 lg-hg2), "
        "c20-25degC (the capacity the C/20 test nearest 25 degC measures; lg-hg2's default) "
        "or c20-each-temperature (each cycle's own temperature's C/20 capacity). Recorded "
        "in the manifest with the capacity of every C/20 test.",
        show_default=False,
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse a file without a usable SOC reference (no full charge in it or before "
        "it) instead of leaving it out of the folder with a note.",
    ),
    duplicate_times: str | None = typer.Option(
        None,
        "--duplicate-times",
        help="csv/parquet: equal time stamps are an error, or keep-last keeps the last "
        "record of each (a tester's step-end record; counted and recorded). lg-hg2 and "
        "panasonic always keep the last.",
        show_default=False,
    ),
    trim_rest: bool = typer.Option(
        True,
        "--trim-rest/--keep-rest",
        help="Drop the rest before the first current (cooling soak), keeping one rest sample.",
    ),
    test_pattern: str | None = typer.Option(
        None,
        "--test-pattern",
        help="Regex on cycle names for the test split (default panasonic: 'UDDS|LA92', lg-hg2: "
        "'UDDS|LA92|US06').",
        show_default=False,
    ),
    val_pattern: str | None = typer.Option(
        None,
        "--val-pattern",
        help="Regex on cycle names for the val split (checked after test; default "
        "panasonic: 'HWFET|HWFTb|Cycle_4', lg-hg2: 'HWFET|HWFTb|Mixed8'). Everything else is "
        "train.",
        show_default=False,
    ),
    exclude_pattern: str | None = typer.Option(
        None,
        "--exclude-pattern",
        help="Regex on file paths below PATH to leave out (default panasonic: 'end_of_tests', "
        "the aged cell's capacity runs). Pass '' to keep every file.",
        show_default=False,
    ),
    column_map: str | None = typer.Option(
        None,
        "--column-map",
        help="csv/parquet: comma-separated canonical=source pairs for time_s, voltage_v, "
        "current_a, temperature_c and optionally soc and ah (amp-hour counter), e.g. "
        "time_s=Time,current_a=I.",
        show_default=False,
    ),
    units: str | None = typer.Option(
        None,
        "--units",
        help="Convert units: comma-separated quantity=unit among current=mA, voltage=mV, "
        "temperature=K|F, time=ms|min|h, soc=percent, ah=mAh. Only what is given is "
        "converted; each conversion is logged and recorded.",
        show_default=False,
    ),
    current_sign: str | None = typer.Option(
        None,
        "--current-sign",
        help="Sign convention of the source: discharge-negative (bsoc's, no change) or "
        "charge-negative (flipped on ingest); default discharge-negative.",
        show_default=False,
    ),
    map_file: Path | None = typer.Option(
        None,
        "--map-file",
        help="TOML file with tables columns and units, and keys current_sign, capacity_ah, cell, "
        "ambient_c "
        "(command-line options win).",
        show_default=False,
    ),
    cell: str | None = typer.Option(
        None, "--cell", help="Cell name for csv/parquet data.", show_default=False
    ),
    ambient: float | None = typer.Option(
        None,
        "--ambient",
        help="Ambient temperature (degC) for all cycles (default: from names like '25degC' "
        "or 'n10degC', else the first temperature sample).",
        show_default=False,
    ),
    max_gap: float = typer.Option(
        3600.0, "--max-gap", help="Seconds without samples after which a cycle is cut (logged)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Dataset name (default: the --out folder name).", show_default=False
    ),
    force: bool = typer.Option(False, "--force", help="Replace the dataset bsoc wrote at "
                               "--out (other files there are kept; never an input's folder)."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Turn real cell data (files or folders) into a validated bsoc dataset.

    Example: bsoc data ingest /data/panasonic-18650pf --format panasonic --out data/pan
    """
    from bsoc.data.dataset import DATASET_OUTPUT
    from bsoc.data.ingest import ingest as run_ingest
    from bsoc.data.ingest_options import IngestOptions, excluded_files
    from bsoc.data.inspect import split_names
    from bsoc.data.readers import find_files
    from bsoc.data.readers.mapping import (
        TableSpec,
        check_columns,
        check_sign,
        check_units,
        load_map_file,
        parse_pairs,
    )
    from bsoc.outputs import check_output

    check_output(out, DATASET_OUTPUT, force=force, inputs=[path, map_file])
    given = TableSpec(
        columns=check_columns(parse_pairs(column_map, "--column-map"), "--column-map"),
        units=check_units(parse_pairs(units, "--units"), "--units"),
        current_sign=check_sign(current_sign, "--current-sign"),
        cell=cell,
        capacity_ah=capacity,
        ambient_c=ambient,
    )
    spec = given.merged_over(load_map_file(map_file)) if map_file else given
    options = IngestOptions(
        fmt=fmt,
        rate_hz=rate,
        capacity_ah=spec.capacity_ah,
        trim_rest=trim_rest,
        test_pattern=test_pattern,
        val_pattern=val_pattern,
        exclude_pattern=exclude_pattern,
        spec=spec,
        max_gap_s=max_gap,
        soc_capacity=soc_capacity,
        strict=strict,
        duplicate_times=duplicate_times,
    )
    files = excluded_files(find_files(path, fmt), path, options)[0]
    with progress(transient=True) as bar:
        task = bar.add_task("ingest", total=len(files), info="")
        result = run_ingest(
            path,
            options,
            name=name or out.resolve().name,
            command=running_command(ctx),
            on_file=lambda f: bar.update(task, advance=1, info=escape(f.name)),
        )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    result.dataset.save(out, force=force)
    splits = split_names(result.dataset)
    for split, names in splits.items():
        if not names:
            err_console.print(
                f"[yellow]note:[/] no cycle in the {split} split (see --test-pattern/--val-pattern)"
            )
    summary: dict[str, Any] = {
        "out": str(out),
        "cycles": len(result.dataset),
        "fingerprint": result.dataset.fingerprint(),
        "seconds": round(result.seconds, 2),
        "splits": splits,
    }
    if json_output:
        emit_json(summary)
        return
    err_console.print(
        escape(f"wrote {out}: {len(result.dataset)} cycles from {len(files)} files in "
               f"{result.seconds:.1f} s (fingerprint {summary['fingerprint']})"),
        highlight=False, soft_wrap=True,
    )
    for split, names in splits.items():
        out_console.print(f"[bold]{split}[/] ({len(names)}): {escape(', '.join(names))}",
                          soft_wrap=True, highlight=False)


def inspect(
    dataset: Path = typer.Argument(..., help="Dataset folder (with manifest.json)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    no_figures: bool = typer.Option(
        False, "--no-figures", help="Skip the per-cycle PNGs and summary.json."
    ),
    out: Path = typer.Option(None, "--out", help="Folder for the per-cycle PNGs and "
                             "summary.json (default: DATASET/figures)."),
) -> None:
    """Summarise a dataset (one row per cycle) and draw V, I, T and SOC per cycle."""
    from rich import box
    from rich.table import Table

    from bsoc.data.dataset import Dataset
    from bsoc.data.inspect import FIGURES_DIR, figure_path, plot_cycle, summarise

    data = Dataset.load(dataset)
    rows = [summarise(cycle) for cycle in data]
    figures: list[str] = []
    out = out or Path(dataset) / FIGURES_DIR
    if not no_figures:
        with progress(transient=True) as bar:
            task = bar.add_task("figures", total=len(data), info="")
            for cycle in data:
                figures.append(str(plot_cycle(cycle, figure_path(out, cycle))))
                bar.update(task, advance=1, info=escape(cycle.meta.name))
    summary = {"dataset": str(dataset), "name": data.name, "cycles": rows, "figures": figures}
    if figures:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if json_output:
        emit_json(summary)
        return
    table = Table(
        title=escape(f"{data.name}: {len(data)} cycles ({dataset})"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="°C ambient, duration h:mm:ss, SOC % range, voltage range, peak |current| A",
    )
    for header in ("cycle", "split", "load", "°C", "duration", "SOC %", "V", "|I|"):
        left = header in ("cycle", "split", "load")
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    for row in rows:
        table.add_row(
            escape(row["cycle"]),
            row["split"],
            row["load_kind"] or "-",
            f"{row['ambient_c']:g}",
            _duration(row["duration_s"]),
            f"{100 * row['soc_min']:.0f}-{100 * row['soc_max']:.0f}",
            f"{row['voltage_min_v']:.2f}-{row['voltage_max_v']:.2f}",
            f"{row['current_abs_max_a']:.2f}",
        )
    out_console.print(table)
    if figures:
        err_console.print(escape(f"figures: {out} ({len(figures)} PNG, summary.json)"),
                          highlight=False)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def register(data_app: typer.Typer) -> None:
    """Add ``ingest`` and ``inspect`` to ``bsoc data``."""
    data_app.command("ingest")(ingest)
    data_app.command("inspect")(inspect)
