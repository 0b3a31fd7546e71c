"""The SLURM launcher: one job array per submission through submitit, several runs per array task.

Every array task writes into the same sweep folder on the shared filesystem, and whether a run is done
is read from its folder, never from the scheduler: ``vgp`` need not stay alive. ``vgp sweep`` waits
and shows progress by default; with ``--no-wait`` it submits and returns, and running it again
collects the results and submits only what is neither finished nor still queued or running. A task
preempted or out of time is requeued by submitit and resumes its unfinished runs.

Settings (the sweep file's ``launcher:`` section, or flags): see :data:`DEFAULTS`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from vgp import results, sweep as sweepmod
from vgp.errors import UserError
from vgp.launch import SweepProgress, run_cell, status_of

DEFAULTS = {
    "name": "slurm",
    "partition": None,        # sbatch --partition (None: the cluster's default)
    "time_min": 60,           # time limit of one array task, minutes (submitit's default would be 5)
    "cpus_per_task": 1,       # CPUs of one array task (its torch threads)
    "gpus_per_task": 0,       # GPUs of one array task
    "mem_gb": None,           # memory of one array task (None: the cluster's default)
    "array_parallelism": 64,  # array tasks running at once
    "runs_per_task": None,    # runs packed into one array task (None: about 4 tasks' worth per parallel slot)
    "setup": [],              # shell lines before the job starts: module load ..., source .venv/bin/activate
    "sbatch": {},             # extra sbatch arguments, e.g. {account: myproj, qos: short, constraint: a100}
    "signal_delay_s": 60,     # SLURM signals this long before the time limit, to checkpoint and requeue
    "max_requeue": 3,         # requeues after preemption or the time limit
    "poll_s": 5,              # seconds between looks at the sweep folder while waiting
}


class SweepTask:
    """One array task: runs its cells one after the other, updating the sweep's summary after each.

    submitit calls :meth:`checkpoint` on preemption or at the time limit; the requeued task gets the
    same cells again and skips the finished ones (the run interrupted mid-way starts again)."""

    def __call__(self, runs: str, cfgs: list, retry_failed: bool) -> list:
        import torch

        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        outcomes = []
        for cfg in cfgs:
            outcomes.append(run_cell(cfg, Path(runs), retry_failed))
            sweepmod.add_to_summary(Path(runs).parent, [cfg.name])  # its rows only: O(1) per run
        return [(o.id, o.status, o.error) for o in outcomes]

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def executor(folder: Path, s: dict):
    """A submitit executor for SLURM, always explicitly: submitit would pick SLURM by itself wherever
    ``srun`` is on the PATH, and a 5-minute time limit unless told otherwise."""
    import submitit

    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_python=sys.executable,
                               slurm_max_num_timeout=int(s["max_requeue"]))
    params = {"timeout_min": int(s["time_min"]), "cpus_per_task": int(s["cpus_per_task"]),
              "slurm_array_parallelism": int(s["array_parallelism"]), "slurm_setup": list(s["setup"] or []),
              "slurm_signal_delay_s": int(s["signal_delay_s"]), "name": "vgp-sweep"}
    if s["partition"]:
        params["slurm_partition"] = s["partition"]
    if s["gpus_per_task"]:
        params["gpus_per_node"] = int(s["gpus_per_task"])
    if s["mem_gb"]:
        params["mem_gb"] = float(s["mem_gb"])
    if s["sbatch"]:
        params["slurm_additional_parameters"] = dict(s["sbatch"])
    ex.update_parameters(**params)
    return ex


def _jobs_file(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "slurm" / "jobs.json"


def _live_jobs(sweep_dir: Path):
    """(job, run ids) of array tasks submitted earlier that SLURM still has queued or running."""
    import submitit

    path = _jobs_file(sweep_dir)
    if not path.exists():
        return []
    live = []
    for entry in json.loads(path.read_text()):
        job = submitit.SlurmJob(folder=Path(sweep_dir) / "slurm" / "%j", job_id=entry["job_id"])
        if not job.done(force_check=True):
            live.append((job, entry["runs"]))
    return live


def launch(sweep, todo, sweep_dir: Path, settings: dict, retry_failed: bool, before: dict, wait: bool,
           quiet: bool) -> None:
    s = {**DEFAULTS, **settings}
    if not shutil.which("sbatch"):
        raise UserError("the slurm launcher needs SLURM's sbatch on the PATH (run it on the cluster's login node)")
    sweep_dir = Path(sweep_dir)
    runs = sweep_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with sweepmod.locked(sweepmod.lock_path(sweep_dir, "submit")):  # two submitters never submit one run twice
        live = _live_jobs(sweep_dir)
        queued = {r for _, ids in live for r in ids}
        todo = [c for c in todo if c.id not in queued]
        jobs = [job for job, _ in live]
        if todo:
            per_task = s["runs_per_task"] or max(1, math.ceil(len(todo) / (4 * int(s["array_parallelism"]))))
            chunks = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
            ex = executor(sweep_dir / "slurm", s)
            new = ex.map_array(SweepTask(), [str(runs)] * len(chunks), [[c.cfg for c in ch] for ch in chunks],
                               [retry_failed] * len(chunks))
            path = _jobs_file(sweep_dir)
            old = json.loads(path.read_text()) if path.exists() else []
            old += [{"job_id": j.job_id, "runs": [c.id for c in ch]} for j, ch in zip(new, chunks)]
            results.write_json(path, old)
            jobs += new
            print(f"submitted {len(todo)} runs in {len(chunks)} array tasks of job {new[0].job_id.split('_')[0]}"
                  + (f"; {len(queued)} runs still queued from before" if queued else ""), file=sys.stderr)
        elif queued:
            print(f"{len(queued)} runs still queued or running from before; nothing new to submit", file=sys.stderr)
    if wait and jobs:
        _wait(sweep, sweep_dir, jobs, float(s["poll_s"]), quiet)


def _wait(sweep, sweep_dir: Path, jobs, poll_s: float, quiet: bool) -> None:
    """Show progress from the run folders until SLURM has finished every job. Ctrl-C stops waiting only."""
    order = [c.id for c in sweep.cells]

    def counts():
        st = status_of(sweep_dir, sweep.cells)
        return (sum(v in results.FINISHED for v in st.values()), sum(v == "running" for v in st.values()),
                sum(v == "failed" for v in st.values()))

    done, running, failed = counts()
    try:
        with SweepProgress(sweep.name, len(sweep.cells), done, failed, quiet) as progress:
            while True:
                progress.update(*counts())
                if all(j.done() for j in jobs):
                    break
                time.sleep(poll_s)
            progress.update(*counts())
    except KeyboardInterrupt:
        print("stopped waiting; the jobs go on. Run the same command again to collect them.", file=sys.stderr)
    sweepmod.write_summary(sweep_dir, order)
