"""The report's speed table: bsoc, ONNX Runtime and eager torch side by side per model.

One row per model and runtime, from benchmark.json's speed fields and each model's
``peers``: the step latency (one stream), the throughput at every batch size measured,
bsoc's speed-up over the peer (above 1: bsoc is faster), and the multiply-accumulates per
second reached as a fraction of the machine's float32 GEMM limit measured in the same run.
"""

from __future__ import annotations

from typing import Any

from bsoc.report.figures import RUNTIMES, percent, speed_of


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def speed_table(bench: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]] | None:
    """Title, header, rows and notes of the table; None for a benchmark without peers or
    GEMM limit (made before they were measured)."""
    models = bench["models"]
    limit = bench.get("gemm_limit")
    if limit is None and not any(m.get("peers") for m in models):
        return None
    largest = str(models[0]["throughput_batch_size"])
    batches = [str(b) for b in bench.get("speed_plan", {}).get("batch_sizes", [largest])
               if b > 1]
    header = ["model", "runtime", "step [µs]", "bsoc speed-up, step",
              *(f"samples/s, batch {b}" for b in batches), f"bsoc speed-up, batch {largest}",
              f"GMAC/s, batch {largest}", "% of GEMM limit, batch 1",
              f"% of GEMM limit, batch {largest}"]
    rows = []
    for model in models:
        for runtime, (label, _) in RUNTIMES.items():
            record = speed_of(model, runtime)
            if not record:
                continue
            speedup = record.get("bsoc_speedup", {"step": 1.0, "by_batch": {largest: 1.0}})
            done = record.get("achieved", {})
            batched = done.get("macs_per_s_batched")
            rows.append([
                model["name"], label, _number(record["step_latency_us"]),
                _ratio(speedup["step"]),
                *(_number(record["throughput_by_batch"].get(b, {}).get("median"))
                  for b in batches),
                _ratio(speedup["by_batch"].get(largest)),
                _number(None if batched is None else batched / 1e9, 2),
                percent(done.get("fraction_of_gemm_limit_batch_1")),
                percent(done.get("fraction_of_gemm_limit_batched")),
            ])
    return "Speed side by side: bsoc, ONNX Runtime and eager torch", header, rows, _notes(bench)


def _notes(bench: dict[str, Any]) -> list[str]:
    notes = ["All runtimes measured interleaved in one run: batch 1 is one stream, one sample "
             "per call, state carried; batch B is one step of B streams per call. bsoc's "
             "speed-up is the peer's time over bsoc's on the same model (above 1: bsoc is "
             "faster)."]
    limit = bench.get("gemm_limit")
    if limit:
        m, k, n = limit["shape_mkn"]
        notes.append(f"GEMM limit: {limit['macs_per_s'] / 1e9:.1f} GMAC/s, the best of "
                     f"{limit['repeats']} rounds of a float32 ({m} x {k}) @ ({k} x {n}) "
                     f"product ({limit['library']}, the faster of numpy and torch), in this "
                     "run; a model's MAC/s is its multiply-accumulates per sample times "
                     "samples/s.")
    peers = bench.get("peers", {})
    ort = peers.get("onnxruntime", {})
    if "not_measured" in ort:
        notes.append(f"ONNX Runtime not measured: {ort['not_measured']}.")
    elif ort:
        notes.append(f"ONNX Runtime {ort['onnxruntime']}: {ort['graph']}, "
                     f"{ort['intra_op_threads']} intra-op threads, {ort['inter_op_threads']} "
                     f"inter-op, {ort['execution_mode']} execution.")
    torch = peers.get("torch_eager")
    if torch:
        notes.append(f"Eager torch {torch['torch']}: one Lstm.step per layer, "
                     f"{torch['threads']} threads.")
    return notes
