"""A SOC network as generated, dependency-free C99: ``bsoc_model.h`` and ``bsoc_model.c``.

The step code is fixed (``bsoc/export/c/bsoc_model.c.in``: a layer table walked by a few
small loops, readable and the same for every model); what is generated is the tables: the
weights as ``const`` arrays (so they go to flash), the layer descriptions, the
normalisation, and static scratch vectors sized for this model (so RAM is known at link
time and nothing is allocated). A float32 model gives float32 tables, an int8 model
(``bsoc quantize``) int8 tables with their scales; the arithmetic is bsoc's own
(:mod:`bsoc.compress.quantize`), with each row's scale applied once after its dot product.

The tables are laid out for the step's loops (:func:`grouped_rows`): rows in groups of
four interleaved column by column, so that one pass over the input vector computes four
outputs, and an LSTM map's gate rows (and its bias) in unit order, so that a group is the
four gates of one unit.

Numbers are written with nine significant digits, which round-trip float32 exactly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bsoc import __version__
from bsoc.errors import ModelFileError
from bsoc.export.arrays import Factor, NetworkArrays

HEADER_FILE = "bsoc_model.h"
SOURCE_FILE = "bsoc_model.c"
RUNNER_FILE = "run_cycle.c"
README_FILE = "README.md"
_PER_LINE = 8


def _template(name: str) -> str:
    return resources.files("bsoc.export").joinpath("c", name).read_text()


def _numbers(values: np.ndarray) -> str:
    flat = values.ravel()
    if flat.dtype == np.int8:
        words = [str(int(v)) for v in flat]
    else:
        words = [f"{float(v):.8e}f" for v in flat.astype(np.float32)]
    lines = [", ".join(words[k : k + _PER_LINE]) for k in range(0, len(words), _PER_LINE)]
    return "\n".join(f"    {line}," for line in lines)


def _array(c_type: str, name: str, values: np.ndarray) -> str:
    return f"static const {c_type} {name}[{values.size}] = {{\n{_numbers(values)}\n}};"


def unit_order(hidden: int) -> np.ndarray:
    """Row ``g * hidden + j`` (gate g of unit j, PyTorch's order) goes to row ``4 j + g``."""
    return np.arange(4 * hidden).reshape(4, hidden).T.ravel()


def grouped_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` (out, in) as the C loops read them: groups of four rows interleaved column
    by column (``[4 in group + 4 k + r]``), then the ``out % 4`` rows left over."""
    grouped = 4 * (len(rows) // 4)
    groups = rows[:grouped].reshape(-1, 4, rows.shape[1]).transpose(0, 2, 1)
    return np.concatenate([groups.ravel(), rows[grouped:].ravel()])


class _Tables:
    """The C declarations of one model's tables, in the order C needs them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def map(self, name: str, factors: list[Factor], hidden: int | None = None) -> str:
        """Declare a map's factors (rows = outputs, grouped; the last factor's rows in unit
        order for an LSTM map of ``hidden`` units); returns its initializer."""
        if len(factors) > 2:
            raise ModelFileError(f"the map {name} has {len(factors)} factors",
                                 remedy="export dense, projected or SVD maps (at most two)")
        entries = []
        for k, factor in enumerate(factors):
            order = np.arange(factor.values.shape[1])
            if hidden is not None and k == len(factors) - 1:
                order = unit_order(hidden)
            values = factor.values.T[order]  # (out, in): one row per output
            self.lines.append(_array("bsoc_weight", f"{name}_{k}", grouped_rows(values)))
            scales = "NULL"
            if factor.int8:
                scales = f"{name}_{k}_scales"
                self.lines.append(_array("float", scales, factor.scales[order]))
            entries.append(f"{{{name}_{k}, {scales}, {values.shape[0]}, {values.shape[1]}}}")
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


def tables(arrays: NetworkArrays) -> str:
    """Every generated declaration of ``bsoc_model.c``."""
    out = _Tables()
    layers = []
    for k, layer in enumerate(arrays.lstm, start=1):
        input_map = out.map(f"lstm_{k}_input", layer.input_factors, layer.hidden)
        recurrent_map = out.map(f"lstm_{k}_recurrent", layer.recurrent_factors, layer.hidden)
        out.lines.append(_array("float", f"lstm_{k}_bias", layer.bias[unit_order(layer.hidden)]))
        layers.append(f"    {{{input_map}, {recurrent_map}, lstm_{k}_bias, {layer.hidden}}},")
    fc_map = out.map("fc", arrays.fc_factors)
    scratch_input, scratch_recurrent = _scratch_sizes(arrays)
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
        f"static float scratch_input[{scratch_input}];",
        f"static float scratch_recurrent[{scratch_recurrent}];",
        "/* ---- end of generated tables ---- */",
    ])


def write_c(arrays: NetworkArrays, folder: Path, record: dict[str, Any]) -> list[str]:
    """Write the library, the host runner and a README into ``folder`` (``record``: what
    ``export.json`` says of the model); returns the file names."""
    fields = {"@VERSION@": __version__, "@NAME@": record["name"], "@KIND@": record["kind"],
              "@STATE_SIZE@": str(arrays.state_size), "@INT8@": str(int(arrays.int8)),
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
