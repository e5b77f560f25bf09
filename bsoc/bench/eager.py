"""The same network stepped by plain eager PyTorch, measured beside the lean path.

This is how most people would stream an LSTM: one ``Lstm.step`` per layer per sample,
tensors in and out. Its per-operator framework overhead hides the compressed model's
smaller arithmetic, which is why the service uses :class:`bsoc.nn.streaming.StreamingStepper`;
the benchmark shows both, so the difference is measured, not claimed.
"""

from __future__ import annotations

import numpy as np
import torch

from bsoc.nn.estimator import LstmSocEstimator


class EagerTorchStepper:
    """Streaming steps of an :class:`LstmSocEstimator`'s network in eager PyTorch.

    Same state layout and results as the estimator's own ``step_batch`` (to float32
    rounding); only what the latency measurement needs.
    """

    def __init__(self, estimator: LstmSocEstimator) -> None:
        self.network = estimator.network
        self.initial_state = estimator.initial_state

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        network = self.network
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(samples[:, 1:4], np.float32))
            x = (x - network.input_mean) / network.input_std
            state = torch.from_numpy(np.asarray(states, np.float32))
            new_states, offset = [], 0
            for name in network.lstm_names:
                layer = network.get_submodule(name)
                hidden = layer.hidden_size
                h = state[:, offset : offset + hidden]
                c = state[:, offset + hidden : offset + 2 * hidden]
                x, (h, c) = layer.step(x, (h, c))
                new_states += [h, c]
                offset += 2 * hidden
            soc = torch.sigmoid(network.fc(x))[:, 0]
            return soc.double().numpy(), torch.cat(new_states, dim=1).double().numpy()
