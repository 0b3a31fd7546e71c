"""Activation functions, chosen by short name.

Each builder returns an :class:`Activation`: the module to put in a network (never in-place,
since in-place ops break gradient hooks), the function and its derivative as plain torch
functions (used by the recorder's saturation measure and by the mean-field theory), and the
nonlinearity name that Kaiming init should use for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vgp.registry import Registry

ACTIVATIONS = Registry("activation")


@dataclass(frozen=True)
class Activation:
    name: str
    module: Callable[[], nn.Module]  # a fresh, non-in-place module
    phi: Callable[[torch.Tensor], torch.Tensor]
    dphi: Callable[[torch.Tensor], torch.Tensor]
    dphi_max: float  # max |phi'(x)| over x: saturation is |phi'| below 5% of this
    kaiming: str  # nonlinearity for torch.nn.init.kaiming_*
    kaiming_param: float | None = None  # negative slope for leaky_relu
    # saturated(h, out=None) -> 0/1 floats: |phi'(z)| < 5% of its max, read off the output h = phi(z),
    # written into out if given. None: the recorder evaluates dphi on the pre-activation z (slower).
    saturated: Callable[..., torch.Tensor] | None = None


def above(x: torch.Tensor, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """(x > c) as 0./1. floats, with arithmetic only, into ``out`` if given (it may be x itself).

    On the CPU, comparisons and boolean reductions run about four times slower than float
    arithmetic, and a fresh multi-megabyte temporary costs page faults on every step; this keeps
    the recorder's saturation measure cheap. Exact wherever x - c is not below 1e-38
    (fl(x - c) > 0 exactly when x > c).
    """
    return torch.sub(x, c, out=out).mul_(1e38).clamp_(0, 1)


def not_above(x: torch.Tensor, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """(x <= c) as 0./1. floats."""
    return above(x, c, out).neg_().add_(1)


def _never(h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    return out.zero_() if out is not None else torch.zeros_like(h)


SAT = 0.05  # saturated: |phi'| below 5% of its maximum


def _sig_d(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _gelu_d(x):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu_d(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


@ACTIVATIONS.register("identity", "f(x) = x (a deep linear network)")
def identity():
    return Activation("identity", nn.Identity, lambda x: x, torch.ones_like, 1.0, "linear",
                      saturated=_never)


@ACTIVATIONS.register("sigmoid", "logistic 1/(1+e^-x); derivative at most 1/4")
def sigmoid():
    # h(1-h) < 0.05/4  <=>  |h - 1/2| > sqrt(1/4 - 0.05/4)
    return Activation("sigmoid", nn.Sigmoid, torch.sigmoid, _sig_d, 0.25, "sigmoid",
                      saturated=lambda h, out=None: above(torch.sub(h, 0.5, out=out).abs_(),
                                                          math.sqrt(0.25 * (1 - SAT)), out))


@ACTIVATIONS.register("tanh", "hyperbolic tangent; derivative at most 1")
def tanh():
    return Activation("tanh", nn.Tanh, torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, 1.0, "tanh",
                      saturated=lambda h, out=None: above(torch.abs(h, out=out), math.sqrt(1 - SAT), out))  # 1 - h^2 < 0.05


@ACTIVATIONS.register("relu", "max(0, x)")
def relu():
    return Activation("relu", nn.ReLU, F.relu, lambda x: (x > 0).to(x.dtype), 1.0, "relu",
                      saturated=lambda h, out=None: not_above(h, 0.0, out))  # phi' = 0 where z <= 0, i.e. h = 0


@ACTIVATIONS.register("leaky_relu", "max(x, negative_slope * x)")
def leaky_relu(negative_slope: float = 0.01):
    a = negative_slope
    return Activation(
        "leaky_relu",
        lambda: nn.LeakyReLU(a),
        lambda x: F.leaky_relu(x, a),
        lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, a)),
        max(1.0, abs(a)),
        "leaky_relu",
        a,
        # phi' = a where z <= 0 (h <= 0): saturated there when |a| < 5% of max(1, |a|)
        saturated=(lambda h, out=None: not_above(h, 0.0, out)) if abs(a) < SAT else _never,
    )


@ACTIVATIONS.register("elu", "x for x > 0, alpha (e^x - 1) below")
def elu(alpha: float = 1.0):
    return Activation(
        "elu",
        lambda: nn.ELU(alpha),
        lambda x: F.elu(x, alpha),
        lambda x: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0))),
        max(1.0, alpha),
        "relu",
        # where z <= 0, phi' = alpha e^z = h + alpha; with alpha >= 5% of the max that is the only
        # place it can be small (else fall back to phi'(z))
        saturated=(lambda h, out=None: not_above(h, SAT * max(1.0, alpha) - alpha, out))
        if alpha >= SAT * max(1.0, alpha)
        else None,
    )


_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805


@ACTIVATIONS.register("selu", "scaled ELU of Klambauer et al. 2017 (use with lecun_normal)")
def selu():
    return Activation(
        "selu",
        nn.SELU,
        F.selu,
        lambda x: _SELU_S * torch.where(x > 0, torch.ones_like(x), _SELU_A * torch.exp(torch.clamp(x, max=0))),
        _SELU_S * _SELU_A,
        "linear",  # PyTorch's docs: use nonlinearity='linear' for self-normalizing nets
        saturated=lambda h, out=None: not_above(h, -(1 - SAT) * _SELU_S * _SELU_A, out),  # phi' = h + s a, z <= 0
    )


@ACTIVATIONS.register("gelu", "x * Phi(x), Phi the normal CDF")
def gelu():
    return Activation("gelu", nn.GELU, F.gelu, _gelu_d, 1.1289, "relu")


@ACTIVATIONS.register("silu", "x * sigmoid(x) (swish)")
def silu():
    return Activation("silu", nn.SiLU, F.silu, _silu_d, 1.0998, "relu")


@ACTIVATIONS.register("softsign", "x / (1 + |x|)")
def softsign():
    return Activation("softsign", nn.Softsign, F.softsign, lambda x: 1 / (1 + x.abs()) ** 2, 1.0, "linear",
                      saturated=lambda h, out=None: above(torch.abs(h, out=out), 1 - math.sqrt(SAT), out))  # (1-|h|)^2


@ACTIVATIONS.register("softplus", "log(1 + e^x); derivative is the sigmoid")
def softplus():
    return Activation("softplus", nn.Softplus, F.softplus, torch.sigmoid, 1.0, "relu",
                      saturated=lambda h, out=None: not_above(h, -math.log(1 - SAT), out))  # phi' = 1 - e^-h < 0.05


def get(spec: dict) -> Activation:
    """The Activation for a resolved spec ``{name: ..., **args}``."""
    return ACTIVATIONS.build(spec)
