"""Every recorded norm equals the float64 norm of the same float32 tensor at the extremes: gradients
from subnormal (1e-40) to 1e28, where float32 sums of squares underflow to 0 (entries below 1e-19)
or overflow to inf (above 1.8e19). The gradients are scaled by scaling the loss (an exact power of
ten's rounding apart, which the references share: they are taken from the same float32 gradients)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vgp
from conftest import tiny
from vgp import batched, config, data as datasets, record, train
from vgp.train import batches, build_model, run

# loss scales; the gradients lie about 1e-2 below: 1e-40 (subnormal) .. 1e28
SCALES = [1e-38, 1e-30, 1e-23, 1e-10, 1.0, 1e20, 1e30]
REL = 1e-6


def scale_loss(monkeypatch, s: float) -> None:
    """vgp's runs train on ``s`` times the loss (alone and batched)."""
    loss_fn, losses = train.loss_fn, batched._losses
    monkeypatch.setattr(train, "loss_fn", lambda task: (lambda out, y: loss_fn(task)(out, y) * s))
    monkeypatch.setattr(batched, "_losses", lambda out, y, task: losses(out, y, task) * s)


def ref(t: torch.Tensor) -> float:
    return t.detach().double().norm().item()


def close(got: float, want: float) -> bool:
    return got == pytest.approx(want, rel=REL, abs=0)


@pytest.mark.parametrize("magnitude", [1e-45, 1e-44, 1e-40, 1e-38, 1e-30, 1e-23, 1e-20, 1e-10, 1.0, 1e10,
                                       1e19, 1e20, 1e30, 1e37])
def test_norms_are_the_float64_norms_of_the_float32_tensor(magnitude):
    g = torch.Generator().manual_seed(0)
    # small tensors (at most record.SMALL entries) are summed in float64 outright, larger ones by rows
    tensors = [torch.randn(64, 32, generator=g) * magnitude, torch.full((64,), magnitude),
               torch.randn(3, 5, 7, generator=g) * magnitude, torch.tensor(magnitude),
               torch.randn(96, 64, generator=g) * magnitude, torch.full((5000,), magnitude)]
    assert [t.numel() > record.SMALL for t in tensors] == [False] * 4 + [True] * 2
    want = [ref(t) for t in tensors]
    assert all(w > 0 and math.isfinite(w) for w in want)
    assert all(close(n.item(), w) for n, w in zip(record._norms(tensors), want))
    # batched seeds: each member's slice of stacked (K, ...) tensors, members of different magnitudes
    stacked = [torch.stack([t, t * 0.5]) for t in tensors[:2] + tensors[4:]]
    got = batched._exact_norms(stacked)
    assert all(close(got[p, k].item(), ref(t[k])) for p, t in enumerate(stacked) for k in range(2))
    assert all(close(record.norm(t).item(), w) for t, w in zip(tensors, want))
    assert all(close(record.norm(t.half()).item(), ref(t.half())) for t in tensors if 1e-7 < magnitude < 1e4)


@pytest.mark.parametrize("make", [lambda g: torch.full((256, 256), 0.3), lambda g: torch.full((128, 256), 1.1),
                                  lambda g: torch.randn(256, 256, generator=g) ** 3,
                                  lambda g: torch.randn(256, 256, 3, 3, generator=g), lambda g: torch.rand(300000, generator=g),
                                  lambda g: torch.full((16, 64, 32, 32), 0.3), lambda g: torch.randn(4, 6000, generator=g)],
                         ids=["equal", "equal-acts", "heavy-tailed", "conv", "long-1d", "conv-acts", "long-rows"])
def test_norms_do_not_drift_on_large_or_equal_entries(make):
    """A float32 chain of sums over 65536 equal entries is 3e-5 off on the CPU; these are not."""
    t = make(torch.Generator().manual_seed(0))
    assert close(record._norms([t])[0].item(), ref(t)) and close(record.norm(t).item(), ref(t))


def test_64_entries_of_1e_minus_23():
    assert record._norms([torch.full((64,), 1e-23)])[0].item() == pytest.approx(8e-23, rel=1e-7, abs=0)


def reference(cfg, scale: float):
    """Step 0 of ``cfg`` by hand: the model, batch and float32 gradients of vgp's run, with hooks
    keeping each tracked layer's pre-activation (and a recurrent net's h_t) and its gradient."""
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, _ = build_model(cfg.model, d)
    idx = next(batches(len(d.x_train), cfg.train.batch_size, cfg.seed, "cpu"))
    zs, hs = {}, {}

    def keep(i):
        def hook(m, inp, out):
            out.retain_grad()
            zs[i] = out
        return hook

    tracked = model.tracked()
    handles = [t.layer.register_forward_hook(keep(i)) for i, t in enumerate(tracked)
               if isinstance(t.layer, nn.Module)]
    if hasattr(model, "hidden_sink"):
        model.hidden_sink = lambda k, t, h: (h.retain_grad(), hs.__setitem__((k, t), h))
    loss = train.loss_fn(d.task)(model(d.x_train[idx]), d.y_train[idx]) * scale
    loss.backward()
    for h in handles:
        h.remove()
    return model, tracked, zs, hs


@pytest.mark.parametrize("scale", SCALES)
def test_run_records_exact_norms_at_every_scale(tmp_path, monkeypatch, scale):
    """weight_grad, bias_grad, output_grad, weight in grad_norms.csv and grad_norm in metrics.csv."""
    cfg = config.from_dict(tiny(train__steps=1))
    scale_loss(monkeypatch, scale)
    folder = run(cfg, out=tmp_path, quiet=True).folder
    monkeypatch.undo()
    model, tracked, zs, _ = reference(cfg, scale)
    g = pd.read_csv(folder / "grad_norms.csv")
    got = g[g.step == 0].set_index(["layer", "kind"]).value
    for i, t in enumerate(tracked):
        want = {"weight_grad": ref(t.layer.weight.grad), "bias_grad": ref(t.layer.bias.grad),
                "output_grad": ref(zs[i].grad), "weight": ref(t.layer.weight)}
        for kind, w in want.items():
            assert close(got[(i + 1, kind)], w), (scale, i + 1, kind, got[(i + 1, kind)], w)
    first = ref(tracked[0].layer.weight.grad)
    assert first > 0 and math.isfinite(first)  # the gradients have neither underflowed nor overflowed
    total = math.sqrt(sum(ref(p.grad) ** 2 for p in model.parameters()))
    m = pd.read_csv(folder / "metrics.csv")
    assert close(m.grad_norm[0], total), (m.grad_norm[0], total)


@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e-23, 1.0, 1e30])
def test_rnn_time_grads_are_exact_at_every_scale(tmp_path, monkeypatch, scale):
    cfg = config.from_dict(tiny(model__arch="rnn", model__depth=2, model__width=16, model__activation="tanh",
                                data={"name": "adding", "seq_len": 8, "n_train": 64, "n_test": 16},
                                train__steps=1, train__batch_size=32))
    scale_loss(monkeypatch, scale)
    folder = run(cfg, out=tmp_path, quiet=True).folder
    monkeypatch.undo()
    model, _, _, hs = reference(cfg, scale)
    t = pd.read_csv(folder / "time_grads.csv")
    got = t[t.step == 0].set_index(["layer", "t"]).value.to_dict()
    want = {k: ref(h.grad) for k, h in hs.items()}
    assert set(got) == set(want)
    assert any(0 < w < math.inf for w in want.values())
    for key, w in want.items():
        assert close(got[key], w), (scale, key, got[key], w)
    g = pd.read_csv(folder / "grad_norms.csv")
    rec = g[(g.step == 0) & (g.kind == "weight_grad")].set_index("name").value
    for k, layer in enumerate(model.layers):
        (wi, _), (wh, _) = layer.weights()
        assert close(rec[f"layers.{k}.ih"], ref(wi.grad)) and close(rec[f"layers.{k}.hh"], ref(wh.grad))


@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e-23, 1.0, 1e20, 1e30])
def test_recorder_rows_are_exact_at_every_scale(tmp_path, scale):
    """vgp.Recorder: its first recorded step (the discovery hooks) and a later one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    linears = [model[0], model[2], model[4]]

    zs = {}

    def keep(k):
        def hook(m, inp, out):
            out.retain_grad()
            zs[k] = out
        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in enumerate(linears)]
    (F.cross_entropy(model(x), y) * scale).backward()
    for h in hooks:
        h.remove()
    want = {}
    for k, m in enumerate(linears):
        want[(k + 1, "weight_grad")], want[(k + 1, "bias_grad")] = ref(m.weight.grad), ref(m.bias.grad)
        want[(k + 1, "output_grad")], want[(k + 1, "weight")] = ref(zs[k].grad), ref(m.weight)
    total = math.sqrt(sum(ref(p.grad) ** 2 for p in model.parameters()))
    assert 0 < want[(1, "weight_grad")] < math.inf
    model.zero_grad()

    with vgp.Recorder(model, out=tmp_path / "r", every=1) as rec:
        for _ in range(2):  # no optimizer: the same gradients twice
            loss = F.cross_entropy(model(x), y) * scale
            model.zero_grad()
            loss.backward()
            rec.step(loss)
    g = pd.read_csv(tmp_path / "r" / "grad_norms.csv")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    for step in (0, 1):
        got = g[g.step == step].set_index(["layer", "kind"]).value
        for key, w in want.items():
            assert close(got[key], w), (scale, step, key, got[key], w)
        assert close(m.grad_norm[step], total), (scale, step, m.grad_norm[step], total)


@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e30])
def test_batched_members_record_exact_norms(tmp_path, monkeypatch, scale):
    """A batched group writes what each member's run alone writes (which the test above checks
    against the float64 references), zeros and infinities nowhere."""
    raw = tiny(train__steps=1)
    cfgs = [config.from_dict({**raw, "name": f"m{i}", "seed": i}) for i in range(3)]
    scale_loss(monkeypatch, scale)
    res = batched.run_batched(cfgs, out=tmp_path / "batched")
    for cfg, r in zip(cfgs, res):
        alone = run(cfg, out=tmp_path / "alone", quiet=True)
        a, b = (pd.read_csv(f / "grad_norms.csv") for f in (r.folder, alone.folder))
        norms = b.kind.isin(["weight_grad", "bias_grad", "output_grad", "weight"])
        u, v = a.value[norms].to_numpy(float), b.value[norms].to_numpy(float)
        assert (v > 0).all() and np.isfinite(v).all(), b[norms & ~((b.value > 0) & np.isfinite(b.value))]
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=0)
        ma, mb = (pd.read_csv(f / "metrics.csv") for f in (r.folder, alone.folder))
        assert 0 < mb.grad_norm[0] < math.inf
        np.testing.assert_allclose(ma.grad_norm[0], mb.grad_norm[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_clipped_norm_is_exact(tmp_path, monkeypatch, scale):
    """grad_norm_clipped: clipping by value at 3e38 changes nothing, so it equals the float64 norm."""
    cfg = config.from_dict(tiny(train__steps=1, train__clip={"mode": "value", "value": 3e38}))
    scale_loss(monkeypatch, scale)
    folder = run(cfg, out=tmp_path, quiet=True).folder
    monkeypatch.undo()
    model, *_ = reference(cfg, scale)
    total = math.sqrt(sum(ref(p.grad) ** 2 for p in model.parameters()))
    m = pd.read_csv(folder / "metrics.csv")
    assert close(m.grad_norm[0], total) and close(m.grad_norm_clipped[0], total)
    assert not m.clipped[0]
