"""End-to-end runs: the run folder, determinism, divergence, and never a half-written file."""

import json
import math
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT, tiny
from vgp import config, results
from vgp.errors import UserError
from vgp.train import run


def test_run_folder_explains_itself(tmp_path):
    cfg = config.from_dict(tiny(train__steps=30, train__eval_every=10, log__every=5))
    res = run(cfg, out=tmp_path, quiet=True)
    f = res.folder
    assert f == tmp_path / "t"
    assert sorted(p.name for p in f.iterdir()) == ["config.yaml", "grad_norms.csv", "meta.json", "metrics.csv",
                                                  "summary.csv"]
    assert config.from_dict(yaml.safe_load((f / "config.yaml").read_text())) == cfg
    meta = json.loads((f / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["torch"] and meta["python"] and meta["ended"]
    m = pd.read_csv(f / "metrics.csv")
    assert list(m.columns) == ["step", "loss", "acc", "grad_norm", "grad_norm_clipped", "clipped", "lr", "elapsed_s",
                               "test_loss", "test_acc", "loss_scale", "skipped"]
    assert (m.loss_scale.iloc[:-1] == 1).all() and (m.skipped.iloc[:-1] == 0).all()  # float32: no loss scaling
    assert list(m.step) == [0, 5, 10, 15, 20, 25, 29, 30]
    assert m.set_index("step").test_loss.dropna().index.tolist() == [0, 10, 20, 30]  # 30: after the last update
    s = pd.read_csv(f / "summary.csv")
    assert len(s) == 1
    row = s.iloc[0]
    assert row["status"] == "completed" and row["steps_done"] == 30 and row["model.depth"] == 3
    assert row["model.activation.name"] == "tanh"
    assert row["final_test_loss"] == pytest.approx(m.test_loss.iloc[-1])
    assert row["final_loss"] == pytest.approx(m.loss.iloc[-2])
    g = pd.read_csv(f / "grad_norms.csv")
    og = g[(g.step == 0) & (g.kind == "output_grad")].set_index("layer").value
    assert row["grad_ratio"] == pytest.approx(og[1] / og[3])  # layer 1 over the last hidden layer
    assert math.isnan(row["diverged_step"])


def test_training_lowers_the_loss(tmp_path):
    cfg = config.from_dict(tiny(model__activation="relu", model__init="kaiming_normal", train__steps=200,
                                train__optimizer={"name": "adam", "lr": 0.01}, data__n_train=256))
    s = run(cfg, out=tmp_path, quiet=True).summary
    m = pd.read_csv(tmp_path / "t" / "metrics.csv")
    assert s["final_loss"] < 0.5 * m.loss.iloc[0]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def once(name, seed):
        cfg = config.from_dict(tiny(name=name, seed=seed, train__steps=20, train__batch_size=16,
                                    model__norm="batchnorm", train__optimizer={"name": "adam"}))
        return (run(cfg, out=tmp_path, quiet=True).folder / "grad_norms.csv").read_bytes()

    a, b, c = once("a", 0), once("b", 0), once("c", 1)
    assert a == b
    assert a != c


def test_divergence_is_a_result(tmp_path):
    cfg = config.from_dict(tiny(model__activation="relu", model__init={"name": "normal", "std": 3.0},
                                train__optimizer={"name": "sgd", "lr": 100.0}, train__steps=200, log__every=10))
    res = run(cfg, out=tmp_path, quiet=True)
    assert res.status == "diverged"
    s = pd.read_csv(res.folder / "summary.csv").iloc[0]
    assert s["status"] == "diverged" and 0 < s["diverged_step"] < 200 and s["steps_done"] < 200
    m = pd.read_csv(res.folder / "metrics.csv")
    g = pd.read_csv(res.folder / "grad_norms.csv")
    assert g.step.max() == m.step.max() >= s["diverged_step"]  # kept up to the step that saw it
    assert not (res.folder / "grad_norms.csv.partial").exists()
    assert results.read_status(res.folder) == "diverged"


def test_finished_run_is_refused_without_force(tmp_path):
    cfg = config.from_dict(tiny())
    run(cfg, out=tmp_path, quiet=True)
    with pytest.raises(UserError, match="already holds a finished run.*--force"):
        run(cfg, out=tmp_path, quiet=True)
    assert run(cfg, out=tmp_path, force=True, quiet=True).status == "completed"


def test_killed_run_never_looks_finished_and_reruns(tmp_path):
    cfg_path = tmp_path / "long.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(name="long", train__steps=1_000_000, log__every=1)))
    proc = subprocess.Popen([sys.executable, "-m", "vgp", "run", str(cfg_path), "--out", str(tmp_path), "-q"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "long"
    partial = folder / "grad_norms.csv.partial"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 20000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists()
    assert not (folder / "summary.csv").exists() and not (folder / "grad_norms.csv").exists()
    assert results.read_status(folder) == "running"  # what meta.json said when it was killed
    # an unfinished folder is simply run again, without --force
    cfg = config.load(cfg_path, ["train.steps=3"])
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"
    assert not partial.exists()


def test_failure_is_recorded(tmp_path, monkeypatch):
    import vgp.train

    def boom(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(vgp.train, "_train", boom)
    with pytest.raises(RuntimeError):
        run(config.from_dict(tiny()), out=tmp_path, quiet=True)
    f = tmp_path / "t"
    assert results.read_status(f) == "failed"
    assert "out of memory (simulated)" in (f / "error.txt").read_text()
    assert not (f / "summary.csv").exists()


def test_system_exit_marks_the_run_interrupted(tmp_path, monkeypatch):
    """A scheduler's requeue (submitit exits through SystemExit) is an interruption, not a failure."""
    import vgp.train

    def requeued(*a, **k):
        raise SystemExit(0)

    monkeypatch.setattr(vgp.train, "_train", requeued)
    with pytest.raises(SystemExit):
        run(config.from_dict(tiny()), out=tmp_path, quiet=True)
    assert results.read_status(tmp_path / "t") == "interrupted"
    assert not (tmp_path / "t" / "error.txt").exists()
