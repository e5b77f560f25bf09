"""A SOC network as generated, dependency-free C99: ``bsoc_model.h`` and ``bsoc_model.c``.

The step code is fixed (``bsoc/export/c/bsoc_model.c.in``: a layer table walked by a few
small loops, readable and the same for every model); what is generated is the tables: the
weights as ``const`` arrays (so they go to flash), the layer descriptions, the
normalisation, and static scratch vectors sized for this model (so RAM is known at link
time and nothing is allocated). A float32 model gives float32 tables, an int8 model
(``bsoc quantize``) int8 tables with their scales; the arithmetic is bsoc's own
(:mod:`bsoc.compress.quantize`), with each row's scale applied once after its dot product.
A full-integer model (``-w8a16``, :mod:`bsoc.compress.integer`) has its int8 weights laid
out for int16 x int8 multiply-adds in pairs (:func:`grouped_pairs`), each stored as the byte
weight + 128 (:data:`BYTE_OFFSET`: zero-extending a byte costs SSE2 one instruction,
sign-extending it two), and int16 scratch vectors.

The tables are laid out for the step's loops (:func:`blocked_rows`): rows in blocks of
sixteen interleaved column by column, so that one pass over the input vector computes
sixteen outputs, and an LSTM map's gate rows (and its bias) in blocks of four units,
gate-major (:func:`gate_blocks`), so that a block is four units' gates.

Numbers are written with nine significant digits, which round-trip float32 exactly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bsoc import __version__
from bsoc.errors import ModelFileError
from bsoc.compress.arrays import Factor, NetworkArrays

HEADER_FILE = "bsoc_model.h"
SOURCE_FILE = "bsoc_model.c"
RUNNER_FILE = "run_cycle.c"
README_FILE = "README.md"
_PER_LINE = 8


def _template(name: str) -> str:
    return resources.files("bsoc.export").joinpath("c", name).read_text()


def _numbers(values: np.ndarray) -> str:
    flat = values.ravel()
    if flat.dtype in (np.int8, np.uint8):
        words = [str(int(v)) for v in flat]
    else:
        words = [f"{float(v):.8e}f" for v in flat.astype(np.float32)]
    lines = [", ".join(words[k : k + _PER_LINE]) for k in range(0, len(words), _PER_LINE)]
    return "\n".join(f"    {line}," for line in lines)


def _array(c_type: str, name: str, values: np.ndarray, attribute: str = "") -> str:
    return (f"static const {c_type} {name}[{values.size}]{attribute} = "
            f"{{\n{_numbers(values)}\n}};")


BLOCK_ROWS = 16
GROUP_ROWS = 4  # a full-integer factor's rows go in groups of four
BYTE_OFFSET = 128  # a full-integer weight w is stored as the byte w + 128
UNITS_PER_BLOCK = 4
GATE_GAINS = "gate_gains"  # one block's gains: the scales of a gate map's unscaled last factor


def gate_blocks(hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """The C row order of an LSTM map's ``4 hidden`` gate rows (PyTorch's order: row
    ``g * hidden + j`` is gate g of unit j) and what each C row is stored times.

    Order: blocks of four units, gate-major (C row ``16 b + 4 g + u`` is gate g of unit
    ``4 b + u``); -1 marks a padding row of the last block when ``hidden`` is not a multiple
    of four. Gain: 2 for the cell input g, whose tanh the C computes as ``2 sigmoid(2 g) -
    1``, 1 for the other gates; doubling is exact in floating point, so the tables stay
    bsoc's arithmetic."""
    blocks = -(-hidden // UNITS_PER_BLOCK)
    unit = np.arange(blocks * UNITS_PER_BLOCK).reshape(blocks, 1, UNITS_PER_BLOCK)
    gate = np.arange(4).reshape(1, 4, 1)
    order = np.where(unit < hidden, gate * hidden + unit, -1).ravel()
    gains = np.broadcast_to(np.where(gate == 2, 2.0, 1.0), (blocks, 4, UNITS_PER_BLOCK))
    return order, gains.astype(np.float32).ravel()


def _take_rows(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``values[order]`` along the first axis, zeros where ``order`` is -1."""
    rows = values[np.maximum(order, 0)]
    rows[order < 0] = 0
    return rows


def blocked_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` (out, in) as the C loops read them: blocks of sixteen rows interleaved column
    by column (``[16 in block + 16 k + r]``), then the ``out % 16`` rows left over."""
    blocked = BLOCK_ROWS * (len(rows) // BLOCK_ROWS)
    blocks = rows[:blocked].reshape(-1, BLOCK_ROWS, rows.shape[1]).transpose(0, 2, 1)
    return np.concatenate([blocks.ravel(), rows[blocked:].ravel()])


def _padded(n: int) -> int:
    return -(-n // GROUP_ROWS) * GROUP_ROWS


def grouped_pairs(rows: np.ndarray) -> np.ndarray:
    """``rows`` (out, in) as a full-integer factor's C loops read them: columns padded with
    zeros to a multiple of four; per group of four rows, per column quad k..k+3, each row's
    four bytes in the order ``k, k+2, k+1, k+3`` (row 0's, then rows 1, 2, 3's); then the
    ``out % 4`` rows left over, row by row."""
    padded = np.pad(rows, ((0, 0), (0, _padded(rows.shape[1]) - rows.shape[1])))
    grouped = GROUP_ROWS * (len(rows) // GROUP_ROWS)
    groups, cols = grouped // GROUP_ROWS, padded.shape[1]
    # [group, row, column quad, column in quad] -> group, column quad, row, k k+2 k+1 k+3
    quads = padded[:grouped].reshape(groups, GROUP_ROWS, cols // 4, 4).transpose(0, 2, 1, 3)
    return np.concatenate([quads[..., [0, 2, 1, 3]].ravel(), padded[grouped:].ravel()])


class _Tables:
    """The C declarations of one model's tables, in the order C needs them."""

    def __init__(self, integer: bool = False) -> None:
        self.lines: list[str] = []
        self.integer = integer
        self._gate_gains = False

    def _scales(self, name: str, factor: Factor, order: np.ndarray, gains: np.ndarray,
                gated: bool) -> tuple[str, int]:
        """An int8 factor's scales table (per C row, gains folded in) and whether it repeats
        every block of sixteen rows: the one :data:`GATE_GAINS` table for an LSTM map's last
        factor without scales; a table of ones for another factor without scales."""
        if factor.scales is None and gated:
            if not self._gate_gains:
                self.lines.append(_array("float", GATE_GAINS, gains[:BLOCK_ROWS]))
                self._gate_gains = True
            return GATE_GAINS, 1
        scales = np.ones(len(order), np.float32) if factor.scales is None else factor.scales
        self.lines.append(_array("float", f"{name}_scales", _take_rows(scales, order) * gains))
        return f"{name}_scales", 0

    def map(self, name: str, factors: list[Factor], hidden: int | None = None) -> str:
        """Declare a map's factors (rows = outputs, blocked; the last factor's rows in gate
        blocks for an LSTM map of ``hidden`` units); returns its initializer."""
        if len(factors) > 2:
            raise ModelFileError(f"the map {name} has {len(factors)} factors",
                                 remedy="export dense, projected or SVD maps (at most two)")
        entries = []
        for k, factor in enumerate(factors):
            order = np.arange(factor.values.shape[1])
            gains = np.ones(len(order), np.float32)
            gated = hidden is not None and k == len(factors) - 1
            if gated:
                order, gains = gate_blocks(hidden)
            values = _take_rows(factor.values.T, order)  # (out, in): one row per output
            scales, repeats = "NULL", 0
            if factor.int8:
                scales, repeats = self._scales(f"{name}_{k}", factor, order, gains, gated)
            else:
                values = values * gains[:, None]
            rows, cols = values.shape
            if self.integer:
                stored = grouped_pairs(values).astype(np.int16) + BYTE_OFFSET
                table, cols = stored.astype(np.uint8), _padded(cols)
            else:
                table = blocked_rows(values)
            self.lines.append(_array("bsoc_weight", f"{name}_{k}", table,
                                     " BSOC_ALIGNED" if self.integer else ""))
            entries.append(f"{{{name}_{k}, {scales}, {rows}, {cols}, {repeats}}}")
        self.lines.append(f"static const bsoc_factor {name}_factors[{len(factors)}] = "
                          f"{{{', '.join(entries)}}};")
        return f"{{{name}_factors, {len(factors)}}}"


def _scratch_sizes(arrays: NetworkArrays) -> tuple[int, int]:
    """Floats of the scratch vectors: an input map's projection (or the FC's), and a
    recurrent map's projection or copy of ``h`` (which the step overwrites as it goes)."""
    inputs = [f[0].values.shape[1] for f in
              [layer.input_factors for layer in arrays.lstm] + [arrays.fc_factors] if len(f) > 1]
    recurrent = [layer.recurrent_factors[0].values.shape[1] if len(layer.recurrent_factors) > 1
                 else layer.hidden for layer in arrays.lstm]
    return max(inputs, default=1), max(recurrent)


def _integer_scratch(arrays: NetworkArrays) -> list[str]:
    """A full-integer model's scratch vectors: a first factor's float output, its int16
    input (``q_wide``), and the int16 inputs of the last factors of the input maps (and the
    FC's) and of the recurrent maps, each padded to a multiple of four, the int16 ones
    8-byte aligned (``BSOC_ALIGNED``: the Cortex-M4 loop loads them by LDRD, as it does the
    int8 tables)."""
    inputs = [layer.input_factors for layer in arrays.lstm] + [arrays.fc_factors]
    recurrent = [layer.recurrent_factors for layer in arrays.lstm]
    firsts = [f[0] for f in inputs + recurrent if len(f) > 1]

    def widest(factors: list[Factor]) -> int:
        return max((_padded(f.values.shape[0]) for f in factors), default=GROUP_ROWS)

    return [f"static float scratch_input[{max((f.values.shape[1] for f in firsts), default=1)}];",
            f"static int16_t q_wide[{widest(firsts)}] BSOC_ALIGNED;",
            f"static int16_t q_input[{widest([f[-1] for f in inputs])}] BSOC_ALIGNED;",
            f"static int16_t q_recurrent[{widest([f[-1] for f in recurrent])}] BSOC_ALIGNED;"]


def tables(arrays: NetworkArrays) -> str:
    """Every generated declaration of ``bsoc_model.c``."""
    out = _Tables(arrays.int16_activations)
    layers = []
    width = len(arrays.mean)
    for k, layer in enumerate(arrays.lstm, start=1):
        input_map = out.map(f"lstm_{k}_input", layer.input_factors, layer.hidden)
        recurrent_map = out.map(f"lstm_{k}_recurrent", layer.recurrent_factors, layer.hidden)
        order, gains = gate_blocks(layer.hidden)
        out.lines.append(_array("float", f"lstm_{k}_bias", _take_rows(layer.bias, order) * gains,
                                " BSOC_ALIGNED16" if arrays.int16_activations else ""))
        layers.append(f"    {{{input_map}, {recurrent_map}, lstm_{k}_bias, {layer.hidden}, "
                      f"{width}}},")
        width = layer.hidden
    fc_map = out.map("fc", arrays.fc_factors)
    if arrays.int16_activations:
        scratch = _integer_scratch(arrays)
    else:
        scratch = [f"static float scratch_input[{_scratch_sizes(arrays)[0]}];",
                   f"static float scratch_recurrent[{_scratch_sizes(arrays)[1]}];"]
    return "\n".join([
        "/* ---- generated tables ---- */",
        f"#define BSOC_LAYERS {len(arrays.lstm)}",
        _array("float", "norm_mean", arrays.mean),
        _array("float", "norm_std", arrays.std),
        *out.lines,
        "static const bsoc_lstm layers[BSOC_LAYERS] = {\n" + "\n".join(layers) + "\n};",
        f"static const bsoc_map fc_map = {fc_map};",
        f"static const float fc_bias = {float(arrays.fc_bias[0]):.8e}f;",
        "/* scratch vectors (RAM): projections of the layer inputs, copies of h */",
        *scratch,
        "/* ---- end of generated tables ---- */",
    ])


def write_c(arrays: NetworkArrays, folder: Path, record: dict[str, Any]) -> list[str]:
    """Write the library, the host runner and a README into ``folder`` (``record``: what
    ``export.json`` says of the model); returns the file names."""
    fields = {"@VERSION@": __version__, "@NAME@": record["name"], "@KIND@": record["kind"],
              "@STATE_SIZE@": str(arrays.state_size), "@INT8@": str(int(arrays.int8)),
              "@INT16@": str(int(arrays.int16_activations)),
              "@ACTIVATIONS@": record["activations"],
              "@STATE_BYTES@": str(4 * arrays.state_size), "@WEIGHTS@": record["weights"],
              "@WEIGHT_BYTES@": f"{record['weight_bytes']:,}",
              "@MACS@": f"{record['macs_per_sample']:,}",
              "@LAYOUT@": ", ".join(record["state_layout"]), "@TABLES@": tables(arrays)}
    for file in (HEADER_FILE, SOURCE_FILE, README_FILE):
        text = _template(f"{file}.in")
        for marker, value in fields.items():
            text = text.replace(marker, value)
        (folder / file).write_text(text)
    (folder / RUNNER_FILE).write_text(_template(RUNNER_FILE))
    return [HEADER_FILE, SOURCE_FILE, RUNNER_FILE, README_FILE]
