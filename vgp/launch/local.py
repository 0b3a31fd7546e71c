"""The local launcher: a pool of warm worker processes on this machine.

Each worker imports torch once and then runs many cells (starting Python and importing torch costs
over a second, more than a tiny run). Workers split the cores (``torch.set_num_threads``) so that
they do not oversubscribe the CPU, and on a CUDA machine each gets one GPU (``CUDA_VISIBLE_DEVICES``).

Ctrl-C (or SIGTERM) stops the sweep: every worker's current run is interrupted and marked so in its
folder, runs not started stay unstarted, and what finished is kept. A worker that dies (killed, out of
memory) fails only the run it was running; the others go on in a fresh pool.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from vgp import results, sweep as sweepmod
from vgp.errors import UserError
from vgp.launch import Outcome, SweepProgress, run_cell, run_group

SETTINGS = {"jobs": None,  # worker processes (None: one per GPU, else one per core)
            "batch": 8}  # at most this many cells that differ only in seed/init/activation/optimizer train
#                           as one batched model (vgp.batched); 1: every cell alone (vgp sweep --no-batch)

# -- in the worker processes ---------------------------------------------------------------------
_in_run = False  # a run is executing: a signal interrupts it
_stopping = False  # a signal came: start no more runs


def _on_signal(signum, frame):
    global _stopping
    first = not _stopping
    _stopping = True
    if _in_run and first:
        raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    """Interrupt this worker when the sweep process is gone (killed hard), instead of running on."""
    import _thread

    while os.getppid() == parent:
        time.sleep(1.0)
    _thread.interrupt_main(signal.SIGINT)  # the run is marked interrupted
    time.sleep(30.0)
    os._exit(1)  # in case the pool's queue does not end the process by itself


def _init_worker(threads: int, gpus, parent: int) -> None:
    gpu = gpus.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from vgp.cli import bound_openmp_spinning

    bound_openmp_spinning()  # as vgp.cli.main does, for sweeps started from Python
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _work(cfgs: list, runs: Path, retry_failed: bool) -> list[Outcome]:
    """One cell, or a group of cells trained as one batched model; an outcome per cell."""
    global _in_run
    try:
        _in_run = True
        if _stopping:
            return [Outcome(cfg.name, "not-started") for cfg in cfgs]
        if len(cfgs) == 1:
            return [run_cell(cfgs[0], runs, retry_failed)]
        return run_group(cfgs, runs, retry_failed)
    except KeyboardInterrupt:
        return [Outcome(cfg.name, "interrupted") for cfg in cfgs]
    finally:
        _in_run = False


# -- in the sweep process ------------------------------------------------------------------------

def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(cells) -> list[str]:
    """The GPUs the workers share out, or none when every run is on the CPU."""
    if all(c.cfg.device == "cpu" for c in cells):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in listed.split(",") if g.strip()] if listed else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def plan(cells, jobs: int | None) -> tuple[int, int, list[str]]:
    """(workers, torch threads per worker, GPUs): by default one worker per GPU, else per core."""
    gpus = visible_gpus(cells)
    if jobs is None:
        jobs = len(gpus) or cores()
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs: expected a positive number, got {jobs!r}")
    jobs = min(jobs, len(cells))
    return jobs, max(1, cores() // jobs), gpus


def units(cells, jobs: int, batch) -> list[list]:
    """The work items: single cells, and groups of at most ``batch`` cells that train as one batched
    model (:func:`vgp.batched.groups`), no larger than it takes to give every worker one (8 seeds on
    2 workers: two groups of 4)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UserError(f"launcher.batch: expected a positive whole number (1: no batching), got {batch!r}")
    if batch > 1:
        batch = min(batch, max(2, -(-len(cells) // jobs)))
        from vgp import batched

        return [[cells[i] for i in g] for g in batched.groups([c.cfg for c in cells], batch)]
    return [[c] for c in cells]


def launch(sweep, todo, sweep_dir: Path, settings: dict, retry_failed: bool, before: dict, quiet: bool) -> int:
    """Run ``todo`` in a pool of ``settings['jobs']`` workers; returns how many runs were trained here."""
    jobs, threads, gpus = plan(todo, settings.get("jobs"))
    work = units(todo, jobs, settings.get("batch", SETTINGS["batch"]))
    if len(work) < jobs:  # fewer, batched work items: as many workers, sharing the cores
        jobs = len(work)
        threads = max(1, cores() // jobs) if not gpus else threads
    runs = Path(sweep_dir) / "runs"
    order = [c.id for c in sweep.cells]
    done = sum(s in results.FINISHED for s in before.values())
    failed = sum(s == "failed" for s in before.values()) if not retry_failed else 0
    pending, ran = work, 0
    old = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    with SweepProgress(sweep.name, len(sweep.cells), done, failed, quiet) as progress:
        try:
            while pending:  # one pass per pool; a new pool only after a worker died
                pending, d, f, r = _pool_pass(pending, runs, jobs, threads, gpus, retry_failed, sweep_dir, order,
                                           lambda d, r, f: progress.update(done + d, r, failed + f))
                done, failed, ran = done + d, failed + f, ran + r
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return ran


def _pool_pass(pending, runs, jobs, threads, gpus, retry_failed, sweep_dir, order, show):
    """Run ``pending`` in one pool. Returns the cells to run again (after a worker died), and the
    numbers finished and failed."""
    ctx = mp.get_context("spawn")  # not fork: CUDA and OpenMP do not survive a fork
    queue = ctx.Queue()
    for i in range(jobs):
        queue.put(gpus[i % len(gpus)] if gpus else None)
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, queue, os.getpid()))
    futures = {pool.submit(_work, [c.cfg for c in unit], runs, retry_failed): unit for unit in pending}
    left, done, failed, ran, again = set(futures), 0, 0, 0, []
    broken = 0.0  # once the pool broke: until when its runs' locks are awaited
    try:
        while left:
            finished, left = wait(left, timeout=1.0, return_when=FIRST_COMPLETED)
            trained = []  # finished here: their rows go into the sweep's summary now (watchable as it runs)
            for fut in finished:
                unit = futures[fut]
                try:
                    outcomes = fut.result()
                except BrokenProcessPool:  # a worker died: decide its cells from their folders
                    broken = broken or time.monotonic() + CRASH_PATIENCE  # one wait for all of them
                    outcomes = [_after_crash(cell, runs, broken) for cell in unit]
                for cell, outcome in zip(unit, outcomes):
                    if outcome.status == "again":
                        again.append([cell])
                    elif outcome.status in results.FINISHED:
                        done, ran = done + 1, ran + 1
                        trained.append(cell.id)
                    elif outcome.status == "done":
                        done += 1
                    elif outcome.status == "failed":
                        failed, ran = failed + 1, ran + 1
                    elif outcome.status == "failed-before":
                        failed += 1
            show(done, min(jobs, len(left)), failed)
            if trained:
                sweepmod.add_to_summary(sweep_dir, trained, order)
    except KeyboardInterrupt:
        _interrupt(pool, left)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if again and len(again) == sum(len(unit) for unit in pending):
        raise UserError("the sweep's worker processes died before finishing any run; try one with vgp run")
    return again, done, failed, ran


CRASH_PATIENCE = 30.0  # seconds a broken pool's runs' locks are awaited, all of them together


def _after_crash(cell, runs: Path, deadline: float) -> Outcome:
    """A cell whose worker pool broke: a run its dead worker left 'running' failed with the worker;
    interrupted or unstarted ones go again.

    The folder is judged under its lock. The pool reports the break as soon as the dead worker's
    pipe closes, which can be before the kernel has dropped that worker's lock, and the pool stops
    the other workers (SIGTERM: they mark their runs interrupted) at the same moment; so the lock is
    awaited until ``deadline`` (``time.monotonic()``; one for all the pool's cells, so that many
    workers do not wait in turn). A run whose lock is still held then goes again."""
    folder = runs / cell.id
    if not folder.is_dir():  # never started (run_lock would create the folder)
        return Outcome(cell.id, "again")
    while True:
        with results.run_lock(folder, wait=False) as got:
            if got:
                return _judge(cell, folder)
        if results.read_status(folder) != "running" or time.monotonic() > deadline:
            return _judge(cell, folder, locked=False)
        time.sleep(0.05)


def _judge(cell, folder: Path, locked: bool = True) -> Outcome:
    """The outcome of a broken pool's cell from its folder; a run still 'running' under its lock (so
    its process is gone) is marked failed."""
    status = results.read_status(folder)
    if status in results.FINISHED:
        return Outcome(cell.id, "done")
    if status == "running" and locked:
        msg = "the worker process running it died (killed, or out of memory)"
        results.atomic_write(folder / "error.txt", msg + "\n")
        try:  # what the run said of itself (device, pid, start, ...) stays
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        meta = meta if isinstance(meta, dict) else {}
        results.write_json(folder / "meta.json", {**meta, "status": "failed", "error": msg, "ended": results.now()})
        return Outcome(cell.id, "failed", msg)
    if status == "failed":
        return Outcome(cell.id, "failed")
    return Outcome(cell.id, "again")


def _interrupt(pool: ProcessPoolExecutor, left) -> None:
    """Interrupt every worker's current run (they mark it) and wait for them to report back."""
    for fut in left:
        fut.cancel()
    for proc in list((pool._processes or {}).values()):
        try:
            os.kill(proc.pid, signal.SIGINT)
        except (ProcessLookupError, OSError):
            pass
    wait([f for f in left if not f.cancelled()], timeout=60)
