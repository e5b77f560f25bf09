"""The compiled identification voltage equals the numpy ECM formulation (ecm_voltage)."""

from __future__ import annotations

import numpy as np
import pytest

from bsoc.ekf.ecm import ecm_voltage
from bsoc.ekf.ecm_fit import EcmLeastSquares, Prepared, Series, grid_position


def _reference_voltage(model: EcmLeastSquares, theta: np.ndarray, p: Prepared) -> np.ndarray:
    """The least-squares voltage in numpy: per-sample interpolation, then ecm_voltage."""
    log_r, log_tau, k, correction = model.unpack(theta)

    def ocv_at(jj: np.ndarray) -> np.ndarray:
        mapped = np.clip(1.0 - k[jj] * (1.0 - p.series.soc), 0.0, 1.0)
        i, f = grid_position(mapped, model.ocv_ref.shape[1])
        row = np.minimum(jj, len(model.ocv_ref) - 1)
        base = model.ocv_ref[row, i] * (1 - f) + model.ocv_ref[row, i + 1] * f
        return base + correction[jj, p.ic] * (1 - p.fc) + correction[jj, p.ic + 1] * p.fc

    w = p.w[:, None]
    at_soc = [log_r[jj, :, p.i] * (1 - p.f)[:, None] + log_r[jj, :, p.i + 1] * p.f[:, None]
              for jj in (p.j, p.j1)]
    r = np.exp(at_soc[0] * (1 - w) + at_soc[1] * w)
    tau = np.exp(log_tau[p.j] * (1 - w) + log_tau[p.j1] * w)
    ocv = ocv_at(p.j) * (1 - p.w) + ocv_at(p.j1) * p.w
    return ecm_voltage(ocv, r[:, 0], (r[:, 1], tau[:, 0]), (r[:, 2], tau[:, 1]),
                       p.series.current, p.dt)


def _series(rng: np.random.Generator, n: int, temperature_c: np.ndarray) -> Series:
    current = np.repeat(rng.normal(0.0, 3.0, n // 20 + 1), 20)[:n]
    return Series(dt=1.0, current=current, soc=np.linspace(0.95, 0.05, n) + 0.01 * rng.normal(size=n),
                  voltage=np.full(n, 3.6), temperature=temperature_c)


@pytest.mark.parametrize(("nodes_c", "free_scale", "shared_ocv"),
                         [((25.0,), True, False), ((0.0, 10.0, 25.0), False, False),
                          ((0.0, 25.0), False, True)])
def test_fit_voltage_equals_the_numpy_formulation(
    nodes_c: tuple[float, ...], free_scale: bool, shared_ocv: bool
) -> None:
    rng = np.random.default_rng(7)
    n = 3000
    # Cell temperatures beyond both end nodes and in between (clamped weights 0 and 1 too).
    temperature = np.linspace(-5.0, 35.0, n) + rng.normal(0.0, 1.0, n)
    series = [_series(rng, n, temperature), _series(rng, n // 3, temperature[: n // 3])]
    ocv_ref = np.sort(rng.uniform(3.0, 4.2, (1 if shared_ocv else len(nodes_c), 101)), axis=1)
    model = EcmLeastSquares(series, nodes_c, ocv_ref, n_nodes=7, n_correction=5,
                            free_scale=free_scale, smoothness=(1e-3, 1e-3, 1e-4), smooth_t=1e-3)
    start, low, high = model.start_and_bounds(0.02, ((1.0, 60.0), (60.0, 2000.0)))
    for _ in range(5):
        theta = rng.uniform(low, high)
        log_r = theta.reshape(len(nodes_c), model.per_node)[:, : 3 * 7]  # a view of theta
        log_r[...] = rng.uniform(np.log(1e-3), np.log(5e-2), log_r.shape)  # 1 to 50 mOhm
        for p in model.prepared:
            expected = _reference_voltage(model, theta, p)
            np.testing.assert_allclose(model.voltage(theta, p), expected, rtol=1e-12, atol=0)
    assert np.isfinite(start).all()
