"""CIFAR-style residual (and plain) conv nets of He et al. 2016, section 4.2.

A 3x3 conv stem, three stages of n basic blocks (``width``, 2 ``width`` and 4 ``width``
channels: 16, 32, 64 by default), global average pooling and a linear classifier:
depth = 6n + 2 weight layers (20, 32, 44, 56, 110). A basic block is
conv3x3 -> norm -> act -> conv3x3 -> norm, (+ shortcut), -> act. ``skip=False`` gives the plain
network of the same depth (the degradation experiment). Downsampling shortcuts are the paper's
option A: the identity, subsampled with stride 2 and zero-padded to the new channel count, so
that residual and plain nets have exactly the same weights.

Two fixes of deep residual nets, as options: ``residual_scale="rezero"`` multiplies each block's
branch by a learnable scalar initialised to 0 (ReZero, Bachlechner et al. 2021; SkipInit, De &
Smith 2020), and ``fixup=True`` builds Fixup's blocks (Zhang, Dauphin & Ma 2019): no
normalisation, scalar biases before each conv and activation, a scalar multiplier per branch,
initialised by :func:`fixup_rescale`. A block stays conv, act, conv, (+ shortcut), act, so at
initialisation a ReZero block is act(x), not quite the identity (the identity on the
non-negative x of a ReLU net; the downsampling shortcuts drop 3/4 of the positions anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgp.activations import Activation
from vgp.errors import ConfigError
from vgp.inits import initialize, lsuv_scale
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
    def __init__(self, c_in: int, c_out: int, stride: int, activation: Activation, norm: str, skip: bool,
                 rezero: bool = False):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(())) if rezero else None  # ReZero's a
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
        if self.alpha is not None:
            out = self.alpha * out
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


class FixupBlock(nn.Module):
    """Fixup's basic block (Zhang et al. 2019, their CIFAR code): no norm, no conv biases;
    act(shortcut(x + b1a) + s conv2(act(conv1(x + b1a) + b1b) + b2a) + b2b), scalars b (0) and s (1)."""

    shortcut = BasicBlock.shortcut

    def __init__(self, c_in: int, c_out: int, stride: int, activation: Activation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.act1 = activation.module()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act2 = activation.module()
        self.stride, self.pad = stride, c_out - c_in
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = (nn.Parameter(torch.zeros(())) for _ in range(4))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        x = x + self.bias1a
        out = self.act1(self.conv1(x) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, out_size: int, width: int, depth: int, activation: Activation,
                 norm: str = "batchnorm", skip: bool = True, residual_scale: str = "none", fixup: bool = False):
        super().__init__()
        if residual_scale not in ("none", "rezero"):
            raise ValueError(f"residual_scale: a resnet takes none or rezero, got {residual_scale!r}")
        if fixup and (norm != "none" or not skip or residual_scale != "none"):
            raise ValueError("fixup: a residual net (skip) without norm or residual_scale")
        n = blocks_per_stage(depth)
        self.rezero = residual_scale == "rezero"
        self.fixup = fixup
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm == "none" and not fixup)
        self.norm = make_norm(norm, width, dims=2)
        self.act = activation.module()
        self.bias1 = nn.Parameter(torch.zeros(())) if fixup else None  # Fixup: after the stem conv
        self.bias2 = nn.Parameter(torch.zeros(())) if fixup else None  # Fixup: before the classifier
        stages, c = [], width
        for s, c_out in enumerate([width, 2 * width, 4 * width]):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(FixupBlock(c, c_out, stride, activation) if fixup else
                              BasicBlock(c, c_out, stride, activation, norm, skip, self.rezero))
                c = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out = nn.Linear(c, out_size)

    def forward(self, x):  # (B, C, H, W) -> (B, out_size)
        z = self.norm(self.conv(x))
        h = self.act(z + self.bias1 if self.fixup else z)
        for stage in self.stages:
            h = stage(h)
        h = h.mean((2, 3))
        return self.out(h + self.bias2 if self.fixup else h)

    def tracked(self) -> list[Tracked]:
        # ReZero: a conv's z gets a times the gradient, exactly 0 at init; output_grad is then taken
        # at the residual stream, the stem's and each block's output (Tracked.stream)
        stem = self.act if self.rezero else None
        layers = [Tracked("conv", self.conv, self.act, stream=stem)]
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                stream = block if self.rezero else None
                layers.append(Tracked(f"stages.{s}.{b}.conv1", block.conv1, block.act1, stream=stream))
                layers.append(Tracked(f"stages.{s}.{b}.conv2", block.conv2, block.act2, stream=stream))
        return layers + [Tracked("out", self.out, None)]


def fixup_rescale(model: ResNet) -> None:
    """Fixup's init (Zhang et al. 2019, section 3), on weights already He-initialised: with L residual
    branches of m = 2 layers, each branch's first conv scaled by L^(-1/(2m-2)) = L^-1/2, its last
    conv and the classifier (weight and bias) zero. The scalar biases are 0 and multipliers 1 from
    the start."""
    blocks = [block for stage in model.stages for block in stage]
    with torch.no_grad():
        for block in blocks:
            block.conv1.weight.mul_(len(blocks) ** -0.5)
            block.conv2.weight.zero_()
        model.out.weight.zero_()
        model.out.bias.zero_()


def resnet(in_shape: tuple, out_size: int, width: int, depth: int, activation: Activation, init: dict,
           bias_init: dict, norm: str = "batchnorm", skip: bool = True, residual_scale: str = "none",
           init_batch: torch.Tensor | None = None) -> ResNet:
    """A CIFAR-style ResNet (or plain net) with every conv and the classifier initialised by ``init``
    (``fixup``: Fixup's blocks and init; ``lsuv`` uses ``init_batch``, (B, C, H, W) inputs)."""
    fixup = init["name"] == "fixup"
    model = ResNet(in_shape[0], out_size, width, depth, activation, norm, skip, residual_scale, fixup)
    for t in model.tracked():
        initialize(t.layer, activation, init, bias_init)
    if fixup:
        fixup_rescale(model)
    if init["name"] == "lsuv":
        lsuv_scale(model, [t.layer for t in model.tracked()], init_batch, init["tol"], init["max_iter"])
    return model
