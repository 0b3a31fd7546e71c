"""Networks, chosen by ``model.arch``. Every network lists its tracked layers for the recorder."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Tracked:
    """One layer whose gradients are recorded, numbered from the input (layer 1) to the output.

    ``layer`` is a Linear or Conv: its output is the pre-activation z_l = W_l h_{l-1} + b_l.
    ``act`` is the activation module applied after it (after the norm, if any); None for the
    output layer. ``output`` is False for recurrent weights, which act inside a cell at every
    time step: they have weight kinds only (their signal is in time_grads.csv), and ``layer``
    is then any object with ``weight`` and ``bias`` attributes.
    """

    name: str
    layer: object
    act: nn.Module | None
    output: bool = True


from vgp.models.mlp import MLP, StackedMLP, mlp  # noqa: E402,F401
from vgp.models.resnet import RESNET_DEPTHS, ResNet, resnet  # noqa: E402,F401
from vgp.models.rnn import RecurrentNet, recurrent  # noqa: E402,F401
