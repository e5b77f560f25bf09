"""Where the batched step's time goes: each part of one block of streams, timed alone.

The batched step (:mod:`bsoc.nn.batched`) runs, per layer and block of streams, the maps'
inner products, one product with the stacked outer factors, then the gates and cell update;
around them it converts the float64 states of the estimator interface in and out. This
script times each part on one core, interleaved (every round times every part of every
model, the median of the rounds is reported), beside a float32 GEMM on the same core: so a
throughput goal can be checked against what its parts cost, not guessed.

    .venv/bin/python benchmarks/step_profile.py --models models/run/lstm models/run/projected-ft

The ceiling printed per model is the samples/s of a core if every product ran at the
GEMM's rate and everything else cost what it costs here, times the cores: no kernel that
keeps this arithmetic and these float64 states can beat it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bsoc.estimator import load_estimator
from bsoc.nn import batched
from bsoc.nn.blas import blas_threads, matmul
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.gates import lstm_cell

SECONDS_PER_ROUND = 0.02  # per part: enough calls that the timer's resolution does not count
# the benchmark's limit (bsoc.bench.speed.SpeedPlan.gemm_shape), here on one core
GEMM_SHAPE = (4096, 256, 1024)


def _parts(layout: np.ndarray, weights: np.ndarray, block: int
           ) -> list[tuple[str, int, bool, Callable[[], None]]]:
    """``(name, MACs per sample, whether it is a matrix product, run one block)`` for every
    part of the step, in order; the MACs add up to the network's ``macs_per_sample``."""
    at, size = batched._regions(layout, block)
    scratch = np.random.default_rng(0).uniform(-0.5, 0.5, size).astype(np.float32)
    layers = layout.shape[0] - 1
    x = batched._view(scratch, at[3 * layers], block, 3)
    parts = []
    for layer in range(layers):
        row = layout[layer]
        hidden, z_width = int(row[batched._HIDDEN]), int(row[batched._Z])
        h = batched._view(scratch, at[3 * layer], block, hidden)
        c = batched._view(scratch, at[3 * layer + 1], block, hidden)
        z = batched._view(scratch, at[3 * layer + 2], block, z_width)
        gates = batched._view(scratch, at[3 * layers + 1], block, 4 * hidden)
        bias = weights[row[batched._BIAS]: row[batched._BIAS] + 4 * hidden]
        outer = weights[row[batched._OUTER]:]
        in_rank, rec_rank = int(row[batched._IN_RANK]), int(row[batched._REC_RANK])
        split = in_rank or x.shape[1]
        name = f"layer {layer + 1} ({hidden})"
        if in_rank:
            parts.append((f"{name}: input inner product", x.shape[1] * in_rank, True,
                          lambda x=x, row=row, z=z: batched._inner(
                              x, weights, row, batched._IN_RANK, z, 0)))
        if rec_rank:
            parts.append((f"{name}: recurrent inner product", hidden * rec_rank, True,
                          lambda h=h, row=row, z=z, split=split: batched._inner(
                              h, weights, row, batched._REC_RANK, z, split)))
        parts.append((f"{name}: gate product (K = {z_width})", z_width * 4 * hidden, True,
                      lambda z=z, outer=outer, gates=gates, k=z_width, n=4 * hidden: matmul(
                          block, n, k, z, k, outer, n, gates, n)))
        # the cell updates h and c in place: on copies, so the other parts' inputs stay put
        parts.append((f"{name}: gates and cell update", 3 * hidden, False,
                      lambda g=gates, b=bias, c=c.copy(), h=h.copy(): lstm_cell(g, b, c, h)))
        x = h
    row = layout[layers]  # the output layer: one product (two for a factored map), then SOC
    out = batched._view(scratch, at[3 * layers + 3], block, 1)
    z = batched._view(scratch, at[3 * layers + 2], block, int(row[batched._Z]))
    width, in_rank = x.shape[1], int(row[batched._IN_RANK])
    outer = weights[row[batched._OUTER]:]

    def output(x: np.ndarray = x, z: np.ndarray = z) -> None:
        if in_rank:
            batched._inner(x, weights, row, batched._IN_RANK, z, 0)
            matmul(block, 1, in_rank, z, z.shape[1], outer, 1, out, 1)
        else:
            matmul(block, 1, width, x, width, outer, 1, out, 1)

    parts.append(("output layer", width * in_rank + in_rank if in_rank else width, True,
                  output))
    return parts


def _whole_step(estimator: LstmSocEstimator, block: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """One block through the batched kernel with and without the float64 state in and out."""
    packed = estimator.packed
    state_size = len(estimator.initial_state())
    rng = np.random.default_rng(1)
    samples = np.column_stack([np.arange(block, dtype=float), rng.uniform(3.0, 4.2, block),
                               rng.uniform(-6, 3, block), rng.uniform(-20, 40, block)])
    states = rng.uniform(-0.5, 0.5, (block, state_size))
    soc, new_states = np.empty(block), np.empty_like(states)
    at, size = batched._regions(packed.batch_layout, block)
    scratch = rng.uniform(-0.5, 0.5, size).astype(np.float32)

    def step() -> None:
        batched.step_streams(samples, states, packed.batch_weights, packed.batch_layout, soc,
                             new_states)

    def advance() -> None:
        batched._advance(block, scratch, at, packed.batch_weights, packed.batch_layout, soc)

    return step, advance


def _gemm() -> Callable[[], None]:
    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(2)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    return lambda: matmul(m, n, k, a, k, b, n, out, n)


def _time(run: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def _calls(run: Callable[[], None]) -> int:
    """Calls of ``run`` that take about ``SECONDS_PER_ROUND``."""
    return max(1, round(SECONDS_PER_ROUND / _time(run, 3)))


def profile(models: dict[str, LstmSocEstimator], *, block: int, rounds: int) -> dict[str, object]:
    """Every part of every model and the GEMM, interleaved; per model its parts' costs, its
    whole step and its ceiling."""
    jobs: dict[tuple[str, str], Callable[[], None]] = {("gemm", "gemm"): _gemm()}
    parts: dict[str, list[tuple[str, int, bool]]] = {}
    for model_name, estimator in models.items():
        parts[model_name] = []
        for part, macs, product, run in _parts(estimator.packed.batch_layout,
                                               estimator.packed.batch_weights, block):
            jobs[(model_name, part)] = run
            parts[model_name].append((part, macs, product))
        jobs[(model_name, "whole step")], jobs[(model_name, "without state")] = (
            _whole_step(estimator, block))
    with threadpool_limits(1), blas_threads(1):
        calls = {key: _calls(run) for key, run in jobs.items()}  # compiled and warm, too
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
        for _ in range(rounds):
            for key, run in jobs.items():
                seconds[key].append(_time(run, calls[key]))
    per_block = {key: float(np.median(values)) for key, values in seconds.items()}
    gemm_rate = float(np.prod(GEMM_SHAPE)) / per_block[("gemm", "gemm")]
    return {"block": block, "rounds": rounds, "gemm_shape_mkn": GEMM_SHAPE,
            "gemm_macs_per_s_one_core": gemm_rate,
            "models": {name: _model_record(models[name].macs_per_sample(), parts[name],
                                           {part: per_block[(name, part)] / block
                                            for part in [p for p, _, _ in parts[name]]
                                            + ["whole step", "without state"]},
                                           gemm_rate)
                       for name in models}}


def _model_record(macs_per_sample: int, parts: list[tuple[str, int, bool]],
                  seconds: dict[str, float], gemm_rate: float) -> dict[str, object]:
    """Per part its cost per sample, share and rate; the ceiling: products at the GEMM's
    rate, the rest (cells, state in/out) as measured."""
    whole = seconds["whole step"]
    state_io = max(whole - seconds["without state"], 0.0)
    rows, ceiling_seconds = [], state_io
    for part, macs, product in parts:
        row = {"part": part, "macs_per_sample": macs, "ns_per_sample": seconds[part] * 1e9,
               "share_of_step": seconds[part] / whole}
        if product:
            row.update(macs_per_s=macs / seconds[part],
                       fraction_of_gemm=macs / seconds[part] / gemm_rate)
        ceiling_seconds += macs / gemm_rate if product else seconds[part]
        rows.append(row)
    rows.append({"part": "state in/out (float64 <-> float32) and its cache misses", "ns_per_sample": state_io * 1e9,
                 "share_of_step": state_io / whole})
    cores = len(os.sched_getaffinity(0))
    return {"macs_per_sample": macs_per_sample, "parts": rows,
            "whole_step_ns_per_sample": whole * 1e9,
            "whole_step_macs_per_s": macs_per_sample / whole,
            "samples_per_s_one_core": 1 / whole,
            "ceiling_samples_per_s_one_core": 1 / ceiling_seconds, "cores": cores,
            "ceiling_samples_per_s": cores / ceiling_seconds}


def markdown(result: dict[str, object]) -> str:
    lines = [f"block of {result['block']} streams, one core, median of {result['rounds']} "
             f"rounds; float32 GEMM {tuple(result['gemm_shape_mkn'])} on the same core: "
             f"{result['gemm_macs_per_s_one_core'] / 1e9:.1f} GMAC/s", ""]
    for name, model in result["models"].items():
        lines += [f"**{name}** ({model['macs_per_sample']:,} MACs/sample): "
                  f"{model['samples_per_s_one_core'] / 1e3:,.0f}k samples/s on one core; "
                  f"ceiling {model['ceiling_samples_per_s_one_core'] / 1e3:,.0f}k per core, "
                  f"{model['ceiling_samples_per_s'] / 1e3:,.0f}k on {model['cores']} cores",
                  "", "| part | MACs/sample | ns/sample | share | GMAC/s | of GEMM |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in model["parts"]:
            macs = f"{row['macs_per_sample']:,}" if "macs_per_sample" in row else ""
            rate = f"{row['macs_per_s'] / 1e9:.1f}" if "macs_per_s" in row else ""
            of = f"{row['fraction_of_gemm']:.0%}" if "fraction_of_gemm" in row else ""
            lines.append(f"| {row['part']} | {macs} | {row['ns_per_sample']:,.0f} | "
                         f"{row['share_of_step']:.0%} | {rate} | {of} |")
        whole_rate = model["whole_step_macs_per_s"]
        lines += [f"| whole step | {model['macs_per_sample']:,} | "
                  f"{model['whole_step_ns_per_sample']:,.0f} | 100% | {whole_rate / 1e9:.1f} | "
                  f"{whole_rate / result['gemm_macs_per_s_one_core']:.0%} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True,
                        help="LSTM model folders (any float kind)")
    parser.add_argument("--block", type=int, default=batched.BLOCK)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    models = {path.name: load_estimator(path) for path in args.models}
    result = profile(models, block=args.block, rounds=args.rounds)
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
