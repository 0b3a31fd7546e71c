"""Weight and bias initialisations, chosen by short name.

Every init receives the tensor, an :class:`InitContext` (fans and the activation, supplied by
the model) and its own arguments from the config, whose valid ranges are declared beside it
(every number must be finite). ``variance_scaling`` follows Keras/Flax: weights with variance
``scale / fan``; this ``scale`` is the mean-field theory's sigma_w^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vgp.activations import Activation
from vgp.registry import LazyModule, Registry

torch, nn = LazyModule("torch"), LazyModule("torch.nn")  # imported on first use: vgp ls needs no torch

INITS = Registry("init")
BIAS_INITS = Registry("bias init")


@dataclass(frozen=True)
class InitContext:
    weight: torch.Tensor  # the layer's weight (a bias's fan_in comes from it)
    activation: Activation
    default_bound: float | None = None  # PyTorch's recurrent layers: U(+-1/sqrt(hidden)) for everything


def _fans(w: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(w)


def _default_bound(ctx) -> float:
    if ctx.default_bound is not None:
        return ctx.default_bound
    fan_in, _ = _fans(ctx.weight)
    return 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0


@INITS.register("default", "PyTorch's own: U(+-1/sqrt(fan_in)) for Linear/Conv (weight variance 1/(3 fan_in)), "
                           "U(+-1/sqrt(hidden)) for recurrent layers")
def default(w, ctx):
    # what reset_parameters does: kaiming_uniform_(a=sqrt(5)) draws U(+-1/sqrt(fan_in))
    nn.init.uniform_(w, -_default_bound(ctx), _default_bound(ctx))


@INITS.register("identity", "the identity matrix times scale (IRNN of Le et al. 2015; a Dirac kernel for convs)",
                ranges={"scale": "(-inf, inf)"})
def identity(w, ctx, scale: float = 1.0):
    if w.dim() == 2:
        nn.init.eye_(w)
    else:
        nn.init.dirac_(w)
    w.mul_(scale)


@INITS.register("xavier_uniform", "Glorot & Bengio 2010: U(+-gain sqrt(6/(fan_in+fan_out)))",
                ranges={"gain": "[0, inf)"})
def xavier_uniform(w, ctx, gain: float = 1.0):
    nn.init.xavier_uniform_(w, gain=gain)


@INITS.register("xavier_normal", "Glorot & Bengio 2010: N(0, gain^2 2/(fan_in+fan_out))", ranges={"gain": "[0, inf)"})
def xavier_normal(w, ctx, gain: float = 1.0):
    nn.init.xavier_normal_(w, gain=gain)


def _kaiming_args(ctx, nonlinearity):
    act = ctx.activation
    nl = nonlinearity or act.kaiming
    a = act.kaiming_param if (nl == "leaky_relu" and act.kaiming_param is not None) else 0.0
    if nl == "leaky_relu" and act.kaiming_param is None:
        a = 0.01
    return nl, a


_NONLIN = ["", "linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


@INITS.register(
    "kaiming_uniform",
    "He et al. 2015, uniform; nonlinearity from the activation unless given",
    choices={"mode": ["fan_in", "fan_out"], "nonlinearity": _NONLIN},
)
def kaiming_uniform(w, ctx, mode: str = "fan_in", nonlinearity: str = ""):
    nl, a = _kaiming_args(ctx, nonlinearity)
    nn.init.kaiming_uniform_(w, a=a, mode=mode, nonlinearity=nl)


@INITS.register(
    "kaiming_normal",
    "He et al. 2015: N(0, gain^2/fan), gain from the activation (relu: 2/fan_in)",
    choices={"mode": ["fan_in", "fan_out"], "nonlinearity": _NONLIN},
)
def kaiming_normal(w, ctx, mode: str = "fan_in", nonlinearity: str = ""):
    nl, a = _kaiming_args(ctx, nonlinearity)
    nn.init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nl)


@INITS.register("orthogonal", "Saxe et al. 2014: a (semi-)orthogonal matrix times gain", ranges={"gain": "(-inf, inf)"})
def orthogonal(w, ctx, gain: float = 1.0):
    nn.init.orthogonal_(w, gain=gain)


@INITS.register("normal", "N(0, std^2)", ranges={"std": "[0, inf)"})
def normal(w, ctx, std: float = 0.01):
    nn.init.normal_(w, 0.0, std)


@INITS.register("uniform", "U(-a, a)", ranges={"a": "[0, inf)"})
def uniform(w, ctx, a: float = 0.05):
    nn.init.uniform_(w, -a, a)


@INITS.register("lecun_normal", "LeCun et al. 1998: N(0, 1/fan_in) (variance_scaling with scale 1)")
def lecun_normal(w, ctx):
    variance_scaling(w, ctx, 1.0, "fan_in", "normal")


@INITS.register(
    "variance_scaling",
    "Keras/Flax: variance scale/fan (scale = sigma_w^2 of mean-field theory)",
    choices={"mode": ["fan_in", "fan_out", "fan_avg"], "distribution": ["normal", "uniform", "truncated_normal"]},
    ranges={"scale": "(0, inf)"},
)
def variance_scaling(w, ctx, scale: float = 1.0, mode: str = "fan_in", distribution: str = "normal"):
    fan_in, fan_out = _fans(w)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    var = scale / fan
    with torch.no_grad():
        if distribution == "normal":
            w.normal_(0.0, math.sqrt(var))
        elif distribution == "uniform":
            lim = math.sqrt(3 * var)
            w.uniform_(-lim, lim)
        else:
            # N(0, s^2) truncated to +-2s has variance 0.7737 s^2: correct s so the variance is exact
            std = math.sqrt(var) / 0.87962566103423978
            nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


@INITS.register("fixup", "Zhang, Dauphin & Ma 2019, resnet only (skip: true, norm: none): He normal, scaled by "
                         "L^-1/2 on each branch's first conv (L branches), zero on its second conv and on the "
                         "classifier; scalar biases and a multiplier (1) per branch")
def fixup(w, ctx):
    # per layer, He normal; the net-wide scaling and zeros are vgp.models.resnet.fixup_rescale's
    kaiming_normal(w, ctx)


@INITS.register("lsuv", "Mishkin & Matas 2016, data-dependent: orthogonal, then each layer's weight scaled, in "
                        "order, until its output's variance on the init batch (the run's first batch) is within tol "
                        "of 1 (at most max_iter scalings); mlp, resnet",
                ranges={"tol": "(0, inf)", "max_iter": "[1, 1000]"})
def lsuv(w, ctx, tol: float = 0.1, max_iter: int = 10):
    # step 1 of the paper's algorithm; step 2 needs the whole net and a batch: lsuv_scale
    nn.init.orthogonal_(w)


class _Reached(Exception):
    """Raised by lsuv_scale's hook to stop a forward pass once the layer of interest has run."""


def lsuv_scale(model, layers: list, x, tol: float = 0.1, max_iter: int = 10) -> list[float]:
    """Step 2 of LSUV (Mishkin & Matas 2016, Algorithm 1): for each layer in order, forward ``x`` and
    divide the layer's weight by sqrt(Var(B)), B its output (the pre-activation z = W h + b, over
    all examples, units and positions), until |Var(B) - 1| < ``tol`` or ``max_iter`` divisions.

    ``layers``: Linear/Conv modules of ``model`` in forward order; ``x``: (B, *in_shape) the init
    batch. The forward passes run in training mode (batch norm normalises with the batch's own
    statistics, as a training step would); buffers such as batch norm's running statistics are
    restored afterwards, and no random numbers are drawn. A layer whose output has variance 0 or a
    non-finite one cannot be scaled to 1 and is left as it is. Returns Var(B) of each layer after
    its scaling (float64 population variance); raises ValueError if ``x`` is None."""
    if x is None:
        raise ValueError("init lsuv is data-dependent: it needs an init batch (x)")
    was_training = model.training
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    model.train()
    seen: list = []

    def grab(module, inputs, output):
        seen.append(output)
        raise _Reached

    def variance(layer) -> float:
        seen.clear()
        handle = layer.register_forward_hook(grab)
        try:
            model(x)
        except _Reached:
            pass
        finally:
            handle.remove()
        return seen[0].double().var(unbiased=False).item()

    out = []
    with torch.no_grad():
        try:
            for layer in layers:
                v = variance(layer)
                for _ in range(max_iter):
                    if abs(v - 1) < tol or not (0 < v < math.inf):
                        break
                    layer.weight.div_(math.sqrt(v))
                    v = variance(layer)
                out.append(v)
        finally:
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
            model.train(was_training)
    return out


@BIAS_INITS.register("zeros", "all zero")
def zeros(b, ctx):
    nn.init.zeros_(b)


@BIAS_INITS.register("default", "PyTorch's own: U(+-1/sqrt(fan_in)) (recurrent layers: U(+-1/sqrt(hidden)))")
def bias_default(b, ctx):
    nn.init.uniform_(b, -_default_bound(ctx), _default_bound(ctx))


@BIAS_INITS.register("normal", "N(0, std^2): sigma_b^2 = std^2 of mean-field theory", ranges={"std": "[0, inf)"})
def bias_normal(b, ctx, std: float = 0.05):
    nn.init.normal_(b, 0.0, std)


@BIAS_INITS.register("constant", "every bias equal to value", ranges={"value": "(-inf, inf)"})
def constant(b, ctx, value: float = 0.0):
    nn.init.constant_(b, value)


def initialize(module: nn.Module, activation: Activation, init: dict, bias_init: dict) -> None:
    """Apply resolved weight and bias init specs to one Linear/Conv layer (weight first)."""
    init_tensors(module.weight, getattr(module, "bias", None), activation, init, bias_init)


def init_tensors(weight: torch.Tensor, bias: torch.Tensor | None, activation: Activation, init: dict,
                 bias_init: dict, default_bound: float | None = None) -> None:
    """Initialise a weight (and its bias) in place; also works on views, e.g. one gate's block."""
    ctx = InitContext(weight, activation, default_bound)
    with torch.no_grad():
        INITS.build(init, weight, ctx)
        if bias is not None:
            BIAS_INITS.build(bias_init, bias, ctx)
