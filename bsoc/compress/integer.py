"""Full-integer int8 models (kind ``<kind>-w8a16``): int8 weights, int16 activations, the
arithmetic of the exported C library, bit for bit.

Weight-only int8 (:mod:`bsoc.compress.quantize`) halves nothing on a microcontroller's
arithmetic: each int8 weight is converted to float before its float multiply-add, so it
costs about twice a float MAC. Here every matrix-vector product is integer:

* the vector a factor multiplies (the normalised input, a layer's h, a projection) is
  quantised to **int16** with one **power-of-two** scale per vector and step, taken from the
  vector itself (dynamic, as ONNX Runtime's DynamicQuantizeLSTM): ``2^e`` with ``e`` such
  that ``max |x| 2^e`` lies in [2^14, 2^15), then ``q = x 2^e`` rounded to nearest, ties to
  even (what x86's ``CVTPS2DQ`` and the float32 ``+ 1.5 2^23`` trick do in one step), saturated
  to int16 (only 32768 can exceed it). No calibration data is needed, nothing saturates on a
  cycle unlike the training split, and a power of two makes the scaling exact, so the C and
  this reference quantise identically. int16, not int8, activations: the products are the same
  instructions (x86 ``pmaddwd`` and the Cortex-M4's ``SMLAD`` multiply 16-bit pairs), so int8
  activations would buy no speed, only 1/127 steps in h;
* the weights are the int8 values and scales of ``bsoc quantize`` (the same model folder
  weights as the weight-only variant: a chain's last factor without scales); the dot
  product is an int32 sum of int16 x int8 products, exact (a factor takes at most
  :data:`MAX_COLUMNS` inputs so that no sum can overflow, nor any partial sum of the C
  library's, which adds the stored bytes w + 128 from -128 sum(q));
* one float rescale per output: ``y_r = float(acc_r) * (s_r * 2^-e)`` in float32 (the C
  multiplies a layer's repeated gate gains by 2^-e once a step, not once a row), or
  ``float(acc_r) * 2^-e`` for a factor without scales (the power of two alone);
* gates, cell state, normalisation and biases stay float32, with the C library's own
  exp2-based sigmoid (``bsoc/export/c/bsoc_model.c.in``), its 2^f a degree-3 polynomial
  here (the float kinds' is of degree 5): within 2e-5 of the exact sigmoid (:func:`sigmoid`),
  below what int16 activations resolve, for two fifths fewer operations. It is mirrored here
  operation by operation in float32, so the exported C and this reference agree exactly
  (tests hold them equal on a whole cycle, state carried).

:class:`IntegerLstmEstimator` runs the same estimator interface as the other networks
(predict, streaming steps, benchmark, report, service); it vectorises over streams in
numpy (integer sums as float64 products, exact below 2^53).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bsoc.errors import ModelFileError
from bsoc.compress.arrays import Factor, NetworkArrays
from bsoc.compress.quantize import WEIGHT_SCHEME
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import SocNetwork

W8A16_SUFFIX = "-w8a16"
SCHEME = (f"full integer: {WEIGHT_SCHEME}; int16 activations (one power-of-two scale per "
          "vector and step, from the vector: no calibration), int32 sums, one float32 rescale "
          "per output; gates, biases and state float32")
QMIN, QMAX = -32768, 32767
# 511: |partial sum| <= 2^15 (127 m + 128 (cols - m)) in the C's offset sums stays in int32
MAX_COLUMNS = (2**31 - 1) // (-QMIN * 128)
_F = np.float32
_ONE, _TWO = _F(1.0), _F(2.0)
_GATE_CLAMP = _F(20.0)
_ROUND_SHIFT = _F(12582912.0)  # 1.5 * 2^23, as in bsoc_exp2
# 2^f on [-0.5, 0.5], degree 3 (relative error below 8e-5): the C's BSOC_EXP2_POLY for int16
_EXP2 = [_F(c) for c in ("5.508868396e-02", "2.426040471e-01", "6.932762265e-01",
                         "9.999289513e-01")]
_MINUS_LOG2E = _F("-1.44269504")


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int16 values (as float64, for exact sums) and the scale ``2^-e`` (B, 1) float32 of
    each row of ``x`` (B, n) float32; the C library's ``quantise``."""
    peak = np.abs(x).max(axis=1)
    exponent = np.minimum(141 - ((peak.view(np.int32) >> 23) & 0xFF), 126).astype(np.int32)
    up = ((exponent + 127) << 23).view(_F)[:, None]
    down = ((127 - exponent) << 23).view(_F)[:, None]
    return np.clip(np.rint(x * up), QMIN, QMAX).astype(np.float64), down


def _apply(factor: Factor, x: np.ndarray) -> np.ndarray:
    """``x @ F`` (B, out) float32 the integer way: quantise x, int32 sums, rescale."""
    q, down = quantise(x)
    acc = (q @ factor.values.astype(np.float64)).astype(_F)  # integers below 2^31: exact
    return acc * down if factor.scales is None else acc * (factor.scales * down)


def apply_map(factors: list[Factor], x: np.ndarray) -> np.ndarray:
    for factor in factors:
        x = _apply(factor, x)
    return x


def _exp2(t: np.ndarray) -> np.ndarray:
    u = t + _ROUND_SHIFT
    n = u.view(np.int32) - np.int32(0x4B400000)
    f = t - (u - _ROUND_SHIFT)
    p = f * _EXP2[0] + _EXP2[1]
    for c in _EXP2[2:]:
        p = f * p + c
    return (p.view(np.int32) + n * np.int32(8388608)).view(_F)


def _sigmoid_clamped(x: np.ndarray) -> np.ndarray:
    return _ONE / (_ONE + _exp2(_MINUS_LOG2E * x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The full-integer arithmetic's sigmoid of ``x`` float32 (clamped to +-20 first)."""
    return _sigmoid_clamped(_clamp(x.astype(_F)))


def _clamp(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -_GATE_CLAMP, _GATE_CLAMP)


def check_integer(arrays: NetworkArrays) -> None:
    """Refuse a network the integer arithmetic cannot run exactly."""
    if not arrays.int8:
        raise ModelFileError("a full-integer model needs int8 weights",
                             remedy="quantise the float model with 'bsoc quantize "
                             "--activations int16'")
    wide = max(f.values.shape[0] for f in arrays.factors())
    if wide > MAX_COLUMNS:
        raise ModelFileError(f"a factor takes {wide} inputs: int32 sums could overflow",
                             remedy=f"use layers of at most {MAX_COLUMNS} inputs per factor, or "
                             "weight-only int8")


class IntegerStepper:
    """The reference step of a full-integer network over B streams (state as in
    :class:`~bsoc.nn.streaming.StreamingStepper`: ``concat(h_1, c_1, h_2, c_2, ...)``)."""

    def __init__(self, network: SocNetwork) -> None:
        self.arrays = NetworkArrays.of_network(network)
        check_integer(self.arrays)
        self.state_size = self.arrays.state_size

    @property
    def packed(self) -> Any:
        raise ModelFileError("a full-integer (-w8a16) model has no float kernel to fuse",
                             remedy="fuse its float model or its weight-only -int8 version")

    def advance(self, samples: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One step: ``samples`` (B, 4) float32, ``state`` (B, S) float32 updated in place;
        returns SOC (B,) float32."""
        a = self.arrays
        x = (samples[:, 1:4] - a.mean) / a.std
        offset = 0
        for layer in a.lstm:
            n = layer.hidden
            h, c = state[:, offset : offset + n], state[:, offset + n : offset + 2 * n]
            pre = (apply_map(layer.input_factors, x) + apply_map(layer.recurrent_factors, h)
                   ) + layer.bias
            pre[:, 2 * n : 3 * n] *= _TWO  # tanh(g) = 2 sigmoid(2 g) - 1, as the C computes
            s = _sigmoid_clamped(_clamp(pre))
            c[:] = s[:, n : 2 * n] * c + s[:, :n] * (_TWO * s[:, 2 * n : 3 * n] - _ONE)
            h[:] = s[:, 3 * n :] * (_TWO * _sigmoid_clamped(_clamp(_TWO * c)) - _ONE)
            x = h
            offset += 2 * n
        fc = apply_map(a.fc_factors, x)[:, 0] + a.fc_bias[0]
        return _sigmoid_clamped(_clamp(fc))

    def step(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = states.astype(_F)
        soc = self.advance(samples.astype(_F), state)
        return soc.astype(np.float64), state.astype(np.float64)

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """SOC (N, T) of ``samples`` (N, T, 4) from the zero state."""
        state = np.zeros((samples.shape[0], self.state_size), _F)
        series = samples.astype(_F)
        soc = np.empty(samples.shape[:2])
        for t in range(samples.shape[1]):
            soc[:, t] = self.advance(series[:, t], state)
        return soc


class IntegerLstmEstimator(LstmSocEstimator):
    """A full-integer network (``<kind>-w8a16``) behind the common estimator interface."""

    int16_activations = True  # what NetworkArrays.of reads: its vectors are int16

    def _make_stepper(self, network: SocNetwork) -> IntegerStepper:
        return IntegerStepper(network)
