"""Activation statistics where vgp looks hardest: vanishing layers and saturated ones.

Every recorded act_mean, act_std, saturation and dead is compared with its float64 value computed
independently from the same forward pass (our own forward hooks on the activation modules):
``h.double().mean()``, ``h.double().std(unbiased=False)``, |phi'(z)| by float64 autograd on the
float64 pre-activation against 5% of ``dphi_max``, and exact zero tests. Tolerances: act_std 1e-5
relative (exact 0 where the reference is 0), the fractions exactly. act_mean within 1e-5 of
max(|mean|, std): where a mean is ~0 next to the std (tanh), float32 sums cannot give it to 1e-5 of
itself, and no one reads it to that.

Saturation is read off h = phi(z), rounded to float32, for most activations, so it may differ from
the float64 reference on z only where |phi'(z)| is within rounding of the threshold; the probes
below draw their pre-activations away from it (and check they did), so equality is exact there.
"""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import tiny
from vgp import activations, config, data as datasets
from vgp.activations import ACTIVATIONS, SAT
from vgp.models import Tracked
from vgp.record import ACT_KINDS, KINDS, GradientRecorder
from vgp.train import batches, build_model, run

# pre-activation scales: subnormal float32 (below 1.18e-38), tiny, ordinary, large
SCALES = [1e-44, 1e-40, 1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3]
SPECS = [{"name": n} for n in ACTIVATIONS.names()] + [
    {"name": "leaky_relu", "negative_slope": 0.2},  # never saturated
    {"name": "elu", "alpha": 0.02},  # all of z <= 0 saturated
    {"name": "elu", "alpha": 30.0},  # z > 0 saturated too: phi' on z
]


def _act(spec: dict) -> activations.Activation:
    return activations.get(ACTIVATIONS.resolve(spec, "test"))


def _dphi64(act, z: torch.Tensor) -> torch.Tensor:
    """|phi'(z)| in float64, by autograd through the activation module."""
    z = z.double().requires_grad_(True)
    (d,) = torch.autograd.grad(act.module()(z).sum(), z)
    return d.abs()


def reference(act, z: torch.Tensor, h: torch.Tensor) -> dict:
    """The four statistics of one layer in float64 from its float32 z and h, (B, ...)."""
    h64 = h.double()
    return {
        "act_mean": h64.mean().item(),
        "act_std": h64.std(unbiased=False).item(),
        "saturation": (_dphi64(act, z) < SAT * act.dphi_max).double().mean().item(),
        "dead": (h64 == 0).flatten(1).all(0).double().mean().item(),  # zero for every example
    }


def assert_stats_equal(got: dict, want: dict, where):
    mean, std = want["act_mean"], want["act_std"]
    assert math.isfinite(got["act_mean"]) and math.isfinite(got["act_std"]), where
    assert abs(got["act_mean"] - mean) <= 1e-5 * max(abs(mean), std), (where, got, want)
    assert got["act_std"] == pytest.approx(std, rel=1e-5, abs=0), (where, got, want)  # abs=0: 1e-30 is not 0
    assert got["saturation"] == want["saturation"], (where, got, want)
    assert got["dead"] == want["dead"], (where, got, want)


def record(model: nn.Module, tracked: list[Tracked], act, inputs) -> tuple[list[dict], list[dict]]:
    """One recorded step of the real recorder; returns its act values and the float64 references
    of every layer with an activation, from the same forward pass."""
    seen = {}

    def keep(k):
        def hook(module, inp, out):
            seen[k] = (inp[0].detach().clone(), out.detach().clone())

        return hook

    handles = [t.act.register_forward_hook(keep(k)) for k, t in enumerate(tracked) if t.act is not None]
    with GradientRecorder(tracked, act) as rec:
        rec.start()
        out = model(inputs)
        sum(o.sum() for o in (out if isinstance(out, list) else [out])).backward()
        rec.after_backward()
        values = rec.after_step()
    for hd in handles:
        hd.remove()
    assert values.dtype == torch.float64
    got, want = [], []
    for k in sorted(seen):
        got.append({kind: values[KINDS.index(kind), k].item() for kind in ACT_KINDS})
        want.append(reference(act, *seen[k]))
    return got, want


class Probes(nn.Module):
    """Independent layers, each fed its own input: layer k computes act(W_k x_k + b_k) with W_k the
    identity and b_k = 0 (a Linear, or a 1x1 Conv2d for (B, C, H, W) inputs), so that its
    pre-activation is x_k exactly: statistics of any chosen z, through the recorder's real path."""

    def __init__(self, act, shapes: list[tuple]):
        super().__init__()
        layers = []
        for shape in shapes:
            c = shape[1]
            layer = nn.Linear(c, c) if len(shape) == 2 else nn.Conv2d(c, c, 1)
            with torch.no_grad():
                layer.weight.copy_(torch.eye(c).view_as(layer.weight))
                layer.bias.zero_()
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(act.module() for _ in shapes)

    def forward(self, xs):
        return [a(layer(x)) for layer, a, x in zip(self.layers, self.acts, xs)]

    def tracked(self) -> list[Tracked]:
        return [Tracked(f"probe{k}", layer, a) for k, (layer, a) in enumerate(zip(self.layers, self.acts))]


def away_from_threshold(act, z: torch.Tensor, draw) -> torch.Tensor:
    """z with every entry whose |phi'| lies within 0.1% of the saturation threshold drawn again."""
    thr = SAT * act.dphi_max
    for _ in range(100):
        near = (_dphi64(act, z) - thr).abs() <= 1e-3 * thr
        if not near.any():
            return z
        z[near] = draw(z.shape)[near]
    raise AssertionError("could not draw away from the threshold")


def probe_stats(act, draws: list, device="cpu") -> tuple[list[dict], list[dict], list[torch.Tensor]]:
    """Run the recorder on Probes fed by ``draws``, (function of a N(0, 1) sample -> z, shape) pairs."""
    g = torch.Generator().manual_seed(0)
    zs = []
    for draw, shape in draws:
        fn = (lambda s, draw=draw: draw(torch.randn(s, generator=g)))
        zs.append(away_from_threshold(act, fn(shape), fn).to(device))
    model = Probes(act, [s for _, s in draws]).to(device)
    with torch.no_grad():  # the premise: each probe's pre-activation is exactly the z drawn
        assert all(torch.equal(layer(z), z) for layer, z in zip(model.layers, zs))
    got, want = record(model, model.tracked(), act, zs)
    return got, want, zs


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(map(str, s.values())))
def test_every_statistic_equals_float64_across_scales(spec, device="cpu"):
    """For each scale from subnormal (1e-44) to 1e3: centred inputs (mean ~0), shifted ones (mean
    far above the std: 1 + 1e-3 N(0,1), times the scale), in a stacked (32, 64) group and a conv-shaped
    (8, 4, 5, 5) group, every layer with its own scale."""
    act = _act(spec)
    draws = []
    for s in SCALES:
        draws.append((lambda r, s=s: r * s, (32, 64)))
        draws.append((lambda r, s=s: (1 + 1e-3 * r) * s, (32, 64)))
        draws.append((lambda r, s=s: (r - 0.5) * s, (8, 4, 5, 5)))
    got, want, zs = probe_stats(act, draws, device)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_stats_equal(g, w, (spec, k, SCALES[k // 3], tuple(zs[k].shape)))
    # the sweep reaches what it is about: tiny and subnormal activations with a nonzero std
    if spec["name"] in ("identity", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softsign"):
        assert 0 < want[0]["act_std"] < 1e-41 and 0 < want[3]["act_std"] < 1e-38
        assert 0 < want[7]["act_std"] < 1e-32 < want[7]["act_mean"]  # the shifted probe: mean 1e-30, std 1e-33


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturated_layers_with_mean_far_above_std(name, device="cpu"):
    """Saturated sigmoid/tanh layers: 0.99 +- 1e-4 and alike, where E[h^2] - mean^2 in float32
    cancels to noise; mixed layers around the saturation threshold; outputs rounded to exactly 1."""
    act = _act({"name": name})
    if name == "sigmoid":  # h = 0.99 at z = 4.595, slope 0.0099; threshold |z| = 4.35
        centres = [(4.595, 0.01), (-4.595, 0.01), (8.0, 0.01), (4.36, 0.3), (0.0, 30.0), (20.0, 1.0)]
    else:  # h = 0.995 at z = 3; threshold |z| = 2.18
        centres = [(3.0, 0.01), (-3.0, 0.01), (6.0, 0.01), (2.18, 0.1), (0.0, 30.0), (12.0, 1.0)]
    draws = [(lambda r, c=c, w=w: c + w * r, (64, 128)) for c, w in centres]
    draws.append((lambda r: 3.0 * torch.sign(r) + 0.01 * r, (64, 128)))  # z = +-3: tanh +-0.995, mean ~0
    got, want, _ = probe_stats(act, draws, device)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_stats_equal(g, w, (name, draws[k]))
    assert want[0]["act_std"] < 2e-4 * want[0]["act_mean"] and want[0]["saturation"] == 1  # the case it is about
    assert 0.2 < want[3]["saturation"] < 0.8  # the mixed layer straddles the threshold


@pytest.mark.parametrize("name", ["relu", "tanh", "identity", "gelu"])
def test_all_zero_and_constant_layers(name):
    """Outputs exactly 0 everywhere (std 0, not NaN; dead 1) and constant outputs (std exactly 0)."""
    act = _act({"name": name})
    draws = [(lambda r: torch.zeros_like(r), (16, 64)),
             (lambda r: torch.full_like(r, 0.7), (16, 64)),
             (lambda r: torch.full_like(r, -1e-41), (4, 3, 2, 2))]
    if name == "relu":  # z < 0 everywhere: h exactly 0
        draws.append((lambda r: -r.abs() - 1e-30, (16, 64)))
    got, want, _ = probe_stats(act, draws)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_stats_equal(g, w, (name, k))
    assert got[0] == {"act_mean": 0.0, "act_std": 0.0, "saturation": want[0]["saturation"], "dead": 1.0}
    assert got[1]["act_std"] == 0.0


@pytest.mark.parametrize("name", ["identity", "sigmoid"])
def test_large_layers(name):
    """2M entries per layer (a CIFAR-sized conv batch): the sums of squares must add pairwise; one
    float32 chain (torch.linalg.vector_norm on the CPU) is 5e-5 off at this size."""
    act = _act({"name": name})
    draws = [(lambda r: 3 + r, (128, 16, 32, 32)), (lambda r: 4.595 + 0.01 * r, (128, 16, 32, 32))]
    got, want, _ = probe_stats(act, draws)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_stats_equal(g, w, (name, k))


@pytest.mark.parametrize("name", ["relu", "identity"])
def test_overflowed_layers(name):
    """Pre-activations that overflowed float32 (here: infinite biases): the mean is +-inf or NaN as in
    float64, the std NaN (also where every entry is +inf); finite ones near float32's max, whose sum
    is not in float32, are right too."""
    act = _act({"name": name})
    inf, units = math.inf, torch.arange(64)
    biases = [torch.where(units < 8, inf, 0.0),  # some units +inf: mean +inf
              torch.full((64,), inf),  # all +inf: no std (not 0)
              torch.where(units < 8, inf, -inf),  # +-inf: no mean (identity)
              torch.zeros(64)]
    model = Probes(act, [(16, 64)] * len(biases))
    with torch.no_grad():
        for layer, b in zip(model.layers, biases):
            layer.bias.copy_(b)
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(16, 64, generator=g) for _ in biases[:-1]] + [3e38 * torch.randn(16, 64, generator=g).sign()]
    got, want = record(model, model.tracked(), act, zs)
    for k, (g, w) in enumerate(zip(got, want)):
        for kind in ACT_KINDS:
            assert g[kind] == pytest.approx(w[kind], rel=1e-5, abs=0, nan_ok=True), (name, k, kind, g, w)
    assert want[0]["act_mean"] == inf and math.isnan(want[1]["act_std"])
    assert math.isnan(want[2]["act_mean"]) == (name == "identity")  # relu turns -inf into 0
    assert math.isfinite(want[3]["act_std"])


def _issue_cfg(**over):
    """The bug report's net: a ReLU MLP of depth 40, width 64, weights N(0, 0.01^2), zero biases."""
    return config.from_dict(tiny(model__depth=40, model__width=64, model__activation="relu",
                                 model__init={"name": "normal", "std": 0.01}, model__bias_init={"name": "zeros"},
                                 data__dim=32, train__steps=1, **over))


def _issue_reference(cfg):
    """The run's model, built as ``vgp run`` builds it (same seed), and its first batch (same rows,
    same order), so that a forward pass here is the run's first one."""
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, act = build_model(cfg.model, d)
    x = d.x_train[next(batches(len(d.x_train), cfg.train.batch_size, cfg.seed, "cpu"))]
    return model, act, x


def test_issue_relu_depth_40():
    """The report's case, recorder on the model's forward pass: from layer ~19 the std is ~1e-24
    and below (it was written as 0), deeper layers are subnormal (where the report saw dead 0.974,
    not a multiple of 1/64, and saturation 0.99 for 0.52), the last ones exactly 0."""
    model, act, x = _issue_reference(_issue_cfg())
    tracked = model.tracked()
    got, want = record(model, tracked, act, x)
    stds = [w["act_std"] for w in want]
    assert 1e-26 < stds[18] < 1e-22  # the regime of the report
    assert any(0 < s < 1e-38 for s in stds)  # subnormal layers
    assert stds[-1] == 0 and want[-1]["dead"] == 1  # and all-zero ones
    for layer, (g, w) in enumerate(zip(got, want), start=1):
        assert_stats_equal(g, w, layer)
        assert (g["dead"] * 64).is_integer()


def test_issue_relu_depth_40_end_to_end(tmp_path):
    """The same through ``vgp run``: grad_norms.csv holds the float64 statistics of the first batch."""
    cfg = _issue_cfg()
    result = run(cfg, out=tmp_path, quiet=True)
    g = pd.read_csv(result.folder / "grad_norms.csv")
    rec = {(r.layer, r.kind): r.value for r in g[g.step == 0].itertuples()}
    model, act, x = _issue_reference(cfg)
    _, want = record(model, model.tracked(), act, x)  # only its references are used
    assert want[25]["act_std"] < 1e-30
    for layer, w in enumerate(want, start=1):
        assert_stats_equal({k: rec[(layer, k)] for k in ACT_KINDS}, w, layer)


def test_conv_net_with_vanishing_activations():
    """A plain conv net (4-d activations, one group per shape) whose activations shrink to ~1e-30."""
    cfg = config.from_dict(tiny(model__arch="resnet", model__depth=14, model__width=4, model__norm="none",
                                model__skip=False, model__activation="relu",
                                model__init={"name": "normal", "std": 0.002}, model__bias_init={"name": "zeros"},
                                data={"name": "digits", "n_test": 1733}))
    torch.manual_seed(0)
    d = datasets.load(cfg.data, cfg.seed)
    model, act = build_model(cfg.model, d)
    got, want = record(model, model.tracked(), act, d.x_train[:16])
    assert min(w["act_std"] for w in want) < 1e-20
    for layer, (g, w) in enumerate(zip(got, want), start=1):
        assert_stats_equal(g, w, layer)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "gelu"])
def test_on_the_gpu(name, monkeypatch):
    """The same sweeps with the recorder's reductions done by CUDA kernels."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the 1x1 convs must stay exact
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    test_every_statistic_equals_float64_across_scales({"name": name}, device="cuda")
    if name in ("sigmoid", "tanh"):
        test_saturated_layers_with_mean_far_above_std(name, device="cuda")
