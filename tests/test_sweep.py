"""Sweeps: expansion, validation up front, resuming from run folders, kills, Ctrl-C, failures, two at once."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny
from vgp import results, sweep as sweepmod
from vgp.errors import ConfigError

EXAMPLE = ROOT / "configs" / "sweeps" / "activation_init_depth.yaml"
# the example sweep made tiny: 2 activations x 2 inits x 2 optimizers (zip) x 2 seeds = 16 runs
EXAMPLE_TINY = ["model.activation=sigmoid,relu", "model.init=default,kaiming_normal", "model.depth=2",
                "model.width=16", "data.dim=8", "data.n_train=64", "data.n_test=32", "train.batch_size=32",
                "log.every=10", "train.eval_every=50", "device=cpu", "seed=0,1"]


def write_sweep(tmp_path, **spec) -> Path:
    spec.setdefault("name", "s")
    spec.setdefault("base", tiny(train__steps=10))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metas(sweep_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep_dir / "runs").glob("*/meta.json")}


def sweep_cmd(*args):
    return [sys.executable, "-m", "vgp", "sweep", *map(str, args)]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# -- expansion -----------------------------------------------------------------------------------

def test_expansion_grid_zip_seeds_and_stable_ids(tmp_path):
    path = write_sweep(tmp_path, grid={"model.activation": ["tanh", "relu"], "model.depth": [2, 3, 4]},
                       zip={"train.optimizer.name": ["sgd", "adam"], "train.optimizer.lr": [0.1, 0.01]},
                       seeds=[0, 1])
    sw = sweepmod.load(path)
    assert len(sw.cells) == 2 * 3 * 2 * 2
    # zip walks in step: sgd always with 0.1, adam with 0.01, never crossed
    pairs = {(c.cfg.train.optimizer["name"], c.cfg.train.optimizer["lr"]) for c in sw.cells}
    assert pairs == {("sgd", 0.1), ("adam", 0.01)}
    ids = [c.id for c in sw.cells]
    assert len(set(ids)) == len(ids)
    assert ids == [c.id for c in sweepmod.load(path).cells]  # the same cell maps to the same folder
    c = sw.cells[-1]
    assert c.id.startswith("activation-relu_depth-4_optimizer-adam_lr-0.01_seed-1_") and c.cfg.name == c.id
    assert c.cfg.model.depth == 4 and c.cfg.seed == 1 and c.cfg.model.activation["name"] == "relu"


def test_command_line_lists_add_grid_axes_and_single_values_fix(tmp_path):
    path = write_sweep(tmp_path, grid={"model.depth": [2, 3]}, seeds=[0])
    sw = sweepmod.load(path, ["model.width=8,16", "model.depth=5", "seed=0,1,2", "train.steps=7"])
    assert len(sw.cells) == 2 * 3
    assert {c.cfg.model.width for c in sw.cells} == {8, 16}
    assert {c.cfg.model.depth for c in sw.cells} == {5}  # a single value replaces the axis
    assert {c.cfg.seed for c in sw.cells} == {0, 1, 2} and {c.cfg.train.steps for c in sw.cells} == {7}
    # a flow list stays one value, not an axis
    assert sweepmod.load(path, ["log.kinds=[weight_grad,output_grad]"]).cells[0].cfg.log.kinds == \
        ["weight_grad", "output_grad"]


def test_growing_an_axis_keeps_the_old_ids(tmp_path):
    path = write_sweep(tmp_path, grid={"model.depth": [2, 3]}, seeds=[0, 1])
    old = {c.id for c in sweepmod.load(path).cells}
    new = {c.id for c in sweepmod.load(path, ["model.depth=2,3,4"]).cells}
    assert old < new and len(new - old) == 2


def test_one_bad_cell_fails_the_sweep_up_front_naming_it(tmp_path, cli):
    path = write_sweep(tmp_path, grid={"model.activation": ["tanh", "rleu"]}, seeds=[0, 1])
    with pytest.raises(ConfigError, match=r"model.activation=rleu.*did you mean 'relu'"):
        sweepmod.load(path)
    r = cli("sweep", path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "model.activation=rleu" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("spec, message", [
    ({"zip": {"model.depth": [2, 3], "model.width": [8]}}, "same length"),
    ({"grid": {"model.depth": 3}}, "non-empty list"),
    ({"grdi": {"model.depth": [3]}}, "did you mean 'grid'"),
    ({"grid": {"model.depht": [3]}}, "did you mean 'model.depth'"),
    ({"grid": {"model.depth": [2, 2]}}, "same config"),
    ({"seeds": ["a"]}, "seeds"),
])
def test_sweep_file_errors(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        sweepmod.load(write_sweep(tmp_path, **spec))


def test_validate_accepts_sweep_files(cli):
    r = cli("validate", EXAMPLE, ROOT / "configs" / "quickstart.yaml")
    assert r.returncode == 0, r.stderr
    assert "sweep of 216 runs" in r.stdout


def test_dry_run_lists_runs_and_runs_nothing(tmp_path, cli):
    r = cli("sweep", EXAMPLE, *EXAMPLE_TINY, "--out", tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "16 runs" in r.stdout and "kaiming_normal" in r.stdout and "adam" in r.stdout
    assert not (tmp_path / "activation-init-depth").exists()


# -- running -------------------------------------------------------------------------------------

def test_local_sweep_writes_layout_resumes_and_grows(tmp_path, cli):
    path = write_sweep(tmp_path, grid={"model.depth": [2, 3]}, seeds=[0, 1])
    r = cli("sweep", path, "--out", tmp_path, "-j", "2", "-q")
    assert r.returncode == 0, r.stderr
    sweep_dir = tmp_path / "s"
    assert r.stdout.strip() == str(sweep_dir) and "(4 run now)" in r.stderr
    ids = {c.id for c in sweepmod.load(path).cells}
    assert {p.name for p in (sweep_dir / "runs").iterdir()} == ids
    for i in ids:  # exactly the files of vgp run
        files = {p.name for p in (sweep_dir / "runs" / i).iterdir()}
        assert files == {"config.yaml", "meta.json", "grad_norms.csv", "metrics.csv", "summary.csv"}
    summary = rows(sweep_dir / "summary.csv")
    assert sorted(r["name"] for r in summary) == sorted(ids) and {r["status"] for r in summary} == {"completed"}
    spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert spec["grid"] == {"model.depth": [2, 3]} and len(spec["runs"]) == 4

    before = metas(sweep_dir)
    r = cli("sweep", path, "--out", tmp_path, "-q")
    assert r.returncode == 0 and "(0 run now)" in r.stderr
    assert metas(sweep_dir) == before  # nothing ran again

    r = cli("sweep", path, "--out", tmp_path, "-q", "model.depth=2,3,4")
    assert r.returncode == 0 and "(2 run now)" in r.stderr
    after = metas(sweep_dir)
    assert {k: after[k] for k in before} == before and len(after) == 6
    assert len(rows(sweep_dir / "summary.csv")) == 6


def test_failed_run_is_recorded_does_not_stop_others_and_retries(tmp_path, cli):
    # a GPU that is not there passes validation (a sweep may be checked on a login node) but fails the run
    path = write_sweep(tmp_path, base=tiny(train__steps=5, model__depth=1), grid={"device": ["cpu", "cuda:7"]},
                       seeds=[0, 1])
    r = cli("sweep", path, "--out", tmp_path, "-j", "2", "-q")
    assert r.returncode == 1 and "2 failed" in r.stderr
    sweep_dir = tmp_path / "s"
    failed = [i for i, m in metas(sweep_dir).items() if m["status"] == "failed"]
    assert len(failed) == 2 and all(i.startswith("device-cuda") for i in failed)
    for i in failed:
        assert "cuda:7" in (sweep_dir / "runs" / i / "error.txt").read_text()
    assert sorted(r["device"] for r in rows(sweep_dir / "summary.csv")) == ["cpu", "cpu"]

    before = metas(sweep_dir)
    r = cli("sweep", path, "--out", tmp_path, "-q")
    assert r.returncode == 1 and "(0 run now)" in r.stderr and metas(sweep_dir) == before
    r = cli("sweep", path, "--out", tmp_path, "-q", "--retry-failed")
    assert r.returncode == 1 and "(2 run now)" in r.stderr
    after = metas(sweep_dir)  # the failed runs were tried again ("2 run now"), the others left alone
    assert all(after[i] == before[i] for i in before if i not in failed)
    assert all(after[i]["ended"] != before[i]["ended"] for i in failed)  # each retry leaves its own record


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out += children.get(p, [])
        todo += children.get(p, [])
    return out


def _finished(sweep_dir: Path) -> int:
    return len(list((sweep_dir / "runs").glob("*/summary.csv"))) if (sweep_dir / "runs").exists() else 0


def _start_and_wait(args, sweep_dir, n_finished, timeout=120):
    proc = subprocess.Popen(sweep_cmd(*args), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + timeout
    while _finished(sweep_dir) < n_finished:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "sweep too slow"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_example_sweep_killed_hard_resumes_without_running_anything_twice(tmp_path, cli):
    args = [EXAMPLE, *EXAMPLE_TINY, "train.steps=400", "--out", tmp_path, "-j", "2", "-q"]
    sweep_dir = tmp_path / "activation-init-depth"
    proc = _start_and_wait(args, sweep_dir, 5)
    victims = [proc.pid] + _descendants(proc.pid)
    assert len(victims) >= 3  # the sweep and its two workers
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    # finished = summary.csv written (a batched group finishes its members one after another, so the kill
    # often lands between a member's meta.json and its marker: that member is unfinished, and runs again)
    done_before = {i: m for i, m in metas(sweep_dir).items()
                   if results.read_status(sweep_dir / "runs" / i) == "completed"}
    assert 5 <= len(done_before) < 16

    r = cli("sweep", *args)
    assert r.returncode == 0, r.stderr
    after = metas(sweep_dir)
    assert len(after) == 16 and {m["status"] for m in after.values()} == {"completed"}
    assert {i: after[i] for i in done_before} == done_before  # not one finished run done again
    assert f"({16 - len(done_before)} run now)" in r.stderr
    summary = rows(sweep_dir / "summary.csv")
    assert sorted(r["name"] for r in summary) == sorted(after)  # exactly one row per cell

    # and compared by activation and init: mean ± std over the seeds (and optimizers)
    r = cli("compare", sweep_dir, "--by", "model.activation,model.init")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "kaiming_normal" in ln or "default" in ln]
    assert len(lines) == 4 and all("±" in ln and " 4 " in ln for ln in lines)


@pytest.mark.slow
def test_ctrl_c_marks_running_runs_interrupted_and_keeps_finished_ones(tmp_path, cli):
    path = write_sweep(tmp_path, base=tiny(train__steps=300, log__every=1), seeds=list(range(8)))
    args = [path, "--out", tmp_path, "-j", "2", "-q", "--no-batch"]  # one run per worker at a time
    sweep_dir = tmp_path / "s"
    proc = _start_and_wait(args, sweep_dir, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    statuses = [m["status"] for m in metas(sweep_dir).values()]
    assert "running" not in statuses and set(statuses) <= {"completed", "interrupted"}
    assert statuses.count("completed") >= 2 and len(statuses) < 8  # it stopped: not every run started
    assert len(rows(sweep_dir / "summary.csv")) == statuses.count("completed")
    for i, m in metas(sweep_dir).items():
        if m["status"] == "interrupted":
            assert not (sweep_dir / "runs" / i / "summary.csv").exists()
    r = cli("sweep", *args)
    assert r.returncode == 0 and len(rows(sweep_dir / "summary.csv")) == 8


@pytest.mark.slow
def test_two_sweeps_into_one_folder_run_each_cell_once(tmp_path):
    path = write_sweep(tmp_path, base=tiny(train__steps=30), seeds=list(range(6)))
    procs = [subprocess.Popen(sweep_cmd(path, "--out", tmp_path, "-j", "1", "-q"), cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [int(err.split("(")[1].split(" run now")[0]) for _, err in outs]
    assert sum(ran) == 6  # every cell trained exactly once, by one of the two
    summary = rows(tmp_path / "s" / "summary.csv")
    assert len(summary) == 6 and len({r["name"] for r in summary}) == 6


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_that_run_only(tmp_path):
    """What the kernel's out-of-memory killer does: SIGKILL one worker. Its run is recorded failed; the
    others finish in a fresh pool."""
    path = write_sweep(tmp_path, base=tiny(train__steps=400, log__every=1), seeds=list(range(6)))
    sweep_dir = tmp_path / "s"
    proc = _start_and_wait([path, "--out", tmp_path, "-j", "2", "-q", "--no-batch"], sweep_dir, 1)
    workers = [p for p in _descendants(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]

    def mid_loop(run: str) -> bool:  # 20 to 200 of its 400 steps done: it is not about to finish
        try:
            steps = (sweep_dir / "runs" / run / "metrics.csv.partial").read_text().count("\n") - 1
        except OSError:
            return False
        return 20 <= steps <= 200

    running = []
    while not running:  # a run a worker is in the middle of (each takes about a second); a run read as
        # running in its last moments could finish before the kill, which then hits an idle worker
        running = [(i, m["pid"]) for i, m in metas(sweep_dir).items() if m["status"] == "running"
                   and m["pid"] in workers and mid_loop(i)]
    victim, pid = running[0]
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    after = metas(sweep_dir)
    assert [i for i, m in after.items() if m["status"] == "failed"] == [victim], after  # that run only
    assert after[victim]["pid"] == pid
    assert "worker process running it died" in (sweep_dir / "runs" / victim / "error.txt").read_text()
    assert after[victim]["started"] and after[victim]["ended"] and after[victim]["argv"]  # its own record kept
    assert sum(m["status"] == "completed" for m in after.values()) == 5


_HOLDER = """
import json, sys, time
from pathlib import Path
from vgp import results
folder, hold, then = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with results.run_lock(folder) as got:
    assert got
    print("locked", flush=True)
    time.sleep(hold)
    if then == "interrupted":  # a worker the pool stops: its run marks itself, then lets go
        results.write_json(folder / "meta.json", {"status": "interrupted", "pid": 1})
"""


@pytest.mark.parametrize("then, hold, patience, expect", [
    ("dies", 0.6, 10.0, "failed"),  # the dead worker's lock drops after the pool reported the break
    ("interrupted", 0.6, 10.0, "again"),  # the other worker, stopped by the pool, marks its run
    ("dies", 30.0, 0.3, "again"),  # a holder that outlives the patience: not judged, run again
])
def test_after_crash_judges_a_run_under_its_lock(tmp_path, then, hold, patience, expect):
    """The pool reports a dead worker before the kernel may have dropped its lock (seen under load in
    CI: the killed worker's run then went again and finished, with no failure recorded). The run is
    judged once its lock is free, and a run a live process still holds is never marked failed."""
    from types import SimpleNamespace

    from vgp.launch import local

    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    results.write_json(folder / "meta.json", {"status": "running", "pid": 1, "started": "then"})
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(hold), then],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        outcome = local._after_crash(SimpleNamespace(id="r"), tmp_path / "runs", time.monotonic() + patience)
        meta = json.loads((folder / "meta.json").read_text())
        assert outcome.status == expect
        if expect == "failed":
            assert meta["status"] == "failed" and meta["started"] == "then" and meta["ended"]
            assert "worker process running it died" in (folder / "error.txt").read_text()
        else:
            assert meta["status"] != "failed" and not (folder / "error.txt").exists()
    finally:
        holder.kill()
        holder.wait()
    unstarted = local._after_crash(SimpleNamespace(id="never"), tmp_path / "runs", time.monotonic() + patience)
    assert unstarted.status == "again" and not (tmp_path / "runs" / "never").exists()
