"""Recurrent nets run fused (torch._VF kernels) on unrecorded steps and unrolled on recorded ones:
both paths must give the same outputs, loss and gradients, and a run the same recorded CSVs."""

import pandas as pd
import pytest
import torch

from conftest import tiny
from vgp import config, data as datasets
from vgp.models.rnn import RecurrentNet
from vgp.train import batches, build_model, loss_fn, run

ARCHS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
RECURRENT_INITS = ["default", {"name": "orthogonal", "gain": 1.0}, "xavier_uniform", "kaiming_normal",
                   {"name": "normal", "std": 0.3}, {"name": "identity", "scale": 1.0}]
TASKS = {  # adding: the loss on the last step only; copy: a loss on every step (per_step)
    "adding": {"name": "adding", "seq_len": 9, "n_train": 32, "n_test": 8},
    "copy": {"name": "copy", "seq_len": 4, "length": 3, "n_train": 32, "n_test": 8},
}


def build(arch, act, depth, task, recurrent_init, **over):
    raw = tiny(model__arch=arch, model__activation=act, model__depth=depth, model__width=12,
               model__recurrent_init=recurrent_init, data=TASKS[task], train__batch_size=16, **over)
    cfg = config.from_dict(raw)
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, _ = build_model(cfg.model, d)
    idx = next(batches(len(d.x_train), cfg.train.batch_size, cfg.seed, "cpu"))
    return model, d.x_train[idx], d.y_train[idx], loss_fn(d.task)


def forward_backward(model, x, y, criterion, fused: bool):
    model.fused = fused
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = criterion(out, y)
    loss.backward()
    return out.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close(got, want, what):
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(scale, 1e-30), msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("recurrent_init", RECURRENT_INITS, ids=lambda s: s if isinstance(s, str) else s["name"])
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("arch,act", ARCHS, ids=lambda a: a)
def test_fused_equals_unrolled(arch, act, depth, task, recurrent_init):
    model, x, y, criterion = build(arch, act, depth, task, recurrent_init)
    assert model.fused_op is not None  # every one of these has a fused kernel
    assert model.per_step == (task == "copy")
    out_f, loss_f, grads_f = forward_backward(model, x, y, criterion, fused=True)
    out_u, loss_u, grads_u = forward_backward(model, x, y, criterion, fused=False)
    assert_close(out_f, out_u, "output")
    assert_close(loss_f, loss_u, "loss")
    assert grads_f.keys() == grads_u.keys() and len(grads_u) == 4 * depth + 2
    for name in grads_u:
        assert grads_u[name].abs().max() > 0, name  # a real comparison, not of zeros
        assert_close(grads_f[name], grads_u[name], name)


@pytest.mark.parametrize("arch,act", ARCHS, ids=lambda a: a)
def test_fused_equals_unrolled_with_other_input_inits_and_in_eval_mode(arch, act):
    model, x, y, criterion = build(arch, act, 2, "adding", {"name": "orthogonal", "gain": 1.2},
                                   model__init="xavier_normal", model__bias_init={"name": "normal", "std": 0.5},
                                   model__forget_bias=2.0)
    out_f, loss_f, grads_f = forward_backward(model, x, y, criterion, fused=True)
    out_u, loss_u, grads_u = forward_backward(model, x, y, criterion, fused=False)
    assert_close(loss_f, loss_u, "loss")
    for name in grads_u:
        assert_close(grads_f[name], grads_u[name], name)
    model.eval()  # evaluation runs fused too
    with torch.no_grad():
        model.fused = True
        a = model(x)
        model.fused = False
        assert_close(a, model(x), "eval output")


def test_the_net_unrolls_while_a_hidden_sink_is_set_and_without_a_fused_kernel():
    model, x, y, criterion = build("lstm", "tanh", 2, "adding", "default")
    seen = []
    model.hidden_sink = lambda k, t, h: seen.append((k, t))
    model(x)
    assert len(seen) == 2 * x.shape[1]  # every h_t of both layers, though fused is on
    model.hidden_sink = None
    seen.clear()
    model(x)
    assert seen == []
    # a vanilla RNN with an activation PyTorch has no fused kernel for always unrolls
    model, x, y, criterion = build("rnn", "softsign", 1, "adding", "default")
    assert model.fused and model.fused_op is None
    out, _, _ = forward_backward(model, x, y, criterion, fused=True)
    assert_close(out, forward_backward(model, x, y, criterion, fused=False)[0], "output")


def test_a_run_records_the_same_csvs_with_and_without_the_fused_path(tmp_path, monkeypatch):
    """Unrecorded steps run fused; recorded steps (log.every, eval_every, the last) see the same numbers."""
    cfg = config.from_dict(tiny(model__arch="lstm", model__depth=2, model__width=16, log__every=5,
                                data={"name": "adding", "seq_len": 10, "n_train": 64, "n_test": 16},
                                train__steps=12, train__batch_size=32, train__eval_every=6))
    calls = []
    fused_forward = RecurrentNet._fused
    monkeypatch.setattr(RecurrentNet, "_fused",
                        lambda self, x: calls.append(torch.is_grad_enabled()) or fused_forward(self, x))
    fast = run(cfg, out=tmp_path / "fast", quiet=True).folder
    assert calls.count(True) == 12 - 5  # every training step but the recorded 0, 5, 6, 10, 11
    assert calls.count(False) == 3  # evaluations at steps 0 and 6 and the final one
    monkeypatch.setattr(RecurrentNet, "fused", False)
    calls.clear()
    slow = run(cfg, out=tmp_path / "slow", quiet=True).folder
    assert calls == []
    for name, keys in (("grad_norms.csv", ["step", "layer", "kind"]), ("time_grads.csv", ["step", "layer", "t"])):
        a, b = (pd.read_csv(f / name).set_index(keys).value.sort_index() for f in (fast, slow))
        assert a.index.equals(b.index) and sorted(a.index.unique("step")) == [0, 5, 6, 10, 11]
        scale = b.abs().groupby(level=[k for k in keys if k != "step"]).transform("max")
        assert ((a - b).abs() <= 1e-4 * b.abs() + 1e-5 * scale).all(), name
    ma, mb = (pd.read_csv(f / "metrics.csv") for f in (fast, slow))
    pd.testing.assert_series_equal(ma.loss, mb.loss, rtol=1e-5)
    pd.testing.assert_series_equal(ma.test_loss, mb.test_loss, rtol=1e-5)
