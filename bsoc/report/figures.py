"""The report's figures. Each function takes plain benchmark data and returns a Figure.

Each model keeps one colour (by its position in the benchmark) across all plots.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

def colour(index: int) -> str:
    """The model's colour: its position in the benchmark, the same in every figure."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return palette[index % len(palette)]


def soc_traces(
    models: list[dict[str, Any]], traces: dict[str, np.ndarray], cycles: list[str]
) -> Figure:
    """Estimated vs true SOC, every model on one plot, and the error below, per cycle; a
    model with an uncertainty gets its +-2 sigma band around both."""
    fig, axes = plt.subplots(
        2, len(cycles), figsize=(5.5 * len(cycles), 6), sharex="col", squeeze=False,
        gridspec_kw={"height_ratios": [2, 1]},
    )
    for col, cycle in enumerate(cycles):
        time_h = traces[f"{cycle}/time_s"] / 3600.0
        truth = traces[f"{cycle}/soc_true"] * 100
        top, bottom = axes[0, col], axes[1, col]
        top.plot(time_h, truth, color="black", lw=2.0, label="true SOC")
        settled = time_h - time_h[0] >= 60 / 3600  # the first minute may start far off
        errors = [np.abs(traces[f"{m['name']}/{cycle}"] * 100 - truth)[settled] for m in models]
        span = max(2.0, 1.3 * float(np.percentile(np.concatenate(errors), 99.5)))
        for index, model in enumerate(models):
            estimate = traces[f"{model['name']}/{cycle}"] * 100
            top.plot(time_h, estimate, lw=1.0, color=colour(index), label=model["name"])
            bottom.plot(time_h, estimate - truth, lw=0.8, color=colour(index))
            std = traces.get(f"{model['name']}/{cycle}/soc_std")
            if std is not None:
                band = 200 * std
                top.fill_between(time_h, estimate - band, estimate + band, color=colour(index),
                                 alpha=0.15, lw=0, label=f"{model['name']} ±2σ")
                bottom.fill_between(time_h, estimate - truth - band, estimate - truth + band,
                                    color=colour(index), alpha=0.15, lw=0)
        top.set_title(cycle, fontsize=10)
        top.set_ylim(max(-5.0, truth.min() - 10), min(110.0, truth.max() + 10))
        bottom.set_ylim(-span, span)  # the error axis shows the settled error
        top.set_ylabel("SOC [%]")
        bottom.set_ylabel("error [pp]")
        bottom.set_xlabel("time [h]")
        bottom.axhline(0, color="black", lw=0.5)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def error_distributions(
    models: list[dict[str, Any]], traces: dict[str, np.ndarray], cycles: dict[str, float]
) -> Figure:
    """Box plots of the per-sample error, per model, grouped by ambient temperature."""
    temperatures = sorted(set(cycles.values()))
    fig, axes = plt.subplots(
        1, len(temperatures), figsize=(max(4.0, 3.2 * len(temperatures)), 4), sharey=True,
        squeeze=False,
    )
    for ax, temperature in zip(axes[0], temperatures, strict=True):
        data = []
        for model in models:
            errors = [
                (traces[f"{model['name']}/{c}"] - traces[f"{c}/soc_true"]) * 100
                for c, t in cycles.items()
                if t == temperature
            ]
            data.append(np.concatenate(errors))
        ax.boxplot(data, showfliers=False, whis=(1, 99))
        ax.set_xticks(range(1, len(models) + 1), [m["name"] for m in models], rotation=60,
                      ha="right", fontsize=8)
        ax.set_title(f"{temperature:g} °C", fontsize=10)
        ax.axhline(0, color="black", lw=0.5)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("SOC error [pp] (box: quartiles, whiskers: 1-99 %)")
    fig.tight_layout()
    return fig


def pareto(models: list[dict[str, Any]], sweep: dict[str, list[dict[str, Any]]] | None) -> Figure:
    """RMSE vs learnables and vs bytes of weights: projection and SVD sweeps, with the
    benchmarked models (int8 ones included) as points.

    The sweeps are float32 models, four bytes per learnable; an int8 model has the
    learnables of its float source and about a quarter of its bytes, so it stands apart
    only on the right.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    styles = {"projection": ("#d62728", "o"), "svd": ("#9467bd", "s")}
    for ax, key, per_learnable, label in ((axes[0], "learnables", 1, "learnables (log)"),
                                          (axes[1], "bytes", 4, "bytes of weights (log)")):
        for method, points in (sweep or {}).items():
            if not points:
                continue
            points = sorted(points, key=lambda p: p["learnables"])
            colour_, marker = styles.get(method, ("grey", "^"))
            ax.plot([per_learnable * p["learnables"] for p in points],
                    [p["rmse_pct"] for p in points], marker=marker, color=colour_, lw=1, ms=4,
                    alpha=0.8, label=f"{method} sweep (no fine-tuning, float32)")
        for index, model in enumerate(models):
            ax.scatter(model[key], model["rmse_pct"], s=60, color=colour(index),
                       edgecolor="black", zorder=5, label=model["name"],
                       marker="D" if model["kind"].endswith(("-int8", "-w8a16")) else "o")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("RMSE from start [% SOC]")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def explained_variance(layers: dict[str, dict[str, Any]]) -> Figure:
    """Cumulative explained variance per layer input/output, chosen ranks marked.

    One activation can be two slots (``lstm_1.output`` is ``lstm_2.input``): such curves
    are drawn once, labelled with both names, each slot's rank marked on it.
    """
    groups: dict[tuple[float, ...], list[tuple[str, int | None]]] = {}
    for label, info in layers.items():
        key = tuple(np.round(info["explained_variance_curve"], 12))
        groups.setdefault(key, []).append((label, info.get("rank")))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, slots in groups.items():
        curve = np.asarray(key)
        ranks = np.arange(1, len(curve) + 1)
        line = ax.plot(ranks, curve * 100, lw=1.2, label=" = ".join(n for n, _ in slots))[0]
        chosen = [r for _, r in slots if r]
        ax.scatter(chosen, [curve[r - 1] * 100 for r in chosen], color=line.get_color(),
                   zorder=5, s=30)
    ax.set_xscale("log")
    ax.set_xlabel("rank (eigen-neurons kept)")
    ax.set_ylabel("explained variance [%]")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# bsoc's own path and its peers (benchmark.json's "peers"), each one colour in the speed figure
RUNTIMES = {"bsoc": ("bsoc", "#1f77b4"), "onnxruntime": ("ONNX Runtime", "#ff7f0e"),
            "torch_eager": ("eager torch", "#7f7f7f")}


def percent(fraction: float | None) -> str:
    """A fraction as a percentage, two significant digits below 1 %."""
    if fraction is None:
        return "–"
    return f"{100 * fraction:.1f}" if fraction >= 0.01 else f"{100 * fraction:.2g}"


def speed_of(model: dict[str, Any], runtime: str) -> dict[str, Any] | None:
    """A runtime's speed record of ``model``: the entry itself for bsoc, else its peer's."""
    return model if runtime == "bsoc" else model.get("peers", {}).get(runtime)


def speed_bars(models: list[dict[str, Any]], reference: str) -> Figure:
    """Step latency (batch 1), throughput at the largest batch, and the fraction of the
    machine's float32 GEMM limit reached there, per model for bsoc and its peers side by side.

    A bsoc bar carries its ratio to the reference model's bsoc bar; a peer's bar carries
    bsoc's speed-up over that peer on the same model (above 1: bsoc is faster).
    """
    names = [m["name"] for m in models]
    ref = models[names.index(reference) if reference in names else 0]
    runtimes = [r for r in RUNTIMES if any(speed_of(m, r) for m in models)]
    batch = models[0].get("throughput_batch_size", "N")
    width = 0.8 / len(runtimes)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = ((axes[0], "step latency [µs], batch 1 (lower is better)"),
              (axes[1], f"throughput [samples/s], batch {batch}"),
              (axes[2], f"% of the GEMM limit, batch {batch}"))
    for k, runtime in enumerate(runtimes):
        label, runtime_colour = RUNTIMES[runtime]
        for i, model in enumerate(models):
            record = speed_of(model, runtime)
            if not record:
                continue
            legend = label if all(not speed_of(m, runtime) for m in models[:i]) else None
            x = i + (k - (len(runtimes) - 1) / 2) * width
            fraction = record.get("achieved", {}).get("fraction_of_gemm_limit_batched")
            if runtime == "bsoc":
                ratios = (ref["step_latency_us"] / record["step_latency_us"],
                          record["throughput_samples_per_s"] / ref["throughput_samples_per_s"])
                marks = [f"{r:.1f}x" for r in ratios]
            else:
                speedup = record["bsoc_speedup"]
                marks = [f"bsoc {speedup['step']:.1f}x",
                         f"bsoc {speedup['by_batch'].get(str(batch), float('nan')):.1f}x"]
            values = (record["step_latency_us"], record["throughput_samples_per_s"],
                      None if fraction is None else 100 * fraction)
            for (ax, _), value, mark in zip(panels, values,
                                            [*marks, f"{percent(fraction)}%"],
                                            strict=True):
                if value is None:
                    continue
                ax.bar(x, value, width, color=runtime_colour, label=legend)
                ax.annotate(mark, (x, value), ha="center", va="bottom", fontsize=6,
                            rotation=90)
    for ax, title in panels:
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
        ax.margins(y=0.3)  # room for the ratios above the bars
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"bsoc bars: ratio to {ref['name']}; peer bars: bsoc's speed-up over the peer "
                 "on the same model", fontsize=9)
    fig.tight_layout()
    return fig
