"""Full-integer (-w8a16) models: bsoc's reference arithmetic and the exported C library
compiled with the system compiler agree bit for bit over a test cycle, state carried."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from edge_models import cycle_samples, float_estimator, per_output_network
from stream_set import StreamSet

from bsoc.compress.integer import IntegerLstmEstimator, quantise, sigmoid
from bsoc.compress.quantize import quantize_network
from bsoc.estimator import load_estimator
from bsoc.export import measure
from bsoc.export.write import export_model

CC = shutil.which("gcc") or shutil.which("cc")
ODD = (42, 22)


def integer_estimator(kind: str, hidden: tuple[int, ...] = (16, 8), *,
                      per_output: bool = False) -> IntegerLstmEstimator:
    """A -w8a16 model of ``kind``; with ``per_output``, in the format of older folders (every
    factor with its own per-output scales)."""
    source = float_estimator(kind, hidden)
    quantize = per_output_network if per_output else quantize_network
    return IntegerLstmEstimator(quantize(source.network), kind=f"{kind}-w8a16", name=kind)


def test_quantise_puts_the_peak_in_the_top_octave_exactly() -> None:
    x = np.array([[0.3, -1.7, 0.0, 1e-3], [0.0, 0.0, 0.0, 0.0], [40.0, -40.0, 2.0, 5.0]],
                 np.float32)
    q, down = quantise(x)
    assert np.abs(q).max(axis=1).tolist() == [27853.0, 0.0, 20480.0]  # 1.7 2^14, 40 2^9
    assert down.ravel().tolist() == [2.0**-14, 2.0**-126, 2.0**-9]
    assert (np.abs(q * down - x) <= down / 2).all()


def test_quantise_rounds_ties_to_even_and_saturates_only_32768() -> None:
    ties = np.array([[1.0, 2.5 / 2**14, 3.5 / 2**14, -2.5 / 2**14]], np.float32)  # 2^e = 2^14
    assert quantise(ties)[0].tolist() == [[16384.0, 2.0, 4.0, -2.0]]
    top = np.array([[1.99999, -1.99999]], np.float32)  # x 2^14 = +-32767.8
    assert quantise(top)[0].tolist() == [[32767.0, -32768.0]]


def _quantise_cases() -> np.ndarray:
    """Rows of fifteen (a SIMD loop's eight, a SIMD step of four, then a scalar tail of
    three) with ties, the top of the octave, zeros and random values over many scales."""
    rng = np.random.default_rng(1)
    tie = 1 / 2**14
    rows = [[1.0, 2.5 * tie, 3.5 * tie, -2.5 * tie, -1.5 * tie, 0.5 * tie, 0.0, -1.99999,
             1.5 * tie, -0.5 * tie, 2.5 * tie, -3.5 * tie, 1.99999, 0.5 * tie, -1.5 * tie],
            [1.99999, -1.99999, 0.0, 1.0, -1.99999, 1.99999, -0.5, -1.99999, -1.99999,
             -1.99999, 1.99999, 1.99999, -1.99999, 1.99999, -1.99999], [0.0] * 15]
    rows += list(rng.normal(size=(40, 15)) * 10.0 ** rng.integers(-6, 6, (40, 1)))
    return np.array(rows, np.float32)


@pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on this machine")
@pytest.mark.parametrize("flags", [[], ["-DBSOC_PORTABLE"]])
def test_c_quantise_equals_the_reference(flags: list[str], tmp_path: Path) -> None:
    """q, its padding to four, 2^-e, and where the sums over the stored bytes w + 128 start:
    -128 sum(q)."""
    integer_estimator("projected-lstm").save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "c", "c")
    cases = _quantise_cases()
    rows = ",\n".join("{" + ", ".join(f"{v:.9e}f" for v in row) + "}" for row in cases)
    (tmp_path / "c" / "probe.c").write_text(
        '#include <stdio.h>\n#include "bsoc_model.c"\n'
        f"static const float cases[][15] = {{\n{rows}}};\n"
        "int main(void) { for (unsigned k = 0; k < sizeof cases / sizeof cases[0]; ++k) {"
        " int16_t q[16]; bsoc_quantised v = quantise(cases[k], 15, q);"
        ' for (unsigned m = 0; m < 16; ++m) printf("%d ", q[m]);'
        ' printf("%.9e %ld\\n", (double)v.down, (long)v.start); } return 0; }\n')
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", *flags,
                    "probe.c", "-o", "probe"], cwd=tmp_path / "c", check=True)
    out = subprocess.run(["./probe"], cwd=tmp_path / "c", capture_output=True, text=True,
                         check=True).stdout
    got = np.loadtxt(out.splitlines())
    q, down = quantise(cases)
    np.testing.assert_array_equal(got[:, :15], q)
    assert (got[:, 15] == 0).all()  # the padding to four
    np.testing.assert_array_equal(got[:, 16].astype(np.float32), down[:, 0])
    np.testing.assert_array_equal(got[:, 17], -128 * q.sum(axis=1))


def test_sigmoid_and_tanh_stay_within_their_stated_error() -> None:
    """The degree-3 exp2 of the full-integer sigmoid (the C's, bit for bit, by the tests
    below): within 2e-5 of sigmoid and, as 2 sigmoid(2 x) - 1, 4e-5 of tanh, clamp included."""
    x = np.linspace(-30.0, 30.0, 1_200_001).astype(np.float32)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.abs(sigmoid(x) - exact).max() <= 2e-5
    tanh = 2.0 * sigmoid(2.0 * x).astype(np.float64) - 1.0
    assert np.abs(tanh - np.tanh(x.astype(np.float64))).max() <= 4e-5


def test_predict_streams_save_and_reload_agree(tmp_path: Path, toy_dataset: Path) -> None:
    estimator = integer_estimator("projected-lstm")
    samples = cycle_samples(toy_dataset, 300)
    streams = StreamSet(estimator)
    streamed = np.array([streams.step(row) for row in samples])
    np.testing.assert_array_equal(streamed, estimator.predict(samples))
    estimator.save(tmp_path / "model")
    again = load_estimator(tmp_path / "model")
    assert isinstance(again, IntegerLstmEstimator) and again.kind == "projected-lstm-w8a16"
    np.testing.assert_array_equal(again.predict(samples), streamed)
    # close to the float model it was quantised from (int16 steps are 1/32767 of the peak)
    float_soc = float_estimator("projected-lstm").predict(samples)
    assert np.abs(streamed - float_soc).max() < 0.05


@pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on this machine")
@pytest.mark.parametrize(("kind", "hidden", "per_output"), [
    ("lstm", (16, 8), False), ("projected-lstm", ODD, False), ("svd-lstm", (16, 8), False),
    ("projected-lstm", ODD, True)])
def test_c_library_equals_the_reference_bit_for_bit(
    kind: str, hidden: tuple[int, ...], per_output: bool, tmp_path: Path, toy_dataset: Path,
) -> None:
    estimator = integer_estimator(kind, hidden, per_output=per_output)
    estimator.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "c", "c")
    samples = cycle_samples(toy_dataset, 600)
    soc, state = measure.host_run(tmp_path / "c", samples)  # SSE2 on x86
    streams = StreamSet(estimator)
    for row in samples:
        streams.step(row)
    # the C prints float32 values to nine digits, which round-trip exactly
    np.testing.assert_array_equal(soc.astype(np.float32), estimator.predict(samples).astype(
        np.float32))
    np.testing.assert_array_equal(state.astype(np.float32), streams.states[0].astype(np.float32))
    assert np.abs(state).max() > 0.1
    # the portable loops (no SIMD) compute the same integers
    folder = tmp_path / "c"
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    "-DBSOC_PORTABLE", "bsoc_model.c", "run_cycle.c", "-o",
                    "portable"], cwd=folder, check=True)
    run = subprocess.run(["./portable"], cwd=folder, input=measure.sample_lines(samples),
                         capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(measure.parse_run(run.stdout)[0], soc)


def test_cortex_m4_build_on_qemu_equals_the_reference(tmp_path: Path, toy_dataset: Path) -> None:
    """The SMLAD/SXTB16 loops of the Cortex-M4 build compute the reference's integers."""
    missing = measure.missing_tools("qemu")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: make edge-tools)")
    estimator = integer_estimator("projected-lstm", ODD)
    estimator.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "c", "c")
    samples = cycle_samples(toy_dataset, 200)
    soc, _ = measure.qemu_run(tmp_path / "c", samples, timeout_s=120)
    np.testing.assert_array_equal(soc.astype(np.float32),
                                  estimator.predict(samples).astype(np.float32))
