"""Networks, chosen by ``model.arch``. Every network lists its tracked layers for the recorder."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Tracked:
    """One layer whose gradients are recorded, numbered from the input (layer 1) to the output.

    ``layer`` is a Linear or Conv: its output is the pre-activation z_l = W_l h_{l-1} + b_l.
    ``act`` is the activation module applied after it (after the norm, if any); None for the
    output layer.
    """

    name: str
    layer: nn.Module
    act: nn.Module | None


def tracked_layers(model: nn.Module) -> list[Tracked]:
    """The tracked layers of a vgp network (each network defines ``tracked()``)."""
    return model.tracked()


from vgp.models.mlp import MLP, mlp  # noqa: E402,F401
