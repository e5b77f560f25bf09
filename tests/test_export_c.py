"""`bsoc export --format c`: the generated C99, compiled with the system compiler, against the
Python estimator step by step over a whole cycle, state carried from call to call."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from edge_models import (ALL_KINDS, cycle_samples, estimator_of_kind, float_estimator,
                         per_output_network, run_cli)
from stream_set import StreamSet

from bsoc.compress.quantize import quantize_network
from bsoc.export import measure
from bsoc.export.write import export_model
from bsoc.nn.estimator import LstmSocEstimator

CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on this machine")
STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
# wide enough that the step's cost follows its MACs, not the per-call overheads of the
# (16, 8) test networks' few short rows
WIDE = (64, 32)
ODD = (42, 22)


def _export(estimator: LstmSocEstimator, tmp_path: Path) -> Path:
    estimator.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "c", "c")
    return tmp_path / "c"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_c_library_computes_what_the_estimator_computes(
    kind: str, tmp_path: Path, toy_dataset: Path,
) -> None:
    estimator = estimator_of_kind(kind)
    samples = cycle_samples(toy_dataset)
    soc, state = measure.host_run(_export(estimator, tmp_path), samples)
    streams = StreamSet(estimator)
    streamed = np.array([streams.step(row) for row in samples])
    assert soc.shape == (len(samples),)
    # int8 models: against bsoc's own int8 arithmetic, to float rounding
    np.testing.assert_allclose(soc, estimator.predict(samples), atol=1e-5, rtol=0)
    np.testing.assert_allclose(soc, streamed, atol=1e-5, rtol=0)
    np.testing.assert_allclose(state, streams.states[0], atol=5e-5, rtol=0)
    assert np.abs(state).max() > 0.1  # the state really moved


@pytest.mark.parametrize("kind", ["lstm", "projected-lstm", "projected-lstm-int8"])
def test_odd_widths_pad_the_last_block_and_leave_rows_over(
    kind: str, tmp_path: Path, toy_dataset: Path,
) -> None:
    """Widths that are not multiples of 4 (a partial block of units) and factors whose rows
    do not fill blocks of sixteen (a rank-21 projector: one block and five rows over)."""
    estimator = float_estimator(kind.removesuffix("-int8"), ODD)
    if kind.endswith("-int8"):
        estimator = LstmSocEstimator(quantize_network(estimator.network), kind=kind, name=kind)
    samples = cycle_samples(toy_dataset, 400)
    soc, state = measure.host_run(_export(estimator, tmp_path), samples)
    streams = StreamSet(estimator)
    for row in samples:
        streams.step(row)
    np.testing.assert_allclose(soc, estimator.predict(samples), atol=1e-5, rtol=0)
    np.testing.assert_allclose(state, streams.states[0], atol=5e-5, rtol=0)
    assert state.shape == (2 * sum(ODD),)


def test_unscaled_last_factors_share_one_gate_gain_table(tmp_path: Path) -> None:
    """A chain's last factor has no scales: an LSTM map's points at the one table of a
    block's gains (repeated by every block), the FC's at ones; a folder with scales on every
    factor keeps a table per factor, per row."""
    source = (_export(estimator_of_kind("projected-lstm-int8"), tmp_path / "new")
              / "bsoc_model.c").read_text()
    assert source.count("static const float gate_gains[16] = {") == 1
    table = source.split("static const float gate_gains[16] = {")[1].split("}")[0]
    gains = [float(v.strip().rstrip("f")) for v in table.split(",") if v.strip()]
    assert gains == [1.0] * 8 + [2.0] * 4 + [1.0] * 4  # gates i, f, g (doubled), o
    for name in ("lstm_1_input", "lstm_1_recurrent", "lstm_2_input", "lstm_2_recurrent"):
        assert f"{name}_1_scales" not in source
        assert f"{{{name}_1, gate_gains, " in source and f"{name}_0_scales, " in source
    assert "static const float fc_1_scales[1] = {\n    1.00000000e+00f,\n};" in source
    old = LstmSocEstimator(per_output_network(float_estimator("projected-lstm").network),
                           kind="projected-lstm-int8")
    source = (_export(old, tmp_path / "old") / "bsoc_model.c").read_text()
    assert "float gate_gains" not in source
    assert "static const float lstm_1_recurrent_1_scales[64]" in source


def _sections(obj: Path) -> dict[str, int]:
    out = subprocess.run(["size", "-A", obj.name], cwd=obj.parent, capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    return {row[0]: int(row[1]) for row in rows if len(row) == 3 and row[0].startswith(".")}


@pytest.mark.skipif(shutil.which("size") is None, reason="binutils' size is not installed")
@pytest.mark.parametrize("kind", ["lstm", "projected-lstm-int8"])
def test_weights_are_read_only_and_ram_is_the_scratch_vectors(kind: str, tmp_path: Path) -> None:
    estimator = estimator_of_kind(kind)
    folder = _export(estimator, tmp_path)
    subprocess.run([CC, *STRICT, "-c", "bsoc_model.c"], cwd=folder, check=True)
    sections = _sections(folder / "bsoc_model.o")
    read_only = sum(size for name, size in sections.items()
                    if name.startswith((".rodata", ".data.rel.ro")))
    assert estimator.weight_bytes() <= read_only <= estimator.weight_bytes() + 1024
    assert sections.get(".data", 0) == 0
    # scratch: the widest projection of an input, and of h (or h itself for a dense map)
    scratch = {"lstm": 1 + 16, "projected-lstm-int8": 8 + 8}[kind]
    assert sections[".bss"] == 4 * scratch


def _probe(folder: Path, body: str, data: str = "", flags: tuple[str, ...] = ()) -> np.ndarray:
    """Run ``body`` (C statements printing numbers) against the library's own functions,
    after ``data`` (C declarations), compiled with ``flags`` too."""
    (folder / "probe.c").write_text(f'#include <stdio.h>\n#include "bsoc_model.c"\n{data}\n'
                                    f"int main(void) {{ {body} return 0; }}\n")
    subprocess.run([CC, *STRICT, *flags, "probe.c", "-o", "probe"], cwd=folder, check=True)
    out = subprocess.run(["./probe"], cwd=folder, capture_output=True, text=True, check=True)
    return np.loadtxt(out.stdout.splitlines())


def test_exp2_and_sigmoid_error_bounds(tmp_path: Path) -> None:
    """The library's own exponential (no libm) over the whole range the gates reach."""
    folder = _export(estimator_of_kind("lstm"), tmp_path)
    x, exp2, sigmoid = _probe(folder, (
        "for (int k = -300000; k <= 300000; ++k) { float x = k * 1e-4f;"
        ' printf("%.9e %.9e %.9e\\n", (double)x, (double)bsoc_exp2(x),'
        " (double)bsoc_sigmoid(x)); }")).T
    assert x[0] == -30.0 and x[-1] == 30.0
    assert np.abs(exp2 / np.exp2(x) - 1).max() < 3e-7
    assert np.abs(sigmoid - 1 / (1 + np.exp(-x))).max() < 2e-7
    assert bool(np.all(np.diff(sigmoid) >= 0))  # monotonic: no step where round(t) changes


def test_portable_sigmoid_clamps_only_where_it_must_yet_equals_the_clamped_one(
    tmp_path: Path,
) -> None:
    """Off x86 a gate's sigmoid skips the clamp where 2^t's rounded exponent says |x| < 20;
    it must still be bsoc_sigmoid bit for bit, at the band's edges (|x| near 19.75 and 20)
    and beyond, and tanh_cell 2 bsoc_sigmoid(2 c) - 1."""
    folder = _export(estimator_of_kind("lstm"), tmp_path)
    out = _probe(folder, (
        "for (int k = -400000; k <= 400000; ++k) { float x = k * 1e-4f;"
        ' printf("%.9e %.9e %.9e %.9e\\n", (double)sigmoid_gate(x), (double)bsoc_sigmoid(x),'
        " (double)tanh_cell(x), (double)(2.0f * bsoc_sigmoid(2.0f * x) - 1.0f)); }"),
        flags=("-DBSOC_PORTABLE",))
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    np.testing.assert_array_equal(out[:, 2], out[:, 3])


def test_cell_update_error_bound(tmp_path: Path) -> None:
    """c' = sigmoid(f) c + sigmoid(i) tanh(g) and h = sigmoid(o) tanh(c'), four units at a
    time as the step calls it (gates clamped, g doubled as its tables store it), against
    float64 over gates and cells far into saturation."""
    folder = _export(estimator_of_kind("lstm"), tmp_path)
    rng = np.random.default_rng(0)
    cases = np.concatenate([rng.uniform(-4, 4, (20000, 5)),
                            rng.uniform(-40, 40, (20000, 5))]).astype(np.float32)
    rows = ",\n".join("{" + ", ".join(f"{v:.9e}f" for v in row) + "}" for row in cases)
    c_out, h_out = _probe(folder, (
        "for (unsigned k = 0; k < sizeof cases / sizeof cases[0]; k += 4) {"
        " float pre[16], c[4], h[4];"
        " for (unsigned u = 0; u < 4; ++u) { c[u] = cases[k + u][4];"
        " for (unsigned g = 0; g < 4; ++g)"
        " pre[4 * g + u] = clamp_gate((g == 2 ? 2.0f : 1.0f) * cases[k + u][g]); }"
        " cell_update(pre, c, h);"
        ' for (unsigned u = 0; u < 4; ++u) printf("%.9e %.9e\\n", (double)c[u], (double)h[u]); }'),
        data=f"static const float cases[][5] = {{\n{rows}}};").T
    gates, cell = cases[:, :4].astype(np.float64), cases[:, 4].astype(np.float64)
    sigmoid = 1 / (1 + np.exp(-gates))
    c = sigmoid[:, 1] * cell + sigmoid[:, 0] * np.tanh(gates[:, 2])
    h = sigmoid[:, 3] * np.tanh(c)
    assert (np.abs(c_out - c) <= 5e-7 * np.maximum(1, np.abs(c))).all()
    assert np.abs(h_out - h).max() < 4e-7


def test_cli_exports_c_with_a_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    estimator_of_kind("projected-lstm-int8").save(tmp_path / "model")
    code, out, err = run_cli(["export", str(tmp_path / "model"), "--format", "c", "--out",
                              str(tmp_path / "c"), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["files"] == ["bsoc_model.h", "bsoc_model.c", "run_cycle.c", "README.md"]
    header = (tmp_path / "c" / "bsoc_model.h").read_text()
    assert "#define BSOC_STATE_SIZE 48" in header and "#define BSOC_WEIGHTS_INT8 1" in header
    assert "float bsoc_step(bsoc_state *state, float voltage_v" in header
    source = (tmp_path / "c" / "bsoc_model.c").read_text()
    assert "malloc" not in source and "math.h" not in source
    readme = (tmp_path / "c" / "README.md").read_text()
    assert "bsoc_step(&cell_state" in readme and "192 bytes" in readme  # 48 floats of state
    assert f"{record['weight_bytes']:,} bytes of weights" in readme


def _skip_without(what: str) -> None:
    missing = measure.missing_tools(what)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: make edge-tools)")


def test_cortex_m4_build_runs_on_qemu_as_in_python(tmp_path: Path, toy_dataset: Path) -> None:
    _skip_without("qemu")
    estimator = estimator_of_kind("projected-lstm-int8")
    samples = cycle_samples(toy_dataset, 300)
    soc, state = measure.qemu_run(_export(estimator, tmp_path), samples, timeout_s=120)
    streams = StreamSet(estimator)
    for row in samples:
        streams.step(row)
    np.testing.assert_allclose(soc, estimator.predict(samples), atol=1e-5, rtol=0)
    np.testing.assert_allclose(state, streams.states[0], atol=5e-5, rtol=0)


def test_cortex_m4_flash_holds_the_weights_and_ram_the_state(tmp_path: Path) -> None:
    _skip_without("cortex-m4")
    estimator = estimator_of_kind("projected-lstm-int8")
    sizes = measure.cortex_m4_sizes(_export(estimator, tmp_path), 48)
    assert sizes["rodata"] >= estimator.weight_bytes() and sizes["data"] == 0
    assert sizes["flash"] == sizes["text"] + sizes["rodata"]
    assert sizes["ram"] == sizes["bss"] + 4 * 48 and sizes["bss"] == 4 * (8 + 8)


def test_qemu_instruction_clock_counts_40_instructions_a_systick(tmp_path: Path) -> None:
    """The Cortex-M4 count's premise: under -icount shift=0 one SysTick tick of the MPS2
    AN386 is 40 instructions; checked on a loop of exactly 1 + 6 x 10,000 instructions."""
    _skip_without("qemu")
    folder = _export(estimator_of_kind("projected-lstm-int8"), tmp_path)
    (folder / "probe.c").write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        "#define CVR (*(volatile uint32_t *)0xE000E018u)\n"
        "int main(void) { *(volatile uint32_t *)0xE000E014u = 0xFFFFFFu; CVR = 0u;"
        " *(volatile uint32_t *)0xE000E010u = 5u; const uint32_t before = CVR;"
        ' __asm volatile("mov r0, #10000\\n1:\\n\\tnop\\n\\tnop\\n\\tnop\\n\\tnop\\n"'
        ' "\\tsubs r0, r0, #1\\n\\tbne 1b" ::: "r0", "cc"); const uint32_t after = CVR;'
        ' printf("ticks %lu\\n", (unsigned long)((before - after) & 0xFFFFFFu)); return 0; }\n')
    ticks = int(measure._qemu(folder, "probe.c", np.zeros((0, 4)), 60, icount=True).split()[1])
    assert abs(measure.INSTRUCTIONS_PER_SYSTICK * ticks - 60_001) <= 2 * 40


def test_cortex_m4_count_grows_with_the_macs(tmp_path: Path, toy_dataset: Path) -> None:
    _skip_without("qemu")
    samples = cycle_samples(toy_dataset, 50)
    models = {kind: float_estimator(kind, WIDE) for kind in ("lstm", "projected-lstm")}
    counts = {kind: measure.cortex_m4_instructions_per_step(
        _export(estimator, tmp_path / kind), samples) for kind, estimator in models.items()}
    assert counts["projected-lstm"] < counts["lstm"]
    assert counts["projected-lstm"] > models["projected-lstm"].macs_per_sample()


def test_callgrind_counts_more_instructions_for_more_macs(tmp_path: Path,
                                                          toy_dataset: Path) -> None:
    _skip_without("callgrind")
    samples = cycle_samples(toy_dataset, 50)
    models = {kind: float_estimator(kind, WIDE) for kind in ("lstm", "projected-lstm")}
    counts = {kind: measure.instructions_per_step(
        _export(estimator, tmp_path / kind), samples) for kind, estimator in models.items()}
    macs = {kind: estimator.macs_per_sample() for kind, estimator in models.items()}
    assert macs["projected-lstm"] < macs["lstm"]
    assert counts["projected-lstm"] < counts["lstm"]
    assert all(count > macs[kind] for kind, count in counts.items())  # at least one per MAC
