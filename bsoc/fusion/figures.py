"""The figure that justifies the noise model: the LSTM's error against what predicts it.

Each panel bins samples by one feature (log-spaced bins) and draws the observed RMS of the
LSTM's error (training split, where the model is fitted, and validation, where its levels
are re-fitted) beside the RMS the noise model predicts for the same samples and, dotted,
the constant-variance model's. The first panel bins by the predicted standard deviation
itself: points on the diagonal mean the model knows how large the error is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bsoc.fusion.noise import NoiseModel

# (feature name, axis label, the feature's value in those units)
PANELS = (
    ("start_decay_1", "time since start [s]",
     lambda v, tau: -tau[0] * np.log(np.maximum(v, 1e-300))),
    ("log_rest", "time at rest [s]", lambda v, tau: 60.0 * np.expm1(v)),
    ("log_variability", "LSTM's SOC change the charge does not explain [%/sqrt(s)]",
     lambda v, tau: 100 * np.maximum(np.exp(v) - 1e-4, 0.0)),
    ("log_c_rate", "recent |I| [C]", lambda v, tau: np.maximum(np.exp(v) - 0.01, 0.0)),
)


def _binned(x: np.ndarray, squared: np.ndarray, variance: np.ndarray, edges: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres with data, observed RMS and predicted RMS per bin."""
    index = np.digitize(x, edges) - 1
    centres, observed, predicted = [], [], []
    for b in range(len(edges) - 1):
        mask = index == b
        if mask.sum() < 50:
            continue
        centres.append(np.median(x[mask]))
        observed.append(np.sqrt(np.mean(squared[mask])))
        predicted.append(np.sqrt(np.mean(variance[mask])))
    return np.array(centres), 100 * np.array(observed), 100 * np.array(predicted)


def noise_figure(train: tuple[NoiseModel, np.ndarray, np.ndarray],
                 validation: tuple[NoiseModel, np.ndarray, np.ndarray] | None,
                 path: Path) -> Path:
    """Write the figure to ``path`` from ``(model, features, squared errors)`` of the
    training split (its fitted model) and of validation (the model re-levelled there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = train[0]
    names = model.feature_names
    n_knots = len(model.knots_c)
    sets = [("train", *train, "C0")]
    if validation is not None:
        sets.append(("validation", *validation, "C1"))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.ravel()
    constant = {label: np.sqrt(np.mean(sq)) for label, _, _, sq, _ in sets}
    # Predicted sigma vs observed RMS.
    ax = axes[0]
    for label, model, features, squared, colour in sets:
        variance = model.variance(features)
        sigma = np.sqrt(variance)
        edges = np.quantile(sigma, np.linspace(0, 1, 16))
        x, observed, predicted = _binned(sigma, squared, variance, np.unique(edges))
        ax.plot(predicted, observed, "o-", color=colour, ms=4, label=label)
    top = ax.get_xlim()[1]
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="observed = predicted")
    ax.set_xlabel("predicted sigma [% SOC] (bins of samples)")
    ax.set_ylabel("observed RMS error [% SOC]")
    ax.set_title("noise model vs the LSTM's actual error")
    ax.legend(fontsize=8)
    # Temperature.
    ax = axes[1]
    for label, model, features, squared, colour in sets:
        hats = features[:, :n_knots]
        temperature = hats @ np.array(model.knots_c)
        variance = model.variance(features)
        edges = np.concatenate([[-np.inf], 0.5 * (np.array(model.knots_c[1:])
                                                  + np.array(model.knots_c[:-1])), [np.inf]])
        x, observed, predicted = _binned(temperature, squared, variance, edges)
        ax.plot(x, observed, "o", color=colour, label=f"{label}: observed")
        ax.plot(x, predicted, "-", color=colour, label=f"{label}: model")
        ax.axhline(100 * constant[label], color=colour, ls=":", lw=0.8)
    ax.set_xlabel("cell temperature [degC]")
    ax.set_ylabel("RMS error [% SOC]")
    ax.set_title("by temperature (dotted: one constant variance)")
    ax.legend(fontsize=7)
    taus = model.constants.start_tau_s
    for ax, (feature, xlabel, transform) in zip(axes[2:], PANELS, strict=True):
        column = names.index(feature)
        for label, model, features, squared, colour in sets:
            variance = model.variance(features)
            x = transform(features[:, column], taus)
            positive = x[x > 0]
            if len(positive) < 100:
                continue
            low = np.quantile(positive, 0.0005)
            edges = np.unique(np.concatenate([[-np.inf], np.geomspace(low, positive.max(), 14),
                                              [np.inf]]))
            bx, observed, predicted = _binned(x, squared, variance, edges)
            bx = np.maximum(bx, low / 3)  # the bin of zeros (and near-zeros) at the left edge
            ax.plot(bx, observed, "o", color=colour, label=f"{label}: observed")
            ax.plot(bx, predicted, "-", color=colour, label=f"{label}: model")
            ax.axhline(100 * constant[label], color=colour, ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + ", log; zero at the left")
        ax.set_ylabel("RMS error [% SOC]")
        ax.legend(fontsize=7)
    fig.suptitle("The LSTM's SOC error and its learned noise model (log sigma^2 linear in the "
                 "features; fitted on the training split, levels re-fitted on validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
