"""Mean-field theory of signal propagation in wide random networks (Poole et al. 2016,
Schoenholz et al. 2017): what the gradient norms of a freshly initialised MLP should do.

A layer computes z_l = W_l phi(z_{l-1}) + b_l with W_l entries of variance sigma_w^2 / fan_in and
biases of variance sigma_b^2. In a wide net every unit of z_l is Gaussian with variance q_l::

    q_1     = sigma_w^2 E[x^2] + sigma_b^2                    (E[x^2] = 1 for standardised inputs)
    q_{l+1} = sigma_w^2 E[phi(sqrt(q_l) Z)^2] + sigma_b^2      (Z ~ N(0, 1))

and back-propagation through dLoss/dz_l = phi'(z_l) * W_{l+1}^T dLoss/dz_{l+1} multiplies the
squared gradient norm by sigma_w^2 E[phi'(sqrt(q_l) Z)^2] per layer. At the fixed point q* of the
forward map that factor is chi_1; the measured per-layer ratio ||dz_l|| / ||dz_{l+1}|| should be
sqrt(chi_1) (below 1: gradients vanish toward the input; above 1: they explode). chi_1 < 1 is the
*ordered* phase, chi_1 > 1 the *chaotic* one, chi_1 = 1 the *critical* line ("edge of chaos").

Expectations are Gaussian quadratures in float64 (split at 0, see ``gauss``) over numpy twins of
``vgp.activations``' ``phi``/``dphi`` (``_NUMPY``, checked against the torch ones by the tests, so
that ``vgp theory`` and ``vgp diagnose`` need no torch); an activation without a twin is integrated
through its torch functions, so every registered activation is covered. ReLU, leaky ReLU and the
identity use exact closed forms.
Example: tanh with sigma_b^2 = 0.05 is critical at sigma_w^2 = 1.76 (Schoenholz et al., fig. 1)::

    >>> round(critical_weight_var("tanh", 0.05), 2)
    1.76
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vgp.activations import ACTIVATIONS
from vgp.errors import UserError

# E[f(sqrt(q) Z)] = sum(w * (f(sqrt(q) z) + f(-sqrt(q) z))) over the nodes z, w of :func:`_nodes`:
# Gauss-Legendre on [0, 12] times the normal density, each half-line separately. Plain Gauss-Hermite
# is off by up to 1% (200 nodes) for activations with a kink at 0 (relu family, elu, selu, softsign);
# split at the kink, the rule converges fast. The mass beyond |z| = 12 is 4e-33. At large q the peak
# of phi'(sqrt(q) z) at 0, about 1/sqrt(q) wide, falls between the nodes of one part (tanh at q = 1e8
# came out 1,000x too small, at 1e10 zero): there the half-line is split at z = _U_SETTLED / sqrt(q),
# beyond which every activation has settled into its tails, and then by decades, each part with the
# rule.
_N_NODES, _Z_MAX, _U_SETTLED = 240, 12.0, 40.0


@functools.lru_cache(maxsize=None)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights of n points on [-1, 1]."""
    return np.polynomial.legendre.leggauss(n)


def _on(lo, hi, n: int = _N_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [lo, hi] and their weights times the normal density. ``lo``, ``hi``:
    floats, or arrays of shape (..., 1) for many intervals at once (nodes and weights (..., n))."""
    x, v = _legendre(n)
    z = lo + (x + 1) * (hi - lo) / 2
    return z, v * (hi - lo) / 2 * np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)


@functools.lru_cache(maxsize=None)
def _whole(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule on [0, _Z_MAX] in one part (small q: most calls), computed once per n."""
    return _on(0.0, _Z_MAX, n)


def _nodes(q: float, n: int = _N_NODES) -> tuple[np.ndarray, np.ndarray]:
    """The rule on the half-line for E[f(sqrt(q) Z)]: one part up to q = (_U_SETTLED / _Z_MAX)^2
    (about 11), else parts [0, a], [a, 10a], [10a, 100a], ... up to _Z_MAX, a = _U_SETTLED /
    sqrt(q): the first resolves a peak of width 1/sqrt(q) at 0 (|u| <= 40), the others the tails,
    a decade each (softsign's phi'^2 = (1 + |u|)^-4 falls as a power over all of them). ``n``
    nodes per part."""
    a = _U_SETTLED / math.sqrt(q) if q > 0 else _Z_MAX
    if a >= _Z_MAX:
        return _whole(n)
    edges = [0.0, *(a * 10.0 ** k for k in range(math.ceil(math.log10(_Z_MAX / a)))), _Z_MAX]
    parts = [_on(lo, hi, n) for lo, hi in zip(edges, edges[1:])]
    return np.concatenate([z for z, _ in parts]), np.concatenate([w for _, w in parts])


CRITICAL_TOL = 1e-3  # |chi_1 - 1| below this: the critical phase
Q_INF = 1e12  # a forward variance this many times its first layer's (at least 1) diverges: no fixed point
MAX_DEPTH = 10_000  # layers of a printed profile (10,000 take about half a second)
MAX_VAR = 1e12  # sigma_w^2, sigma_b^2: the expectations are checked against scipy up to q = 1e12 (tests)


def check_inputs(weight_var: float | None, bias_var: float, depth: int | None,
                 labels: tuple[str, str, str] = ("--weight-var", "--bias-var", "--depth")) -> None:
    """UserError unless sigma_w^2 is a finite number in (0, MAX_VAR], sigma_b^2 one in [0, MAX_VAR] and
    the depth (if any) from 0 to MAX_DEPTH. ``labels``: what set each of the three, for the message."""
    from vgp.errors import finite

    finite(weight_var, labels[0], 0, low_open=True, high=MAX_VAR)
    finite(bias_var, labels[1], 0, high=MAX_VAR)
    if depth is not None and not 0 <= depth <= MAX_DEPTH:
        raise UserError(f"{labels[2]}: {depth} layers; the profile is computed for 0 to {MAX_DEPTH:,} "
                        f"(the ratio per layer and the depth scale say what happens deeper)")


@dataclass(frozen=True)
class Fns:
    """What the theory needs of an activation: phi and phi' on float64 numpy arrays, and the
    nonlinearity (with its parameter) that Kaiming init uses for it."""
    name: str
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    kaiming: str
    kaiming_param: float | None = None


def _sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))  # = 1/(1+e^-x), without overflow for large -x


_erf = np.vectorize(math.erf, otypes=[float])
_SELU_A, _SELU_S = 1.6732632423543772, 1.0507009873554805

# name -> (resolved arguments -> Fns): numpy twins of vgp.activations' torch phi and dphi
_NUMPY: dict[str, Callable[..., Fns]] = {
    "identity": lambda: Fns("identity", lambda x: x, np.ones_like, "linear"),
    "sigmoid": lambda: Fns("sigmoid", _sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x)), "sigmoid"),
    "tanh": lambda: Fns("tanh", np.tanh, lambda x: 1 - np.tanh(x) ** 2, "tanh"),
    "relu": lambda: Fns("relu", lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float), "relu"),
    "leaky_relu": lambda negative_slope: Fns(
        "leaky_relu", lambda x: np.where(x > 0, x, negative_slope * x),
        lambda x: np.where(x > 0, 1.0, negative_slope), "leaky_relu", negative_slope),
    "elu": lambda alpha: Fns(
        "elu", lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
        lambda x: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))), "relu"),
    "selu": lambda: Fns(
        "selu", lambda x: _SELU_S * np.where(x > 0, x, _SELU_A * np.expm1(np.minimum(x, 0))),
        lambda x: _SELU_S * np.where(x > 0, 1.0, _SELU_A * np.exp(np.minimum(x, 0))), "linear"),
    "gelu": lambda: Fns(
        "gelu", lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
        lambda x: 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi), "relu"),
    "silu": lambda: Fns("silu", lambda x: x * _sigmoid(x),
                        lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))), "relu"),
    "softsign": lambda: Fns("softsign", lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2, "linear"),
    # PyTorch's softplus returns x itself above x = 20 (its threshold)
    "softplus": lambda: Fns("softplus", lambda x: np.where(x > 20, x, np.logaddexp(0.0, np.minimum(x, 20))),
                            _sigmoid, "relu"),
}


def _from_torch(act) -> Fns:
    """Fns of a vgp.activations.Activation, through its torch functions (imports torch)."""
    import torch

    def wrap(f):
        return lambda x: f(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()

    return Fns(act.name, wrap(act.phi), wrap(act.dphi), act.kaiming, act.kaiming_param)


def _act(activation) -> Fns:
    """Fns from a name, a spec {name: ..., **args}, an Activation or Fns."""
    if isinstance(activation, Fns):
        return activation
    if hasattr(activation, "phi"):  # a vgp.activations.Activation
        return _from_torch(activation)
    spec = {"name": activation} if isinstance(activation, str) else dict(activation)
    try:
        spec = ACTIVATIONS.resolve(spec, "activation")
        if spec["name"] in _NUMPY:
            return _NUMPY[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})
        return _from_torch(ACTIVATIONS.build(spec))
    except UserError:
        raise
    except Exception as e:  # pragma: no cover - a registry bug, not a user mistake
        raise UserError(f"activation {spec}: {e}") from None


def _closed_form(act) -> tuple[float, float] | None:
    """(E[phi(sZ)^2] / s^2, E[phi'(sZ)^2]) for positively homogeneous activations, else None."""
    if act.name == "identity":
        return 1.0, 1.0
    if act.name == "relu":
        return 0.5, 0.5
    if act.name == "leaky_relu":
        a = act.kaiming_param
        return (1 + a * a) / 2, (1 + a * a) / 2
    return None


def gauss(f, q: float) -> float:
    """E[f(sqrt(q) Z)] for Z ~ N(0, 1), f a torch function; Gaussian quadrature in float64."""
    import torch

    z, w = _nodes(q)
    x = math.sqrt(max(q, 0.0)) * torch.from_numpy(z)
    return float(torch.sum(torch.from_numpy(w) * (f(x) + f(-x))))


def _gauss(f, q: float) -> float:
    """``gauss`` for f a numpy function (what the theory itself integrates)."""
    z, w = _nodes(q)
    x = math.sqrt(max(q, 0.0)) * z
    return float(w @ (f(x) + f(-x)))


def forward_var(activation, q: float) -> float:
    """E[phi(sqrt(q) Z)^2] (at q = 0 exactly phi(0)^2, where the rule's weights would sum it to 1e-15)."""
    act = _act(activation)
    cf = _closed_form(act)
    if cf:
        return cf[0] * q
    return float(act.phi(np.zeros(1))[0] ** 2) if q == 0 else _gauss(lambda x: act.phi(x) ** 2, q)


def slope_var(activation, q: float) -> float:
    """E[phi'(sqrt(q) Z)^2] (at q = 0 exactly phi'(0)^2: chi_1 = sigma_w^2 phi'(0)^2 at q* = 0)."""
    act = _act(activation)
    cf = _closed_form(act)
    if cf:
        return cf[1]
    return float(act.dphi(np.zeros(1))[0] ** 2) if q == 0 else _gauss(lambda x: act.dphi(x) ** 2, q)


def q_star(activation, weight_var: float, bias_var: float, input_var: float = 1.0, tol: float = 1e-13,
           max_iter: int = 5000) -> float:
    """The fixed point of the forward variance map that a net reaches from standardised inputs.

    Iterates q_{l+1} = sigma_w^2 E[phi(sqrt(q_l) Z)^2] + sigma_b^2 from q_1 = sigma_w^2 input_var +
    sigma_b^2; returns inf when q grows without bound (e.g. ReLU with sigma_w^2 > 2). For the
    positively homogeneous activations (identity, relu, leaky_relu) the map is affine,
    q -> sigma_w^2 k q + sigma_b^2, and its limit is taken in closed form: sigma_b^2 / (1 - sigma_w^2 k)
    below sigma_w^2 k = 1, else inf. Iterated, it converges or diverges by the factor sigma_w^2 k per
    layer, which near 1 is too slow for ``max_iter`` steps: relu at sigma_w^2 = 1.999, sigma_b^2 = 0.05
    stopped at 92 instead of 100, at 2.001 at a finite 1142 instead of inf. Where ``max_iter`` steps do
    not converge otherwise (a fixed point at which the map's slope is 1, approached like 1/l: tanh at
    sigma_w^2 = 1, sigma_b^2 = 0), the limit in the direction the iteration moves is found as a root
    (:func:`_creeping_limit`): 0 there, not the 1e-4 that 5,000 layers reach.
    """
    act = _act(activation)
    q = weight_var * input_var + bias_var
    limit = Q_INF * max(q, 1.0)  # relative: a bounded phi at sigma_w^2 = 1e14 has q* near 1e14, finite
    cf = _closed_form(act)
    if cf is not None and q > 0 and (bias_var > 0 or weight_var * cf[0] > 1):
        growth = weight_var * cf[0]
        star = bias_var / (1 - growth) if growth < 1 else math.inf
        return star if star <= limit else math.inf
    prev = q
    for _ in range(max_iter):
        new = weight_var * forward_var(act, q) + bias_var
        if not math.isfinite(new) or new > limit:
            return math.inf
        if abs(new - q) <= tol * max(q, 1e-300):
            return new if new > 1e-300 else 0.0  # (gone to 0 geometrically: gelu's q -> q/4 at sigma_w^2 = 1)
        prev, q = q, new
    # still creeping: a fixed point where the map's slope is 1 is approached like 1/l, not geometrically
    # (tanh at sigma_w^2 = 1, sigma_b^2 = 0: q_l ~ 1/(2 l), 1e-4 after 5,000 layers, where q* = 0)
    return _creeping_limit(lambda x: weight_var * forward_var(act, x) + bias_var - x, q, q < prev, limit, tol)


_MAP_PRECISION = 1e-12  # relative: how far apart q and its image must be to tell them apart (quadrature)


def _creeping_limit(gap: Callable[[float], float], q: float, down: bool, limit: float, tol: float) -> float:
    """The fixed point that an iteration q -> q + gap(q), monotone and still moving from ``q`` (down or
    up), converges to: the nearest root of ``gap`` in its direction, found by stepping away from ``q``
    on a geometric grid until ``gap`` changes sign (a 16th of a decade for 4 decades, then by decades),
    then bisecting to relative ``tol``. A sign counts where ``gap`` exceeds the map's own rounding,
    1e-12 of q (tanh's gap at sigma_w^2 = 1 is -2 q^2, below that from q = 1e-13 down). Moving down
    with no sign change down to 1e-300: 0 (the fixed point of a map with phi(0) = 0 and sigma_b^2 = 0);
    up past ``limit``: inf."""
    here = q
    for k in range(1, 10**4):
        factor = 10 ** (1 / 16) if k <= 64 else 10.0
        there = here / factor if down else here * factor
        if (down and there < 1e-300) or (not down and there > limit):
            return 0.0 if down else math.inf
        g = gap(there)
        if (g > _MAP_PRECISION * there) if down else (g < -_MAP_PRECISION * there):  # beyond the map's rounding
            break
        here = there
    lo, hi = (there, here) if down else (here, there)  # gap(lo) >= 0 >= gap(hi): the root is between
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if gap(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi1(activation, weight_var: float, bias_var: float, q: float | None = None) -> float:
    """sigma_w^2 E[phi'(sqrt(q*) Z)^2]: the factor by which a layer multiplies E||dLoss/dz||^2.

    ``q``: the pre-activation variance to evaluate at (default: the fixed point q*).
    """
    act = _act(activation)
    if q is None:
        q = q_star(act, weight_var, bias_var)
    if not math.isfinite(q):
        q = Q_INF  # the limit of an unbounded variance (the slope distribution has settled)
    return weight_var * slope_var(act, q)


def phase(chi: float, tol: float = CRITICAL_TOL) -> str:
    """'ordered' (chi_1 < 1: gradients vanish), 'chaotic' (> 1: explode) or 'critical'."""
    if abs(chi - 1) <= tol:
        return "critical"
    return "ordered" if chi < 1 else "chaotic"


def depth_scale(chi: float) -> float:
    """Layers over which E||dLoss/dz||^2 changes by a factor e: 1/|ln chi_1| (Schoenholz et al.'s
    xi_grad); infinite at criticality, 0 where chi_1 is 0. A net much deeper than this cannot pass
    gradients through."""
    if chi <= 0:
        return 0.0
    return math.inf if chi == 1 else 1 / abs(math.log(chi))


# the two-dimensional rule of ``_gauss2``: on the first axis a coarser version of the one-dimensional
# rule (split alike at large q); on the second, for each node of the first, Gauss-Legendre pieces with
# edges at 0, at the point where u2 changes sign and at decades of the feature's width from it
_N_NODES2 = 64


def _gauss2(f, q: float, c: float) -> float:
    """E[f(u1, u2)] for (u1, u2) Gaussian with variances q and correlation c: u1 = sqrt(q) z1,
    u2 = sqrt(q) (c z1 + r z2), r = sqrt(1 - c^2), z1, z2 independent N(0, 1).

    z1 takes the rule of :func:`_nodes` (its half-lines meet at u1 = 0). For each z1, the integral over
    z2 is split where u2 = 0, at z2 = -c z1 / r: there phi(u2) has its kink (relu family, elu, selu,
    softsign; phi' a step) or, at large q, its peak or sign change, 1 / (sqrt(q) r) wide in z2. Split
    at 0 alone, as the rule of z1 is, the z2 axis missed it wherever c z1 != 0: E[relu'(u1) relu'(u2)]
    came out 2e-4 off at q = 1, E[tanh(u1) tanh(u2)] 7e-4 off at q = 1e6, c = 0.5 (tests/test_theory.py
    checks against closed forms and nested adaptive quadrature). Beyond that point the pieces grow by
    decades of _U_SETTLED / (sqrt(q) r), as :func:`_nodes` does. Near c = +-1 the product lives in a
    wedge about r wide around z1 = 0 (relu(u1) relu(u2) at c = -0.999), so z1's first part is made no
    wider than _U_SETTLED r. ``c`` = +-1 (r = 0): u2 = c u1."""
    s = math.sqrt(max(q, 0.0))
    r = math.sqrt(max(1 - c * c, 0.0))
    z, w = _nodes(max(q, 1 / r ** 2) if r > 0 else q, _N_NODES2)  # first part at most _U_SETTLED r wide
    z1, w1 = np.concatenate([z, -z]), np.concatenate([w, w])
    if r == 0.0:
        return float(w1 @ f(s * z1, c * s * z1))
    z0 = -c * z1 / r  # (N1,) where u2 = 0
    a = _U_SETTLED / (s * r) if s > 0 else 2 * _Z_MAX
    # decades from z0 while they can fall inside [-_Z_MAX, _Z_MAX] (whose ends are edges anyway)
    off = np.array([a * 10.0 ** k for k in range(max(0, math.ceil(math.log10(2 * _Z_MAX / a))))])
    edges = np.concatenate([np.broadcast_to([-_Z_MAX, 0.0, _Z_MAX], (len(z1), 3)), z0[:, None],
                            z0[:, None] - off, z0[:, None] + off], axis=1)
    edges = np.sort(np.clip(edges, -_Z_MAX, _Z_MAX), axis=1)  # (N1, E); equal neighbours: empty pieces
    z2, w2 = _on(edges[:, :-1, None], edges[:, 1:, None], _N_NODES2)  # (N1, E - 1, n)
    z2, w2 = z2.reshape(len(z1), -1), w2.reshape(len(z1), -1)
    vals = f(s * z1[:, None], s * (c * z1[:, None] + r * z2))
    return float(w1 @ (vals * w2).sum(axis=1))


def correlation_map(activation, weight_var: float, bias_var: float, c: float, q: float | None = None) -> float:
    """The correlation of two inputs' pre-activations one layer on, from correlation ``c`` at the
    fixed point q* (Poole et al. 2016, eq. 5; Schoenholz et al. 2017, eq. 3)::

        c_{l+1} = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*
    """
    act = _act(activation)
    q = q_star(act, weight_var, bias_var) if q is None else q
    return (weight_var * _gauss2(lambda a, b: act.phi(a) * act.phi(b), q, c) + bias_var) / q


def c_star(activation, weight_var: float, bias_var: float, q: float | None = None) -> float:
    """The stable fixed point of ``correlation_map``: 1 in the ordered phase (chi_1 <= 1: two inputs
    end up alike), below 1 in the chaotic phase (chi_1 > 1: they decorrelate to c* and stay there).
    Found by false position between -1 (where the map lies above the diagonal) and just below 1
    (where, with slope chi_1 > 1 at c = 1, it lies below)."""
    act = _act(activation)
    q = q_star(act, weight_var, bias_var) if q is None else q
    if not math.isfinite(q):
        raise UserError(f"{act.name} at sigma_w^2 = {weight_var}: the forward variance diverges, "
                        "so there is no correlation fixed point")
    if chi1(act, weight_var, bias_var, q) <= 1:
        return 1.0
    g = lambda c: correlation_map(act, weight_var, bias_var, c, q) - c  # noqa: E731
    hi = 1 - 1e-2
    while g(hi) >= 0 and hi < 1 - 1e-9:  # near criticality c* is close to 1
        hi = 1 - (1 - hi) / 10
    if g(hi) >= 0:
        return 1.0
    lo, g_lo, g_hi = -1.0, g(-1.0), g(hi)
    if g_lo <= 0:  # c = -1 is fixed too (an odd phi without biases): start inside, where g > 0
        lo, g_lo = -hi, g(-hi)
    side = 0
    for _ in range(200):  # the Illinois variant of false position: bisection's safety, ~10 steps
        m = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
        g_m = g(m)
        if g_m > 0:
            lo, g_lo = m, g_m
            g_hi, side = (g_hi / 2, 1) if side == 1 else (g_hi, 1)
        else:
            hi, g_hi = m, g_m
            g_lo, side = (g_lo / 2, -1) if side == -1 else (g_lo, -1)
        if hi - lo < 1e-13 or g_m == 0:
            break
    return m


def chi_c(activation, weight_var: float, bias_var: float) -> float:
    """sigma_w^2 E[phi'(u1) phi'(u2)] at the correlation fixed point c* (Schoenholz et al. 2017,
    eq. 9): the slope of ``correlation_map`` there, the factor by which a small deviation from c*
    shrinks per layer. Equals chi_1 in the ordered phase (c* = 1)."""
    act = _act(activation)
    q = q_star(act, weight_var, bias_var)
    c = c_star(act, weight_var, bias_var, q)
    if c == 1.0:
        return chi1(act, weight_var, bias_var, q)
    return weight_var * _gauss2(lambda a, b: act.dphi(a) * act.dphi(b), q, c)


def correlation_depth(activation, weight_var: float, bias_var: float) -> float:
    """xi_c = -1/ln chi_c: the layers over which two inputs' correlation settles to its fixed point
    (Schoenholz et al. 2017, "Deep Information Propagation", eqs. 9-10), i.e. how deep information
    about the input travels forward. It diverges at the order-to-chaos transition; in the ordered
    phase it equals ``depth_scale(chi_1)``, in the chaotic phase it is set by c* < 1, not by chi_1.
    Their fig. 5: tanh nets train only up to about 6 xi_c layers. Example: tanh, sigma_b^2 = 0.05::

        >>> round(correlation_depth("tanh", 1.0, 0.05), 2), round(correlation_depth("tanh", 4.0, 0.05), 2)
        (3.63, 6.98)
    """
    chi = chi_c(activation, weight_var, bias_var)
    return math.inf if chi >= 1 else -1 / math.log(chi)


def critical_weight_var(activation, bias_var: float, lo: float = 1e-3, hi: float = 1e3) -> float:
    """sigma_w^2 with chi_1 = 1 at this sigma_b^2 (the edge of chaos), by bisection on log sigma_w^2."""
    act = _act(activation)
    f = lambda w: chi1(act, w, bias_var) - 1  # noqa: E731
    grid = np.geomspace(lo, hi, 61)
    values = [f(w) for w in grid]
    for a, b, fa, fb in zip(grid[:-1], grid[1:], values[:-1], values[1:]):
        if fa < 0 <= fb:
            for _ in range(60):
                m = math.sqrt(a * b)
                if f(m) < 0:
                    a = m
                else:
                    b = m
            return math.sqrt(a * b)
    raise UserError(f"{act.name} at bias variance {bias_var}: chi_1 does not cross 1 for sigma_w^2 in [{lo}, {hi}]")


@dataclass
class Profile:
    """The finite-depth prediction, layer by layer (layer 1 at the input, layer L+1 the output).

    ``q[l-1]``: forward variance of z_l for hidden layers l = 1..L; ``ratio[l-1]``: predicted
    ||dz_l|| / ||dz_{l+1}||, l = 1..L (the last one: last hidden layer over the output layer);
    ``norm[l-1]``: predicted ||dz_l|| / ||dz_{L+1}||, l = 1..L+1 (the output layer is 1).
    """

    q: list[float]
    ratio: list[float]
    norm: list[float] = field(default_factory=list)


def profile(activation, weight_vars, bias_vars, depth: int | None = None, input_var: float = 1.0) -> Profile:
    """Predicted variances and gradient ratios of a depth-L net from standardised inputs.

    ``weight_vars``/``bias_vars``: one sigma_w^2/sigma_b^2 for every layer, or a list of L+1 of them
    (layer 1 .. output), since the first and last layer's fans can differ from the hidden width.
    The asymptotic sqrt(chi_1) is reached only once q_l has converged to q*.
    """
    act = _act(activation)
    if depth is None:
        depth = len(weight_vars) - 1
    sw = list(weight_vars) if isinstance(weight_vars, (list, tuple)) else [weight_vars] * (depth + 1)
    sb = list(bias_vars) if isinstance(bias_vars, (list, tuple)) else [bias_vars] * (depth + 1)
    if len(sw) != depth + 1 or len(sb) != depth + 1:
        raise ValueError(f"need {depth + 1} weight and bias variances, got {len(sw)} and {len(sb)}")
    qs, ratios = [], []
    q = sw[0] * input_var + sb[0]
    cap = Q_INF * max(q, 1.0)  # where a diverging variance is held (as in q_star)
    for l in range(depth):  # hidden layer l+1
        qs.append(q)
        ratios.append(math.sqrt(sw[l + 1] * slope_var(act, min(q, cap))))
        q = sw[l + 1] * forward_var(act, min(q, cap)) + sb[l + 1]
    norm = [1.0]
    for r in reversed(ratios):
        norm.append(norm[-1] * r)
    return Profile(qs, ratios, norm[::-1])


def predict(activation, weight_var: float, bias_var: float, depth: int | None = None,
            setting: "Setting | None" = None) -> dict:
    """Everything ``vgp theory`` prints, as a JSON-able dict. ``setting``: per-layer variances
    (from a config) for the profile, whose first and last layers can differ from the hidden ones;
    its notes, and :func:`too_few_units`'s where the net is too saturated for its width, are the
    dict's ``notes``."""
    act = _act(activation)
    q = q_star(act, weight_var, bias_var)
    c = chi1(act, weight_var, bias_var, q)
    out = {"activation": act.name, "weight_var": weight_var, "bias_var": bias_var, "q_star": q, "chi1": c,
           "ratio_per_layer": math.sqrt(c), "depth_scale": depth_scale(c), "phase": phase(c),
           "correlation_depth": correlation_depth(act, weight_var, bias_var) if math.isfinite(q) else None}
    own = None  # the setting's profile, where the printed one is it
    if depth is not None:
        own = profile(act, setting.weight_vars, setting.bias_vars) if setting and setting.depth == depth else None
        p = own if own is not None else profile(act, weight_var, bias_var, depth)
        out["profile"] = [{"layer": l + 1, "q": q_l, "ratio": r, "norm": n}
                          for l, (q_l, r, n) in enumerate(zip(p.q + [None], p.ratio + [None], p.norm))]
    if setting is not None:
        few = too_few_units(setting, own)
        notes = [*setting.notes, *([few] if few else [])]
        if notes:
            out["notes"] = notes
    return out


# -- sigma_w^2 and sigma_b^2 from a config ------------------------------------------------------

class NotApplicable(Exception):
    """The mean-field theory of plain MLPs does not describe this net (the message says why)."""


@dataclass
class Setting:
    """Per-layer sigma_w^2 = fan_in Var(W_l) and sigma_b^2 = Var(b_l), layers 1..L+1, with notes."""

    activation: dict
    weight_vars: list[float]
    bias_vars: list[float]
    notes: list[str]
    width: int | None = None  # the hidden layers' units

    @property
    def depth(self) -> int:
        return len(self.weight_vars) - 1

    @property
    def hidden(self) -> tuple[float, float]:
        """(sigma_w^2, sigma_b^2) of the hidden-to-hidden layers (layer 2; layer 1 without them)."""
        i = 1 if self.depth >= 2 else 0
        return self.weight_vars[i], self.bias_vars[i]


def _weight_var(init: dict, act, fan_in: int, fan_out: int) -> tuple[float, str | None]:
    """fan_in * Var(W) for one layer's init spec, and a note when it depends on the width."""
    name, g = init["name"], init.get("gain", 1.0)
    if name == "default":
        return 1 / 3, None
    if name in ("xavier_uniform", "xavier_normal"):
        return g * g * 2 * fan_in / (fan_in + fan_out), None
    if name in ("kaiming_uniform", "kaiming_normal"):
        nl = init.get("nonlinearity") or act.kaiming
        a = act.kaiming_param if act.kaiming_param is not None else 0.01
        gain2 = kaiming_gain(nl, a if nl == "leaky_relu" else None) ** 2
        return gain2 * (fan_in / fan_out if init.get("mode") == "fan_out" else 1.0), None
    if name == "orthogonal":  # entries of a semi-orthogonal matrix have variance g^2 / max(fans)
        return g * g * fan_in / max(fan_in, fan_out), None
    if name == "normal":
        return init["std"] ** 2 * fan_in, f"init normal(std={init['std']}) gives sigma_w^2 = std^2 fan_in, which grows with the width"
    if name == "uniform":
        return init["a"] ** 2 / 3 * fan_in, f"init uniform(a={init['a']}) gives sigma_w^2 = a^2 fan_in / 3, which grows with the width"
    if name == "lecun_normal":
        return 1.0, None
    if name == "variance_scaling":
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.get("mode", "fan_in")]
        return init["scale"] * fan_in / fan, None
    raise NotApplicable(f"init '{name}' is not an i.i.d. random init; the mean-field theory does not cover it")


def kaiming_gain(nonlinearity: str, param: float | None = None) -> float:
    """``torch.nn.init.calculate_gain`` for the nonlinearities vgp's Kaiming inits accept, without torch."""
    if nonlinearity in ("linear", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity}")


def _bias_var(bias: dict, fan_in: int) -> float:
    name = bias["name"]
    if name == "zeros" or (name == "constant" and bias.get("value", 0.0) == 0):
        return 0.0
    if name == "default":
        return 1 / (3 * fan_in)
    if name == "normal":
        return bias["std"] ** 2
    raise NotApplicable(f"bias init '{name}' (a constant {bias.get('value')}) is not a zero-mean random bias")


def from_config(cfg: dict, in_size: int | None = None, out_size: int | None = None) -> Setting:
    """sigma_w^2, sigma_b^2 of every layer from a resolved config (``config.to_dict`` or a run's
    config.yaml). ``in_size``/``out_size`` default to the data's ``dim``/``classes`` when it names
    them, else to the width (said in the notes). Raises NotApplicable with the reason."""
    m = cfg["model"]
    if m.get("arch", "mlp") != "mlp":
        kind = {"rnn": "recurrent", "lstm": "recurrent", "gru": "recurrent", "resnet": "convolutional",
                "transformer": "transformer (attention, norms and residual branches)"}.get(m["arch"], m["arch"])
        raise NotApplicable(f"model.arch={m['arch']}: a {kind} net; this theory covers plain fully connected nets")
    if m.get("norm", "none") != "none":
        raise NotApplicable(f"model.norm={m['norm']}: normalisation resets the forward variance at every layer")
    if m.get("skip") and m["depth"] >= 2:
        raise NotApplicable("model.skip=true: residual connections add the identity to every layer's Jacobian")
    act = _act(m["activation"])
    width, depth = m["width"], m["depth"]
    notes = []
    data = cfg.get("data", {})
    if in_size is None:
        in_size = data.get("dim") if isinstance(data.get("dim"), int) else None
    if out_size is None:
        out_size = data.get("classes") if isinstance(data.get("classes"), int) else None
    fans = [in_size or width] + [width] * depth
    fans_out = [width] * depth + [out_size or width]
    width_dependent = {"xavier_uniform", "xavier_normal", "orthogonal", "normal", "uniform"}
    if m["init"]["name"] in width_dependent and (in_size is None or out_size is None):
        notes.append("input/output sizes unknown: the first and last layer are taken as wide as the hidden ones")
    sw, sb = [], []
    for fi, fo in zip(fans, fans_out):
        v, note = _weight_var(m["init"], act, fi, fo)
        sw.append(v)
        sb.append(_bias_var(m["bias_init"], fi))
        if note and note not in notes:
            notes.append(note)
    return Setting(m["activation"], sw, sb, notes, width)


def participation(activation, q: float) -> float:
    """E[phi'(sqrt(q) Z)^2]^2 / E[phi'(sqrt(q) Z)^4]: the fraction of a layer's units through which
    its backward signal passes (the participation ratio of phi'(z_i)^2 over the units i; 1/2 for relu,
    1 for a linear net). Mean-field theory (Poole et al. 2016; Schoenholz et al. 2017) takes
    sum_i phi'(z_i)^2 as N E[phi'^2], which needs many units to take part. A saturating activation at
    large q passes the signal only through the units whose |z| is within about 1 of 0: tanh's ratio is
    about 1.94 / sqrt(2 pi q) there (the integrals of sech^4 and sech^8, 4/3 and 32/35)."""
    act = _act(activation)
    second = slope_var(act, q)
    fourth = _gauss(lambda x: act.dphi(x) ** 4, q)
    return second * second / fourth if fourth > 0 else 0.0


def too_few_units(setting: Setting, p: Profile | None = None) -> str | None:
    """Why the mean-field prediction cannot describe this net at its width, or None: a hidden layer
    whose width times its :func:`participation` at the predicted q_l is below 1, where a finite
    net's gradient can vanish outright (no unit outside saturation) while the theory predicts a
    finite chi_1, even a chaotic one. ``p``: the setting's :func:`profile`, where the caller has it."""
    if not setting.width or setting.depth < 1:
        return None
    act = _act(setting.activation)
    if p is None:
        p = profile(act, setting.weight_vars, setting.bias_vars)
    units, layer = min((setting.width * participation(act, q), l + 1) for l, q in enumerate(p.q))
    if units >= 1:
        return None
    return (f"at width {setting.width} about {units:.2g} units of layer {layer} pass the gradient "
            f"(q = {p.q[layer - 1]:.3g}; width x E(phi'^2)^2 / E(phi'^4)): the mean-field prediction sums over "
            f"many, and a net this saturated can lose its gradient outright instead")


def describe(p: dict) -> str:
    """``predict``'s dict as a few lines for people."""
    lines = [
        f"{p['activation']}, sigma_w^2 = {p['weight_var']:.4g}, sigma_b^2 = {p['bias_var']:.4g}",
        f"  fixed point q*        {p['q_star']:.4g}   (pre-activation variance deep in the net)",
        f"  chi_1                 {p['chi1']:.4g}   = sigma_w^2 E[phi'(sqrt(q*) Z)^2]",
        f"  ratio per layer       {p['ratio_per_layer']:.4g}   = sqrt(chi_1), predicted ||dL/dz_l|| / ||dL/dz_l+1||",
        f"  depth scale           {p['depth_scale']:.4g}   layers (1/|ln chi_1|)",
        f"  phase                 {p['phase']}",
    ]
    if p.get("correlation_depth") is not None:
        lines.insert(-1, f"  correlation depth     {p['correlation_depth']:.4g}   layers (xi_c; Schoenholz et al. "
                         "2017: trainable to about 6 xi_c)")
    lines += [f"  note: {n}" for n in p.get("notes", [])]
    if "profile" in p:
        lines.append("  layer        q_l   ratio l/l+1   ||dz_l||/||dz_out||")
        for r in p["profile"]:
            q = "" if r["q"] is None else f"{r['q']:10.4g}"
            ratio = "" if r["ratio"] is None else f"{r['ratio']:12.4g}"
            lines.append(f"  {r['layer']:5d} {q:>10} {ratio:>13} {r['norm']:20.4g}")
    return "\n".join(lines)
