"""The same network stepped by ONNX Runtime: the peer runtime the benchmark measures bsoc against.

A user who wants speed could export the model (``bsoc export --format onnx``) and run its
step graph in ONNX Runtime instead of bsoc. :class:`OrtStepper` does exactly that, with the
graph :func:`bsoc.export.onnx_graph.step_model` writes (state in, state out), so the
benchmark's ratios say what bsoc's own path is worth against that choice. The session's
threads are fixed (``INTRA_OP_THREADS``, as many as torch uses on this machine, one stream
of operators) and recorded, so a ratio never hides a thread count.

onnxruntime is optional (the ``export`` extra): :func:`missing` says why the peer cannot
run, and the benchmark records that instead of a figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bsoc.nn.estimator import LstmSocEstimator

INTRA_OP_THREADS = 2
INTER_OP_THREADS = 1


def missing() -> str | None:
    """Why ONNX Runtime cannot be measured here, or None when it can."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install 'bsoc[export]')"
    return None


def session_settings() -> dict[str, Any]:
    """What benchmark.json records of the sessions: version, threads, provider, graph."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "intra_op_threads": INTRA_OP_THREADS,
            "inter_op_threads": INTER_OP_THREADS, "execution_mode": "sequential",
            "providers": ["CPUExecutionProvider"], "graph_optimization": "all",
            "graph": "bsoc_step.onnx as 'bsoc export --format onnx' writes it"}


class OrtStepper:
    """Streaming steps of an :class:`LstmSocEstimator`'s network in an ONNX Runtime session.

    Same interface as the estimator's ``step_batch``, in ONNX Runtime's own float32: the
    samples are converted (they arrive as float64 rows), the state and SOC are returned as
    the session gives them, so carried state costs no conversion, as it would not for a
    user of the exported graph.
    """

    def __init__(self, estimator: LstmSocEstimator) -> None:
        import onnxruntime

        from bsoc.compress.arrays import NetworkArrays
        from bsoc.export.onnx_graph import step_model

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = INTER_OP_THREADS
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        graph = step_model(NetworkArrays.of(estimator)).SerializeToString()
        self.session = onnxruntime.InferenceSession(graph, options,
                                                    providers=["CPUExecutionProvider"])
        self.initial_state = estimator.initial_state

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        soc, new_states = self.session.run(None, {
            "samples": np.ascontiguousarray(samples, np.float32),
            "state": np.ascontiguousarray(states, np.float32)})
        return soc, new_states
