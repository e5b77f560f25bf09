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
                       marker="D" if model["kind"].endswith("-int8") else "o")
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


def speed_bars(models: list[dict[str, Any]], reference: str) -> Figure:
    """Streaming step latency and batched throughput, with ratios to the reference model."""
    names = [m["name"] for m in models]
    latency = np.array([m["step_latency_us"] for m in models])
    throughput = np.array([m["throughput_samples_per_s"] for m in models])
    ref = names.index(reference) if reference in names else 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, title, better in (
        (axes[0], latency, "streaming step latency [µs] (batch 1)", "lower"),
        (axes[1], throughput, "batched throughput [samples/s]", "higher"),
    ):
        bars = ax.bar(range(len(names)), values,
                      color=[colour(i) for i in range(len(models))])
        for bar, value in zip(bars, values, strict=True):
            ratio = values[ref] / value if better == "lower" else value / values[ref]
            ax.annotate(f"{ratio:.1f}x", (bar.get_x() + bar.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title}; ratio vs {names[ref]}", fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
