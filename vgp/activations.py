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

from vgp.registry import LazyModule, Registry

# imported on first use: listing and resolving activations (vgp ls, vgp theory) needs no torch
torch, nn, F = LazyModule("torch"), LazyModule("torch.nn"), LazyModule("torch.nn.functional")

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
    # saturated(h, out=None) -> 0/1 floats: |phi'(z)| < 5% of its max, read off the output h = phi(z)
    # with one exact comparison, written into out if given (out may be h's scratch copy). None: the
    # recorder evaluates dphi on the pre-activation z (slower).
    saturated: Callable[..., torch.Tensor] | None = None


def compare(op, x: torch.Tensor, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``op(x, c)`` (torch.gt, torch.lt, torch.le) as 0./1. floats, into ``out`` (it may be x itself).

    A real comparison, so exact for every x, tiny and subnormal ones included (arithmetic tricks
    such as clamp((x - c) * 1e38, 0, 1) are not: 1e-40 * 1e38 is 0.01). Written straight into a
    float buffer it costs on the CPU what one float op does; a boolean result would cost more to
    count, and a fresh multi-megabyte tensor per step costs page faults.
    """
    return op(x, c, out=torch.empty_like(x) if out is None else out)


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
                      saturated=lambda h, out=None: compare(torch.gt, torch.sub(h, 0.5, out=out).abs_(),
                                                            math.sqrt(0.25 * (1 - SAT)), out))


@ACTIVATIONS.register("tanh", "hyperbolic tangent; derivative at most 1")
def tanh():
    # 1 - h^2 < 0.05  <=>  |h| > sqrt(0.95)
    return Activation("tanh", nn.Tanh, torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, 1.0, "tanh",
                      saturated=lambda h, out=None: compare(torch.gt, torch.abs(h, out=out), math.sqrt(1 - SAT), out))


@ACTIVATIONS.register("relu", "max(0, x)")
def relu():
    # phi' = 0 where z <= 0, i.e. where h <= 0
    return Activation("relu", nn.ReLU, F.relu, lambda x: (x > 0).to(x.dtype), 1.0, "relu",
                      saturated=lambda h, out=None: compare(torch.le, h, 0.0, out))


@ACTIVATIONS.register("leaky_relu", "max(x, negative_slope * x)", ranges={"negative_slope": "[0, 1]"})
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
        # phi' = a where z <= 0 (h <= 0, a being in [0, 1]): saturated there when a < 5% of 1
        saturated=(lambda h, out=None: compare(torch.le, h, 0.0, out)) if abs(a) < SAT else _never,
    )


@ACTIVATIONS.register("elu", "x for x > 0, alpha (e^x - 1) below", ranges={"alpha": "[0, inf)"})
def elu(alpha: float = 1.0):
    return Activation(
        "elu",
        lambda: nn.ELU(alpha),
        lambda x: F.elu(x, alpha),
        lambda x: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0))),
        max(1.0, alpha),
        "relu",
        saturated=_elu_saturated(alpha),
    )


def _elu_saturated(alpha: float):
    """ELU's saturation read off h (alpha >= 0): where z <= 0 (h <= 0), phi' = alpha e^z = h + alpha;
    where z > 0, phi' = 1, saturated only when alpha > 20 (then phi'(z) is used)."""
    top = max(1.0, alpha)  # max |phi'|
    if 1.0 < SAT * top:
        return None  # both sides can be saturated: two comparisons, done on z by the recorder
    if alpha < SAT * top:  # all of z <= 0
        return lambda h, out=None: compare(torch.le, h, 0.0, out)
    return lambda h, out=None: compare(torch.lt, h, SAT * top - alpha, out)


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
        # where z <= 0, phi' = s a e^z = h + s a; where z > 0 it is s, never 5% of s a
        saturated=lambda h, out=None: compare(torch.lt, h, -(1 - SAT) * _SELU_S * _SELU_A, out),
    )


@ACTIVATIONS.register("gelu", "x * Phi(x), Phi the normal CDF")
def gelu():
    return Activation("gelu", nn.GELU, F.gelu, _gelu_d, 1.1289, "relu")


@ACTIVATIONS.register("silu", "x * sigmoid(x) (swish)")
def silu():
    return Activation("silu", nn.SiLU, F.silu, _silu_d, 1.0998, "relu")


@ACTIVATIONS.register("softsign", "x / (1 + |x|)")
def softsign():
    # phi' = (1 - |h|)^2 < 0.05  <=>  |h| > 1 - sqrt(0.05)
    return Activation("softsign", nn.Softsign, F.softsign, lambda x: 1 / (1 + x.abs()) ** 2, 1.0, "linear",
                      saturated=lambda h, out=None: compare(torch.gt, torch.abs(h, out=out), 1 - math.sqrt(SAT), out))


@ACTIVATIONS.register("softplus", "log(1 + e^x); derivative is the sigmoid")
def softplus():
    # phi' = sigmoid(z) = 1 - e^-h < 0.05  <=>  h < -log(0.95)
    return Activation("softplus", nn.Softplus, F.softplus, torch.sigmoid, 1.0, "relu",
                      saturated=lambda h, out=None: compare(torch.lt, h, -math.log(1 - SAT), out))


def get(spec: dict) -> Activation:
    """The Activation for a resolved spec ``{name: ..., **args}``."""
    return ACTIVATIONS.build(spec)
