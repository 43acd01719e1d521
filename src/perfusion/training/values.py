"""o*_V as it is trained: a free vector per cross-attention layer, or the value of a trained encoding.

The paper trains o*_V freely, one vector per layer. On a small model a free o*_V can leave the values the UNet ever
read (noise squares, docs/method.md). The alternatives keep it a value some text encoding would give:

- ``free``: o*_V itself, per layer (the paper);
- ``encoding``: o*_V = W_V e, with a trained encoding e per layer;
- ``shared-encoding``: o*_V = W_V e, with one trained encoding e for every layer, as a word's encoding reaches them
  all.

Each encoding starts at i*_super, so every mode starts at o*_V = W_V i*_super.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from perfusion.pipeline.plans import linear_part

ValueSpace = Literal["free", "encoding", "shared-encoding"]
VALUE_SPACES: tuple[str, ...] = get_args(ValueSpace)
SHARED = "shared"  # the one encoding's name in shared-encoding mode


def check_value_space(space: str) -> None:
    if space not in VALUE_SPACES:
        raise ValueError(f"value_space must be one of {', '.join(VALUE_SPACES)}, got {space!r}")


class TrainedValues:
    """The trained tensors behind o*_V, and the o*_V of each layer they give."""

    def __init__(self, space: ValueSpace, attentions: dict[str, torch.nn.Module], supercategory: torch.Tensor):
        check_value_space(space)
        self.space, self.attentions = space, attentions
        start = supercategory.detach().float()
        if space == "free":
            with torch.no_grad():
                self.parameters = {name: torch.nn.Parameter(self.value(name, start)) for name in attentions}
        elif space == "encoding":
            self.parameters = {name: torch.nn.Parameter(start.clone()) for name in attentions}
        else:
            self.parameters = {SHARED: torch.nn.Parameter(start.clone())}

    def value(self, name: str, encoding: torch.Tensor) -> torch.Tensor:
        # o*_V = W_V e in layer ``name`` (differentiable in e)
        return linear_part(self.attentions[name].to_v, encoding[None])[:, 0]

    def targets(self) -> dict[str, torch.Tensor]:
        """o*_V per layer: the parameters themselves when free (the edit reads them in place), else W_V e with its
        graph to e (recomputed before each forward pass)."""
        if self.space == "free":
            return dict(self.parameters)
        return {
            name: self.value(name, self.parameters[SHARED if self.space == "shared-encoding" else name])
            for name in self.attentions
        }

    def state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu() for name, tensor in self.parameters.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.parameters):
            raise ValueError(f"the saved value tensors ({', '.join(sorted(state))}) are not this run's")
        for name, tensor in self.parameters.items():
            tensor.copy_(state[name])
