"""vgp.theory against published values, closed forms, independent numerics, and real wide nets.

The independent references here use numpy/scipy with their own definitions of the activations
(never vgp's phi/dphi): scipy.integrate.quad for Gaussian expectations, plain Monte Carlo for one
case, and the fixed point found by scipy.optimize.brentq.
"""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special

from conftest import tiny
from vgp import config, theory
from vgp.errors import UserError
from vgp.train import run

SQ2 = math.sqrt(2)
NP = {  # phi, phi' written out independently of vgp.activations
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "sigmoid": (lambda x: special.expit(x), lambda x: special.expit(x) * (1 - special.expit(x))),
    "gelu": (lambda x: x * 0.5 * (1 + special.erf(x / SQ2)),
             lambda x: 0.5 * (1 + special.erf(x / SQ2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "silu": (lambda x: x * special.expit(x), lambda x: special.expit(x) * (1 + x * (1 - special.expit(x)))),
    "softplus": (lambda x: np.logaddexp(0, x), special.expit),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "softsign": (lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2),
}


def quad_expect(f, q):
    """E[f(sqrt(q) Z)] by adaptive quadrature against the normal density."""
    s = math.sqrt(q)
    val, _ = integrate.quad(lambda z: f(s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -np.inf, np.inf,
                            epsabs=1e-13, epsrel=1e-12, limit=200)
    return val


def quad_q_star(name, sw2, sb2):
    phi, _ = NP[name]
    g = lambda q: sw2 * quad_expect(lambda x: phi(x) ** 2, q) + sb2 - q  # noqa: E731
    return optimize.brentq(g, 1e-9, 1e4, xtol=1e-14)


def quad_chi1(name, sw2, sb2):
    _, dphi = NP[name]
    return sw2 * quad_expect(lambda x: dphi(x) ** 2, quad_q_star(name, sw2, sb2))


# -- published values and closed forms ------------------------------------------------------

def test_critical_tanh_weight_variance_matches_schoenholz():
    """Schoenholz et al. 2017 (fig. 1): tanh at sigma_b^2 = 0.05 is critical at sigma_w^2 ~ 1.76."""
    sw2 = theory.critical_weight_var("tanh", 0.05)
    assert sw2 == pytest.approx(1.76, abs=0.01)
    assert quad_chi1("tanh", sw2, 0.05) == pytest.approx(1.0, abs=1e-6)  # independently critical
    assert theory.phase(theory.chi1("tanh", sw2, 0.05)) == "critical"
    assert theory.phase(theory.chi1("tanh", 1.5, 0.05)) == "ordered"
    assert theory.phase(theory.chi1("tanh", 2.5, 0.05)) == "chaotic"


def test_tanh_without_bias_is_critical_at_one():
    # q* = 0 for sigma_w^2 <= 1, and tanh'(0) = 1: chi_1 = sigma_w^2 below 1, critical at 1
    assert theory.critical_weight_var("tanh", 0.0) == pytest.approx(1.0, abs=2e-3)
    assert theory.chi1("tanh", 0.7, 0.0) == pytest.approx(0.7, rel=1e-6)


@pytest.mark.parametrize("sw2,sb2", [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (1.5, 0.2)])
def test_relu_closed_form(sw2, sb2):
    assert theory.chi1("relu", sw2, sb2) == pytest.approx(sw2 / 2, rel=1e-12)
    # the generic quadrature agrees with the closed form (split at the kink)
    relu = torch.nn.functional.relu
    assert theory.gauss(lambda x: (x > 0).double(), 1.7) == pytest.approx(0.5, rel=1e-12)
    assert theory.gauss(lambda x: relu(x) ** 2, 1.7) == pytest.approx(1.7 / 2, rel=1e-12)
    if sw2 < 2:  # q* = sigma_b^2 / (1 - sigma_w^2/2)
        assert theory.q_star("relu", sw2, sb2) == pytest.approx(sb2 / (1 - sw2 / 2), abs=1e-10)
    assert theory.critical_weight_var("relu", sb2) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("name,k", [("relu", 0.5), ("leaky_relu", (1 + 0.01 ** 2) / 2), ("identity", 1.0)])
def test_q_star_of_a_slow_affine_map_is_its_limit(name, k):
    """Within 1e-3 of sigma_w^2 k = 1 the variance map q -> sigma_w^2 k q + sigma_b^2 moves by a factor
    near 1 per layer: 5,000 iterations stopped relu at sigma_w^2 = 1.999 at q = 92 instead of 100, and
    at 2.001 at a finite 1142 instead of inf. The limit of the recursion itself (iterated here in plain
    Python, 10^6 layers at most) is what q_star must give."""
    for growth in (0.9995, 0.999, 1.0005):
        sw2, sb2 = growth / k, 0.05
        q = sw2 + sb2
        for _ in range(10 ** 6):  # the recursion a net's layers follow, from standardised inputs
            new = growth * q + sb2
            if new > 1e12 * max(sw2 + sb2, 1.0) or abs(new - q) <= 1e-13 * q:
                break
            q = new
        want = math.inf if new > 1e12 else new
        assert theory.q_star(name, sw2, sb2) == pytest.approx(want, rel=1e-9), (name, growth)


@pytest.mark.parametrize("name", ["tanh", "softsign", "elu"])
def test_q_star_at_the_critical_point_of_an_odd_sigmoid_is_0_and_chi1_is_1(name):
    """sigma_w^2 phi'(0)^2 = 1, sigma_b^2 = 0 (Poole et al. 2016: the ordered/chaotic boundary at
    sigma_b = 0): phi(x)^2 < x^2, so q -> sigma_w^2 E[phi(sqrt(q) Z)^2] has no fixed point but 0, and
    reaches it like 1/l (tanh: q_l ~ 1/(2 l)): 5,000 iterations stopped at q = 1e-4, chi_1 = 0.9998,
    a depth scale of 5,000 layers instead of inf."""
    q = theory.q_star(name, 1.0, 0.0)
    assert q == 0.0
    assert theory.chi1(name, 1.0, 0.0) == 1.0
    assert theory.depth_scale(theory.chi1(name, 1.0, 0.0)) == math.inf
    # just off it the fixed point is the positive root the quadrature reference finds, or 0 below
    assert theory.q_star(name, 0.99, 0.0) == 0.0
    assert theory.chi1(name, 0.99, 0.0) == pytest.approx(0.99, rel=1e-12)
    if name == "tanh":  # the edge of chaos at sigma_b^2 = 0 is sigma_w^2 = 1 (vgp theory --critical printed 1.002)
        assert theory.critical_weight_var(name, 0.0) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("sw2,sb2", [(1.001, 0.0), (1.0, 1e-6), (1.0, 1e-8)])
def test_q_star_of_a_slowly_converging_map_is_the_root_quadrature_finds(sw2, sb2):
    """Near the critical point at sigma_b^2 = 0 the map's slope at q* is 1 - O(q*): 5,000 layers are too
    few to converge to 1e-13 (tanh at sigma_w^2 = 1, sigma_b^2 = 1e-8: q* = 7.1e-5, the slope 0.9997).
    q_star finds the root the iteration is heading to; the reference is scipy's brentq on scipy's
    quadrature, bracketed around it."""
    phi, _ = NP["tanh"]
    g = lambda q: sw2 * quad_expect(lambda x: phi(x) ** 2, q) + sb2 - q  # noqa: E731
    want = optimize.brentq(g, 1e-7, 0.1, xtol=1e-18, rtol=1e-14)
    assert theory.q_star("tanh", sw2, sb2) == pytest.approx(want, rel=1e-9)


def test_q_star_that_converges_is_unchanged_by_the_root_search():
    """Where 5,000 layers converge, q_star is the iteration's own limit: iterated here without a cap."""
    for name, sw2, sb2 in (("tanh", 1.5, 0.05), ("sigmoid", 16.0, 0.5), ("gelu", 1.5, 0.1)):
        q = sw2 + sb2
        while True:
            new = sw2 * theory.forward_var(name, q) + sb2
            if abs(new - q) <= 1e-13 * q:
                break
            q = new
        assert theory.q_star(name, sw2, sb2) == new


@pytest.mark.parametrize("sw2", [0.5, 1.0, 1.7])
def test_linear_closed_form(sw2):
    assert theory.chi1("identity", sw2, 0.1) == pytest.approx(sw2, rel=1e-12)
    assert theory.predict("identity", sw2, 0.1)["ratio_per_layer"] == pytest.approx(math.sqrt(sw2))


def test_leaky_relu_closed_form_matches_quadrature():
    a = 0.2
    dphi = lambda x: np.where(x > 0, 1.0, a)  # noqa: E731
    # the kink at 0 makes quad split the integral; E[phi'^2] = (1 + a^2)/2 for any q
    want = 1.3 * (quad_expect(lambda x: dphi(x) ** 2 * (x > 0), 2.0) + quad_expect(lambda x: dphi(x) ** 2 * (x <= 0), 2.0))
    assert theory.chi1({"name": "leaky_relu", "negative_slope": a}, 1.3, 0.0) == pytest.approx(want, rel=1e-9)


# -- numerical expectations against independent numerics ---------------------------------------

@pytest.mark.parametrize("name,sw2,sb2", [("tanh", 1.5, 0.05), ("tanh", 4.0, 0.0), ("tanh", 2.5, 0.3),
                                          ("sigmoid", 1 / 3, 0.003), ("sigmoid", 16.0, 0.5), ("gelu", 1.5, 0.1),
                                          ("silu", 1.8, 0.2), ("softplus", 1.0, 0.1), ("elu", 1.5, 0.05),
                                          ("softsign", 2.0, 0.1)])
def test_fixed_point_and_chi1_match_quadrature(name, sw2, sb2):
    assert theory.q_star(name, sw2, sb2) == pytest.approx(quad_q_star(name, sw2, sb2), rel=1e-9)
    assert theory.chi1(name, sw2, sb2) == pytest.approx(quad_chi1(name, sw2, sb2), rel=1e-9)


def _expectation_by_quad(f, q: float) -> float:
    """E[f(sqrt(q) Z)] by scipy's adaptive quadrature over u = sqrt(q) Z: [-60, 60] around the peak at
    0 where the activations change, then the tails out to 12 sqrt(q), a decade at a time."""
    s = math.sqrt(q)
    g = lambda u: float(f(np.array([u]))[0]) * math.exp(-u * u / (2 * q)) / math.sqrt(2 * math.pi * q)  # noqa: E731
    core = min(60.0, 12 * s)
    edges = [core]
    while edges[-1] < 12 * s:
        edges.append(min(edges[-1] * 10, 12 * s))
    parts = [(-core, 0.0), (0.0, core)] + [(lo, hi) for lo, hi in zip(edges, edges[1:])] + \
        [(-hi, -lo) for lo, hi in zip(edges, edges[1:])]
    return sum(integrate.quad(g, a, b, limit=500, epsabs=0, epsrel=1e-12)[0] for a, b in parts)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softsign", "gelu", "silu", "elu", "selu", "softplus"])
def test_slope_and_forward_variances_hold_from_tiny_to_huge_pre_activation_variances(name):
    """E[phi'(sqrt(q) Z)^2] and E[phi(sqrt(q) Z)^2] equal an independent adaptive quadrature to 1e-10
    from q = 1e-2 to 1e12. At large q the slope's peak at 0 is 1/sqrt(q) wide: tanh's chi_1 came out
    1,000x too small at q = 1e8 and 0 at 1e10 (then 1/ln(chi_1) raised), on a fixed rule."""
    act = theory._act(name)
    for q in (1e-2, 1.0, 30.0, 1e2, 1e4, 1e6, 1e8, 1e10, 1e12):
        assert theory.slope_var(act, q) == pytest.approx(_expectation_by_quad(lambda x: act.dphi(x) ** 2, q),
                                                         rel=1e-10), q
        assert theory.forward_var(act, q) == pytest.approx(_expectation_by_quad(lambda x: act.phi(x) ** 2, q),
                                                           rel=1e-10), q
    if name == "tanh":  # and the large-q limit, (4/3) / sqrt(2 pi q) (the integral of sech^4), to its 1/q term
        for q in (1e4, 1e8, 1e12):
            assert theory.slope_var(act, q) == pytest.approx(4 / 3 / math.sqrt(2 * math.pi * q), rel=1 / q)


def test_deep_in_the_chaotic_phase_the_correlation_slope_factorises_and_tends_to_2_over_pi():
    """tanh without biases: c* = 0, so chi_c = sigma_w^2 E[tanh'(sqrt(q*) Z)]^2 (Z's two copies
    independent), a one-dimensional integral, here by scipy's quadrature; and as sigma_w^2 grows tanh
    acts as sign, whose correlation map (2/pi) arcsin(c) has slope 2/pi at 0, so xi_c -> -1/ln(2/pi).
    The two-dimensional rule missed the peak at large q: chi_c was 0.18 at sigma_w^2 = 1e6, 3e-26 at 1e8."""
    for sw2 in (1e2, 1e4, 1e6, 1e8):
        q = theory.q_star("tanh", sw2, 0.0)
        slope = _expectation_by_quad(lambda x: 1 / np.cosh(np.minimum(np.abs(x), 300)) ** 2, q)
        assert theory.c_star("tanh", sw2, 0.0) == pytest.approx(0.0, abs=1e-12)
        assert theory.chi_c("tanh", sw2, 0.0) == pytest.approx(sw2 * slope ** 2, rel=1e-9), sw2
    assert theory.correlation_depth("tanh", 1e8, 0.0) == pytest.approx(-1 / math.log(2 / math.pi), rel=1e-3)


def test_participation_ratio_closed_forms_and_the_saturated_limit():
    """relu passes the backward signal through half the units, a linear net through all; tanh at
    large q through about (16/9)/(32/35) / sqrt(2 pi q) of them (the integrals of sech^4 and sech^8)."""
    assert theory.participation("relu", 1.7) == pytest.approx(0.5, rel=1e-12)
    assert theory.participation("identity", 3.0) == pytest.approx(1.0, rel=1e-12)
    for q in (1e4, 1e8, 1e12):
        want = (16 / 9) / (32 / 35) / math.sqrt(2 * math.pi * q)
        assert theory.participation("tanh", q) == pytest.approx(want, rel=10 / q + 1e-9), q


def test_a_finite_net_too_saturated_for_mean_field_is_said_so(tmp_path, cli):
    """A 20-layer sigmoid net with weights of std 1e4 at width 128: the theory (infinite width) calls it
    chaotic, chi_1 about 1e4, but about 0.003 of its units per layer pass the gradient, and the run's
    gradients vanish to 0 instead. Its diagnosis says the theory does not apply, and why; `vgp theory`
    on the config adds the note; a net of ordinary weights gets neither."""
    raw = tiny(model__depth=20, model__width=128, model__activation="sigmoid", train__steps=2,
               log__every=1, model__init={"name": "normal", "std": 1e4})
    res = run(config.from_dict(raw), out=tmp_path, quiet=True)
    s = res.summary
    assert s["verdict"] == "vanishing" and not isinstance(s["theory_phase"], str)  # no prediction beside it
    from vgp import analysis

    t = analysis.diagnose(res.folder)["theory"]
    assert not t["applies"] and re.match(r"at width 128 about 0\.00\d+ units of layer \d+ pass the gradient", t["reason"])
    r = cli("theory", str(res.folder / "config.yaml"))
    assert r.returncode == 0 and "note: at width 128 about 0.00" in r.stdout and "phase                 chaotic" in r.stdout
    ordinary = theory.from_config(config.to_dict(config.from_dict({**raw, "model": {**raw["model"], "init": "default"}})))
    assert theory.too_few_units(ordinary) is None


def test_a_saturated_tanh_net_gets_numbers_not_an_error():
    """Weights of std 1e4 at width 256 (sigma_w^2 = 2.56e10): every tanh unit saturated, chi_1 about
    0.53 sigma_w (chaotic), a finite depth scale (1/ln(chi_1) raised on a chi_1 of 0); the run's
    diagnosis says the theory does not apply at this width (about 0.001 units pass the gradient),
    instead of raising."""
    from vgp.analysis import Run, theory_for

    cfg = config.to_dict(config.from_dict(tiny(model__depth=5, model__width=256, model__activation="tanh",
                                               model__init={"name": "normal", "std": 1e4})))
    t = theory_for(Run(None, cfg, None, None, None, None), [1, 2, 3, 4, 5])
    assert not t["applies"] and "units of layer" in t["reason"]
    sw2 = theory.from_config(cfg).hidden[0]
    chi = theory.chi1("tanh", sw2, 0.0)
    # q* = sigma_w^2 E[tanh^2] is sigma_w^2 to within a few 1e-6 (tanh^2 is 1 but within 1/sqrt(q*) of 0)
    assert sw2 == pytest.approx(2.56e10) and chi == pytest.approx(sw2 * 4 / 3 / math.sqrt(2 * math.pi * sw2), rel=1e-5)
    assert theory.phase(chi) == "chaotic" and 0 < theory.depth_scale(chi) < 1
    # std 1e5 (sigma_w^2 = 2.56e12): a bounded activation's q* is finite however large sigma_w^2 is
    # (a fixed bound of 1e12 on q had called it diverging, and chi_1 was taken at q = 1e12: 1.6x off)
    sw2 = 2.56e12
    q = theory.q_star("tanh", sw2, 0.0)
    assert q == pytest.approx(sw2, rel=1e-5)
    assert theory.chi1("tanh", sw2, 0.0) == pytest.approx(sw2 * 4 / 3 / math.sqrt(2 * math.pi * q), rel=1e-9)
    assert theory.profile("tanh", sw2, 0.0, 3).ratio[-1] == pytest.approx(math.sqrt(theory.chi1("tanh", sw2, 0.0)),
                                                                          rel=1e-6)


def test_chi1_matches_monte_carlo():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(2_000_000)
    q = quad_q_star("tanh", 2.5, 0.1)
    samples = 2.5 * (1 - np.tanh(math.sqrt(q) * z) ** 2) ** 2
    stderr = samples.std() / math.sqrt(len(z))
    assert abs(theory.chi1("tanh", 2.5, 0.1) - samples.mean()) < 4 * stderr


def test_profile_reaches_the_asymptotic_ratio_once_the_variance_converged():
    p = theory.profile("tanh", 1.5, 0.05, depth=60)
    q_star, chi = theory.q_star("tanh", 1.5, 0.05), theory.chi1("tanh", 1.5, 0.05)
    assert p.q[0] == pytest.approx(1.5 + 0.05)  # standardised input
    assert p.q[-1] == pytest.approx(q_star, rel=1e-6)
    assert p.ratio[-1] == pytest.approx(math.sqrt(chi), rel=1e-6)
    assert abs(p.ratio[0] - math.sqrt(chi)) > 0.1  # far from it near the input
    assert p.norm[-1] == 1.0
    assert p.norm[0] == pytest.approx(np.prod(p.ratio), rel=1e-12)
    # depth scale: the squared norm falls by e over 1/|ln chi_1| layers, asymptotically
    assert theory.depth_scale(chi) == pytest.approx(-1 / math.log(chi))


def test_unbounded_variance_is_reported_as_infinite():
    assert theory.q_star("relu", 3.0, 0.0) == math.inf
    assert theory.predict("relu", 3.0, 0.0)["phase"] == "chaotic"


def test_every_registered_activation_is_covered():
    from vgp.activations import ACTIVATIONS

    for name in ACTIVATIONS.names():
        out = theory.predict(name, 1.5, 0.05, depth=3)
        assert math.isfinite(out["chi1"]) and out["chi1"] > 0, name
        assert len(out["profile"]) == 4


# -- variances from a config ------------------------------------------------------------------

def _cfg(**over):
    return config.to_dict(config.from_dict(tiny(**over)))


@pytest.mark.parametrize("init,want", [
    ("default", 1 / 3), ("kaiming_normal", 2.0), ("kaiming_uniform", 2.0), ("xavier_normal", 1.0),
    ({"name": "orthogonal", "gain": 1.3}, 1.69), ({"name": "variance_scaling", "scale": 4.0}, 4.0),
    ("lecun_normal", 1.0), ({"name": "normal", "std": 0.05}, 0.05 ** 2 * 256),
])
def test_weight_variance_from_config_matches_the_initialised_weights(init, want):
    """sigma_w^2 = fan_in Var(W) of a hidden layer: as stated, and as the init really draws it."""
    from vgp.activations import get
    from vgp.inits import initialize

    cfg = _cfg(model__init=init, model__activation="relu", model__width=256, model__bias_init="default")
    s = theory.from_config(cfg)
    assert s.hidden[0] == pytest.approx(want, rel=1e-9)
    assert s.hidden[1] == pytest.approx(1 / (3 * 256))
    layer = torch.nn.Linear(256, 256)
    torch.manual_seed(0)
    initialize(layer, get(cfg["model"]["activation"]), cfg["model"]["init"], cfg["model"]["bias_init"])
    assert 256 * layer.weight.var().item() == pytest.approx(want, rel=0.02)
    assert layer.bias.var().item() == pytest.approx(s.hidden[1], rel=0.2)
    if isinstance(init, dict) and init["name"] == "normal":
        assert any("width" in n for n in s.notes)


@pytest.mark.parametrize("over,why", [
    (dict(model__norm="batchnorm"), "normalisation"), (dict(model__skip=True), "residual"),
    (dict(model__init="identity"), "not an i.i.d."), (dict(model__bias_init={"name": "constant", "value": 0.5}), "constant"),
])
def test_theory_says_when_it_does_not_apply(over, why):
    with pytest.raises(theory.NotApplicable, match=why):
        theory.from_config(_cfg(**over))


def test_theory_does_not_apply_to_conv_and_recurrent_nets():
    for arch in ("resnet", "rnn"):
        cfg = {"model": {"arch": arch}}
        with pytest.raises(theory.NotApplicable, match="recurrent" if arch == "rnn" else "convolutional"):
            theory.from_config(cfg)


# -- real wide networks at step 0 --------------------------------------------------------------

WIDE = dict(train__steps=1, model__depth=15, model__width=512, data__dim=64, data__classes=10, data__n_train=256,
            train__batch_size=256, log__kinds=["output_grad"])


@pytest.mark.parametrize("act,init,bias", [
    ("tanh", {"name": "variance_scaling", "scale": 1.5}, {"name": "normal", "std": math.sqrt(0.05)}),
    ("tanh", {"name": "variance_scaling", "scale": 4.0}, "zeros"),
    ("tanh", {"name": "orthogonal", "gain": 1.2}, "zeros"),
    ("sigmoid", "default", "default"),
    ("relu", "kaiming_normal", "zeros"),
    ("selu", "lecun_normal", "zeros"),
    ("elu", {"name": "variance_scaling", "scale": 1.5}, "zeros"),
    ("silu", {"name": "variance_scaling", "scale": 3.0}, "zeros"),
])
def test_wide_net_decay_matches_theory(tmp_path, act, init, bias):
    """Width 512, depth 15, step 0: the measured decay per layer (summary.csv) within 2% of the
    prediction fitted the same way, and every layer's ratio within 10% of the finite-depth profile."""
    import pandas as pd

    cfg = config.from_dict(tiny(model__activation=act, model__init=init, model__bias_init=bias, **WIDE))
    r = run(cfg, out=tmp_path, quiet=True)
    s = r.summary
    assert s["decay_per_layer"] == pytest.approx(s["predicted_decay_per_layer"], rel=0.02)
    g = pd.read_csv(r.folder / "grad_norms.csv")
    og = g[(g.step == 0) & (g.kind == "output_grad")].sort_values("layer").value.to_numpy()
    st = theory.from_config(config.to_dict(cfg))
    p = theory.profile(st.activation, st.weight_vars, st.bias_vars)
    assert og[:-1] / og[1:] == pytest.approx(np.array(p.ratio), rel=0.10)


# -- the command line ---------------------------------------------------------------------------

def test_cli_theory_json(cli):
    r = cli("theory", "--activation", "tanh", "--weight-var", "1.5", "--bias-var", "0.05", "--depth", "30", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"q_star", "chi1", "ratio_per_layer", "depth_scale", "phase", "profile"} <= set(out)
    assert out["chi1"] == pytest.approx(quad_chi1("tanh", 1.5, 0.05), rel=1e-7)
    assert out["phase"] == "ordered" and len(out["profile"]) == 31
    r = cli("theory", "--activation", "tanh", "--bias-var", "0.05", "--critical", "--json")
    assert json.loads(r.stdout)["weight_var"] == pytest.approx(1.76, abs=0.01)


@pytest.mark.slow
def test_cli_theory_from_config_and_errors(cli, tmp_path):
    r = cli("theory", "configs/quickstart.yaml")
    assert r.returncode == 0 and "sigmoid" in r.stdout and "0.3333" in r.stdout
    r = cli("theory", "--activation", "tnah", "--weight-var", "1")
    assert r.returncode == 2 and "did you mean 'tanh'" in r.stderr and "Traceback" not in r.stderr
    r = cli("theory", "configs/resnet56_plain.yaml")
    assert r.returncode == 2 and "does not apply" in r.stderr
    r = cli("theory", "--activation", "tanh")
    assert r.returncode == 2 and "--weight-var" in r.stderr


def test_bad_activation_is_a_user_error():
    with pytest.raises(UserError, match="did you mean 'relu'"):
        theory.chi1("rleu", 2.0, 0.0)


# -- the correlation map and xi_c (Schoenholz et al. 2017, eqs. 3, 9-10) ----------------------------

def hermite_expect2(f, q, c, n=160):
    """E[f(u1, u2)] by a product Gauss-Hermite rule (probabilists'), independent of vgp's Legendre rule."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    u1 = math.sqrt(q) * z[:, None]
    u2 = math.sqrt(q) * (c * z[:, None] + math.sqrt(1 - c * c) * z[None, :])
    return float(w @ f(u1, u2) @ w)


@pytest.mark.parametrize("q", [1e-2, 1.0, 1e4, 1e10])
def test_two_dimensional_expectations_of_relu_match_the_arc_cosine_kernel(q):
    """E[relu(u1) relu(u2)] = q/(2 pi) (sin t + (pi - t) cos t) and E[relu'(u1) relu'(u2)] = (pi - t)/(2 pi),
    t = arccos c (Cho & Saul 2009): closed forms with a kink where u2 = 0, which for c z1 != 0 is not
    at z2 = 0. The rule split z2 only at 0 and was 2e-4 off for relu' (the slope of the correlation
    map, chi_c); near c = -1 the product lives in a wedge about sqrt(1 - c^2) wide."""
    for c in (-0.999999, -0.999, -0.9, -0.3, 0.0, 0.5, 0.9, 0.999, 0.999999):
        t = math.acos(c)
        both = theory._gauss2(lambda a, b: np.maximum(a, 0) * np.maximum(b, 0), q, c)
        slopes = theory._gauss2(lambda a, b: (a > 0) * (b > 0) * 1.0, q, c)
        assert both == pytest.approx(q / (2 * math.pi) * (math.sin(t) + (math.pi - t) * math.cos(t)), rel=1e-10,
                                     abs=1e-12 * q), (q, c)
        assert slopes == pytest.approx((math.pi - t) / (2 * math.pi), abs=1e-12), (q, c)
    assert theory._gauss2(lambda a, b: np.maximum(a, 0) * np.maximum(b, 0), q, -1.0) == 0.0  # relu(u) relu(-u)


def nested_quad2(phi, q, c):
    """E[phi(u1) phi(u2)] by scipy's adaptive quadrature, z2 inside z1, each told where its integrand
    changes: z1 = 0 and +-40/sqrt(q); z2 = 0 and the point where u2 = 0 with +-40/(sqrt(q) r) around it."""
    s, r = math.sqrt(q), math.sqrt(1 - c * c)
    density = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        z0, a = -c * z1 / r, 40 / (s * r)
        points = sorted(p for p in {0.0, z0, z0 - a, z0 + a} if -12 < p < 12)
        return integrate.quad(lambda z2: phi(s * (c * z1 + r * z2)) * density(z2), -12, 12, points=points,
                              limit=2000, epsabs=1e-13, epsrel=1e-12)[0]

    a = 40 / s
    return integrate.quad(lambda z1: phi(s * z1) * inner(z1) * density(z1), -12, 12, points=[-a, 0.0, a],
                          limit=2000, epsabs=1e-13, epsrel=1e-12)[0]


def test_two_dimensional_expectations_of_saturated_tanh_match_nested_quadrature():
    """Large q: tanh(sqrt(q) z) changes sign within 1/sqrt(q) of where u = 0, on the second axis away
    from z2 = 0. E[tanh(u1) tanh(u2)] was 7e-4 off at q = 1e6, c = 0.5; it tends to (2/pi) arcsin c
    (the sign's correlation map) from below."""
    phi = math.tanh
    for q in (1e4, 1e6):
        for c in (0.5, 0.9):
            ref = nested_quad2(phi, q, c)
            assert theory._gauss2(lambda a, b: np.tanh(a) * np.tanh(b), q, c) == pytest.approx(ref, abs=1e-10), (q, c)
    limit = 2 / math.pi * math.asin(0.5)
    at_1e8 = theory._gauss2(lambda a, b: np.tanh(a) * np.tanh(b), 1e8, 0.5)
    assert limit - 1e-7 < at_1e8 < limit


@pytest.mark.parametrize("sw2", [2.0, 2.5, 4.0])
def test_correlation_fixed_point_and_xi_c_in_the_chaotic_phase_match_an_independent_computation(sw2):
    sb2, (phi, dphi) = 0.05, NP["tanh"]
    q = quad_q_star("tanh", sw2, sb2)
    cmap = lambda c: (sw2 * hermite_expect2(lambda a, b: phi(a) * phi(b), q, c) + sb2) / q  # noqa: E731
    c_ref = optimize.brentq(lambda c: cmap(c) - c, -0.99, 1 - 1e-3, xtol=1e-14)
    chi_c = sw2 * hermite_expect2(lambda a, b: dphi(a) * dphi(b), q, c_ref)
    assert theory.c_star("tanh", sw2, sb2) == pytest.approx(c_ref, abs=1e-9)
    assert theory.chi_c("tanh", sw2, sb2) == pytest.approx(chi_c, rel=1e-9)
    assert theory.correlation_depth("tanh", sw2, sb2) == pytest.approx(-1 / math.log(chi_c), rel=1e-8)
    assert theory.correlation_map("tanh", sw2, sb2, 1.0) == pytest.approx(1.0, abs=1e-12)  # c = 1 is always fixed
    assert chi_c < 1 < theory.chi1("tanh", sw2, sb2)  # c* is stable although c = 1 is not


def test_xi_c_is_the_gradient_depth_scale_in_the_ordered_phase_and_diverges_at_the_transition():
    for sw2 in (0.8, 1.0, 1.5):
        assert theory.c_star("tanh", sw2, 0.05) == 1.0
        assert theory.correlation_depth("tanh", sw2, 0.05) == theory.depth_scale(theory.chi1("tanh", sw2, 0.05))
    crit = theory.critical_weight_var("tanh", 0.05)
    below, above = (theory.correlation_depth("tanh", crit * f, 0.05) for f in (0.995, 1.005))
    assert below > 100 and above > 100  # ~6 xi_c: the paper's nets of hundreds of layers train only here
    # away from it, it falls on both sides: Schoenholz et al.'s fig. 5 curve
    xi = [theory.correlation_depth("tanh", w, 0.05) for w in (1.0, 1.5, 2.0, 3.0, 4.0)]
    assert xi[0] < xi[1] and xi[2] > xi[3] > xi[4]
    assert theory.c_star("tanh", crit * 1.005, 0.05) > 0.97  # c* leaves 1 continuously


def test_correlation_of_two_inputs_in_a_wide_random_net_follows_the_map_to_c_star():
    """Monte Carlo in float64: pairs of inputs with correlation 0.6 and 0 through 500-wide random
    tanh nets; the mean correlation of their pre-activations follows the correlation map layer by
    layer and settles at c* from above and from below."""
    sw2, sb2, n, pairs, depth = 3.0, 0.05, 500, 16, 30
    rng = np.random.default_rng(0)
    q, c_star = theory.q_star("tanh", sw2, sb2), theory.c_star("tanh", sw2, sb2)
    for c0 in (0.6, 0.0):
        runs = []
        for _ in range(2):  # nets
            z = rng.standard_normal((2, pairs, n))
            x = np.concatenate([z[0], c0 * z[0] + math.sqrt(1 - c0 ** 2) * z[1]])  # (2 pairs, n)
            cs = []
            for layer in range(depth):
                w = rng.standard_normal((n, n)) * math.sqrt(sw2 / n)
                x = (np.tanh(x) if layer else x) @ w.T + rng.standard_normal(n) * math.sqrt(sb2)
                a, b = x[:pairs], x[pairs:]
                cs.append(np.mean(np.sum(a * b, 1) / np.sqrt(np.sum(a * a, 1) * np.sum(b * b, 1))))
            runs.append(cs)
        measured = np.mean(runs, axis=0)
        predicted = [measured[0]]
        for _ in range(depth - 1):
            predicted.append(theory.correlation_map("tanh", sw2, sb2, predicted[-1], q))
        np.testing.assert_allclose(measured, predicted, atol=0.06)
        assert abs(measured[-5:].mean() - c_star) < 0.06
        assert (predicted[-1] - c_star) * (c0 - c_star) > 0  # approached from the side it started on


def test_vgp_theory_prints_the_correlation_depth(cli):
    """`vgp theory` gives xi_c beside the gradient's depth scale: equal in the ordered phase, apart in the
    chaotic one (tanh, sigma_w^2 = 4: xi_c = 6.98, 1/|ln chi_1| smaller), absent where q* diverges."""
    import json

    for sw2 in (1.5, 4.0):
        r = cli("theory", "--activation", "tanh", "--weight-var", sw2, "--bias-var", 0.05, "--json")
        out = json.loads(r.stdout)
        assert out["correlation_depth"] == pytest.approx(theory.correlation_depth("tanh", sw2, 0.05), rel=1e-12)
    assert out["correlation_depth"] == pytest.approx(6.98, abs=0.01) and out["depth_scale"] < 6.0
    r = cli("theory", "--activation", "tanh", "--weight-var", 4.0, "--bias-var", 0.05)
    assert re.search(r"correlation depth\s+6\.98\s+layers \(xi_c", r.stdout)
    r = cli("theory", "--activation", "relu", "--weight-var", 4.0, "--bias-var", 0.0, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["correlation_depth"] is None
