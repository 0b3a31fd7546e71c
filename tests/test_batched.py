"""Batched training (vgp.batched): K members trained as one stacked model write, member by member,
the run folder that vgp.train.run writes for the same config alone.

The reference is always the real solo run (vgp.train.run) of the same config: every CSV row, every
column but the timings, equal within float32 rounding (the stacked matrix products and the loss's
mean may round differently in the last bit, and training carries that along)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, tiny
from vgp import batched, config, results
from vgp.errors import UserError
from vgp.train import run

TIMINGS = {"elapsed_s", "wall_s", "train_s"}


def cfgs_of(raw: dict, **per_member) -> list[config.Config]:
    """One config per member: ``per_member`` maps an override key to one value per member."""
    n = len(next(iter(per_member.values())))
    out = []
    for i in range(n):
        overrides = [(k.replace("__", "."), v[i]) for k, v in per_member.items()]
        out.append(config.from_dict({**raw, "name": f"m{i}"}, overrides))
    return out


def assert_same_folder(a: Path, b: Path, rtol: float = 1e-5) -> None:
    """Every file of run folder ``a`` equals ``b``'s: same files, rows and columns; numbers within
    ``rtol`` (relative, so right at 1e-30 as at 1e3; NaN where NaN), everything else exactly."""
    files = {p.name for p in a.iterdir()}
    assert files == {p.name for p in b.iterdir()}, (a, files)
    for name in ("grad_norms.csv", "metrics.csv", "summary.csv", "time_grads.csv"):
        if name not in files:
            continue
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        if name == "grad_norms.csv":
            _assert_same_grad_norms(x, y, rtol, a.name)
        for col in x.columns:
            if col in TIMINGS or col == "name" or (name == "grad_norms.csv" and col == "value"):
                continue
            u, v = x[col], y[col]
            if u.dtype.kind in "fi" and v.dtype.kind in "fi":
                np.testing.assert_allclose(u.to_numpy(float), v.to_numpy(float), rtol=rtol, atol=0,
                                           err_msg=f"{a.name}/{name}:{col}")
            else:
                same = u.fillna("-").astype(str).tolist() == v.fillna("-").astype(str).tolist()
                assert same, f"{a.name}/{name}:{col}"
    meta_a, meta_b = (json.loads((f / "meta.json").read_text()) for f in (a, b))
    assert meta_a["status"] == meta_b["status"] == results.read_status(a)
    cfg_a, cfg_b = (yaml.safe_load((f / "config.yaml").read_text()) for f in (a, b))
    assert cfg_a == cfg_b


def _assert_same_grad_norms(x: pd.DataFrame, y: pd.DataFrame, rtol: float, run: str) -> None:
    """Values relatively within ``rtol``, but for the two kinds that are differences of nearly equal
    float32 numbers, where one rounding step in the weights (which the stacked products may take
    differently) moves the result by more: act_mean (a mean of +-h entries) within rtol of the layer's
    act_std, update_ratio (||W_old - W_new|| / ||W||) within a few float32 epsilons."""
    assert (x[["step", "layer", "name", "kind"]] == y[["step", "layer", "name", "kind"]]).all().all(), run
    u, v = x.value.to_numpy(float), y.value.to_numpy(float)
    atol = np.zeros(len(x))
    std = y[y.kind == "act_std"].set_index(["step", "layer"]).value
    mean = (y.kind == "act_mean").to_numpy()
    atol[mean] = rtol * std.reindex(pd.MultiIndex.from_frame(y.loc[mean, ["step", "layer"]])).to_numpy()
    atol[(y.kind == "update_ratio").to_numpy()] = 1e-6
    bad = ~(np.isclose(u, v, rtol=rtol, atol=0, equal_nan=True) | (np.abs(u - v) <= atol))
    assert not bad.any(), f"{run}/grad_norms.csv:\n{x[bad].assign(alone=v[bad]).head(10)}"


def check_against_alone(cfgs, tmp_path, rtol=1e-5):
    res = batched.run_batched(cfgs, out=tmp_path / "batched")
    for cfg, r in zip(cfgs, res):
        alone = run(cfg, out=tmp_path / "alone", quiet=True)
        assert r.status == alone.status
        assert_same_folder(r.folder, alone.folder, rtol)
        assert json.loads((r.folder / "meta.json").read_text())["batched"] == len(cfgs)
    return res


ADDING = {"name": "adding", "seq_len": 6, "n_train": 64, "n_test": 32}
BASE = tiny(model__depth=4, model__width=16, train__steps=12, train__batch_size=16, train__eval_every=5,
            log__every=3)


@pytest.mark.parametrize("k", [3, 8])
def test_members_equal_their_runs_alone(tmp_path, k):
    check_against_alone(cfgs_of(BASE, seed=list(range(10, 10 + k))), tmp_path)


def merged(**sections) -> dict:
    """BASE with some keys of its sections replaced: merged(model={"activation": "relu"})."""
    return {**BASE, **{k: {**BASE.get(k, {}), **v} if isinstance(BASE.get(k), dict) else v
                       for k, v in sections.items()}}


@pytest.mark.parametrize("raw", [
    merged(model={"activation": "relu", "skip": True}, log={"every": 1}),  # dead units, residual adds
    merged(model={"activation": "gelu"}),  # saturation read off phi'(z)
    {**merged(model={"activation": "sigmoid"}), "data": {"name": "spirals", "classes": 3, "n_train": 64, "n_test": 32}},
    merged(train={"optimizer": {"name": "adam", "lr": 0.01}}),
    merged(log={"kinds": ["weight_grad", "act_std"]}),
    merged(train={"schedule": {"name": "warmup_cosine", "warmup_steps": 4}, "steps": 12}, log={"every": 1}),
    merged(model={"activation": "relu", "init": {"name": "lsuv", "tol": 0.1, "max_iter": 10}}),
], ids=["relu-skip", "gelu", "sigmoid-spirals", "adam", "two-kinds", "warmup-cosine", "lsuv"])
def test_members_equal_alone_across_activations_data_and_kinds(tmp_path, raw):
    check_against_alone(cfgs_of(raw, seed=[0, 1, 2]), tmp_path)


def test_regression_members_equal_alone(tmp_path):
    """Mean squared error on (T, F) inputs. The output bias's gradient is the mean of residuals of both
    signs, whose cancellation turns float32 rounding of the weights into a relative 1e-5 after a few
    steps: 1e-4 here."""
    raw = {**BASE, "data": {"name": "adding", "seq_len": 5, "n_train": 64, "n_test": 32}}
    check_against_alone(cfgs_of(raw, seed=[0, 1, 2]), tmp_path, rtol=1e-4)


def test_vanishing_signals_at_1e_minus_27_are_recorded_right(tmp_path):
    """tanh, depth 40, weight variance 0.05/fan_in, zero biases: activations shrink to a std of 1e-27
    and a mean near 1e-30, output gradients to 1e-28 toward the input, whose float32 sum of squares
    would be 0 (the norms are summed in float64); the batched statistics match alone relatively (not
    only absolutely)."""
    raw = tiny(model__depth=40, model__width=16, model__activation="tanh", train__steps=4, log__every=1,
               model__init={"name": "variance_scaling", "scale": 0.05}, model__bias_init="zeros")
    res = check_against_alone(cfgs_of(raw, seed=[0, 1, 2, 3]), tmp_path)
    g = pd.read_csv(res[0].folder / "grad_norms.csv")
    first = g[g.step == 0]
    assert 0 < first[first.kind == "act_std"].value.min() < 1e-25
    assert 0 < first[first.kind == "output_grad"].value.min() < 1e-27


def test_members_with_different_learning_rates_optimizers_and_inits(tmp_path):
    """Optimizer arguments and inits may differ between members: each gets its own optimizer (over views
    of the stacked weights), and its own init as alone."""
    cfgs = cfgs_of(BASE, seed=[0, 1, 2, 3],
                   train__optimizer=[{"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "sgd", "lr": 0.5},
                                     {"name": "adam", "lr": 0.003}, {"name": "rmsprop", "lr": 0.001}],
                   model__init=["default", {"name": "variance_scaling", "scale": 2.0}, "orthogonal", "xavier_normal"])
    assert batched.batchable(cfgs) is None
    res = check_against_alone(cfgs, tmp_path)
    lrs = [pd.read_csv(r.folder / "metrics.csv").lr.iloc[0] for r in res]
    assert lrs == [0.05, 0.5, 0.003, 0.001]


def test_members_with_different_activations_equal_alone_and_come_back_in_order(tmp_path):
    """Activations may differ: members are reordered so that equal specs are adjacent, each activation
    runs on its slice, and every member's statistics (saturation from h, or from phi'(z) for gelu;
    dead units for relu) equal alone; the results come back in the configs' order."""
    acts = ["tanh", "gelu", {"name": "leaky_relu", "negative_slope": 0.2}, "tanh", "relu",
            "sigmoid", "gelu", {"name": "leaky_relu", "negative_slope": 0.01}]
    cfgs = cfgs_of({**BASE, "log": {"every": 2}}, seed=[0, 1, 2, 3, 4, 5, 6, 7], model__activation=acts)
    assert batched.batchable(cfgs) is None
    assert batched._by_activation(cfgs) == [0, 3, 1, 6, 2, 4, 5, 7]
    res = check_against_alone(cfgs, tmp_path)
    assert [r.folder.name for r in res] == [c.name for c in cfgs]
    sat = {r.folder.name: pd.read_csv(r.folder / "grad_norms.csv").query("kind == 'saturation'").value.mean()
           for r in res}
    assert sat["m4"] > 0.3 and sat["m2"] == 0  # relu: the half below 0; leaky_relu(0.2): phi' >= 0.2, never


@pytest.mark.parametrize("arch,activation,data", [
    ("rnn", "tanh", ADDING), ("rnn", "relu", ADDING), ("gru", "tanh", ADDING),
    ("gru", "tanh", {"name": "copy", "n_train": 64, "n_test": 32}),  # a class per time step
])
def test_recurrent_members_equal_alone(tmp_path, arch, activation, data):
    """Vanilla RNNs and GRUs, 2 layers, stacked and unrolled with batched products, against each member
    alone (fused kernels between recorded steps, unrolled on them): every CSV, time_grads.csv's
    dLoss/dh_t per layer and step included, within 1e-4 (the fused kernels round differently). The
    recurrent init, the phase diagram's axis for these nets, may differ between members."""
    raw = {**tiny(model__arch=arch, model__activation=activation, model__depth=2, model__width=8, train__steps=12,
                  train__batch_size=16, train__eval_every=5, log__every=3), "data": data}
    inits = [{"name": "orthogonal"}, {"name": "orthogonal", "gain": 1.5}, "default"]
    cfgs = cfgs_of(raw, seed=[0, 1, 2], model__recurrent_init=inits)
    res = check_against_alone(cfgs, tmp_path, rtol=1e-4)
    times = pd.read_csv(res[1].folder / "time_grads.csv")
    recorded = sorted(set(pd.read_csv(res[1].folder / "grad_norms.csv").step))
    assert recorded == [0, 3, 5, 6, 9, 10, 11]  # log.every 3, evaluations, the last step
    assert len(times) == len(recorded) * 2 * (6 if data is ADDING else 120)  # 2 layers, T steps each
    assert set(times.layer) == {1, 2} and (times.value > 0).all()


def test_recurrent_gradients_vanishing_to_1e_minus_30_through_time_are_recorded_right(tmp_path):
    """A tanh RNN whose recurrent matrix is orthogonal times 0.05: dLoss/dh_t shrinks by about 20x per
    step back in time, to below 1e-30 at t = 1 of 25; each member's time_grads.csv matches alone
    relatively (not only absolutely), at every magnitude."""
    raw = {**tiny(model__arch="rnn", model__depth=1, model__width=8, train__steps=3, train__batch_size=16,
                  log__every=1), "data": {**ADDING, "seq_len": 25}}
    inits = [{"name": "orthogonal", "gain": 0.05}, {"name": "orthogonal", "gain": 0.06}]
    res = check_against_alone(cfgs_of(raw, seed=[0, 1], model__recurrent_init=inits), tmp_path)
    times = pd.read_csv(res[0].folder / "time_grads.csv")
    first = times[(times.step == 0)].set_index("t").value
    assert 0 < first[1] < 1e-30 and first[25] > 1e-3


def test_groups_mix_activations_only_to_fill_a_group():
    """Equal activations are grouped first (a mixed group pays a split and a concatenation per layer);
    the groups that one activation leaves short are then filled with other activations."""
    two = ["tanh", "relu"] * 8  # seed-major: tanh, relu, tanh, relu, ...
    cfgs = cfgs_of(BASE, seed=[i // 2 for i in range(16)], model__activation=two)
    assert batched.groups(cfgs, 8) == [list(range(0, 16, 2)), list(range(1, 16, 2))]
    four = ["tanh", "relu", "gelu", "sigmoid"] * 2
    cfgs = cfgs_of(BASE, seed=[i // 4 for i in range(8)], model__activation=four)
    assert batched.groups(cfgs, 8) == [[0, 4, 1, 5, 2, 6, 3, 7]]
    assert batched.groups(cfgs, 4) == [[0, 4, 1, 5], [2, 6, 3, 7]]
    cfgs = cfgs_of(BASE, seed=[0, 1, 2, 0, 1, 2], model__activation=["tanh"] * 3 + ["relu"] * 3)
    assert batched.groups(cfgs, 2) == [[0, 1], [2, 5], [3, 4]]
    assert batched.groups(cfgs[:5], 2) == [[0, 1], [2], [3, 4]]  # relu fills its own group
    rnns = cfgs_of({**tiny(model__arch="rnn"), "data": ADDING}, seed=[0, 1, 2, 0, 1, 2],
                   model__activation=["tanh"] * 3 + ["relu"] * 3)
    assert batched.groups(rnns, 2) == [[0, 1], [2], [3, 4], [5]]  # a recurrent net's members share one


@pytest.mark.parametrize("spec", [{"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                                  {"name": "adam", "lr": 1e-3}, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
                                  {"name": "adagrad", "lr": 0.05}, {"name": "rmsprop", "lr": 1e-3, "momentum": 0.5}])
def test_one_optimizer_over_the_stacked_tensors_fused_where_torch_has_a_kernel(tmp_path, spec):
    """Members with the same optimizer share one over the stacked tensors: torch's fused kernel for
    sgd, adam, adamw and adagrad (rmsprop has none: foreach), with the spec's own arguments; every
    member's CSVs equal its run alone."""
    cfgs = cfgs_of({**BASE, "train": {**BASE["train"], "optimizer": spec}}, seed=[0, 1, 2])
    net = torch.nn.Linear(2, 2)
    net.weights, net.biases = [], []
    opts, views = batched._optimizers([batched._Member(c, tmp_path) for c in cfgs], net)
    group = opts[0].param_groups[0]
    assert len(opts) == 1 and views is None
    assert bool(group.get("fused")) is (spec["name"] != "rmsprop") and group["foreach"] is (spec["name"] == "rmsprop")
    assert all(group[k] == v for k, v in spec.items() if k != "name")
    check_against_alone(cfgs, tmp_path)


def test_members_of_one_seed_share_their_data_and_differ_in_learning_rate(tmp_path):
    """Equal data sets are held once (seen K times, not copied K times); the runs are still those alone."""
    cfgs = cfgs_of(BASE, seed=[5, 5, 5], train__optimizer__lr=[0.01, 0.1, 1.0])
    x = batched._stacked([torch.ones(4, 2), torch.ones(4, 2)], "cpu")
    assert x.shape == (2, 4, 2) and x.stride(0) == 0
    check_against_alone(cfgs, tmp_path)


def test_clipping_by_norm_is_per_member(tmp_path):
    """Members of very different gradient norms (their inits differ): max_norm between them clips some
    members and not others, each as alone (a norm over all members would clip them all alike)."""
    raw = {**BASE, "train": {**BASE["train"], "clip": {"mode": "norm", "max_norm": 0.5}}}
    cfgs = cfgs_of(raw, seed=[0, 1, 2], model__init=[{"name": "normal", "std": 0.01}, "default",
                                                     {"name": "normal", "std": 1.0}])
    res = check_against_alone(cfgs, tmp_path)
    clipped = [pd.read_csv(r.folder / "metrics.csv").clipped.dropna().astype(str).eq("True").mean() for r in res]
    assert clipped[0] < 1 and clipped[2] > 0 and clipped[0] != clipped[2]
    m = pd.read_csv(res[2].folder / "metrics.csv").dropna(subset=["loss"])
    assert (m.grad_norm_clipped <= 0.5 + 1e-5).all() and (m.grad_norm > 0.5).any()


def test_clipping_by_value(tmp_path):
    raw = {**BASE, "train": {**BASE["train"], "clip": {"mode": "value", "value": 0.01}}}
    check_against_alone(cfgs_of(raw, seed=[0, 1, 2]), tmp_path)


def test_a_member_that_diverges_ends_diverged_at_its_step_while_the_others_complete(tmp_path):
    """One member with a huge learning rate and init (relu, std 3, lr 100) diverges; found between recorded
    steps (log.every 7) at the step alone finds; the other members train on to the end."""
    raw = tiny(model__activation="relu", train__steps=60, log__every=7, train__eval_every=20)
    cfgs = cfgs_of(raw, seed=[0, 1, 2], model__init=["default", {"name": "normal", "std": 3.0}, "default"],
                   train__optimizer=[{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 100.0},
                                     {"name": "sgd", "lr": 0.1}])
    res = check_against_alone(cfgs, tmp_path, rtol=1e-4)
    s = [pd.read_csv(r.folder / "summary.csv").iloc[0] for r in res]
    assert [x["status"] for x in s] == ["completed", "diverged", "completed"]
    assert 0 < s[1]["diverged_step"] < 60 and s[1]["diverged_step"] % 7 != 0  # between recorded steps
    assert s[0]["steps_done"] == 60 and s[1]["steps_done"] < 60


@pytest.mark.parametrize("scales", [(1e-30, 1.0, 1e3), (1e-45, 0.0, 1e-38), (1.0, 1e19, 1e-3), (1.0, math.inf, 1.0),
                                    (math.nan, 1.0, 1.0), (1e18, 1e18, 1e18), (1e18, 1e-20, 1e18), (3e18, 1.0, 1.0)])
def test_the_cheap_divergence_norm_flags_exactly_the_members_their_own_norms_flag(scales):
    """A step that neither records nor clips takes one norm of all members together (on the CPU)
    where it is below 2**63; a member is flagged (not finite, as alone) exactly where its own float32
    norm flags it, from members of 1e-45 to beyond float32's sum-of-squares range (1e19 per entry),
    and members whose whole exceeds 2**63 while each is finite (1e18 x 110 entries: 1.05e19)."""
    grads = [torch.stack([torch.full((10, 10), s) for s in scales]), torch.stack([torch.full((10,), s) for s in scales])]
    own = torch.linalg.vector_norm(batched._norms(grads), dim=0)  # each member's float32 norm, as alone
    cheap = batched._member_grad_norms(grads, len(scales), each=False)
    assert cheap.shape == (len(scales),)
    assert torch.equal(torch.isfinite(cheap), torch.isfinite(own))
    sum_of_squares = [110 * s * s for s in scales]  # 110 entries per member, each s
    assert torch.equal(torch.isfinite(own), torch.tensor([x < 3.4e38 for x in sum_of_squares]))  # nan < x: False


def test_batchable_says_why_not(monkeypatch):
    ok = cfgs_of(BASE, seed=[0, 1])
    assert batched.batchable(ok) is None
    cases = {
        "model.arch=lstm: an LSTM is not batched": cfgs_of({**tiny(model__arch="lstm"), "data": ADDING}, seed=[0, 1]),
        "model.arch=resnet": cfgs_of({**tiny(model__arch="resnet", model__depth=8), "data": {"name": "digits"}},
                                     seed=[0, 1]),
        "model.activation differs: only an mlp's": cfgs_of({**tiny(model__arch="rnn"), "data": ADDING}, seed=[0, 1],
                                                           model__activation=["tanh", "relu"]),
        "model.norm=batchnorm": cfgs_of({**BASE, "model": {**BASE["model"], "norm": "batchnorm"}}, seed=[0, 1]),
        "model.depth differs": cfgs_of(BASE, seed=[0, 1], model__depth=[3, 4]),
        "model.width differs": cfgs_of(BASE, seed=[0, 1], model__width=[16, 8]),
        "train.steps differs": cfgs_of(BASE, seed=[0, 1], train__steps=[5, 6]),
        "train.precision=bf16": cfgs_of({**BASE, "train": {**BASE["train"], "precision": "bf16"}}, seed=[0, 1]),
        "model.residual_scale=rezero": cfgs_of({**BASE, "model": {**BASE["model"], "skip": True,
                                                                   "residual_scale": "rezero"}}, seed=[0, 1]),
    }
    for reason, cfgs in cases.items():
        why = batched.batchable(cfgs)
        assert why is not None and why.startswith(reason), (reason, why)
    # recurrent nets: batched on the CPU only (alone on a GPU, each runs cuDNN's fused kernel); MLPs anywhere
    rnns = cfgs_of({**tiny(model__arch="gru"), "data": ADDING}, seed=[0, 1])
    assert batched.batchable(rnns) is None and batched.batchable(rnns, torch.device("cpu")) is None
    assert batched.batchable(rnns, torch.device("cuda", 0)).startswith("model.arch=gru on cuda:0: recurrent nets are "
                                                                       "batched on the CPU only")
    assert batched.batchable(ok, torch.device("cuda")) is None
    with pytest.raises(UserError, match="cannot be trained batched: model.depth differs"):
        batched.run_batched(cases["model.depth differs"])
    # a setting batched training does not know (one added to vgp later) must keep its default
    clipped = cfgs_of({**BASE, "train": {**BASE["train"], "clip": {"mode": "norm"}}}, seed=[0, 1])
    monkeypatch.setattr(batched, "KNOWN", tuple(k for k in batched.KNOWN if k != "train.clip."))
    assert batched.batchable(clipped).startswith("train.clip.mode=norm: a setting batched training does not know")
    assert batched.batchable(ok) is None  # its clip settings are the defaults


def test_groups_split_by_what_differs_and_size():
    cfgs = cfgs_of(BASE, seed=[0, 1, 2, 0, 1, 2, 0], model__depth=[3, 3, 3, 4, 4, 4, 3],
                   model__norm=["none"] * 6 + ["batchnorm"])
    assert batched.groups(cfgs, 8) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batched.groups(cfgs, 2) == [[0, 1], [2], [3, 4], [5], [6]]
    assert batched.groups(cfgs, 1) == [[i] for i in range(7)]


def test_an_interrupted_group_marks_every_member_interrupted(tmp_path):
    raw = tiny(train__steps=1_000_000, log__every=3)
    script = ("import sys; from vgp import batched, config\n"
              f"raw = {raw!r}\n"
              "cfgs = [config.from_dict({**raw, 'name': f'm{i}', 'seed': i}) for i in range(3)]\n"
              "batched.run_batched(cfgs, out=sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    partial = tmp_path / "m2" / "metrics.csv.partial"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 3000):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    for i in range(3):
        folder = tmp_path / f"m{i}"
        assert json.loads((folder / "meta.json").read_text())["status"] == "interrupted"
        assert results.read_status(folder) == "interrupted" and not (folder / "summary.csv").exists()
        m, g = pd.read_csv(folder / "metrics.csv.partial"), pd.read_csv(folder / "grad_norms.csv.partial")
        assert list(g.groupby("step").size().index) == list(m.step) and len(m) > 3


def test_a_failure_marks_every_unfinished_member_failed(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(batched, "_record", broken)
    with pytest.raises(RuntimeError, match="injected"):
        batched.run_batched(cfgs_of(BASE, seed=[0, 1]), out=tmp_path)
    for i in range(2):
        assert results.read_status(tmp_path / f"m{i}") == "failed"
        assert "injected" in (tmp_path / f"m{i}" / "error.txt").read_text()


@pytest.mark.slow
def test_a_sweep_batched_equals_one_unbatched_and_resumes(tmp_path, cli):
    spec = {"name": "s", "base": {**BASE, "train": {**BASE["train"], "steps": 20}},
            "grid": {"train.optimizer.lr": [0.05, 0.2]}, "seeds": [0, 1, 2, 3]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = cli("sweep", path, "--out", tmp_path / "b", "-j", "1", "-q")
    assert r.returncode == 0 and "(8 run now)" in r.stderr, r.stderr
    r = cli("sweep", path, "--out", tmp_path / "u", "-j", "1", "-q", "--no-batch")
    assert r.returncode == 0 and "(8 run now)" in r.stderr, r.stderr
    runs_b, runs_u = tmp_path / "b" / "s" / "runs", tmp_path / "u" / "s" / "runs"
    ids = sorted(p.name for p in runs_b.iterdir())
    assert ids == sorted(p.name for p in runs_u.iterdir()) and len(ids) == 8
    for i in ids:
        assert_same_folder(runs_b / i, runs_u / i)
        assert json.loads((runs_b / i / "meta.json").read_text())["batched"] == 8
        assert "batched" not in json.loads((runs_u / i / "meta.json").read_text())
    summary_b = pd.read_csv(tmp_path / "b" / "s" / "summary.csv").sort_values("name").reset_index(drop=True)
    summary_u = pd.read_csv(tmp_path / "u" / "s" / "summary.csv").sort_values("name").reset_index(drop=True)
    np.testing.assert_allclose(summary_b.final_loss, summary_u.final_loss, rtol=1e-5)

    # resuming: two members lost their marker (killed while finishing); only they run again, batched
    before = {i: (runs_b / i / "meta.json").read_text() for i in ids}
    for i in ids[:2]:
        (runs_b / i / "summary.csv").unlink()
    r = cli("sweep", path, "--out", tmp_path / "b", "-j", "1", "-q")
    assert r.returncode == 0 and "(2 run now)" in r.stderr, r.stderr
    for i in ids:
        assert_same_folder(runs_b / i, runs_u / i)
        changed = (runs_b / i / "meta.json").read_text() != before[i]
        assert changed == (i in ids[:2])
        if changed:
            assert json.loads((runs_b / i / "meta.json").read_text())["batched"] == 2


@pytest.mark.slow
def test_ctrl_c_in_a_batched_sweep_marks_every_member_interrupted(tmp_path):
    spec = {"name": "s", "base": tiny(train__steps=100_000, log__every=5), "seeds": [0, 1, 2, 3]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    args = ["sweep", path, "--out", tmp_path, "-j", "1", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "vgp", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    runs = tmp_path / "s" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(runs.glob("*/metrics.csv.partial"))) < 4:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    metas = [json.loads(p.read_text()) for p in runs.glob("*/meta.json")]
    assert len(metas) == 4 and {m["status"] for m in metas} == {"interrupted"}
    for folder in runs.iterdir():
        assert results.read_status(folder) == "interrupted" and (folder / "grad_norms.csv.partial").exists()
