"""Turn benchmark results into ``report.md`` and a self-contained ``report.html``.

Each benchmark (a folder with ``benchmark.json`` and ``traces.npz``, optionally
``sweep.json``) becomes one section. Figures are written beside the report as PNG
(for the Markdown) and embedded as base64 in the HTML, so the HTML file alone is
the whole report.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bsoc.errors import BsocError
from bsoc.outputs import OutputKind, check_output, write_output
from bsoc.report import figures
from bsoc.report.speed import speed_table

SCENARIOS = ("from_start", "cold_start", "degraded_sensors")
REPORT_FILE = "report.html"
# A run's report folder also holds that run's benchmark and sweep (the report's inputs):
# the report replaces only its own files there.
REPORT_OUTPUT = OutputKind("report", signature=REPORT_FILE,
                           legacy_files=(REPORT_FILE, "report.md", "figures/*.png"),
                           own_folder=False)


class ReportInputError(BsocError):
    """A benchmark folder given to the report is missing or incomplete."""

    exit_code = 2


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    table: list[list[str]]
    header: list[str]
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str, Figure]] = field(default_factory=list)  # (file, caption, fig)
    tables: list[Table] = field(default_factory=list)  # after the summary and its notes


def load_benchmark(
    directory: Path, sweep_path: Path | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict | None]:
    """A benchmark's JSON, its traces, and its sweep (given, or ``sweep.json`` beside it)."""
    path = directory / "benchmark.json" if directory.is_dir() else directory
    if not path.is_file():
        raise ReportInputError(
            f"no benchmark.json at {directory}", remedy="run 'bsoc benchmark' first"
        )
    bench = json.loads(path.read_text())
    traces_path = path.parent / bench.get("traces_file", "traces.npz")
    traces = dict(np.load(traces_path, allow_pickle=False)) if traces_path.is_file() else {}
    sweep_path = sweep_path or path.parent / "sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else None
    return bench, traces, sweep


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(bench: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models = bench["models"]
    reference = next((m for m in models if m["name"] == bench.get("reference")), models[0])
    header = [
        "model", "kind", "learnables", "weights [B]", "RMSE from start [%]",
        "RMSE cold start [%]", "RMSE degraded sensors [%]", "MAE [%]", "max |err| [%]",
        "cold-start re-acquired [s]", "cold-start converged [s]", "within ±2σ [%]",
        "step latency [µs]",
        "throughput [samples/s]", "size ratio", "latency ratio", "throughput ratio",
    ]
    rows = []
    for m in models:
        scenarios = m.get("scenarios", {})
        rows.append([
            m["name"], m["kind"], _fmt(m["learnables"]), _fmt(m["bytes"]),
            _fmt(m["rmse_pct"]),
            _fmt(scenarios.get("cold_start", {}).get("rmse_pct")),
            _fmt(scenarios.get("degraded_sensors", {}).get("rmse_pct")),
            _fmt(m["mae_pct"]), _fmt(m["max_abs_err_pct"]),
            _fmt(scenarios.get("cold_start", {}).get("reacquisition_s"), 0),
            _fmt(scenarios.get("cold_start", {}).get("convergence_s"), 0),
            _fmt(None if "calibration" not in m else 100 * m["calibration"]["within_2_sigma"], 1),
            _fmt(m["step_latency_us"], 1), _fmt(m["throughput_samples_per_s"]),
            f"{m['learnables'] / reference['learnables']:.3f}",
            f"{reference['step_latency_us'] / m['step_latency_us']:.1f}x",
            f"{m['throughput_samples_per_s'] / reference['throughput_samples_per_s']:.1f}x",
        ])
    return header, rows


def _measured(record: dict[str, Any], key: str, value: Any) -> str:
    """A deployment figure, or why it was not measured (never a guess)."""
    if value is not None:
        return _fmt(value)
    reason = record.get("not_measured", {}).get(key)
    return f"not measured: {reason}" if reason else "–"


_INSTRUCTIONS = (("x86_instructions_per_step", "x86"),
                 ("cortex_m4_instructions_per_step", "Cortex-M4"))


def deployment_table(bench: dict[str, Any]) -> Table | None:
    """Model, bytes, flash, RAM, instructions per step and RMSE of every exported model."""
    models = [m for m in bench["models"] if m.get("deployment")]
    if not models:
        return None
    reference = next((m for m in models if m["name"] == bench.get("reference")), None)
    header = ["model", "kind", "weights [B]", "MACs/step"]
    for _, target in _INSTRUCTIONS:
        header += [f"{target} instructions/step",
                   f"{target}: {reference['name']} / model" if reference else f"{target} ratio"]
    header += ["Cortex-M4 flash [B]", "Cortex-M4 RAM [B]", "C vs Python max |diff|",
               "RMSE from start [%]"]
    rows = []
    for m in models:
        record = m["deployment"]
        row = [m["name"], m["kind"], _fmt(record["weight_bytes"]), _fmt(record["macs_per_step"])]
        for key, _ in _INSTRUCTIONS:
            count = record.get(key)
            reference_count = reference["deployment"].get(key) if reference else None
            row += [_measured(record, key, count),
                    f"{reference_count / count:.1f}x" if count and reference_count else "–"]
        m4 = record.get("cortex_m4") or {}
        check = record.get("c_check")
        rows.append(row + [
            _measured(record, "cortex_m4", m4.get("flash")),
            _measured(record, "cortex_m4", m4.get("ram")),
            f"{check['max_abs_diff']:.1e} ({check['samples']:,} samples)" if check
            else _measured(record, "c_check", None),
            _fmt(m["rmse_pct"]),
        ])
    first = models[0]["deployment"]
    notes = [
        f"Each model exported with `bsoc export --format c` and measured on the test cycle "
        f"{bench.get('deployment_cycle', '?')}, instructions per bsoc_step call averaged over "
        f"its first {first.get('instruction_count_samples', '?')} samples: x86 counted by "
        "callgrind (host `cc -O2`), Cortex-M4 by QEMU's instruction clock on the MPS2 AN386 "
        "board. Cortex-M4F sections from arm-none-eabi-size "
        f"({' '.join(first.get('cortex_m4_flags', []))}): flash = text + rodata + data, "
        "RAM = data + bss + the cell's state. C vs Python: the host build against the "
        "estimator, SOC as a fraction.",
        "Compilers: " + "; ".join(first.get("compilers", {}).values()) + "."
        if first.get("compilers") else "No C compiler found.",
    ]
    return Table("Deployment: the exported C library", header, rows, notes)


def calibration_rows(bench: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Per model with an uncertainty and scenario: within +-1 / +-2 sigma per temperature."""
    models = [m for m in bench["models"] if "calibration" in m]
    if not models:
        return None
    temperatures = sorted({row["temperature_c"] for m in models
                           for row in m["calibration"]["by_temperature"]})
    header = ["model", "scenario", "all", *(f"{t:g} °C" for t in temperatures),
              "mean σ [%]"]
    rows = []
    for m in models:
        for scenario in SCENARIOS:
            result = m["scenarios"].get(scenario, {}).get("calibration")
            if result is None:
                continue
            by_t = {row["temperature_c"]: row for row in result["by_temperature"]}

            def cell(row: dict[str, Any] | None) -> str:
                if row is None or row["within_1_sigma"] is None:
                    return "–"
                return f"{100 * row['within_1_sigma']:.0f} / {100 * row['within_2_sigma']:.0f}"

            rows.append([m["name"], scenario, cell(result),
                         *(cell(by_t.get(t)) for t in temperatures),
                         _fmt(result["mean_std_pct"])])
    return header, rows


def pick_cycles(bench: dict[str, Any], limit: int = 4) -> dict[str, float]:
    """One test cycle per ambient temperature (coldest first), at most ``limit``."""
    by_temperature: dict[float, str] = {}
    for entry in bench["models"][0].get("by_condition", []):
        by_temperature.setdefault(float(entry["temperature_c"]), entry["cycle"])
    chosen = sorted(by_temperature.items())
    if len(chosen) > limit:
        picks = np.linspace(0, len(chosen) - 1, limit).round().astype(int)
        chosen = [chosen[i] for i in picks]
    return {cycle: temperature for temperature, cycle in chosen}


def build_section(directory: Path, sweep_path: Path | None = None) -> Section:
    bench, traces, sweep = load_benchmark(directory, sweep_path)
    header, rows = summary_rows(bench)
    machine = bench.get("machine", {})
    cold = bench.get("cold_start", {})
    band = bench.get("scenario_settings", {}).get("converged_below_pct", 5)
    title = f"{bench['dataset']} ({bench['cycles']} test cycles)"
    notes = [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} cores, "
        f"torch {machine.get('torch', '?')}, numpy {machine.get('numpy', '?')}, "
        f"{machine.get('torch_threads', '?')} torch threads.",
        "RMSE/MAE/max error in SOC percentage points. Cold start: the estimator starts from its "
        f"initial state {cold.get('start_fraction', 0.25):.0%} into each cycle; error counted "
        f"after {cold.get('convergence_s', '?')} s; re-acquired: the slowest cycle's first "
        f"sample within {band:g} points of the truth, converged: within them from then on to "
        "the end of the cycle. Degraded sensors: "
        + bench.get("degraded_sensors", {}).get("description", "see JSON") + ".",
        "Ratios are against " + str(bench.get("reference", bench["models"][0]["name"]))
        + ", measured interleaved in the same run; latency through the service's step interface.",
    ]
    if bench.get("command"):
        notes.append(f"Made by: `{bench['command']}`")
    section = Section(title=title, table=rows, header=header, notes=notes)
    deployment = deployment_table(bench)
    if deployment is not None:
        section.tables.append(deployment)
    calibrated = calibration_rows(bench)
    if calibrated is not None:
        section.tables.append(Table("Uncertainty calibration: % of samples whose true SOC "
                                    "lies within ±1σ / ±2σ of the estimate (targets 68 / 95)",
                                    *calibrated))
    speed = speed_table(bench)
    if speed is not None:
        section.tables.append(Table(*speed))
    slug = "".join(ch if ch.isalnum() else "-" for ch in bench["dataset"]).strip("-")
    models = bench["models"]
    if traces:
        picked = pick_cycles(bench)
        all_cycles = {e["cycle"]: float(e["temperature_c"])
                      for e in models[0].get("by_condition", [])}
        section.figures.append((f"{slug}-soc.png", "Estimated vs true SOC (from the first sample) "
                                "and error over time, one test cycle per temperature",
                                figures.soc_traces(models, traces, list(picked))))
        section.figures.append((f"{slug}-errors.png", "Error distribution per model and "
                                "temperature", figures.error_distributions(models, traces,
                                                                           all_cycles)))
    section.figures.append((f"{slug}-pareto.png", "Accuracy vs size: RMSE against learnables "
                            "and against bytes of weights (int8 models as diamonds)",
                            figures.pareto(models, sweep)))
    for m in models:
        layers = m.get("compression", {}).get("explained_variance")
        if layers:
            section.figures.append((f"{slug}-ev-{m['name']}.png",
                                    f"Explained variance per layer, ranks of {m['name']} marked",
                                    figures.explained_variance(layers)))
            break
    section.figures.append((f"{slug}-speed.png", "Speed: bsoc, ONNX Runtime and eager torch "
                            "side by side, latency, throughput and the fraction of the "
                            "machine's GEMM limit, with ratios",
                            figures.speed_bars(models, bench.get("reference", models[0]["name"]))))
    return section


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    return ('<table class="summary"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                      for row in rows) + "</tbody></table>")


def write_report(
    benchmarks: list[Path], out_dir: Path, *, title: str = "bsoc comparison report",
    sweeps: list[Path] | None = None, force: bool = False,
) -> Path:
    """Write report.md, report.html and figures/ into ``out_dir``; returns the HTML path.

    ``sweeps[i]`` is the compression sweep (sweep.json) of ``benchmarks[i]``, for its Pareto
    figure; without it, a ``sweep.json`` beside the benchmark is used if there is one.
    """
    sweeps = list(sweeps or [])
    if len(sweeps) > len(benchmarks):
        raise ReportInputError(f"{len(sweeps)} sweeps for {len(benchmarks)} benchmarks",
                               remedy="give at most one --sweep per benchmark, in order")
    for sweep in sweeps:
        if not Path(sweep).is_file():
            raise ReportInputError(f"sweep file {sweep} not found",
                                   remedy="run 'bsoc compress MODEL --sweep' first")
    check_output(out_dir, REPORT_OUTPUT, force=force, inputs=[*benchmarks, *sweeps])
    padded = sweeps + [None] * (len(benchmarks) - len(sweeps))
    sections = [build_section(Path(b), s and Path(s)) for b, s in zip(benchmarks, padded)]
    with write_output(out_dir, REPORT_OUTPUT, force=force) as folder:
        _write_files(folder, title, sections)
    return Path(out_dir) / REPORT_FILE


def _write_files(folder: Path, title: str, sections: list[Section]) -> None:
    """report.md, report.html and the figures' PNGs, into ``folder``."""
    (folder / "figures").mkdir()
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        tables = [(2, Table(section.title, section.header, section.table, section.notes)),
                  *((3, table) for table in section.tables)]
        for level, table in tables:
            md += [f"{'#' * level} {table.title}", "", _markdown_table(table.header, table.rows),
                   "", *(f"- {note}" for note in table.notes), ""]
            body += [f"<h{level}>{html.escape(table.title)}</h{level}>",
                     _html_table(table.header, table.rows),
                     "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
                     + "</ul>"]
        for file_name, caption, fig in section.figures:
            data = _png(fig)
            (folder / "figures" / file_name).write_bytes(data)
            md += [f"![{caption}](figures/{file_name})", "", f"*{caption}*", ""]
            encoded = base64.b64encode(data).decode()
            body.append(f'<figure><img alt="{html.escape(caption)}" '
                        f'src="data:image/png;base64,{encoded}"><figcaption>'
                        f"{html.escape(caption)}</figcaption></figure>")
            figures.plt.close(fig)
    (folder / "report.md").write_text("\n".join(md))
    (folder / REPORT_FILE).write_text(_HTML.format(title=html.escape(title), body="\n".join(body)))


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1300px; color: #222; }}
table.summary {{ border-collapse: collapse; font-size: 0.85rem; }}
table.summary th, table.summary td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
table.summary th {{ background: #f0f0f0; }}
table.summary td:first-child, table.summary td:nth-child(2) {{ text-align: left; }}
figure {{ margin: 1.5rem 0; }} figure img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9rem; }}
</style></head><body>
{body}
</body></html>
"""
