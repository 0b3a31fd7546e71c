"""Recorded values against independent computations: p.grad.norm(), retain_grad() on the
pre-activations, autograd derivatives of the activation, and a hand-done optimizer step."""

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny
from vgp import activations, config, data as datasets
from vgp.activations import ACTIVATIONS
from vgp.optim import OPTIMIZERS
from vgp.train import build_model, run


def _reference(cfg, steps):
    """Train the same model full-batch by hand and compute every recorded kind independently.

    Full batch (batch_size >= n_train) makes the batch order irrelevant. Returns
    {(step, layer, kind): value} and {(step, column): value} for the metrics.
    """
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, act = build_model(cfg.model, d)
    model.train()
    params = [p for p in model.parameters()]
    opt = OPTIMIZERS.build(cfg.train.optimizer, params)
    tracked = model.tracked()
    act_fn = activations.get(cfg.model.activation).module()
    grads, metrics = {}, {}
    for step in range(steps):
        zs, acts = {}, {}

        def keep_z(i):
            def hook(m, inp, out):
                out.retain_grad()
                zs[i] = out

            return hook

        def keep_act(i):
            def hook(m, inp, out):
                acts[i] = (inp[0].detach(), out.detach())

            return hook

        handles = [t.layer.register_forward_hook(keep_z(i)) for i, t in enumerate(tracked)]
        handles += [t.act.register_forward_hook(keep_act(i)) for i, t in enumerate(tracked) if t.act is not None]
        logits = model(d.x_train)
        loss = F.cross_entropy(logits, d.y_train)
        opt.zero_grad()
        loss.backward()
        for h in handles:
            h.remove()
        before = [t.layer.weight.detach().clone() for t in tracked]
        total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        metrics[(step, "loss")] = loss.item()
        metrics[(step, "grad_norm")] = total
        metrics[(step, "acc")] = (logits.argmax(1) == d.y_train).double().mean().item()
        pre_grad = [t.layer.weight.grad.clone() for t in tracked]
        pre_clip = [(t.layer.weight.grad.double().norm().item(),
                     t.layer.bias.grad.double().norm().item() if t.layer.bias is not None else None)
                    for t in tracked]
        if cfg.train.clip.mode == "norm":
            torch.nn.utils.clip_grad_norm_(params, cfg.train.clip.max_norm)
        elif cfg.train.clip.mode == "value":
            torch.nn.utils.clip_grad_value_(params, cfg.train.clip.value)
        metrics[(step, "grad_norm_clipped")] = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        opt.step()
        for i, t in enumerate(tracked):
            layer = i + 1
            w = t.layer.weight
            grads[(step, layer, "weight_grad")], bias_grad = pre_clip[i]
            # zero or below float32's smallest normal number (exact zeros: dead ReLU units' rows)
            grads[(step, layer, "underflow")] = (pre_grad[i].double().abs() < 2.0 ** -126).double().mean().item()
            if bias_grad is not None:
                grads[(step, layer, "bias_grad")] = bias_grad
            grads[(step, layer, "output_grad")] = zs[i].grad.double().norm().item()
            grads[(step, layer, "weight")] = before[i].double().norm().item()
            grads[(step, layer, "update_ratio")] = ((w.detach() - before[i]).double().norm() /
                                                    before[i].double().norm()).item()
            if t.act is not None:
                z, h = acts[i]
                h = h.double()
                zz = z.clone().requires_grad_(True)
                (dphi,) = torch.autograd.grad(act_fn(zz).sum(), zz)  # the activation's derivative by autograd
                grid = torch.linspace(-20, 20, 400001, requires_grad=True)
                (dgrid,) = torch.autograd.grad(act_fn(grid).sum(), grid)
                dmax = dgrid.abs().max()
                grads[(step, layer, "act_mean")] = h.mean().item()
                grads[(step, layer, "act_std")] = h.std(unbiased=False).item()
                grads[(step, layer, "saturation")] = (dphi.abs() < 0.05 * dmax).double().mean().item()
                grads[(step, layer, "dead")] = (h == 0).all(0).double().mean().item()
    return grads, metrics


CASES = {
    "tanh-sgd": {},
    "relu-batchnorm-momentum": dict(model__activation="relu", model__norm="batchnorm",
                                    train__optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9}),
    "sigmoid-skip-adam-clipnorm": dict(model__activation="sigmoid", model__skip=True,
                                       train__optimizer={"name": "adam", "lr": 0.01},
                                       train__clip={"mode": "norm", "max_norm": 0.05}),
    "elu-layernorm-clipvalue": dict(model__activation="elu", model__norm="layernorm",
                                    model__init={"name": "normal", "std": 0.5},
                                    train__clip={"mode": "value", "value": 0.001}),
    "leaky-orthogonal": dict(model__activation={"name": "leaky_relu", "negative_slope": 0.2},
                             model__init={"name": "orthogonal", "gain": 1.3}, model__bias_init="zeros"),
    # conv nets: output_grad of a conv is the norm over batch, channels and positions
    "resnet-batchnorm": dict(model__arch="resnet", model__depth=8, model__width=4, model__norm="batchnorm",
                             model__skip=True, model__activation="relu", data={"name": "digits", "n_test": 1733}),
    "plain-conv-gelu": dict(model__arch="resnet", model__depth=8, model__width=4, model__norm="none",
                            model__skip=False, model__activation="gelu", data={"name": "digits", "n_test": 1733}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_values_equal_independent_computation(tmp_path, case):
    steps = 3
    cfg = config.from_dict(tiny(train__steps=steps, **CASES[case]))
    result = run(cfg, out=tmp_path, quiet=True)
    assert result.status == "completed"
    g = pd.read_csv(result.folder / "grad_norms.csv")
    m = pd.read_csv(result.folder / "metrics.csv").set_index("step")
    ref, ref_metrics = _reference(cfg, steps)

    recorded = {(r.step, r.layer, r.kind): r.value for r in g.itertuples()}
    assert set(recorded) == set(ref)  # every kind of every layer, every step; act kinds only for hidden layers
    for key, want in ref.items():
        assert recorded[key] == pytest.approx(want, rel=2e-4, abs=1e-7), key
    for (step, col), want in ref_metrics.items():
        assert m.loc[step, col] == pytest.approx(want, rel=1e-4), (step, col)
    if cfg.train.clip.mode != "none":
        assert m.loc[0, "clipped"]  # the thresholds above are far below the gradients
        assert (m.loc[0, "grad_norm_clipped"] < m.loc[0, "grad_norm"])
    else:
        assert not m.loc[0:steps - 1, "clipped"].any()


def test_rows_are_tidy_and_named(tmp_path):
    cfg = config.from_dict(tiny(train__steps=25, log__every=10))
    folder = run(cfg, out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv")
    assert list(g.columns) == ["step", "layer", "name", "kind", "value"]
    assert sorted(g.step.unique()) == [0, 10, 20, 24]  # 0, every 10th, and the last step
    assert not g.duplicated(["step", "layer", "kind"]).any()
    names = g.drop_duplicates("layer").set_index("layer").name.to_dict()
    assert names == {1: "blocks.0.linear", 2: "blocks.1.linear", 3: "blocks.2.linear", 4: "out"}
    assert set(g[g.layer == 4].kind) == {"weight_grad", "bias_grad", "output_grad", "weight", "update_ratio",
                                         "underflow"}
    assert (g[(g.step == 0) & (g.kind == "update_ratio")].value > 0).all()


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_derivative_matches_autograd(name):
    act = activations.get(ACTIVATIONS.resolve({"name": name}, "test"))
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64, requires_grad=True)
    module = act.module()
    (auto,) = torch.autograd.grad(module(x).sum(), x)
    assert torch.allclose(act.dphi(x.detach()), auto, atol=1e-6)
    assert torch.allclose(act.phi(x.detach()), module(x).detach(), atol=1e-12)
    assert act.dphi_max == pytest.approx(auto.abs().max().item(), rel=1e-3)
    assert not getattr(module, "inplace", False)
    # the recorder's shortcut reads saturation off the output: same as |phi'| < 5% of the max
    if act.saturated is not None:
        xf = x.detach().float()
        want = auto.abs() < 0.05 * auto.abs().max()
        got = act.saturated(module(xf).detach()) == 1
        near = (auto.abs() - 0.05 * auto.abs().max()).abs() < 1e-4  # float32 rounding at the threshold
        assert torch.equal(got[~near], want[~near]), name


@pytest.mark.parametrize("slope,alpha", [(0.01, 1.0), (0.2, 0.02)])
def test_saturation_of_parametrised_activations(slope, alpha):
    for spec in ({"name": "leaky_relu", "negative_slope": slope}, {"name": "elu", "alpha": alpha}):
        act = activations.get(ACTIVATIONS.resolve(spec, "test"))
        x = torch.linspace(-8, 8, 20001, dtype=torch.float64, requires_grad=True)
        (auto,) = torch.autograd.grad(act.module()(x).sum(), x)
        want = auto.abs() < 0.05 * auto.abs().max()
        xf = x.detach().float()
        got = (act.saturated(act.phi(xf)) if act.saturated else
               (act.dphi(xf).abs() < 0.05 * act.dphi_max).float()) == 1
        near = (auto.abs() - 0.05 * auto.abs().max()).abs() < 1e-4
        assert torch.equal(got[~near], want[~near]), spec


def test_hooks_are_removed_and_idle_steps_hook_nothing(tmp_path):
    """Off recorded steps no hook is attached; after the run none is left on the model."""
    from vgp.record import GradientRecorder

    cfg = config.from_dict(tiny())
    d = datasets.load(cfg.data, 0)
    model, act = build_model(cfg.model, d)
    counts = []
    with GradientRecorder(model.tracked(), act) as rec:
        rec.start()
        counts.append(sum(len(m._forward_hooks) for m in model.modules()))
        F.cross_entropy(model(d.x_train), d.y_train).backward()
        rec.after_backward()
        counts.append(sum(len(m._forward_hooks) for m in model.modules()))
        rec.after_step()
        rec.start()  # an exception here would leave hooks attached without the context manager
    counts.append(sum(len(m._forward_hooks) for m in model.modules()))
    assert counts == [7, 0, 0]  # 4 linear layers + 3 activations while recording


def test_fewer_kinds_record_only_those(tmp_path):
    cfg = config.from_dict(tiny(log__kinds=["output_grad", "weight_grad", "saturation"]))
    assert cfg.log.kinds == ["weight_grad", "output_grad", "saturation"]
    folder = run(cfg, out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv")
    assert set(g.kind) == {"weight_grad", "output_grad", "saturation"}
    full = run(config.from_dict(tiny(name="full")), out=tmp_path, quiet=True).folder
    f = pd.read_csv(full / "grad_norms.csv")
    merged = g.merge(f, on=["step", "layer", "kind"], suffixes=("", "_full"))
    assert len(merged) == len(g) and (merged.value == merged.value_full).all()
    with pytest.raises(config.ConfigError, match="log.kinds: invalid value 'grad'"):
        config.from_dict(tiny(log__kinds=["grad"]))
