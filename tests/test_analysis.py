"""vgp.analysis: decay rates on synthetic CSVs with known answers, verdicts on real short runs."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import tiny
from vgp import analysis, config
from vgp.errors import UserError
from vgp.train import run


def write_run(folder, og: dict, losses=(2.3, 2.0, 1.5, 1.0), times: dict | None = None, extra=()):
    """A synthetic run folder: og = {step: [output_grad of layer 1..L+1]}, times = {step: {layer: [t=1..T]}}."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(s, l + 1, f"l{l}", "output_grad", v) for s, vals in og.items() for l, v in enumerate(vals)]
    rows += list(extra)
    pd.DataFrame(rows, columns=["step", "layer", "name", "kind", "value"]).to_csv(folder / "grad_norms.csv", index=False)
    pd.DataFrame({"step": range(len(losses)), "loss": losses}).to_csv(folder / "metrics.csv", index=False)
    if times is not None:
        trows = [(s, k, t + 1, v) for s, per in times.items() for k, vals in per.items() for t, v in enumerate(vals)]
        pd.DataFrame(trows, columns=["step", "layer", "t", "value"]).to_csv(folder / "time_grads.csv", index=False)
    return folder


def geometric(rate, n, out=1.0):
    """Norms of layers 1..n whose consecutive ratio (layer l over l+1) is ``rate``, the last = out."""
    return [out * rate ** (n - 1 - i) for i in range(n)]


# -- the measurement on known profiles --------------------------------------------------------------

def test_decay_rate_is_exact_on_a_geometric_profile_and_ignores_an_outlier():
    v = np.array(geometric(0.7, 12))
    assert analysis.decay_rate(v)[0] == pytest.approx(0.7, rel=1e-12)
    v[4] *= 50  # one odd layer: a least-squares fit would move, Theil-Sen does not
    assert analysis.decay_rate(v)[0] == pytest.approx(0.7, rel=1e-12)
    ls = math.exp(-np.polyfit(np.arange(12), np.log(v), 1)[0])
    assert abs(ls - 0.7) > 0.01  # ... which is why the robust fit is used


def test_underflow_and_nan_are_masked_and_counted():
    v = geometric(0.1, 20)
    v[:5] = [0.0] * 5  # float32 underflow near the input
    rate, zeros, bad = analysis.decay_rate(v)
    assert rate == pytest.approx(0.1) and zeros == 5 and bad == 0
    rate, zeros, bad = analysis.decay_rate([math.nan, math.inf, 1.0, 2.0, 4.0])
    assert rate == pytest.approx(0.5) and bad == 2
    assert math.isnan(analysis.decay_rate([0.0, 0.0, 1.0])[0])


def test_verdict_compounds_the_rate_over_this_depth(tmp_path):
    """The same 0.9 per layer: healthy at depth 5, vanishing at depth 60."""
    shallow = analysis.diagnose(write_run(tmp_path / "a", {0: geometric(0.9, 6)}))
    deep = analysis.diagnose(write_run(tmp_path / "b", {0: geometric(0.9, 61)}))
    assert shallow["decay_per_layer"] == pytest.approx(0.9) == deep["decay_per_layer"]
    assert shallow["compounded"] == pytest.approx(0.9 ** 5)
    assert (shallow["verdict"], deep["verdict"]) == ("healthy", "vanishing")
    up = analysis.diagnose(write_run(tmp_path / "c", {0: geometric(1.2, 31)}))
    assert up["verdict"] == "exploding" and up["decay_per_layer"] == pytest.approx(1.2)


def test_thresholds_are_settable(tmp_path):
    folder = write_run(tmp_path / "r", {0: geometric(0.9, 21)})  # x0.12 over 20 layers
    assert analysis.diagnose(folder)["verdict"] == "healthy"
    assert analysis.diagnose(folder, analysis.Thresholds(vanishing=0.5))["verdict"] == "vanishing"


def test_drop_layer_first_and_last_step(tmp_path):
    og = {0: geometric(0.5, 11), 50: geometric(0.95, 11)}
    d = analysis.diagnose(write_run(tmp_path / "r", og))
    # 0.5^k < 0.01 from k = 7 on: layer 10 - 7 + 1 = 4 and below
    assert d["drop_layer"] == 4
    assert d["steps"]["last"]["depth"]["step"] == 50
    assert d["decay_per_layer_last"] == pytest.approx(0.95)
    assert (d["verdict"], d["verdict_last"]) == ("vanishing", "healthy")


def test_all_hidden_layers_underflowed_is_vanishing(tmp_path):
    d = analysis.diagnose(write_run(tmp_path / "r", {0: [0.0, 0.0, 0.0, 0.0, 0.3]}))
    assert d["verdict"] == "vanishing" and math.isnan(d["decay_per_layer"])


def test_time_axis_of_recurrent_nets(tmp_path):
    """Synthetic time_grads.csv: dLoss/dh_t shrinks by 0.8 per step back from t = T = 50."""
    times = {0: {1: geometric(0.8, 50), 2: geometric(0.99, 50)}}
    d = analysis.diagnose(write_run(tmp_path / "r", {0: [0.5]}, times=times))
    by_layer = {r["layer"]: r for r in d["time"]}
    assert by_layer[1]["decay_per_step"] == pytest.approx(0.8)
    assert by_layer[1]["first_over_last"] == pytest.approx(0.8 ** 49)
    assert (by_layer[1]["verdict"], by_layer[2]["verdict"]) == ("vanishing", "healthy")
    assert d["verdict"] == "vanishing" and d["decay_per_step"] == pytest.approx(0.8)
    assert "through time" in d["advice"]


def test_stalled_loss_is_evidence(tmp_path):
    flat = analysis.diagnose(write_run(tmp_path / "a", {0: geometric(1.0, 5)}, losses=[2.3] * 8))
    falling = analysis.diagnose(write_run(tmp_path / "b", {0: geometric(1.0, 5)}, losses=np.linspace(2.3, 0.5, 8)))
    assert flat["evidence"]["stalled"] is True and falling["evidence"]["stalled"] is False
    assert "loss does not fall" in flat["advice"]


def test_missing_folder_and_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        analysis.diagnose(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no grad_norms.csv"):
        analysis.diagnose(tmp_path / "empty")


# -- real short runs: the three verdicts of the issue ----------------------------------------------

RUN = dict(model__depth=20, model__width=128, data__dim=64, data__classes=10, data__n_train=256,
           train__batch_size=128, train__steps=20, log__every=5)


def _run(tmp_path, **over):
    cfg = config.from_dict(tiny(**{**RUN, **over}))
    return run(cfg, out=tmp_path, quiet=True)


def _measured_geomean(folder) -> float:
    """Independent of analysis: mean log ratio of consecutive hidden layers at step 0 (no robust fit)."""
    g = pd.read_csv(folder / "grad_norms.csv")
    og = g[(g.step == 0) & (g.kind == "output_grad")].sort_values("layer").value.to_numpy()
    hidden = og[:-1]
    return float(np.exp(np.mean(np.log(hidden[:-1] / hidden[1:]))))


@pytest.mark.parametrize("name,over,verdict", [
    ("sigmoid", dict(model__activation="sigmoid", model__init="default", model__bias_init="default"), "vanishing"),
    ("relu_he", dict(model__activation="relu", model__init="kaiming_normal", model__bias_init="zeros"), "healthy"),
    ("tanh4", dict(model__activation="tanh", model__init={"name": "variance_scaling", "scale": 4.0},
                   model__bias_init="zeros"), "exploding"),
])
def test_verdicts_on_real_runs(tmp_path, name, over, verdict):
    r = _run(tmp_path, name=name, **over)
    s = pd.read_csv(r.folder / "summary.csv").iloc[0]
    assert s["verdict"] == verdict
    d = analysis.diagnose(r.folder)
    assert d["verdict"] == verdict
    # the evidence is checkable in the CSVs: the rate agrees with a plain geometric mean of them
    assert s["decay_per_layer"] == pytest.approx(_measured_geomean(r.folder), rel=0.03)
    assert s["predicted_decay_per_layer"] == pytest.approx(s["decay_per_layer"], rel=0.05)
    if verdict == "vanishing":
        assert d["drop_layer"] is not None and "ReLU-family" in d["advice"]
    if verdict == "exploding":
        assert "lower weight variance" in d["advice"]


def test_summary_copes_with_depth_0_and_1_and_a_diverged_run(tmp_path):
    for depth in (0, 1):
        r = _run(tmp_path, name=f"d{depth}", model__depth=depth, train__steps=3)
        s = pd.read_csv(r.folder / "summary.csv").iloc[0]
        assert not str(s["verdict"]).startswith("error"), s["verdict"]
        assert (math.isnan(s["decay_per_layer"])) == (depth == 0)
    r = _run(tmp_path, name="boom", model__depth=4, model__activation="relu",
             model__init={"name": "variance_scaling", "scale": 30.0}, train__optimizer={"name": "sgd", "lr": 1e4},
             train__steps=50, log__every=1)
    assert r.status == "diverged"
    s = pd.read_csv(r.folder / "summary.csv").iloc[0]
    assert s["verdict"] == "exploding" and s["status"] == "diverged"
    d = analysis.diagnose(r.folder)
    assert d["evidence"]["diverged"] and "diverged" in d["advice"]


@pytest.mark.slow
def test_cli_diagnose_report_and_json(tmp_path, cli):
    r = _run(tmp_path, name="sig", model__activation="sigmoid", model__init="default")
    out = cli("diagnose", r.folder)
    assert out.returncode == 0, out.stderr
    assert "vanishing" in out.stdout and "advice" in out.stdout and "theory" in out.stdout
    js = json.loads(cli("diagnose", r.folder, "--json").stdout)
    assert js["verdict"] == "vanishing" and {"decay_per_layer", "grad_ratio", "predicted_decay_per_layer"} <= set(js)
    assert js["grad_ratio"] == pytest.approx(pd.read_csv(r.folder / "summary.csv").grad_ratio[0], rel=1e-9)
    assert json.loads(cli("diagnose", r.folder, "--json", "--vanishing", "1e-30").stdout)["verdict"] == "healthy"
    bad = cli("diagnose", tmp_path / "missing")
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr and "Traceback" not in bad.stderr


def test_layer_norms_keeps_the_last_row_of_each_layer_sorted_by_layer():
    """layer_norms (numpy) against the pandas expression it replaced: filter, keep each layer's last
    row, index by layer, sort; with repeated layers (a layer called twice), layers out of order,
    other steps and kinds mixed in, and values from 1e-300 to inf and NaN."""
    rng = np.random.default_rng(0)
    n = 400
    g = pd.DataFrame({"step": rng.choice([0, 10, 20], n), "layer": rng.integers(1, 9, n),
                      "kind": rng.choice(["output_grad", "weight_grad", "dead"], n),
                      "value": rng.choice([1e-300, 3e-30, 0.5, 7e2, np.inf, np.nan, 0.0], n) * rng.random(n)})
    for step in (0, 10, 20, 30):
        for kind in ("output_grad", "dead", "act_mean"):
            want = g[(g.step == step) & (g.kind == kind)].drop_duplicates("layer", keep="last") \
                .set_index("layer").value.sort_index().astype(float)
            got = analysis.layer_norms(g, step, kind)
            pd.testing.assert_series_equal(got, want, check_index_type=False)
            assert list(got.index) == sorted(set(g.layer[(g.step == step) & (g.kind == kind)]))
