"""``bsoc benchmark``: accuracy, size and speed of every model on one dataset's test split.

Writes ``benchmark.json`` (its fields: docs/benchmark.md) and ``traces.npz`` (each model's from-start SOC per test cycle, for the report,
and ``<model>/<cycle>/soc_std`` for a model with an uncertainty). Such a model's entry also
has ``calibration`` (from start; every scenario has its own): the fractions of samples
within 1 and 2 of its standard deviations, pooled and per temperature.
Accuracy uses :mod:`bsoc.evaluate` (three scenarios); speed uses :mod:`bsoc.bench.speed`,
all models interleaved in this one process, every network model's peers (eager PyTorch and
ONNX Runtime, :mod:`bsoc.bench.peers`) among them, then the machine's float32 GEMM limit
(:mod:`bsoc.bench.limit`) that each one's achieved MAC/s is a fraction of. Ratios are
against the reference model (the first uncompressed LSTM, else the first model). Every
network model also gets a deployment record (:mod:`bsoc.export.deployment`): its C library
exported and measured on the first test cycle.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bsoc import __version__
from bsoc.bench import speed
from bsoc.bench.machine import machine_info
from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle
from bsoc.errors import ConfigError
from bsoc.estimator import SocEstimator, load_estimator, read_config
from bsoc.evaluate import ScenarioSettings, evaluate_runs
from bsoc.outputs import OutputKind, check_output, write_output

BENCHMARK_FILE = "benchmark.json"
TRACES_FILE = "traces.npz"
BENCHMARK_OUTPUT = OutputKind("benchmark", signature=BENCHMARK_FILE,
                              legacy_files=(BENCHMARK_FILE, TRACES_FILE),
                              legacy_mark="bsoc_version")


def model_file_bytes(directory: Path) -> int:
    """Bytes on disk of what a deployment ships: the weights file and config.json."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix in
               (".safetensors", ".json") and not p.name.startswith("."))


def unique_names(directories: list[Path]) -> list[str]:
    """Model names for the tables: the folder names, made unique."""
    names: list[str] = []
    for directory in directories:
        name = directory.name
        while name in names:
            name = f"{directory.parent.name}/{name}"
        names.append(name)
    return names


def run_benchmark(
    dataset_dir: Path,
    model_dirs: list[Path],
    out_dir: Path,
    *,
    quick: bool = False,
    plan: speed.SpeedPlan | None = None,
    split: str = "test",
    settings: ScenarioSettings | None = None,
    deployment: bool = True,
    force: bool = False,
    command: str = "",
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure every model in ``model_dirs`` on ``dataset_dir``'s ``split``; write the results.

    ``plan`` overrides the speed plan that ``quick`` selects (tests use a tiny one);
    ``deployment=False`` leaves out the exported C's measurements.
    """
    if not model_dirs:
        raise ConfigError("no models to benchmark", remedy="pass one or more --models folders")
    out_dir = Path(out_dir)
    check_output(out_dir, BENCHMARK_OUTPUT, force=force, inputs=[dataset_dir, *model_dirs])
    dataset = Dataset.load(dataset_dir)
    cycles = dataset.split(split)
    if not cycles:
        raise ConfigError(f"dataset {dataset_dir} has no '{split}' cycles",
                          remedy="choose another --split or re-create the dataset with one")
    settings = settings or ScenarioSettings()
    directories = [Path(d) for d in model_dirs]
    names = unique_names(directories)
    models: dict[str, SocEstimator] = {}
    for name, directory in zip(names, directories, strict=True):
        models[name] = load_estimator(directory)
        models[name].name = name
    reference = next((n for n in names if models[n].kind == "lstm"), names[0])

    entries: list[dict[str, Any]] = []
    traces: dict[str, np.ndarray] = {}
    for cycle in cycles:
        traces[f"{cycle.meta.name}/time_s"] = cycle.frame["time_s"].to_numpy(np.float64)
        traces[f"{cycle.meta.name}/soc_true"] = cycle.soc().astype(np.float32)
    for name, directory in zip(names, directories, strict=True):
        model = models[name]
        log(f"accuracy: {name} on {len(cycles)} cycles x 3 scenarios")
        started = time.perf_counter()
        summary, runs = evaluate_runs(model, cycles, settings)
        for run in runs["from_start"]:
            traces[f"{name}/{run.cycle}"] = run.soc_est.astype(np.float32)
            if run.soc_std is not None:
                traces[f"{name}/{run.cycle}/soc_std"] = run.soc_std.astype(np.float32)
        config = read_config(directory)
        entries.append({
            "name": name,
            "kind": model.kind,
            "path": str(directory),
            "learnables": int(model.learnables()),
            "bytes": int(model.weight_bytes()),
            "file_bytes": model_file_bytes(directory),
            "macs_per_sample": int(model.macs_per_sample()),
            "rmse_pct": summary["rmse_pct"],
            "mae_pct": summary["mae_pct"],
            "max_abs_err_pct": summary["max_abs_err_pct"],
            "by_condition": summary["by_condition"],
            "by_temperature": summary["by_temperature"],
            "scenarios": summary["scenarios"],
            **({"calibration": summary["calibration"]} if "calibration" in summary else {}),
            "accuracy_seconds": round(time.perf_counter() - started, 2),
            "compression": config.get("compression", {}),
            "trained_on": config.get("data", {}),
        })

    if deployment:
        _add_deployment(models, directories, entries, cycles[0], log)

    plan = plan or (speed.SpeedPlan.quick() if quick else speed.SpeedPlan())
    samples = np.concatenate([c.samples() for c in cycles])
    run_wide = _add_speed(models, entries, samples, plan, log)
    ref_entry = next(e for e in entries if e["name"] == reference)
    for entry in entries:
        entry["ratios_to_reference"] = {
            "learnables": entry["learnables"] / ref_entry["learnables"],
            "step_speedup": ref_entry["step_latency_us"] / entry["step_latency_us"],
            "throughput": entry["throughput_samples_per_s"] / ref_entry["throughput_samples_per_s"],
            "sequence_throughput": entry["sequence_samples_per_s"]
            / ref_entry["sequence_samples_per_s"],
            "macs": entry["macs_per_sample"] / ref_entry["macs_per_sample"],
        }

    result = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint(),
        "split": split,
        "cycles": len(cycles),
        "reference": reference,
        "models": entries,
        "cold_start": {"start_fraction": settings.start_fraction,
                       "convergence_s": settings.convergence_s,
                       "converged_below_pct": settings.converged_below_pct},
        "degraded_sensors": {"description": settings.degraded_description()},
        "deployment_cycle": cycles[0].meta.name if deployment else None,
        "scenario_settings": settings.to_json(),
        "speed_plan": {"quick": quick, "repeats": plan.repeats,
                       "latency_steps": plan.latency_steps,
                       "batch_sizes": list(plan.batch_sizes),
                       "gemm_shape_mkn": list(plan.gemm_shape)},
        "machine": machine_info(),
        **run_wide,
        "bsoc_version": __version__,
        "command": command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "traces_file": TRACES_FILE,
    }
    with write_output(out_dir, BENCHMARK_OUTPUT, force=force) as folder:
        np.savez_compressed(folder / TRACES_FILE, **traces)
        (folder / BENCHMARK_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _add_deployment(models: dict[str, SocEstimator], directories: list[Path],
                    entries: list[dict[str, Any]], cycle: Cycle,
                    log: Callable[[str], None]) -> None:
    """A deployment record in every exportable model's entry, measured on ``cycle``."""
    from bsoc.export.deployment import deployment_record, exportable

    samples = cycle.samples()
    for (name, model), directory, entry in zip(models.items(), directories, entries,
                                               strict=True):
        if exportable(model):
            log(f"deployment: {name} exported as C and measured")
            with tempfile.TemporaryDirectory(prefix="bsoc-deploy-") as work:
                entry["deployment"] = deployment_record(directory, model, samples, Path(work))


def _add_speed(models: dict[str, SocEstimator], entries: list[dict[str, Any]],
               samples: np.ndarray, plan: speed.SpeedPlan,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Every model's speed, and its peers' (:mod:`bsoc.bench.peers`), measured interleaved,
    into ``entries``; returns the run-wide records: the GEMM limit and the peers' settings."""
    from bsoc.bench.limit import achieved, gemm_limit
    from bsoc.bench.peers import peer_record, peer_steppers, stepper_name

    peers, peer_settings = peer_steppers(models)
    steppers: dict[str, Any] = dict(models)
    for name, by_peer in peers.items():
        steppers.update({stepper_name(name, peer): s for peer, s in by_peer.items()})
    log(f"speed: {len(steppers)} steppers ({len(models)} models and their peers) interleaved, "
        f"{plan.repeats} repeats")
    latency = speed.step_latency_us(steppers, samples, plan)
    throughput = speed.batched_throughput(steppers, samples, plan,
                                          batched_only=set(steppers) - set(models))
    sequence = speed.sequence_throughput(models, samples, plan)
    log("speed: the machine's float32 GEMM limit")
    limit = gemm_limit(plan.gemm_shape, plan.repeats)
    largest = max(plan.batch_sizes)
    for entry in entries:
        name = entry["name"]
        entry["step_latency_us"] = latency[name]["median"]
        entry["step_latency_us_spread"] = latency[name]
        entry["throughput_samples_per_s"] = throughput[name][largest]["median"]
        entry["throughput_batch_size"] = largest
        entry["throughput_by_batch"] = {str(b): v for b, v in throughput[name].items()}
        entry["sequence_samples_per_s"] = sequence[name]["median"]
        entry["achieved"] = achieved(entry["macs_per_sample"], entry["step_latency_us"],
                                     entry["throughput_samples_per_s"], limit["macs_per_s"])
        if name in peers:
            entry["eager_step_latency_us"] = latency[stepper_name(name, "torch_eager")]["median"]
            entry["peers"] = {peer: peer_record(entry, latency[stepper_name(name, peer)],
                                                throughput[stepper_name(name, peer)],
                                                limit["macs_per_s"])
                              for peer in peers[name]}
    return {"gemm_limit": limit, "peers": peer_settings}


def summary_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A compact per-model row for terminals and the README."""
    rows = []
    for m in result["models"]:
        rows.append({
            "model": m["name"], "kind": m["kind"], "learnables": m["learnables"],
            "RMSE %": m["rmse_pct"],
            "cold %": m["scenarios"]["cold_start"]["rmse_pct"],
            "degraded %": m["scenarios"]["degraded_sensors"]["rmse_pct"],
            "step µs": m["step_latency_us"],
            "samples/s": m["throughput_samples_per_s"],
            "speedup": m["ratios_to_reference"]["step_speedup"],
            "±2σ %": (None if "calibration" not in m
                      else 100 * m["calibration"]["within_2_sigma"]),
        })
    return rows

