"""Networks, chosen by ``model.arch``. Every network lists its tracked layers for the recorder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Tracked:
    """One layer whose gradients are recorded, numbered from the input (layer 1) to the output.

    ``layer`` is a Linear or Conv: its output is the pre-activation z_l = W_l h_{l-1} + b_l.
    ``act`` is the activation module applied after it (after the norm, if any); None for the
    output layer. ``output`` is False for recurrent weights, which act inside a cell at every
    time step: they have weight kinds only (their signal is in time_grads.csv), and ``layer``
    is then any object with ``weight`` and ``bias`` attributes; a transformer's attention and MLP
    linears have weight kinds only too (output=False), their block's signal being its stream's.
    ``stream``: the module whose output is the residual stream h_l after the layer's block, where
    output_grad (||dLoss/dh_l||) is taken instead of at z_l: for branches scaled by ReZero's a
    (``model.residual_scale=rezero``), whose z_l gets a times the gradient, exactly 0 at
    initialisation, and for a transformer's blocks. ``layer`` None: an entry with no weight of its
    own, output_grad only (a transformer's ``blocks.i``, the stream after block i).
    """

    name: str
    layer: object | None
    act: nn.Module | None
    output: bool = True
    stream: nn.Module | None = None


def stacked_parameters(members: list) -> tuple[nn.ParameterList, nn.ParameterList]:
    """The members' tracked weights and biases stacked on a leading member dimension, entry by entry of
    their ``tracked()`` lists (equal in length and shapes): (K, *weight shape) and (K, *bias shape)
    parameters, copies of the members' own (for :mod:`vgp.batched`)."""
    tracked = [m.tracked() for m in members]
    n = len(tracked[0])
    weights = nn.ParameterList(
        nn.Parameter(torch.stack([t[i].layer.weight.detach() for t in tracked])) for i in range(n))
    biases = nn.ParameterList(nn.Parameter(torch.stack([t[i].layer.bias.detach() for t in tracked])) for i in range(n))
    return weights, biases


from vgp.models.mlp import MLP, StackedMLP, mlp  # noqa: E402,F401
from vgp.models.resnet import RESNET_DEPTHS, ResNet, resnet  # noqa: E402,F401
from vgp.models.rnn import RecurrentNet, recurrent  # noqa: E402,F401
from vgp.models.transformer import Transformer, transformer  # noqa: E402,F401
