"""Mixed precision: fp16/bf16 runs on the CPU, gradients recorded after unscaling (against a
hand-done scaled step), the underflow kind against a float64 count, the vanishing gradient lost to
fp16 underflow (and found again by loss scaling), and what a skipped step is and is not."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny
from vgp import config, data as datasets
from vgp.errors import ConfigError
from vgp.models import Tracked
from vgp.record import GradientRecorder
from vgp.train import build_model, run

FP16_TINY = 2.0 ** -14  # torch.finfo(torch.float16).tiny, 6.1e-5
FP32_TINY = 2.0 ** -126


def test_tiny_is_torchs():
    assert torch.finfo(torch.float16).tiny == FP16_TINY
    assert torch.finfo(torch.bfloat16).tiny == torch.finfo(torch.float32).tiny == FP32_TINY


# -- the underflow kind against a float64 count -------------------------------------------------

def _grads_with_edges(shape, scale: float, tiny: float, gen) -> torch.Tensor:
    """Random float32 gradients over 1e-45..1e2 (both signs), and at the threshold tiny/scale: exactly
    on it (not underflow), one float below it (underflow), zeros, subnormals."""
    n = math.prod(shape)
    g = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-45), math.log(1e2), generator=gen))
    g = g.float() * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    at = torch.tensor(tiny / scale, dtype=torch.float32)
    edge = [at, -at, torch.nextafter(at, torch.tensor(0.0)), -torch.nextafter(at, torch.tensor(0.0)),
            torch.nextafter(at, torch.tensor(1.0)), torch.tensor(0.0), torch.tensor(-0.0),
            torch.tensor(1e-45), torch.tensor(3e-39), torch.tensor(FP32_TINY)]
    if n >= len(edge):
        g[:len(edge)] = torch.stack(edge)
    return g.view(shape)


@pytest.mark.parametrize("dtype, scale", [(torch.float16, None), (torch.float16, 2.0 ** 16), (torch.float16, 0.5),
                                          (torch.bfloat16, None), (torch.float32, None)])
def test_underflow_equals_a_float64_count(dtype, scale):
    cfg = config.from_dict(tiny(model__depth=3, model__width=16))
    torch.manual_seed(0)
    model, act = build_model(cfg.model, datasets.load(cfg.data, 0))
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    tiny_ = torch.finfo(dtype).tiny
    for p in params:
        p.grad = _grads_with_edges(p.shape, scale or 1.0, tiny_, gen)
    rec = GradientRecorder(model.tracked(), act, params, ["underflow", "weight_grad"], dtype=dtype)
    rec.after_backward(None if scale is None else torch.tensor(scale))
    got = rec.after_step()[-1].tolist()  # underflow is the last kind
    for t, value in zip(model.tracked(), got):
        g = t.layer.weight.grad.double()
        want = ((g.abs() * (scale or 1.0)) < tiny_).double().mean().item()  # in the scaled space, in float64
        assert value == want
        assert 0 < want < 1
    # the edge values: on the threshold is kept, one float below it is lost, zeros and subnormals are lost
    w = model.tracked()[0].layer.weight.grad.flatten()[:10].double() * (scale or 1.0)
    lost = (w.abs() < tiny_).tolist()
    assert lost[:5] == [False, False, True, True, False] and lost[5] and lost[6]


def test_underflow_needs_no_gradient_to_be_copied_per_step():
    # the recorder's buffers are made once and reused: a second step allocates none of them again
    cfg = config.from_dict(tiny())
    torch.manual_seed(0)
    model, act = build_model(cfg.model, datasets.load(cfg.data, 0))
    params = list(model.parameters())
    rec = GradientRecorder(model.tracked(), act, params, ["underflow"], dtype=torch.float16)
    for p in params:
        p.grad = torch.ones_like(p)
    rec.after_backward()
    buffers = [b.data_ptr() for b in rec._flat[1:]]
    for p in params:
        p.grad = torch.zeros_like(p)
    rec.after_backward()
    assert [b.data_ptr() for b in rec._flat[1:]] == buffers
    assert rec.after_step()[-1].tolist() == [1.0] * len(model.tracked())  # zeros are underflow


# -- runs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision, loss_scale, scale", [("fp16", "dynamic", 65536.0), ("fp16", "none", 1.0),
                                                          ("bf16", "dynamic", 1.0), ("fp32", "dynamic", 1.0)])
def test_runs_complete_on_the_cpu(tmp_path, precision, loss_scale, scale):
    cfg = config.from_dict(tiny(train__steps=20, train__precision=precision, train__loss_scale=loss_scale,
                                train__eval_every=10, model__norm="layernorm",
                                train__optimizer={"name": "adam", "lr": 0.01}))
    res = run(cfg, out=tmp_path, quiet=True)
    assert res.status == "completed" and res.summary["skipped_steps"] == 0
    m = pd.read_csv(res.folder / "metrics.csv")
    assert (m.loss_scale.iloc[:-1] == scale).all() and (m.skipped.iloc[:-1] == 0).all()
    assert m.loss.iloc[-2] < m.loss.iloc[0] and math.isfinite(res.summary["final_test_loss"])
    g = pd.read_csv(res.folder / "grad_norms.csv")
    norms = g[g.kind.isin(["weight_grad", "bias_grad", "output_grad", "weight", "update_ratio", "act_std"])]
    assert norms.value.gt(0).all() and g.value.notna().all() and g.value.map(math.isfinite).all()


def test_recorded_gradients_are_unscaled(tmp_path):
    """fp16 with the scaler: every recorded gradient equals the one of a hand-done scaled step
    divided by its scale, and is close to float32's (not 65536 times larger)."""
    over = dict(train__steps=1, data__n_train=64, train__batch_size=64, model__activation="sigmoid")
    cfg = config.from_dict(tiny(train__precision="fp16", **over))
    folder = run(cfg, out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv").set_index(["layer", "kind"]).value
    m = pd.read_csv(folder / "metrics.csv").set_index("step")
    assert m.loc[0, "loss_scale"] == 65536.0

    # by hand: the same model and batch (the whole training set), autocast, scaled backward
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, act = build_model(cfg.model, d)
    zs, hs = {}, {}

    def keep(store, i, retain):
        def hook(mod, inp, out):
            if retain:
                out.retain_grad()
            store[i] = out if retain else out.detach()
        return hook

    for i, t in enumerate(model.tracked()):
        t.layer.register_forward_hook(keep(zs, i, True))
        if t.act is not None:
            t.act.register_forward_hook(keep(hs, i, False))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(cfg.seed + 1))  # vgp.train.batches
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(d.x_train[perm]), d.y_train[perm])
    (loss * 65536.0).backward()
    total = 0.0
    for i, t in enumerate(model.tracked()):
        layer = i + 1
        wg, bg = t.layer.weight.grad.double() / 65536, t.layer.bias.grad.double() / 65536
        total += (wg ** 2).sum().item() + (bg ** 2).sum().item()
        assert g[layer, "weight_grad"] == pytest.approx(wg.norm().item(), rel=1e-6)
        assert g[layer, "bias_grad"] == pytest.approx(bg.norm().item(), rel=1e-6)
        assert zs[i].dtype == torch.float16  # the hooks saw float16 gradients, scaled
        assert g[layer, "output_grad"] == pytest.approx(zs[i].grad.double().norm().item() / 65536, rel=1e-6)
        if t.act is not None:  # activation statistics of float16 activations, in float64
            h = hs[i].double()
            assert hs[i].dtype == torch.float16
            assert g[layer, "act_mean"] == pytest.approx(h.mean().item(), rel=1e-6)
            assert g[layer, "act_std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
    assert m.loc[0, "grad_norm"] == pytest.approx(math.sqrt(total), rel=1e-6)
    assert m.loc[0, "loss"] == pytest.approx(loss.item(), rel=1e-6)

    # and float32's gradients are the same to float16's rounding
    g32 = pd.read_csv(run(config.from_dict(tiny(name="f32", **over)), out=tmp_path, quiet=True).folder
                      / "grad_norms.csv").set_index(["layer", "kind"]).value
    for layer in range(1, 5):
        assert g[layer, "weight_grad"] == pytest.approx(g32[layer, "weight_grad"], rel=2e-2)


def _underflow_at_step0(tmp_path, name, **over) -> pd.Series:
    """The deep sigmoid net of configs/sigmoid_fp16_underflow.yaml: underflow per layer at step 0."""
    cfg = config.from_dict(tiny(name=name, model__depth=20, model__width=64, model__activation="sigmoid",
                                model__init={"name": "xavier_normal", "gain": 3.0}, data__dim=32, data__classes=10,
                                data__n_train=256, train__batch_size=128, train__steps=1,
                                log__kinds=["underflow", "weight_grad"], **over))
    g = pd.read_csv(run(cfg, out=tmp_path, quiet=True).folder / "grad_norms.csv")
    return g[(g.step == 0) & (g.kind == "underflow")].set_index("layer").value


def test_fp16_without_loss_scaling_loses_the_first_layers_gradient(tmp_path):
    fp32 = _underflow_at_step0(tmp_path, "fp32")
    fp16 = _underflow_at_step0(tmp_path, "fp16", train__precision="fp16", train__loss_scale="none")
    scaled = _underflow_at_step0(tmp_path, "scaled", train__precision="fp16", train__loss_scale="dynamic")
    first = [1, 2, 3, 4, 5]
    assert (fp32 == 0).all()  # float32 has every entry as a normal number
    assert (fp16[first] > 0.9).all()  # fp16: the vanishing gradient is below 6.1e-5, lost
    assert (scaled[first] < 0.05).all()  # x65536: back in range
    assert fp16[21] < 0.01  # the output layer's gradient is large enough anyway
    # the diagnosis says so, and what to do
    from vgp import analysis

    advice = analysis.diagnose(tmp_path / "fp16")["advice"]
    assert "gradients underflow float16" in advice and "train.loss_scale=dynamic" in advice
    assert "underflow" not in analysis.diagnose(tmp_path / "fp32")["advice"]
    s = pd.read_csv(tmp_path / "fp16" / "summary.csv").iloc[0]
    assert s["underflow_max"] == fp16.max() and s["train.precision"] == "fp16"


# -- skipped steps and divergence ----------------------------------------------------------------

def _overflowing(**over):
    """A ReLU net with N(0, 1) weights: its gradient times 65536 overflows float16, its gradient does not."""
    over = {"model__activation": "relu", "model__init": {"name": "normal", "std": 1.0}, "model__width": 64,
            "train__steps": 30, "train__precision": "fp16", "train__optimizer": {"name": "sgd", "lr": 1e-4}, **over}
    return config.from_dict(tiny(**over))


def test_a_step_the_scaler_skips_is_not_divergence(tmp_path):
    res = run(_overflowing(train__schedule={"name": "step", "step_size": 2, "gamma": 0.5}), out=tmp_path, quiet=True)
    assert res.status == "completed" and res.summary["diverged_step"] is None
    m = pd.read_csv(res.folder / "metrics.csv").set_index("step").iloc[:-1]
    skipped = m.index[m.skipped == 1].tolist()
    assert skipped and skipped == list(range(len(skipped)))  # the first steps, until the scale fits
    assert res.summary["skipped_steps"] == len(skipped) == m.skipped.sum()
    assert m.loss_scale.tolist()[:len(skipped) + 1] == [65536.0 / 2 ** k for k in range(len(skipped) + 1)]
    assert m.loss.iloc[0] == m.loss.iloc[len(skipped)]  # skipped: the weights did not move
    assert m.loss.iloc[-1] < m.loss.iloc[0]
    assert m.lr.tolist() == pytest.approx([1e-4 * 0.5 ** (s // 2) for s in m.index])  # the schedule goes on
    from vgp import analysis

    assert analysis.diagnose(res.folder)["evidence"]["skipped_steps"] == len(skipped)

    # without the scaler the same gradients are finite: nothing is skipped
    res = run(_overflowing(name="none", train__loss_scale="none"), out=tmp_path, quiet=True)
    assert res.status == "completed" and res.summary["skipped_steps"] == 0


def test_a_real_divergence_under_the_scaler_is_still_one(tmp_path):
    # a huge learning rate: the weights blow up, the float16 forward pass overflows, the loss is not finite
    res = run(_overflowing(train__optimizer={"name": "sgd", "lr": 100.0}), out=tmp_path, quiet=True)
    m = pd.read_csv(res.folder / "metrics.csv").set_index("step")
    k = int((m.skipped == 1).idxmin())  # the first update the scaler let through: it breaks the weights
    assert k >= 1 and (m.skipped.loc[:k - 1] == 1).all() and m.loss.loc[:k].map(math.isfinite).all()
    assert res.status == "diverged" and res.summary["diverged_step"] == k + 1
    assert not math.isfinite(m.loss.loc[k + 1])
    # and a forward pass that overflows float16 at step 0
    res = run(_overflowing(name="big", model__init={"name": "normal", "std": 3.0}), out=tmp_path, quiet=True)
    assert res.status == "diverged" and res.summary["diverged_step"] == 0


# -- what the CPU cannot do is a config error ------------------------------------------------------

def test_fp16_lstm_on_the_cpu_is_rejected_before_running(tmp_path, cli):
    import yaml

    raw = tiny(model__arch="lstm", model__depth=1, model__width=8, train__precision="fp16",
               data={"name": "adding", "seq_len": 5, "n_train": 64, "n_test": 32})
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert "train.precision" in str(e.value) and "bf16 or fp32" in str(e.value)
    raw["train"]["precision"] = "bf16"
    config.from_dict(raw)  # oneDNN has a bfloat16 LSTM
    path = tmp_path / "lstm16.yaml"
    raw["train"]["precision"] = "fp16"
    path.write_text(yaml.safe_dump(raw))
    r = cli("validate", path)
    assert r.returncode == 2 and "train.precision" in r.stderr


def test_precision_keys_are_checked():
    with pytest.raises(ConfigError, match=r"train.precision: invalid value 'fp8'"):
        config.from_dict(tiny(train__precision="fp8"), preflight=False)
    with pytest.raises(ConfigError, match=r"train.loss_scale: invalid value 'static'"):
        config.from_dict(tiny(train__loss_scale="static"), preflight=False)


@pytest.mark.parametrize("loss, norm, scale, ok, skipped", [
    (1.0, 2.0, None, True, None),
    (1.0, math.inf, None, False, None),  # no scaler: a non-finite gradient is divergence, as in float32
    (math.nan, 2.0, None, False, None),
    (1.0, 2.0, 65536.0, True, False),
    (1.0, math.inf, 65536.0, True, True),  # the scaled gradient overflowed: skipped, S halves, no divergence
    (1.0, math.nan, 2.0, True, True),
    (1.0, math.inf, 1.0, False, True),  # overflows without amplification: an exploding gradient
    (1.0, math.inf, 0.25, False, True),
    (math.inf, 2.0, 65536.0, False, False),  # the loss itself: divergence whatever the scale
])
def test_what_a_non_finite_step_means(loss, norm, scale, ok, skipped):
    from vgp.train import step_flags

    got_ok, got_skipped = step_flags(torch.tensor(loss), torch.tensor(norm),
                                     None if scale is None else torch.tensor(scale))
    assert bool(got_ok) == ok
    assert (None if got_skipped is None else bool(got_skipped)) == skipped


def test_gradients_through_time_are_unscaled(tmp_path):
    # dLoss/dh_t of a recurrent net is taken by a hook on the scaled backward pass: divided by S
    out = {}
    for prec in ("fp32", "fp16"):
        raw = tiny(name=prec, model__arch="rnn", model__depth=1, model__width=16, train__precision=prec,
                   train__steps=1, data={"name": "adding", "seq_len": 20, "n_train": 64, "n_test": 32})
        t = pd.read_csv(run(config.from_dict(raw), out=tmp_path, quiet=True).folder / "time_grads.csv")
        out[prec] = t[t.step == 0].set_index("t").value
    assert pd.read_csv(tmp_path / "fp16" / "metrics.csv").loss_scale[0] == 65536
    assert out["fp16"].tolist() == pytest.approx(out["fp32"].tolist(), rel=5e-2)


def test_underflow_counts_exactly_past_float32s_integers():
    # a layer of more than 2**24 entries: counted in float32, 16,785,407 (odd, above 2**24) would round
    lin = torch.nn.Linear(4097, 4097, bias=False)
    g = torch.zeros(4097, 4097)
    g[0, :2] = 1.0  # all entries but two are zero: underflow
    lin.weight.grad = g
    rec = GradientRecorder([Tracked("big", lin, None)], [None], [lin.weight], ["underflow"])
    rec.after_backward()
    got = rec.after_step()[-1].item()
    assert g.numel() - 2 == 16_785_407 and got == 16_785_407 / g.numel()
