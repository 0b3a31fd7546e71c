"""CIFAR-style residual (and plain) conv nets of He et al. 2016, section 4.2.

A 3x3 conv stem, three stages of n basic blocks (``width``, 2 ``width`` and 4 ``width``
channels: 16, 32, 64 by default), global average pooling and a linear classifier:
depth = 6n + 2 weight layers (20, 32, 44, 56, 110). A basic block is
conv3x3 -> norm -> act -> conv3x3 -> norm, (+ shortcut), -> act. ``skip=False`` gives the plain
network of the same depth (the degradation experiment). Downsampling shortcuts are the paper's
option A: the identity, subsampled with stride 2 and zero-padded to the new channel count, so
that residual and plain nets have exactly the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgp.activations import Activation
from vgp.errors import ConfigError
from vgp.inits import initialize
from vgp.models import Tracked
from vgp.models.mlp import make_norm

RESNET_DEPTHS = [20, 32, 44, 56, 110]  # the paper's; any 6n + 2 works


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"model.depth: a resnet has 6n+2 weight layers, got {depth} "
            f"(valid: {', '.join(map(str, RESNET_DEPTHS))}, or any other 6n+2 from 8)"
        )
    return (depth - 2) // 6


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, activation: Activation, norm: str, skip: bool):
        super().__init__()
        bias = norm == "none"  # a bias before batch norm is redundant
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, c_out, dims=2)
        self.act1 = activation.module()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, c_out, dims=2)
        self.act2 = activation.module()
        self.skip = skip
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x):  # option A: subsample, zero-pad channels
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    def __init__(self, in_channels: int, out_size: int, width: int, depth: int, activation: Activation,
                 norm: str = "batchnorm", skip: bool = True):
        super().__init__()
        n = blocks_per_stage(depth)
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm == "none")
        self.norm = make_norm(norm, width, dims=2)
        self.act = activation.module()
        stages, c = [], width
        for s, c_out in enumerate([width, 2 * width, 4 * width]):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c, c_out, 2 if (s > 0 and b == 0) else 1, activation, norm, skip))
                c = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out = nn.Linear(c, out_size)

    def forward(self, x):  # (B, C, H, W) -> (B, out_size)
        h = self.act(self.norm(self.conv(x)))
        for stage in self.stages:
            h = stage(h)
        return self.out(h.mean((2, 3)))

    def tracked(self) -> list[Tracked]:
        layers = [Tracked("conv", self.conv, self.act)]
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                layers.append(Tracked(f"stages.{s}.{b}.conv1", block.conv1, block.act1))
                layers.append(Tracked(f"stages.{s}.{b}.conv2", block.conv2, block.act2))
        return layers + [Tracked("out", self.out, None)]


def resnet(in_shape: tuple, out_size: int, width: int, depth: int, activation: Activation, init: dict,
           bias_init: dict, norm: str = "batchnorm", skip: bool = True) -> ResNet:
    """A CIFAR-style ResNet (or plain net) with every conv and the classifier initialised by ``init``."""
    model = ResNet(in_shape[0], out_size, width, depth, activation, norm, skip)
    for t in model.tracked():
        initialize(t.layer, activation, init, bias_init)
    return model
