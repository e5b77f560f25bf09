"""The activations neuron PCA decomposes: where they are, and the network run that yields them.

Sites, per layer (named ``<layer>.<what the map reads>``, see ``Lstm.map_reads``):

* ``lstm_k.input``  the inputs x_t of LSTM layer k (normalised features for k = 1);
* ``lstm_k.output`` its hidden states h_t (what its recurrent weights see as h_{t-1});
* ``fc.input``      the inputs of the fully connected layer.

In evaluation mode dropout is the identity, so ``lstm_{k+1}.input`` *is* ``lstm_k.output``
and ``fc.input`` is the last LSTM's output: each distinct activation is produced once and
shared by its aliases (MATLAB's Table 1 has the same rank, 11, for both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from bsoc.data.windows import SequenceSet
from bsoc.nn.network import SocNetwork


def site_aliases(network: SocNetwork) -> dict[str, str]:
    """Every site -> the distinct activation it reads (``lstm_2.input`` -> ``lstm_1.output``)."""
    names = network.lstm_names
    aliases = {f"{names[0]}.input": f"{names[0]}.input"}
    for k, name in enumerate(names):
        aliases[f"{name}.output"] = f"{name}.output"
        if k > 0:
            aliases[f"{name}.input"] = f"{names[k - 1]}.output"
    aliases["fc.input"] = f"{names[-1]}.output"
    return aliases


def site_widths(network: SocNetwork) -> dict[str, int]:
    """Neurons of every distinct activation."""
    widths = {}
    for name in network.lstm_names:
        lstm = network.get_submodule(name)
        widths[f"{name}.input"], widths[f"{name}.output"] = lstm.input_size, lstm.hidden_size
    return {source: widths[source] for source in sorted(set(site_aliases(network).values()))}


def stream_activations(
    network: SocNetwork, sequences: SequenceSet, *, batch_size: int, chunk_steps: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``network`` (as it is: put it in eval mode) over every sequence, from a zero state.

    Yields, chunk by chunk, ``{activation: (N, neurons)}`` of the time steps that are not
    padding. Sequences are batched by length and run in time chunks of ``chunk_steps`` with
    the LSTM states carried over, so memory stays bounded on long cycles; the order is
    fixed, so the output is deterministic. ``on_progress(done, total)`` counts time steps.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Callable:
        return lambda module, args, output: captured.__setitem__(f"{name}.input", args[0])

    def keep_output(name: str) -> Callable:
        return lambda module, args, output: captured.__setitem__(f"{name}.output", output[0])

    first = network.lstm_names[0]
    hooks = [network.get_submodule(first).register_forward_hook(keep_input(first))]
    hooks += [network.get_submodule(n).register_forward_hook(keep_output(n))
              for n in network.lstm_names]
    sources = list(site_widths(network))
    order = np.argsort(-sequences.lengths, kind="stable")  # similar lengths share a batch
    total, done = int(sequences.lengths.sum()), 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                lengths = sequences.lengths[batch]
                x = np.zeros((len(batch), int(lengths.max()), sequences.features[0].shape[1]),
                             np.float32)
                for row, index in enumerate(batch):
                    x[row, : lengths[row]] = sequences.features[index]
                states = None
                for t0 in range(0, x.shape[1], chunk_steps):
                    chunk = torch.from_numpy(x[:, t0 : t0 + chunk_steps])  # (B, T, 3)
                    _, states = network(chunk, states)
                    steps = t0 + np.arange(chunk.shape[1])
                    valid = steps[None, :] < lengths[:, None]  # (B, T): not padding
                    yield {source: captured[source].numpy()[valid] for source in sources}
                    done += int(valid.sum())
                    if on_progress is not None:
                        on_progress(done, total)
    finally:
        for hook in hooks:
            hook.remove()
