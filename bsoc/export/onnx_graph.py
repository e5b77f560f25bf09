"""ONNX graphs of a SOC network: the streaming step and the whole sequence.

* ``bsoc_step.onnx``: ``samples`` (B, 4) rows of time_s, voltage_v, current_a,
  temperature_c and ``state`` (B, S) -> ``soc`` (B,) and ``new_state`` (B, S): exactly
  :meth:`bsoc.estimator.SocEstimator.step_batch`, state layout ``concat(h_1, c_1, h_2, c_2)``.
* ``bsoc_sequence.onnx``: ``samples`` (B, T, 4) and ``state`` (B, S) -> ``soc`` (B, T) and
  ``final_state`` (B, S): the step graph as the body of an ONNX ``Scan``, so both graphs
  compute the same equations by construction.

The graphs are written with standard operators only (opset 17), not with ONNX's LSTM
operator, which has no place for a projected layer's factors: each weight map is its chain
of ``MatMul`` (``x @ F_1 @ F_2``), so a projected model keeps its thin factors. An int8
factor is stored as int8 with its per-column scales and dequantised by ``Cast`` and ``Mul``:
the float32 ``q * s`` bsoc defines (``Cast`` alone for a factor without scales). Not by
``DequantizeLinear``, which computes the same, but which ONNX Runtime's optimiser fuses
with the ``MatMul`` into a kernel that also quantises the activations (measured: 2e-3 off
in SOC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bsoc.errors import ModelFileError
from bsoc.compress.arrays import Factor, NetworkArrays

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: runtimes that know this opset read it
STEP_FILE = "bsoc_step.onnx"
SEQUENCE_FILE = "bsoc_sequence.onnx"


class _Graph:
    """Nodes and initializers of one ONNX graph, with fresh value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None,
           **attributes: object) -> str | list[str]:
        names = [name] if name else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    def columns(self, x: str, start: int, stop: int) -> str:
        """``x[:, start:stop]``."""
        return self.op("Slice", x, self.const("start", np.array([start], np.int64)),
                       self.const("stop", np.array([stop], np.int64)),
                       self.const("axis", np.array([1], np.int64)))

    def factor(self, factor: Factor, hint: str) -> str:
        if not factor.int8:
            return self.const(hint, factor.values)
        values = self.op("Cast", self.const(f"{hint}_int8", factor.values), to=TensorProto.FLOAT)
        if factor.scales is None:
            return values
        return self.op("Mul", values, self.const(f"{hint}_scales", factor.scales))

    def apply(self, x: str, factors: list[Factor], hint: str) -> str:
        for k, factor in enumerate(factors):
            x = self.op("MatMul", x, self.factor(factor, f"{hint}_{k}"))
        return x


def _step_nodes(graph: _Graph, arrays: NetworkArrays, samples: str, state: str,
                soc: str, new_state: str) -> None:
    """The nodes of one step, from the value names ``samples`` and ``state`` to ``soc``
    and ``new_state`` (the equations of :meth:`bsoc.nn.layers.Lstm.step`)."""
    features = graph.columns(samples, 1, 4)
    x = graph.op("Div", graph.op("Sub", features, graph.const("mean", arrays.mean)),
                 graph.const("std", arrays.std))
    states, offset = [], 0
    for k, layer in enumerate(arrays.lstm, start=1):
        hidden = layer.hidden
        h = graph.columns(state, offset, offset + hidden)
        c = graph.columns(state, offset + hidden, offset + 2 * hidden)
        offset += 2 * hidden
        gates = graph.op("Add", graph.apply(x, layer.input_factors, f"lstm_{k}_input"),
                         graph.apply(h, layer.recurrent_factors, f"lstm_{k}_recurrent"))
        gates = graph.op("Add", gates, graph.const(f"lstm_{k}_bias", layer.bias))
        i, f, g, o = graph.op("Split", gates, graph.const("split", np.full(4, hidden, np.int64)),
                              outputs=4, axis=1)
        c = graph.op("Add", graph.op("Mul", graph.op("Sigmoid", f), c),
                     graph.op("Mul", graph.op("Sigmoid", i), graph.op("Tanh", g)))
        x = graph.op("Mul", graph.op("Sigmoid", o), graph.op("Tanh", c))
        states += [x, c]
    out = graph.op("Add", graph.apply(x, arrays.fc_factors, "fc"),
                   graph.const("fc_bias", arrays.fc_bias))
    graph.op("Squeeze", graph.op("Sigmoid", out), graph.const("axis", np.array([1], np.int64)),
             name=soc)
    graph.op("Concat", *states, axis=1, name=new_state)


def _value(name: str, *shape: str | int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bsoc", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def step_model(arrays: NetworkArrays) -> onnx.ModelProto:
    """One streaming step for B streams: (samples, state) -> (soc, new_state)."""
    graph = _Graph()
    _step_nodes(graph, arrays, "samples", "state", "soc", "new_state")
    size = arrays.state_size
    return _model(helper.make_graph(
        graph.nodes, "bsoc_step", [_value("samples", "B", 4), _value("state", "B", size)],
        [_value("soc", "B"), _value("new_state", "B", size)], graph.initializers),
        "bsoc SOC network, one streaming step")


def sequence_model(arrays: NetworkArrays) -> onnx.ModelProto:
    """Whole sequences for B streams: (samples (B, T, 4), state) -> (soc (B, T), final_state)."""
    body = _Graph()
    _step_nodes(body, arrays, "sample", "state_in", "soc_t", "state_out")
    size = arrays.state_size
    body_graph = helper.make_graph(
        body.nodes, "bsoc_step_body", [_value("state_in", "B", size), _value("sample", "B", 4)],
        [_value("state_out", "B", size), _value("soc_t", "B")], body.initializers)
    scan = helper.make_node("Scan", ["state", "samples"], ["final_state", "soc"],
                            body=body_graph, num_scan_inputs=1, scan_input_axes=[1],
                            scan_output_axes=[1])
    return _model(helper.make_graph(
        [scan], "bsoc_sequence", [_value("samples", "B", "T", 4), _value("state", "B", size)],
        [_value("soc", "B", "T"), _value("final_state", "B", size)]),
        "bsoc SOC network, whole sequences (Scan of the streaming step)")


def write_onnx(arrays: NetworkArrays, folder: Path, record: dict[str, Any]) -> list[str]:
    """Write both graphs into ``folder``; returns the file names (``record``, what
    ``export.json`` says, goes into the graphs' metadata). A full-integer model is refused:
    its int16 activations are the C target's arithmetic, not ONNX's."""
    if arrays.int16_activations:
        raise ModelFileError(f"{record['kind']} models (int16 activations) export as C only",
                             remedy="export its weight-only -int8 version as ONNX")
    for model, file in ((step_model(arrays), STEP_FILE), (sequence_model(arrays), SEQUENCE_FILE)):
        helper.set_model_props(model, {"bsoc_model": record["name"], "bsoc_kind": record["kind"],
                                       "state_layout": ",".join(record["state_layout"])})
        onnx.save(model, str(folder / file))
    return [STEP_FILE, SEQUENCE_FILE]
