"""Fully connected networks: ``depth`` hidden blocks of Linear -> norm -> activation, then a Linear.

depth=2 -> Linear, act, Linear, act, Linear (three tracked layers). With ``skip``, every hidden
block whose input and output widths match computes h + act(norm(W h + b)); with
``residual_scale="rezero"`` as well, h + a act(norm(W h + b)), ``a`` a learnable scalar initialised to
0 (ReZero, Bachlechner et al. 2021; SkipInit, De & Smith 2020): every such block is the identity at
initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vgp.activations import Activation
from vgp.inits import initialize, lsuv_scale
from vgp.models import Tracked, stacked_parameters


def make_norm(norm: str, width: int, dims: int = 1) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm1d(width) if dims == 1 else nn.BatchNorm2d(width)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    return nn.Identity()


class Block(nn.Module):
    def __init__(self, fan_in: int, width: int, activation: Activation, norm: str, skip: bool, rezero: bool = False):
        super().__init__()
        self.linear = nn.Linear(fan_in, width)
        self.norm = make_norm(norm, width)
        self.act = activation.module()
        self.skip = skip and fan_in == width
        self.alpha = nn.Parameter(torch.zeros(())) if rezero and self.skip else None  # ReZero's a

    def forward(self, h):  # (B, fan_in) -> (B, width)
        z = self.linear(h)
        # an Identity is not called: a module call costs microseconds per layer and step
        out = self.act(z if isinstance(self.norm, nn.Identity) else self.norm(z))
        if self.alpha is not None:
            out = self.alpha * out
        return h + out if self.skip else out


class MLP(nn.Module):
    def __init__(self, in_size: int, out_size: int, width: int, depth: int, activation: Activation,
                 norm: str = "none", skip: bool = False, residual_scale: str = "none"):
        super().__init__()
        if residual_scale not in ("none", "rezero"):
            raise ValueError(f"residual_scale: an mlp takes none or rezero, got {residual_scale!r}")
        self.flatten = nn.Flatten()
        sizes = [in_size] + [width] * depth
        self.rezero = residual_scale == "rezero"
        self.blocks = nn.ModuleList(Block(a, b, activation, norm, skip, self.rezero)
                                    for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], out_size)

    def forward(self, x):  # (B, *shape) -> (B, out_size)
        h = x.flatten(1)  # what self.flatten does, without a module call
        for block in self.blocks:
            h = block(h)
        return self.out(h)

    def tracked(self) -> list[Tracked]:
        # ReZero: z_l's gradient is a dLoss/dh_l, exactly 0 at init (a = 0); the gradient the
        # residual stream carries, at each block's output h_l, is what says whether it flows
        layers = [Tracked(f"blocks.{i}.linear", b.linear, b.act, stream=b if self.rezero else None)
                  for i, b in enumerate(self.blocks)]
        return layers + [Tracked("out", self.out, None)]


def mlp(in_shape: tuple, out_size: int, width: int, depth: int, activation: Activation, init: dict,
        bias_init: dict, norm: str = "none", skip: bool = False, residual_scale: str = "none",
        init_batch: torch.Tensor | None = None) -> MLP:
    """A fully connected network with every Linear (output layer included) initialised by ``init``.

    ``init_batch``: (B, *in_shape) inputs for a data-dependent init (lsuv), else unused."""
    model = MLP(math.prod(in_shape), out_size, width, depth, activation, norm, skip, residual_scale)
    for t in model.tracked():
        initialize(t.layer, activation, init, bias_init)
    if init["name"] == "lsuv":
        lsuv_scale(model, [t.layer for t in model.tracked()], init_batch, init["tol"], init["max_iter"])
    return model


class StackedMLP(nn.Module):
    """K equally shaped :class:`vgp.models.MLP` as one module: ``weights[l]`` (K, out, in),
    ``biases[l]`` (K, out), copied from the members. ``forward`` maps (K, B, *shape) to (K, B, out);
    ``taps`` (a list) receives each hidden layer's pre-activation and activation output, as
    (K, units, B): the layers run on transposed activations, z^T = W h^T + b, so that the gradient
    of each (K, out, in) weight comes out of the backward pass in the weight's own layout (computed
    as h W^T, it came out transposed, and autograd copied every one into place on every step).

    ``runs``: (start, end) of each run of adjacent members with the same activation (default: one
    run, all members share member 0's); each run's activation, member ``start``'s, applies to its
    slice of the members, and the slices are concatenated (ValueError: runs that do not cover the
    members in order)."""

    def __init__(self, members: list, runs: list[tuple[int, int]] | None = None):
        super().__init__()
        self.weights, self.biases = stacked_parameters(members)
        self.skip = [b.skip for b in members[0].blocks]
        runs = runs or [(0, len(members))]
        if [s for s, _ in runs] != [0] + [e for _, e in runs[:-1]] or runs[-1][1] != len(members):
            raise ValueError(f"runs {runs} do not cover the {len(members)} members in order")
        acts = [members[s].blocks[0].act if members[s].blocks else None for s, _ in runs]
        self.act = acts[0] if len(runs) == 1 else None
        self.sizes, self.acts = [e - s for s, e in runs], acts

    def forward(self, x, taps: list | None = None):  # (K, B, *shape) -> (K, B, out)
        h = x.flatten(2).transpose(1, 2)  # (K, in, B)
        last = len(self.weights) - 1
        # the lists' own dicts: iterating a ParameterList indexes it by a string per item, a tenth of a
        # 20-layer forward's time at width 64
        for i, (w, b) in enumerate(zip(self.weights._parameters.values(), self.biases._parameters.values())):
            z = torch.baddbmm(b.unsqueeze(2), w, h)  # (K, out, B)
            if taps is not None:
                taps.append(z)
            if i == last:
                return z.transpose(1, 2)
            # split, not z[s:e]: the backward of a slice fills a zero tensor of z's size per run
            a = self.act(z) if self.act is not None else \
                torch.cat([f(part) for part, f in zip(z.split(self.sizes), self.acts)])
            if taps is not None:
                taps.append(a)
            h = h + a if self.skip[i] else a
