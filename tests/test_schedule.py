"""Learning-rate schedules: the lr in metrics.csv of real runs against the closed forms, and the
config errors for arguments that do not fit the run."""

import math

import pandas as pd
import pytest

from conftest import tiny
from vgp import config
from vgp.errors import ConfigError
from vgp.train import run

STEPS = 20


def lrs(tmp_path, schedule, lr=0.1, steps=STEPS, **over) -> pd.Series:
    """metrics.csv's lr by step, of a run recording every step (step `steps`: the final evaluation)."""
    cfg = config.from_dict(tiny(train__steps=steps, train__schedule=schedule,
                                train__optimizer={"name": "sgd", "lr": lr}, **over))
    res = run(cfg, out=tmp_path, quiet=True)
    assert res.status == "completed"
    m = pd.read_csv(res.folder / "metrics.csv")
    assert list(m.step) == list(range(steps + 1))  # every update's row, and the final evaluation's
    return m.set_index("step").lr


def test_constant_is_the_default(tmp_path):
    got = lrs(tmp_path, "constant")
    assert (got == 0.1).all()
    assert config.from_dict(tiny()).train.schedule == {"name": "constant"}


def test_linear_warmup(tmp_path):
    w, f0 = 8, 0.25
    got = lrs(tmp_path, {"name": "warmup", "warmup_steps": w, "start_factor": f0})
    # Goyal et al. 2017: from f0 * lr at step 0, linearly to lr at step w, then lr
    want = [0.1 * (f0 + (1 - f0) * s / w) if s < w else 0.1 for s in range(STEPS + 1)]
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=0)
    assert got[0] == pytest.approx(0.025) and got[w - 1] < 0.1 and got[w] == 0.1


def test_warmup_from_zero_leaves_the_first_update_out(tmp_path):
    # start_factor 0 (the default): update 0 uses lr 0, so the weights after it are the initial ones
    got = lrs(tmp_path, {"name": "warmup", "warmup_steps": 4}, log__kinds=["weight", "update_ratio"])
    assert got[0] == 0.0 and got[1] == pytest.approx(0.025)
    g = pd.read_csv(tmp_path / "t" / "grad_norms.csv")
    ratio = g[g.kind == "update_ratio"].set_index(["step", "layer"]).value
    assert (ratio.loc[0] == 0).all() and (ratio.loc[1] > 0).all()


def test_warmup_cosine(tmp_path):
    w, lo, lr = 5, 0.01, 0.2
    got = lrs(tmp_path, {"name": "warmup_cosine", "warmup_steps": w, "min_lr": lo}, lr=lr)
    want = []
    for s in range(STEPS + 1):
        if s < w:
            want.append(lr * s / w)
        else:  # SGDR without restarts (Loshchilov & Hutter 2017, eq. 5)
            want.append(lo + (lr - lo) * (1 + math.cos(math.pi * (s - w) / (STEPS - w))) / 2)
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[w] == pytest.approx(lr) and got[STEPS] == pytest.approx(lo)  # the final row: the end of the decay
    assert (got.diff()[w + 1:] < 0).all()


def test_step_decay(tmp_path):
    got = lrs(tmp_path, {"name": "step", "step_size": 6, "gamma": 0.5})
    want = [0.1 * 0.5 ** (s // 6) for s in range(STEPS + 1)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_recorded_rows_have_their_own_steps_lr(tmp_path):
    # recording every 7th step: each row still has the lr of its own step, not of the step before
    cfg = config.from_dict(tiny(train__steps=STEPS, log__every=7, train__schedule={"name": "step", "step_size": 7},
                                train__optimizer={"name": "sgd", "lr": 1.0}))
    m = pd.read_csv(run(cfg, out=tmp_path, quiet=True).folder / "metrics.csv").set_index("step").lr
    assert list(m.index) == [0, 7, 14, 19, 20]
    assert m.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.01, 0.01])  # 20 // 7 = 2


def test_schedule_with_clipping_and_divergence(tmp_path):
    # the schedule does not change how clipping and divergence work: a huge lr still diverges, and the
    # row that found it has that step's lr
    cfg = config.from_dict(tiny(train__steps=40, model__activation="relu", model__init={"name": "normal", "std": 3.0},
                                train__optimizer={"name": "sgd", "lr": 1e6},
                                train__schedule={"name": "warmup", "warmup_steps": 10, "start_factor": 0.1},
                                train__clip={"mode": "value", "value": 1e30}))
    res = run(cfg, out=tmp_path, quiet=True)
    assert res.status == "diverged"
    m = pd.read_csv(res.folder / "metrics.csv").set_index("step").lr
    assert m.tolist() == pytest.approx([1e6 * (0.1 + 0.9 * s / 10) if s < 10 else 1e6 for s in m.index])


@pytest.mark.parametrize("schedule, key, words", [
    ({"name": "warmup", "warmup_steps": 30}, "train.schedule.warmup_steps", "more than train.steps (20)"),
    ({"name": "warmup_cosine", "warmup_steps": 20}, "train.schedule.warmup_steps", "no steps to decay"),
    ({"name": "warmup_cosine", "warmup_steps": 5, "min_lr": 0.5}, "train.schedule.min_lr", "above the optimizer's lr"),
    ({"name": "step", "step_size": 21}, "train.schedule.step_size", "never decay"),
    ({"name": "step", "step_size": 0}, "train.schedule.step_size", "must be >= 1"),
    ({"name": "step", "gamma": 1.5}, "train.schedule.gamma", "must be in (0, 1]"),
    ({"name": "warmup", "start_factor": -0.1}, "train.schedule.start_factor", "must be in [0, 1]"),
    ({"name": "warmup", "warmup_steps": 2.5}, "train.schedule.warmup_steps", "expected an integer"),
    ({"name": "cosine"}, "train.schedule", "did you mean 'warmup_cosine'?"),
    ({"name": "step", "step": 3}, "train.schedule", "no argument 'step'"),
])
def test_bad_schedules_name_the_key(schedule, key, words):
    with pytest.raises(ConfigError) as e:
        config.from_dict(tiny(train__steps=STEPS, train__schedule=schedule), preflight=False)
    assert key in str(e.value) and words in str(e.value)


def test_validate_rejects_a_bad_schedule(tmp_path, cli):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(train__steps=STEPS, train__schedule={"name": "warmup", "warmup_steps": 50})))
    r = cli("validate", path)
    assert r.returncode == 2
    assert "train.schedule.warmup_steps" in r.stderr and "more than train.steps" in r.stderr
    r = cli("run", path, "train.schedule.warmup_steps=5", "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr


def test_the_training_figure_draws_a_changing_lr(tmp_path):
    from vgp import analysis, plots

    lrs(tmp_path, {"name": "warmup", "warmup_steps": 8})
    fig = plots.training(analysis.read_run(tmp_path / "t"))
    twin = [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"]
    assert len(twin) == 1
    x, y = twin[0].lines[0].get_data()
    assert list(x) == list(range(STEPS + 1)) and y[0] == 0 and y[-1] == pytest.approx(0.1)
    lrs(tmp_path / "c", "constant")  # a constant lr is not drawn
    fig = plots.training(analysis.read_run(tmp_path / "c" / "t"))
    assert not [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"]
