"""The checkpoint of a training run: everything :func:`bsoc.train.fit` needs to resume.

Safetensors (weights, best weights, AdamW moments, the weight average if any) plus JSON
(everything else); no pickle.
Both files are written completely before either replaces its predecessor, so a run killed
while saving resumes from the previous epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bsoc.errors import ConfigError
from bsoc.nn.network import SocNetwork
from bsoc.outputs import save_tensors

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (all but time and threads)."""
    free = ("max_minutes", "threads")
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in free}))


class Checkpoint:
    """Safetensors (weights, best weights, AdamW moments, weight average) + JSON (the rest)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def exists(self) -> bool:
        return (self.directory / CHECKPOINT_STATE).is_file()

    def save(self, network: SocNetwork, best: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, state: dict[str, Any],
             average: dict[str, torch.Tensor]) -> None:  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().clone() for k, v in network.state_dict().items()}
        tensors.update({f"best.{k}": v.clone() for k, v in best.items()})
        tensors.update({f"average.{k}": v.clone() for k, v in average.items()})
        optim_state = optimizer.state_dict()
        for index, moments in optim_state["state"].items():
            for key, value in moments.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).reshape(-1).clone()
        state = {**state, "param_groups": optim_state["param_groups"]}
        save_tensors(tensors, self.directory / (CHECKPOINT_WEIGHTS + ".tmp"))
        (self.directory / (CHECKPOINT_STATE + ".tmp")).write_text(json.dumps(state, indent=1))
        for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_STATE):  # both complete, then both swapped
            (self.directory / (name + ".tmp")).replace(self.directory / name)

    def load(self, network: SocNetwork, optimizer: torch.optim.Optimizer,
             config: dict[str, Any], as_recorded: Callable[[dict[str, Any]], dict[str, Any]],
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
        """Restore ``network`` and ``optimizer``; return the best weights, the saved state and
        the weight average (empty if the run keeps none).

        ``config`` (the run's ``TrainConfig.to_json()``) must match the checkpoint's in all
        but time and threads; ``as_recorded`` reads the checkpoint's config as the run's
        would be written (fields added since the checkpoint take their defaults).
        """
        state = json.loads((self.directory / CHECKPOINT_STATE).read_text())
        if _resumable(as_recorded(state["config"])) != _resumable(config) or state[
            "architecture"
        ] != network.architecture():
            raise ConfigError(
                f"the checkpoint in {self.directory} was made with other settings",
                remedy="resume with the same profile/options, or train afresh with --force",
            )
        tensors = load_file(str(self.directory / CHECKPOINT_WEIGHTS))
        network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        average = {k[8:]: v for k, v in tensors.items() if k.startswith("average.")}
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                moments.setdefault(int(index), {})[name] = (
                    value.reshape(()) if name == "step" else value.reshape(-1)
                )
        shapes = [p.shape for p in network.parameters()]
        optimizer.load_state_dict({
            "state": {i: {k: (v if k == "step" else v.reshape(shapes[i])) for k, v in m.items()}
                      for i, m in moments.items()},
            "param_groups": state["param_groups"],
        })
        return best, state, average
