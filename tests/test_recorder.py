"""vgp.Recorder on models vgp did not build: every recorded norm against an independent reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vgp
from vgp.errors import UserError
from vgp.recorder import _own_weight


def trace_order(model, run) -> list[str]:
    """Independent reference: names of modules with their own trainable weight, in first-call order."""
    names = {m: n for n, m in model.named_modules()}
    order = []

    def hook(module, inputs, output):
        if names[module] not in order:
            order.append(names[module])

    hs = [m.register_forward_hook(hook) for m in model.modules() if _own_weight(m)]
    run()
    for h in hs:
        h.remove()
    return order


def one_step(model, out, forward, every=1, **kw):
    """One recorded step with retain_grad references on every tracked module's output."""
    outs = {}
    names = {m: n for n, m in model.named_modules()}

    def keep(module, inputs, output):
        output.retain_grad()
        outs.setdefault(names[module], []).append(output)

    hs = [m.register_forward_hook(keep) for m in model.modules() if _own_weight(m)]
    with vgp.Recorder(model, out=out, every=every, **kw) as rec:
        loss = forward()
        model.zero_grad()
        loss.backward()
        rec.step(loss)
        grads = {n: m.weight.grad.double().norm().item() for n, m in model.named_modules() if _own_weight(m)}
        biases = {n: m.bias.grad.double().norm().item() for n, m in model.named_modules()
                  if _own_weight(m) and isinstance(getattr(m, "bias", None), nn.Parameter)}
    for h in hs:
        h.remove()
    zref = {n: torch.sqrt(sum(o.grad.double().square().sum() for o in os if o.grad is not None)).item()
            for n, os in outs.items()}
    return rec, pd.read_csv(out / "grad_norms.csv"), grads, biases, zref


def check_against(g, grads, biases, zref):
    w = g[g.kind == "weight_grad"].set_index("name").value
    assert set(w.index) == set(grads)
    for n, v in grads.items():
        assert w[n] == pytest.approx(v, rel=1e-6, abs=1e-12), n
    b = g[g.kind == "bias_grad"].set_index("name").value
    assert set(b.index) == set(biases)
    for n, v in biases.items():
        assert b[n] == pytest.approx(v, rel=1e-6, abs=1e-12), n
    z = g[g.kind == "output_grad"].set_index("name").value
    for n, v in zref.items():
        assert z[n] == pytest.approx(v, rel=1e-6, abs=1e-12), n


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "vgp", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_resnet18(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10)
    for m in model.modules():  # torchvision's in-place ReLUs: a retain_grad reference would see the
        if isinstance(m, nn.ReLU):  # gradient after the ReLU, the recorder's hook the one before it
            m.inplace = False
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    order = trace_order(model, lambda: model(x))
    rec, g, grads, biases, zref = one_step(model, tmp_path / "r18", lambda: F.cross_entropy(model(x), y))
    assert [t.name for t in rec.tracked] == order
    assert g.groupby("layer").name.first().tolist() == order  # numbered in execution order
    check_against(g, grads, biases, zref)
    acts = {t.name: a.name for t, a in zip(rec.tracked, rec.activations) if a is not None}
    assert acts["bn1"] == "relu" and acts["layer1.0.bn1"] == "relu"
    assert "layer1.0.bn2" not in acts  # its ReLU comes after the residual add
    assert set(g[g.kind == "dead"].name) == set(acts)
    assert "verdict" in cli("diagnose", str(tmp_path / "r18"))


def gpt2(n_layer=2):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg)


def test_gpt2(tmp_path):
    model = gpt2()
    ids = torch.randint(0, 100, (2, 8))
    order = trace_order(model, lambda: model(ids))
    rec, g, grads, biases, zref = one_step(model, tmp_path / "gpt", lambda: model(ids, labels=ids).loss)
    assert [t.name for t in rec.tracked] == order
    assert "transformer.h.0.mlp.c_fc" in order and type(model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    assert order[0] in ("transformer.wte", "transformer.wpe")
    check_against(g, grads, biases, zref)
    assert not (g[g.name == "transformer.wte"].kind == "bias_grad").any()  # an Embedding has no bias
    s = pd.read_csv(tmp_path / "gpt" / "summary.csv").iloc[0]
    assert s["model.class"] == "GPT2LMHeadModel" and s.status == "completed" and s.steps_done == 1
    assert s["model.params"] == sum(p.numel() for p in model.parameters())
    assert "layer  name" in (tmp_path / "gpt" / "model.txt").read_text()
    cli("diagnose", str(tmp_path / "gpt"))
    cli("plot", str(tmp_path / "gpt"), "-o", str(tmp_path / "plots"))


def test_include_exclude(tmp_path):
    model = gpt2()
    ids = torch.randint(0, 100, (2, 8))
    rec, g, *_ = one_step(model, tmp_path / "a", lambda: model(ids, labels=ids).loss,
                          include="transformer.h.*.mlp.*", exclude="*.c_proj")
    assert [t.name for t in rec.tracked] == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    with pytest.raises(UserError, match="no module with a trainable weight"):
        vgp.Recorder(model, out=tmp_path / "b", include="nothing.*")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for _ in range(3):  # weight sharing: one module, three calls
            h = torch.tanh(self.shared(h))
        return self.out(h)


def test_weight_sharing_output_grad_is_the_norm_over_all_calls(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(5, 4)
    rec, g, grads, biases, zref = one_step(model, tmp_path / "w", lambda: model(x).square().mean())
    assert [t.name for t in rec.tracked] == ["inp", "shared", "out"]
    check_against(g, grads, biases, zref)  # zref: sqrt of the sum of squares over the three calls


def test_tanh_mlp_act_stats_equal_float64(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    x = torch.randn(16, 6) * 3
    hs = {}
    handles = [model[i].register_forward_hook(lambda m, i_, o, k=i: hs.__setitem__(k, o.detach().double()))
               for i in (1, 3)]
    rec, g, *_ = one_step(model, tmp_path / "t", lambda: F.cross_entropy(model(x), torch.zeros(16, dtype=torch.long)))
    for h in handles:
        h.remove()
    for name, k in (("0", 1), ("2", 3)):
        v = g[g.name.astype(str) == name].set_index("kind").value
        h = hs[k]
        assert v.act_mean == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-7)
        assert v.act_std == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
        assert v.saturation == (1 - h.square() < 0.05).double().mean().item()
        assert v.dead == 0
    assert not (g[g.name.astype(str) == "4"].kind == "act_mean").any()  # the output layer has no activation


def train(model, out, steps, every, fail_at=None, loss_at=None, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 4)
    with vgp.Recorder(model, out=out, every=every, optimizer=opt, **kw) as rec:
        for s in range(steps):
            if s == fail_at:
                raise RuntimeError("boom")
            loss = model(x).square().mean()
            if loss_at is not None and s >= loss_at:
                loss = loss * float("nan")
            opt.zero_grad()
            loss.backward()
            rec.step(loss)
            opt.step()
    return rec


def test_every_n_and_update_ratio(tmp_path):
    import copy

    torch.manual_seed(0)
    model = Tiny()
    ref = copy.deepcopy(model)
    torch.manual_seed(1)
    train(model, tmp_path / "e", 7, 3)
    g = pd.read_csv(tmp_path / "e" / "grad_norms.csv")
    assert sorted(g.step.unique()) == [0, 3, 6]
    assert pd.read_csv(tmp_path / "e" / "metrics.csv").step.tolist() == [0, 3, 6]
    # step 0's update ratio: the first SGD step's change (lr times the gradient) over the weight before it
    torch.manual_seed(1)
    ref(torch.randn(8, 4)).square().mean().backward()
    want = (0.05 * ref.shared.weight.grad).norm() / ref.shared.weight.norm()
    u = g[(g.step == 0) & (g.name == "shared") & (g.kind == "update_ratio")].value.item()
    assert u == pytest.approx(want.item(), rel=1e-4)


def test_hooks_only_on_recorded_steps(tmp_path):
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    counts = []
    with vgp.Recorder(model, out=tmp_path / "h", every=3) as rec:
        for s in range(6):
            counts.append(sum(len(m._forward_hooks) for m in model.modules()))
            loss = model(torch.randn(2, 4)).sum()
            opt.zero_grad()
            loss.backward()
            rec.step(loss)
            opt.step()
    assert counts[1] == counts[2] == counts[4] == 0 and counts[3] > 0
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_exception_marks_failed(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        train(Tiny(), tmp_path / "f", 5, 1, fail_at=3)
    f = tmp_path / "f"
    assert json.loads((f / "meta.json").read_text())["status"] == "failed"
    assert "boom" in (f / "error.txt").read_text()
    assert not (f / "summary.csv").exists() and (f / "grad_norms.csv.partial").exists()
    with pytest.raises(KeyboardInterrupt):
        with vgp.Recorder(Tiny(), out=tmp_path / "i"):
            raise KeyboardInterrupt
    assert json.loads((tmp_path / "i" / "meta.json").read_text())["status"] == "interrupted"


def test_divergence(tmp_path):
    rec = train(Tiny(), tmp_path / "d", 10, 4, loss_at=5)
    assert rec.status == "diverged" and rec.diverged_step == 5
    s = pd.read_csv(tmp_path / "d" / "summary.csv").iloc[0]
    assert s.status == "diverged" and s.diverged_step == 5


def test_force_and_errors(tmp_path):
    train(Tiny(), tmp_path / "r", 2, 1)
    with pytest.raises(UserError, match="finished run"):
        with vgp.Recorder(Tiny(), out=tmp_path / "r"):
            pass
    train(Tiny(), tmp_path / "r", 2, 1, force=True)
    with pytest.raises(UserError, match="no module with a trainable weight"):
        vgp.Recorder(nn.Sequential(nn.ReLU()), out=tmp_path / "n")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(UserError, match="no module with a trainable weight"):
        vgp.Recorder(frozen, out=tmp_path / "n")
    model = Tiny()
    with pytest.raises(UserError, match="loss.backward"):
        with vgp.Recorder(model, out=tmp_path / "nb") as rec:
            model(torch.randn(2, 4))
            rec.step()
    assert json.loads((tmp_path / "nb" / "meta.json").read_text())["status"] == "failed"
    with pytest.raises(UserError, match="every"):
        vgp.Recorder(model, out=tmp_path / "x", every=0)


def test_sigterm_marks_interrupted(tmp_path):
    """SIGTERM inside the with block (timeout, kill, a scheduler): the folder says interrupted."""
    code = f"""
import os, signal, torch, vgp
from torch import nn
m = nn.Linear(3, 2)
with vgp.Recorder(m, out={str(tmp_path / 's')!r}, every=1) as rec:
    m(torch.randn(2, 3)).sum().backward()
    rec.step()
    os.kill(os.getpid(), signal.SIGTERM)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + 15, r.stderr
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["status"] == "interrupted"


class SharedAct(nn.Module):
    """One Tanh module after every layer, and once more on a sum that no layer returned."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.act = nn.Tanh()

    def forward(self, x):
        h = self.act(self.a(x))
        h = self.act(self.act(self.b(h)) + h)
        return self.c(h)


def test_shared_activation_module(tmp_path):
    torch.manual_seed(0)
    model = SharedAct()
    x = torch.randn(5, 4)
    rec, g, *_ = one_step(model, tmp_path / "sa", lambda: model(x).sum())
    assert [a.name if a else None for a in rec.activations] == ["tanh", "tanh", None]
    v = g[g.name == "b"].set_index("kind").value
    hb = torch.tanh(model.b(torch.tanh(model.a(x)))).double()
    assert v.act_std == pytest.approx(hb.std(unbiased=False).item(), rel=1e-5)
    # later steps use the recorder's own hooks: the same association
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with vgp.Recorder(model, out=tmp_path / "sb", every=1) as rec:
        for _ in range(2):
            loss = model(x).sum()
            opt.zero_grad()
            loss.backward()
            rec.step(loss)
            opt.step()
    g = pd.read_csv(tmp_path / "sb" / "grad_norms.csv")
    s = g[(g.name == "b") & (g.kind == "act_std")].value.tolist()
    assert s[0] == pytest.approx(s[1], rel=1e-6) == pytest.approx(hb.std(unbiased=False).item(), rel=1e-5)


def test_the_readme_example_runs_and_diagnoses(tmp_path):
    """The first ```python block under '## Recording your own model' in README.md, as a user runs it
    (twice: force=True lets it run again), then `vgp diagnose` on the folder it wrote."""
    import os
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    heading = "## Recording your own model\n"
    assert heading in text, "no '## Recording your own model' section in README.md"
    code = re.search(r"```python\n(.*?)```", text.split(heading, 1)[1].split("\n## ", 1)[0], re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    folder = tmp_path / "results" / "mynet"
    steps = sorted(pd.read_csv(folder / "grad_norms.csv").step.unique())
    assert steps == list(range(0, 200, 10)) and (folder / "summary.csv").exists()
    r = subprocess.run([sys.executable, "-m", "vgp", "diagnose", str(folder)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and "verdict:" in r.stdout, r.stderr


def test_a_loss_scale_is_divided_out_of_the_output_gradients(tmp_path):
    """Mixed precision's loss scaling: the backward pass of S times the loss, the parameters' gradients
    unscaled before rec.step (as GradScaler.unscale_ does), scale=S: every recorded value equals the
    unscaled run's (S a power of two: the scaling is exact); without scale=, output_grad is S times too
    large. Scales that are not positive finite numbers are refused."""
    def train(out, scale, pass_scale):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
        with vgp.Recorder(model, out=out, every=2, optimizer=opt) as rec:
            for _ in range(5):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                (loss * scale).backward()
                for p in model.parameters():
                    p.grad /= scale
                rec.step(loss, scale=torch.tensor(float(scale)) if pass_scale == "tensor" else
                         (scale if pass_scale else None))
                opt.step()
        return pd.read_csv(out / "grad_norms.csv")

    plain = train(tmp_path / "plain", 1, False)
    for how in (True, "tensor"):
        scaled = train(tmp_path / f"scaled-{how}", 2.0**16, how)
        assert (scaled[["step", "name", "kind"]] == plain[["step", "name", "kind"]]).all().all()
        assert scaled.value.to_numpy() == pytest.approx(plain.value.to_numpy(), rel=1e-6, nan_ok=True)
    unaware = train(tmp_path / "unaware", 2.0**16, False)
    z = unaware.kind == "output_grad"
    assert (unaware.value[z] / plain.value[z]).to_numpy() == pytest.approx(2.0**16, rel=1e-6)
    model = nn.Sequential(nn.Linear(2, 2))
    for bad in (0, -1.0, math.inf, math.nan, True, "8"):
        with vgp.Recorder(model, out=tmp_path / "bad", force=True) as rec:
            model(torch.randn(3, 2)).sum().backward()
            with pytest.raises(UserError, match="scale must be a positive finite number"):
                rec.step(scale=bad)
            rec.step()


def test_underflow_counts_below_the_backward_precisions_smallest_normal(tmp_path):
    """precision='fp16': underflow is the fraction of each weight gradient's entries with |g| S below
    fp16's smallest normal number, 6.1e-5 (fp32: 1.2e-38), counted here from p.grad itself; with a
    loss scale S, below 6.1e-5 / S. An unknown precision is refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(32, 16) * 1e-3, torch.randint(0, 4, (32,))  # small inputs: many tiny weight gradients
    for precision, scale, tiny in (("fp16", None, 2.0**-14), ("fp16", 2.0**10, 2.0**-24), ("fp32", None, 2.0**-126)):
        out = tmp_path / f"{precision}-{scale}"
        with vgp.Recorder(model, out=out, every=1, precision=precision) as rec:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            want = {n: (m.weight.grad.abs() < tiny).double().mean().item() for n, m in model.named_modules()
                    if isinstance(m, nn.Linear)}
            rec.step(scale=scale)
        g = pd.read_csv(out / "grad_norms.csv")
        got = {str(k): v for k, v in g[g.kind == "underflow"].set_index("name").value.items()}
        assert got == pytest.approx(want, abs=1e-12), (precision, scale)
        if precision == "fp16" and scale is None:
            assert 0 < got["0"] < 1  # the threshold matters here
    with pytest.raises(UserError, match="precision must be one of fp32, bf16, fp16"):
        vgp.Recorder(model, out=tmp_path / "bad", precision="float16")
