"""A decoder-only (causal) transformer on sequences (B, T, F): ``depth`` blocks of attention and MLP.

Built from PyTorch's own pieces (``F.scaled_dot_product_attention`` with ``is_causal=True``,
``nn.LayerNorm``, ``nn.RMSNorm``). A block has two residual branches, attention and MLP, placed
by ``norm_position`` (x is the residual stream, N a norm, F a branch)::

    pre  (GPT-2; Xiong et al. 2020's Pre-LN):  x + F(N(x)), and a final N before the head
    post (Vaswani et al. 2017's Post-LN):      N(x + F(x))
    none:                                       x + F(x)

``residual_scale``: ``rezero`` multiplies each branch by its own learnable scalar initialised to 0,
x + a F(...) (Bachlechner et al. 2021; De & Smith 2020's SkipInit), so that at initialisation every
block is the identity (pre or none only: a post norm would still act on the stream);
``deepnorm`` (post only) computes N(alpha x + F(x)) and scales the weights of v, out, fc1 and fc2 by
beta after their init, with alpha = (2 depth)^(1/4), beta = (8 depth)^(-1/4), the decoder-only
constants of Wang et al. 2022 (their init is xavier_normal with gain beta for those weights:
``init: xavier_normal`` gives exactly that).

Inputs are real features, projected by a Linear (``embed``; one-hot tokens through it are an
embedding table lookup plus a bias), plus learned or sinusoidal positions. The output is the last
position's (B, C) or, with ``per_step``, every position's (B, T, C).

Tracked layers, in execution order: ``embed``; per block i (from 0) ``blocks.i.attn.q``, ``.k``,
``.v``, ``.out``, ``blocks.i.mlp.fc1``, ``.fc2`` (weight kinds; fc1 also its activation's
statistics), then ``blocks.i`` itself, the residual stream after the block (output_grad only: the
per-block back-propagated signal); ``head``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vgp.activations import Activation
from vgp.inits import initialize
from vgp.models import Tracked

NORM_POSITIONS = ("pre", "post", "none")


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """(alpha, beta) of DeepNet for a decoder-only net of ``depth`` blocks (Wang et al. 2022, Table 1)."""
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


def make_norm(norm: str, width: int) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    return nn.Identity()


def sinusoidal(length: int, width: int) -> torch.Tensor:
    """(T, D) positions of Vaswani et al. 2017: sin on even features, cos on odd ones."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(length, width)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[:width // 2])
    return out


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v and output projections."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        B, T, D = x.shape
        q, k, v = (lin(x).view(B, T, self.heads, D // self.heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D / H)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MLPBranch(nn.Module):
    def __init__(self, width: int, hidden: int, activation: Activation):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = activation.module()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x -> x after attention and MLP branches, placed as ``norm_position`` says (module docstring)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, activation: Activation, norm: str,
                 norm_position: str, residual_scale: str = "none", alpha: float = 1.0):
        super().__init__()
        self.attn = Attention(width, heads)
        self.mlp = MLPBranch(width, mlp_ratio * width, activation)
        self.norm1 = make_norm(norm if norm_position != "none" else "none", width)
        self.norm2 = make_norm(norm if norm_position != "none" else "none", width)
        self.post = norm_position == "post"
        self.alpha = alpha  # deepnorm's scale of the stream (1 otherwise)
        # rezero: one learnable gain per branch, 0 at init; otherwise None (no multiplication at all)
        self.gain1 = nn.Parameter(torch.zeros(())) if residual_scale == "rezero" else None
        self.gain2 = nn.Parameter(torch.zeros(())) if residual_scale == "rezero" else None

    def _branch(self, x, f, norm, gain):
        if self.post:
            y = f(x)
            return norm((x * self.alpha if self.alpha != 1.0 else x) + (y * gain if gain is not None else y))
        y = f(norm(x))
        return x + (y * gain if gain is not None else y)

    def forward(self, x):  # (B, T, D) -> (B, T, D): the residual stream after this block
        x = self._branch(x, self.attn, self.norm1, self.gain1)
        return self._branch(x, self.mlp, self.norm2, self.gain2)


class Transformer(nn.Module):
    def __init__(self, in_size: int, out_size: int, length: int, width: int, depth: int, heads: int,
                 mlp_ratio: int, activation: Activation, norm: str = "layernorm", norm_position: str = "pre",
                 residual_scale: str = "none", positions: str = "learned", per_step: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.embed = nn.Linear(in_size, width)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(length, width) * 0.02)  # GPT-2's N(0, 0.02^2)
        else:
            self.register_buffer("pos", sinusoidal(length, width) if positions == "sinusoidal"
                                 else torch.zeros(length, width), persistent=False)
        alpha = deepnorm_constants(depth)[0] if residual_scale == "deepnorm" else 1.0
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, activation, norm, norm_position, residual_scale,
                                          alpha) for _ in range(depth))
        self.norm = make_norm(norm if norm_position == "pre" else "none", width)  # pre-LN's final norm
        self.head = nn.Linear(width, out_size)
        self.per_step = per_step

    def forward(self, x):  # (B, T, F) -> (B, C) or (B, T, C)
        h = self.embed(x) + self.pos[:x.shape[1]]  # (B, T, D)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.head(h) if self.per_step else self.head(h[:, -1])

    def tracked(self) -> list[Tracked]:
        layers = [Tracked("embed", self.embed, None)]
        for i, b in enumerate(self.blocks):
            a, m = b.attn, b.mlp
            layers += [Tracked(f"blocks.{i}.attn.{n}", getattr(a, n), None, output=False)
                       for n in ("q", "k", "v", "out")]
            layers += [Tracked(f"blocks.{i}.mlp.fc1", m.fc1, m.act, output=False),
                       Tracked(f"blocks.{i}.mlp.fc2", m.fc2, None, output=False),
                       Tracked(f"blocks.{i}", None, None, stream=b)]
        return layers + [Tracked("head", self.head, None)]


def transformer(in_shape: tuple, out_size: int, width: int, depth: int, heads: int, mlp_ratio: int,
                activation: Activation, init: dict, bias_init: dict, norm: str = "layernorm",
                norm_position: str = "pre", residual_scale: str = "none", positions: str = "learned",
                per_step: bool = False) -> Transformer:
    """A causal transformer on inputs of shape (T, F), every Linear initialised by ``init``/``bias_init``
    (deepnorm: then v, out, fc1 and fc2 scaled by beta). Norms start at weight 1, bias 0."""
    model = Transformer(in_shape[-1], out_size, in_shape[0], width, depth, heads, mlp_ratio, activation, norm,
                        norm_position, residual_scale, positions, per_step)
    for t in model.tracked():
        if t.layer is not None:
            initialize(t.layer, activation, init, bias_init)
    if residual_scale == "deepnorm":
        beta = deepnorm_constants(depth)[1]
        with torch.no_grad():
            for b in model.blocks:
                for lin in (b.attn.v, b.attn.out, b.mlp.fc1, b.mlp.fc2):
                    lin.weight.mul_(beta)
    return model
