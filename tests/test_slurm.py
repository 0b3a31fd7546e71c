"""The SLURM launcher against a real single-node SLURM (scripts/slurm_local.sh), never a mock.

Skipped, with the reason, where that SLURM cannot start (not root, not installed: see the script)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from conftest import tiny
from test_sweep import EXAMPLE, EXAMPLE_TINY, metas, rows, write_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
TIMING = {"train_s", "wall_s"}


@pytest.fixture(scope="module")
def slurm():
    """Start the local SLURM unless it runs already; stop it afterwards (by process id) if we started it."""
    state = Path(os.environ.get("VGP_SLURM_DIR", "/tmp/vgp-slurm"))
    was_running = subprocess.run(["bash", SCRIPT, "status"], capture_output=True).returncode == 0
    if not was_running:
        r = subprocess.run(["bash", SCRIPT, "start"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.skip(f"no local SLURM: {(r.stderr.strip().splitlines() or ['start failed'])[-1]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "etc" / "slurm.conf")
    yield
    if old is None:
        os.environ.pop("SLURM_CONF")
    else:
        os.environ["SLURM_CONF"] = old
    if not was_running:
        subprocess.run(["bash", SCRIPT, "stop"], capture_output=True, timeout=120)


def vgp(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vgp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def table(path):
    """Summary rows by run id, timing columns left out."""
    return {r["name"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows(path)}


def test_example_sweep_through_slurm_gives_the_local_summary(slurm, tmp_path):
    r = vgp("sweep", EXAMPLE, *EXAMPLE_TINY, "--out", tmp_path / "slurm", "--launcher", "slurm", "--time", "10",
            "--runs-per-task", "4", "launcher.poll_s=1", "-q")
    assert r.returncode == 0, r.stderr
    assert "submitted 16 runs in 4 array tasks" in r.stderr
    sweep_dir = tmp_path / "slurm" / "activation-init-depth"
    jobs = json.loads((sweep_dir / "slurm" / "jobs.json").read_text())
    assert len(jobs) == 4 and len({j["job_id"].split("_")[0] for j in jobs}) == 1  # one job array
    assert sorted(len(j["runs"]) for j in jobs) == [4, 4, 4, 4]
    assert {m["host"] for m in metas(sweep_dir).values()} and all(
        m["status"] == "completed" for m in metas(sweep_dir).values())

    # each run alone, as on SLURM (batched runs equal them within float32 rounding, not bit for bit)
    r = vgp("sweep", EXAMPLE, *EXAMPLE_TINY, "--out", tmp_path / "local", "-j", "2", "-q", "--no-batch")
    assert r.returncode == 0, r.stderr
    on_slurm = table(sweep_dir / "summary.csv")
    local = table(tmp_path / "local" / "activation-init-depth" / "summary.csv")
    assert len(on_slurm) == 16 and on_slurm == local

    # again: everything is finished, nothing is submitted
    r = vgp("sweep", EXAMPLE, *EXAMPLE_TINY, "--out", tmp_path / "slurm", "--launcher", "slurm", "-q")
    assert r.returncode == 0 and "submitted" not in r.stderr
    assert len(json.loads((sweep_dir / "slurm" / "jobs.json").read_text())) == 4


def test_no_wait_returns_and_a_second_call_collects_without_resubmitting(slurm, tmp_path):
    path = write_sweep(tmp_path, base=tiny(train__steps=200, log__every=1), seeds=list(range(6)))
    args = ["sweep", path, "--out", tmp_path, "--launcher", "slurm", "--runs-per-task", "3", "launcher.poll_s=1",
            "-q"]
    r = vgp(*args, "--no-wait")
    assert r.returncode == 0, r.stderr
    assert "submitted 6 runs in 2 array tasks" in r.stderr and "missing" in r.stderr
    r = vgp(*args)  # collects: waits on the jobs already queued, submits nothing
    assert r.returncode == 0, r.stderr
    assert "submitted" not in r.stderr and "6/6 runs finished" in r.stderr
    assert len(json.loads((tmp_path / "s" / "slurm" / "jobs.json").read_text())) == 2
    assert len(rows(tmp_path / "s" / "summary.csv")) == 6


def test_preempted_task_is_requeued_and_resumes_unfinished_runs(slurm, tmp_path):
    path = write_sweep(tmp_path, base=tiny(train__steps=1500, log__every=1), seeds=list(range(4)))
    args = ["sweep", path, "--out", tmp_path, "--launcher", "slurm", "--runs-per-task", "4", "-q"]
    r = vgp(*args, "--no-wait")
    assert r.returncode == 0, r.stderr
    sweep_dir = tmp_path / "s"
    job = json.loads((sweep_dir / "slurm" / "jobs.json").read_text())[0]["job_id"]
    deadline = time.time() + 120
    while not any(m["status"] == "completed" for m in metas(sweep_dir).values()):
        assert time.time() < deadline, "the array task did not start"
        time.sleep(0.2)
    # preemption as SLURM does it: USR2 to the job; submitit checkpoints, requeues, and the task exits
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 60
    while not any(m["status"] == "interrupted" for m in metas(sweep_dir).values()):
        assert time.time() < deadline, "no run was marked interrupted"
        time.sleep(0.2)
    before = {i: m for i, m in metas(sweep_dir).items() if m["status"] == "completed"}
    r = vgp(*args, "launcher.poll_s=1", timeout=400)  # waits for the requeued task
    assert r.returncode == 0, r.stderr + r.stdout
    after = metas(sweep_dir)
    assert len(after) == 4 and {m["status"] for m in after.values()} == {"completed"}
    assert {i: after[i] for i in before} == before  # the finished runs were not done again
    assert len(rows(sweep_dir / "summary.csv")) == 4
