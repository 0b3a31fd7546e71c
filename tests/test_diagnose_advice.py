"""vgp diagnose: evidence that describes the side of the band a net left, advice drawn from both verdicts,
the evidence and the config, and numbers printed with the digits their verdict words need."""

import re

import pandas as pd
import pytest
import yaml

from conftest import tiny
from test_analysis import geometric, write_run
from vgp import analysis, config
from vgp.train import run

MLP = {"arch": "mlp", "depth": 10, "width": 64, "activation": {"name": "tanh"}, "init": {"name": "default"},
       "bias_init": {"name": "default"}, "norm": "none", "skip": False}


def cfg(model=None, clip="none", lr=0.1, data=None) -> dict:
    """A resolved-looking config.yaml mapping: an MLP unless ``model`` says otherwise."""
    return {"name": "syn", "model": {**MLP, **(model or {})},
            "data": data or {"name": "teacher", "dim": 8, "classes": 3},
            "train": {"optimizer": {"name": "sgd", "lr": lr}, "clip": {"mode": clip, "max_norm": 1.0}}}


def synthetic(folder, og: dict, conf: dict | None = None, dead: dict | None = None, saturation: dict | None = None,
              status: str | None = "completed", **kw):
    """A run folder written by hand: og = {step: [output_grad of layer 1..L+1]}; dead/saturation = {step: fraction}
    for every hidden layer; a config.yaml; a summary.csv (finished) unless ``status`` is None."""
    extra = [(s, l + 1, f"l{l}", kind, v) for kind, per in (("dead", dead or {}), ("saturation", saturation or {}))
             for s, v in per.items() for l in range(len(og[s]) - 1)]
    write_run(folder, og, extra=extra, **kw)
    if conf is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    if status is not None:
        pd.DataFrame([{"name": folder.name, "status": status}]).to_csv(folder / "summary.csv", index=False)
    return folder


def plain(d: dict) -> str:
    """The report as printed (without its rich markup)."""
    from rich.text import Text

    return Text.from_markup(analysis.report(d)).plain


def lines_of(d: dict) -> list[str]:
    return plain(d).splitlines()


# -- the evidence says which side of the band the net left ----------------------------------------

def test_exploding_net_is_reported_above_the_band_not_below(tmp_path):
    """1.8 per layer over 10 layers: layer l is 1.8^(11-l) x the output, above 100x from layer 3 down."""
    f = synthetic(tmp_path / "up", {0: geometric(1.8, 11)}, cfg())
    d = analysis.diagnose(f)
    assert d["verdict"] == "exploding"
    assert (d["rise_layer"], d["drop_layer"]) == (3, None)
    step0 = next(line for line in lines_of(d) if line.strip().startswith("step 0:"))
    assert "above 100 x output from layer 3 down" in step0 and "below" not in step0
    assert "grows by x1.8 per layer" in step0
    # the case: layer 7 at 1.8^4 = 105x the output; --rise 10 names it
    d = analysis.diagnose(f, analysis.Thresholds(rise=10))
    assert d["rise_layer"] == 7 and "above 10 x output from layer 7 down" in plain(d)


def test_vanishing_net_is_still_reported_below_the_band(tmp_path):
    d = analysis.diagnose(synthetic(tmp_path / "down", {0: geometric(0.5, 11)}, cfg()))
    assert (d["drop_layer"], d["rise_layer"]) == (4, None)
    assert "below 0.01 x output from layer 4 down" in plain(d) and "above 100" not in plain(d)


def test_a_profile_that_leaves_the_band_in_places_says_where(tmp_path):
    """Not every layer under the highest one is outside: 'at 2 layers up to layer 5', not 'from layer 5 down'."""
    og = [1.0, 1.0, 1.0, 0.001, 0.001, 1.0, 1.0]
    d = analysis.diagnose(synthetic(tmp_path / "holes", {0: og}, cfg({"depth": 6})))
    assert d["drop_layer"] == 5 and "below 0.01 x output at 2 layers up to layer 5" in plain(d)


# -- numbers beside verdict words -----------------------------------------------------------------

@pytest.mark.parametrize("x,sides,text", [
    (1.0037, (1,), "1.004"), (0.99996, (1,), "0.99996"), (0.09996, (0.1, 10), "0.09996"),
    (10.004, (0.1, 10), "10.004"), (0.14, (1,), "0.14"), (8.49e-18, (0.1, 10), "8.49e-18"), (1.0, (1,), "1"),
])
def test_numbers_get_the_digits_that_put_them_on_the_right_side(x, sides, text):
    assert analysis._num(x, *sides) == text


def test_chi1_just_above_1_is_printed_above_1_beside_chaotic(tmp_path):
    """relu with sigma_w^2 = 2.0074: chi_1 = sigma_w^2 / 2 = 1.0037, chaotic; 3 digits would print 1."""
    conf = cfg({"activation": {"name": "relu"}, "init": {"name": "variance_scaling", "scale": 2.0074},
                "bias_init": {"name": "zeros"}})
    d = analysis.diagnose(synthetic(tmp_path / "r", {0: geometric(1.00185, 11)}, conf))
    assert d["theory"]["phase"] == "chaotic" and d["theory"]["chi1"] == pytest.approx(1.0037)
    theory = next(line for line in lines_of(d) if "chi_1=" in line)
    assert "chi_1=1.004 (chaotic)" in theory
    chi = float(re.search(r"chi_1=([0-9.e+-]+)", theory).group(1))
    predicted = float(re.search(r"predicted decay ([0-9.e+-]+)", theory).group(1))
    assert chi > 1 and predicted > 1  # chaotic: above 1, as printed


def test_compounded_ratio_is_printed_on_the_side_of_its_verdict(tmp_path):
    """x0.09996 over 10 layers is vanishing (< 0.1): printed as 0.09996, never as 0.1."""
    rate = 0.09996 ** (1 / 10)
    d = analysis.diagnose(synthetic(tmp_path / "edge", {0: geometric(rate, 11)}, cfg()))
    assert d["verdict"] == "vanishing"
    for line in lines_of(d):
        for value, verdict in re.findall(r"-> x([0-9.e+-]+) over \d+ \w+ \((\w+)\)", line):
            v = float(value)
            assert {"vanishing": v < 0.1, "exploding": v > 10, "healthy": 0.1 <= v <= 10}[verdict], line


# -- advice from both verdicts, the evidence and the config ----------------------------------------

def test_dead_units_at_the_last_step_are_not_nothing_to_fix(tmp_path):
    """Healthy gradients at both steps, but 36% of the units died during training."""
    og = {0: geometric(0.95, 6), 100: geometric(0.97, 6)}
    conf = cfg({"activation": {"name": "relu"}, "depth": 5}, lr=0.5)
    d = analysis.diagnose(synthetic(tmp_path / "dead", og, conf, dead={0: 0.0, 100: 0.36}))
    assert (d["verdict"], d["verdict_last"]) == ("healthy", "healthy")
    assert "nothing to fix" not in d["advice"]
    assert "36% of hidden units are dead at the last recorded step (0% at step 0)" in d["advice"]
    assert "lower learning rate (train.optimizer.lr=0.05" in d["advice"]
    assert "model.activation=leaky_relu" in d["advice"] and "model.init=kaiming_normal" in d["advice"]
    # He init with zero biases already: not advised again
    conf["model"].update(init={"name": "kaiming_normal"}, bias_init={"name": "zeros"})
    d = analysis.diagnose(synthetic(tmp_path / "dead_he", og, conf, dead={0: 0.0, 100: 0.36}))
    assert "kaiming_normal" not in d["advice"] and "leaky_relu" in d["advice"]


def test_healthy_net_without_dead_or_saturated_units_has_nothing_to_fix(tmp_path):
    og = {0: geometric(0.95, 6), 100: geometric(0.97, 6)}
    d = analysis.diagnose(synthetic(tmp_path / "ok", og, cfg({"depth": 5}), dead={0: 0.0, 100: 0.01},
                                    saturation={0: 0.0, 100: 0.05}))
    assert "nothing to fix" in d["advice"]


def test_relu_units_on_their_flat_side_are_not_called_saturated(tmp_path):
    """Half of a ReLU's units sit at 0 on any input: that is its shape, not a problem to fix."""
    og = {0: geometric(0.95, 6), 100: geometric(0.97, 6)}
    conf = cfg({"activation": {"name": "relu"}, "init": {"name": "kaiming_normal"}, "depth": 5})
    d = analysis.diagnose(synthetic(tmp_path / "relu", og, conf, saturation={0: 0.5, 100: 0.52}, dead={0: 0, 100: 0}))
    assert d["advice"] == "gradients reach every layer at a similar size, few units are dead: nothing to fix"


def test_saturated_units_at_the_last_step_are_called_out(tmp_path):
    og = {0: geometric(0.95, 6), 100: geometric(0.97, 6)}
    conf = cfg({"activation": {"name": "tanh"}, "depth": 5, "norm": "batchnorm"})
    d = analysis.diagnose(synthetic(tmp_path / "sat", og, conf, saturation={0: 0.02, 100: 0.5}))
    assert "50% of hidden units are saturated at the last recorded step" in d["advice"]
    assert "batch norm" not in d["advice"]  # the config has it


def test_a_net_that_clips_is_not_told_to_clip(tmp_path):
    og = {0: geometric(1.6, 11), 100: geometric(1.6, 11)}
    clipping = analysis.diagnose(synthetic(tmp_path / "clip", og, cfg(clip="norm")))
    plain = analysis.diagnose(synthetic(tmp_path / "noclip", og, cfg(clip="none")))
    assert clipping["verdict"] == plain["verdict"] == "exploding"
    assert "gradient clipping (train.clip.mode=norm)" in plain["advice"]
    assert "gradient clipping" not in clipping["advice"] and "clip gradients" not in clipping["advice"]
    assert "clipping (train.clip.mode=norm) is on already" in clipping["advice"]
    assert "lower weight variance" in clipping["advice"]
    # diverged although clipped: the learning rate, not clipping
    losses = (2.3, 2.0, float("inf"), float("nan"))
    d = analysis.diagnose(synthetic(tmp_path / "boom", og, cfg(clip="norm", lr=1.0), status="diverged", losses=losses))
    assert "diverged although gradients are clipped" in d["advice"] and "train.optimizer.lr=0.1" in d["advice"]
    assert "clip gradients" not in d["advice"]
    d = analysis.diagnose(synthetic(tmp_path / "boom2", og, cfg(clip="none", lr=1.0), status="diverged", losses=losses))
    assert d["advice"].startswith("the run diverged: clip gradients (train.clip.mode=norm)")
    assert d["advice"].count("train.clip.mode=norm") == 1  # said once, not again for the growth


def test_init_already_he_or_xavier_is_not_advised_again(tmp_path):
    og = {0: geometric(1.6, 11)}
    d = analysis.diagnose(synthetic(tmp_path / "x", og, cfg({"init": {"name": "xavier_normal"}})))
    assert "model.init=" not in d["advice"] and "critical one" in d["advice"]
    d = analysis.diagnose(synthetic(tmp_path / "v", og, cfg({"init": {"name": "variance_scaling", "scale": 4.0}})))
    assert "model.init=xavier_normal" in d["advice"]


def test_vanishing_net_with_norm_and_skip_is_not_told_to_add_them(tmp_path):
    og = {0: geometric(0.5, 11)}
    conf = cfg({"activation": {"name": "relu"}, "init": {"name": "kaiming_normal"}, "norm": "batchnorm", "skip": True})
    d = analysis.diagnose(synthetic(tmp_path / "bn", og, conf))
    assert d["verdict"] == "vanishing"
    assert "model.norm" not in d["advice"] and "model.skip" not in d["advice"] and "kaiming" not in d["advice"]
    assert "critical one" in d["advice"]


ADDING = {"name": "adding", "seq_len": 100}


@pytest.mark.parametrize("arch,told,not_told", [
    ("lstm", ["model.forget_bias=3; now 1", "data.seq_len=50", "model.recurrent_init=orthogonal"],
     ["model.arch", "LSTM", "gated"]),
    ("gru", ["data.seq_len=50", "model.recurrent_init=orthogonal"], ["model.arch", "GRU", "forget", "gated"]),
    ("rnn", ["gated cells (model.arch=lstm or gru)", "model.recurrent_init=orthogonal"], ["forget"]),
])
def test_recurrent_nets_get_advice_for_their_kind(tmp_path, arch, told, not_told):
    """Gradients fade back through time (0.8 per step over 100 steps): an LSTM is not told to try an LSTM."""
    conf = cfg({"arch": arch, "depth": 1, "width": 32, "forget_bias": 1.0, "recurrent_init": {"name": "default"}},
               data=ADDING, clip="norm")
    d = analysis.diagnose(synthetic(tmp_path / arch, {0: [0.5, 0.5]}, conf, times={0: {1: geometric(0.8, 100)}}))
    assert d["verdict"] == "vanishing" and "through time" in d["advice"]
    assert d["activation"] == ("" if arch != "rnn" else "tanh")
    for text in told:
        assert text in d["advice"], (text, d["advice"])
    for text in not_told:
        assert text not in d["advice"], (text, d["advice"])
    conf["model"]["recurrent_init"] = {"name": "orthogonal"}
    d = analysis.diagnose(synthetic(tmp_path / f"{arch}_orth", {0: [0.5, 0.5]}, conf,
                                    times={0: {1: geometric(0.8, 100)}}))
    assert "recurrent_init" not in d["advice"]


def test_advice_follows_the_last_step(tmp_path):
    """Vanishing at step 0, healthy by the end: training recovered. Healthy at 0, exploding at the end: said."""
    recovered = analysis.diagnose(synthetic(tmp_path / "rec", {0: geometric(0.5, 11), 90: geometric(0.95, 11)},
                                            cfg({"activation": {"name": "relu"}})))
    assert (recovered["verdict"], recovered["verdict_last"]) == ("vanishing", "healthy")
    assert "at step 0 (training recovered: healthy at the last recorded step)" in recovered["advice"]
    late = analysis.diagnose(synthetic(tmp_path / "late", {0: geometric(0.95, 11), 90: geometric(1.6, 11)}, cfg()))
    assert (late["verdict"], late["verdict_last"]) == ("healthy", "exploding")
    assert "grow layer by layer at the last recorded step" in late["advice"]
    assert "nothing to fix" not in late["advice"]


def test_unfinished_run_says_so(tmp_path):
    f = synthetic(tmp_path / "u", {0: geometric(0.9, 6), 10: geometric(0.9, 6)}, cfg({"depth": 5}), status=None)
    (f / "grad_norms.csv").rename(f / "grad_norms.csv.partial")
    (f / "meta.json").write_text('{"status": "interrupted"}')
    d = analysis.diagnose(f)
    assert (d["status"], d["finished"], d["recorded_steps"]) == ("unfinished", False, 2)
    report = plain(d)
    assert "unfinished (no summary.csv; meta.json says 'interrupted')" in report
    assert "grad_norms.csv.partial" in report


# -- real tiny runs --------------------------------------------------------------------------------

def test_real_exploding_run_is_reported_above_the_band(tmp_path):
    """relu with sigma_w^2 = 4: sqrt(2) per layer, x256 over 16 layers."""
    c = config.from_dict(tiny(name="relu4", model__depth=16, model__width=64, model__activation="relu",
                              model__init={"name": "variance_scaling", "scale": 4.0}, model__bias_init="zeros",
                              train__steps=2, train__optimizer={"name": "sgd", "lr": 1e-4}))
    r = run(c, out=tmp_path, quiet=True)
    d = analysis.diagnose(r.folder)
    assert r.status == "completed" and d["verdict"] == "exploding"
    assert d["drop_layer"] is None and d["rise_layer"] is not None
    text = plain(d)
    assert f"above 100 x output from layer {d['rise_layer']} down" in text and "below 0.01" not in text
    og = pd.read_csv(r.folder / "grad_norms.csv").query("step == 0 and kind == 'output_grad'").set_index("layer").value
    assert og[d["rise_layer"]] > 100 * og.iloc[-1]  # what the report says is in the CSV
    assert "model.init=kaiming_normal" in d["advice"] and "gradient clipping" in d["advice"]


def test_real_lstm_run_is_not_told_to_use_an_lstm(tmp_path):
    c = config.from_dict(tiny(name="lstm", model={"arch": "lstm", "depth": 1, "width": 8, "forget_bias": 1.0},
                              data={"name": "adding", "seq_len": 20, "n_train": 64, "n_test": 32},
                              train__steps=2, train__clip={"mode": "norm"}))
    r = run(c, out=tmp_path, quiet=True)
    d = analysis.diagnose(r.folder)
    assert d["activation"] == "" and d["time"]
    assert "model.arch" not in d["advice"] and "LSTM" not in d["advice"]
    assert "gradient clipping" not in d["advice"]  # the config clips


@pytest.mark.parametrize("option, value", [("--exploding", "nan"), ("--vanishing", "inf"), ("--drop", "0"),
                                           ("--rise", "0.5"), ("--stall", "-1")])
def test_thresholds_must_be_finite_and_on_their_side_of_1(tmp_path, cli, option, value):
    """A NaN threshold would make every comparison false: every net 'healthy', a mistake read as physics."""
    folder = run(config.from_dict(tiny()), out=tmp_path, quiet=True).folder
    r = cli("diagnose", folder, option, value)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"vgp: error: {option}: must be a finite number") and value in r.stderr
