"""A moving average of a network's weights over the last optimiser steps (Polyak averaging).

The full profile takes few, large steps (25 an epoch), so the weights after any one step
carry that step's batch in them; the average over roughly the last ``1 / (1 - decay)``
steps is a smoother estimate of the same minimum, for one multiply-add per weight and step.
Validation judges the average and training keeps it, while the optimiser goes on from its
own weights. The first steps are debiased (the decay grows as ``(1 + t) / (10 + t)`` up to
``decay``), so the average forgets the starting weights within a few steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bsoc.nn.network import SocNetwork


class WeightAverage:
    """The exponential moving average of ``network``'s parameters (buffers are not averaged)."""

    def __init__(self, network: SocNetwork, decay: float, steps: int = 0) -> None:
        self.decay, self.steps = decay, steps
        self.weights = {name: p.detach().clone() for name, p in network.named_parameters()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    def update(self, network: SocNetwork) -> None:
        """Fold in the weights after one more optimiser step."""
        self.steps += 1
        keep = self.decay_at(self.steps)
        with torch.no_grad():
            for name, p in network.named_parameters():
                self.weights[name].mul_(keep).add_(p.detach(), alpha=1.0 - keep)

    @contextmanager
    def applied(self, network: SocNetwork) -> Iterator[SocNetwork]:
        """Inside the block ``network`` holds the average; afterwards its own weights again."""
        own = copy.deepcopy(network.state_dict())
        network.load_state_dict({**own, **self.weights})
        try:
            yield network
        finally:
            network.load_state_dict(own)
