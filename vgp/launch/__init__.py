"""Launchers: where the runs of a sweep execute. A launcher only decides *where* ``vgp.train.run`` runs.

Whether a run is done is decided from its folder alone (``vgp.results.read_status``), never from a
launcher's memory, so a sweep can be killed, resumed, grown, run from two shells at once or collected
by another process: :func:`run_cell` takes a lock per run, looks at the folder, and trains only when
the folder holds no finished run.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from vgp import results, sweep as sweepmod
from vgp.errors import UserError
from vgp.registry import did_you_mean

LAUNCHERS = ("local", "slurm")


@dataclass
class Outcome:
    """How one cell went: completed | diverged (a result), failed, interrupted, or skipped because it
    was finished already (``done``, perhaps by another process just now) or failed before
    (``failed-before``)."""
    id: str
    status: str
    error: str | None = None
    wall_s: float = 0.0


def run_cell(cfg, runs: Path, retry_failed: bool = False) -> Outcome:
    """Run one cell into ``runs/<cfg.name>/`` unless its folder says it is finished (or failed, without
    ``retry_failed``); when another process holds the cell's lock, wait for it and then decide.
    Exceptions become a ``failed`` outcome (and ``error.txt`` in the folder); KeyboardInterrupt and
    SystemExit (submitit's requeue) propagate, with the folder marked ``interrupted`` by train.run."""
    from vgp import train  # the heavy import, only where runs execute

    runs = Path(runs)
    folder = runs / cfg.name
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # the run folder's own lock, the one `vgp run` takes: a sweep and a `vgp run` never share a run
        if not stack.enter_context(results.run_lock(folder, wait=False)):
            # another process runs this cell: wait for it, then see how it ended
            stack.enter_context(results.run_lock(folder, wait=True))
        status = results.read_status(folder)
        if status in results.FINISHED:
            return Outcome(cfg.name, "done")
        if status == "failed" and not retry_failed:
            return Outcome(cfg.name, "failed-before")
        started = time.time()
        try:
            result = train.run(cfg, out=runs, force=False, quiet=True, lock=False)
            return Outcome(cfg.name, result.status, None, time.perf_counter() - t0)
        except Exception as e:
            _mark_failed(folder, e, started)
            return Outcome(cfg.name, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0)


def run_group(cfgs: list, runs: Path, retry_failed: bool = False) -> list[Outcome]:
    """Run cells that :func:`vgp.batched.batchable` accepts as one batched model, each into
    ``runs/<cfg.name>/`` as :func:`run_cell` would: finished cells (and failed ones, without
    ``retry_failed``) are skipped, so a resumed sweep trains only the unfinished members of a group;
    a cell another process holds is run alone afterwards (waiting for it). One outcome per config, in order."""
    from vgp import batched  # the heavy import, only where runs execute

    runs = Path(runs)
    outcomes: dict[str, Outcome] = {}
    later, mine = [], []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for cfg in cfgs:
            folder = runs / cfg.name
            if not stack.enter_context(results.run_lock(folder, wait=False)):
                later.append(cfg)
                continue
            status = results.read_status(folder)
            if status in results.FINISHED:
                outcomes[cfg.name] = Outcome(cfg.name, "done")
            elif status == "failed" and not retry_failed:
                outcomes[cfg.name] = Outcome(cfg.name, "failed-before")
            else:
                mine.append(cfg)
        if len(mine) == 1 or (mine and mine[0].model.arch != "mlp" and not _batched_here(mine)):
            later += mine  # alone (one cell, or recurrent on a GPU): run_cell below, once the locks are released
            mine = []
        if mine:
            started, error = time.time(), None
            try:
                batched.run_batched(mine, out=runs, force=False, quiet=True, lock=False)
            except Exception as e:  # every member not finished is marked failed in its folder
                error = f"{type(e).__name__}: {e}"
                for cfg in mine:
                    _mark_failed(runs / cfg.name, e, started)
            wall = time.perf_counter() - t0
            for cfg in mine:
                status = results.read_status(runs / cfg.name)
                if status not in results.FINISHED:
                    status = "failed"
                outcomes[cfg.name] = Outcome(cfg.name, status, error if status == "failed" else None, wall)
    for cfg in later:
        outcomes[cfg.name] = run_cell(cfg, runs, retry_failed)
    return [outcomes[cfg.name] for cfg in cfgs]


def _batched_here(cfgs: list) -> bool:
    """Whether :func:`vgp.batched.batchable` accepts ``cfgs`` on the device they would run on (recurrent
    nets: on the CPU only); a device that is not there runs them alone, where each run fails saying so."""
    from vgp import batched, train

    try:
        device = train.pick_device(cfgs[0].device)
    except UserError:
        return False
    return batched.batchable(cfgs, device) is None


def _mark_failed(folder: Path, e: Exception, started: float) -> None:
    """Record ``e`` in a run folder that it failed before the run wrote this attempt's record."""
    if not _recorded_since(folder, started):
        try:
            results.atomic_write(folder / "error.txt", "".join(traceback.format_exception(e)))
            results.write_json(folder / "meta.json", {"status": "failed", "error": repr(e)[:2000],
                                                     "ended": results.now()})
        except OSError:
            pass  # the outcome still says failed, and why


def _recorded_since(folder: Path, t: float) -> bool:
    """Whether ``folder/meta.json`` was written at or after time ``t`` (by this attempt, not an earlier one)."""
    try:
        return (folder / "meta.json").stat().st_mtime >= t - 0.05  # file times lag the clock by a tick
    except OSError:
        return False


# -- progress ------------------------------------------------------------------------------------

class SweepProgress:
    """A rich progress display on stderr: runs done, running, failed, and the estimated time left."""

    def __init__(self, name: str, total: int, done: int, failed: int, quiet: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} done, {task.fields[running]} running, "
                       "[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=quiet, speed_estimate_period=3600)
        self.task = self.progress.add_task(name, total=total, completed=done, running=0, failed=failed)

    def update(self, done: int, running: int, failed: int) -> None:
        self.progress.update(self.task, completed=done, running=running, failed=failed)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


# -- the sweep command ---------------------------------------------------------------------------

@dataclass
class Report:
    folder: Path
    total: int
    finished: int
    failed: list
    missing: list
    ran: int | None = None  # runs started by this process, finished or failed (None: by SLURM jobs)

    def text(self) -> str:
        lines = [f"{self.finished}/{self.total} runs finished, {len(self.failed)} failed, {len(self.missing)} missing"
                 + (f" ({self.ran} run now)" if self.ran is not None else "")]
        lines += [f"  failed: {i} (see {self.folder / 'runs' / i / 'error.txt'})" for i in self.failed[:10]]
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more; run again with --retry-failed to retry them")
        return "\n".join(lines)


def plan_lines(sweep: sweepmod.Sweep, sweep_dir: Path) -> list[str]:
    """``--dry-run``'s text: a title line, a header, one line per run, a count line. A run is shown by
    the config hash its id ends with (its folder is ``<sweep_dir>/runs/*_<hash>``), its status, and one
    column per varied key headed by the short name run ids use; columns are as wide as their values, so
    a line never wraps and ``grep``/``awk`` see one run per line, e.g.::

        sweep activation-init-depth: 216 runs in results/activation-init-depth
        hash      status     activation  init            depth  optimizer  lr     seed
        8e3685ab  completed  sigmoid     default             5  sgd        0.1       0
        ...
        216 runs: 180 to run, 36 finished, 0 failed
    """
    status = status_of(sweep_dir, sweep.cells)
    keys = list(dict.fromkeys(k for c in sweep.cells for k in c.values))
    short = sweepmod.labels(keys)
    rows = [[c.id.rsplit("_", 1)[-1], status[c.id] or "-", *(_value_text(c.values.get(k, "")) for k in keys)]
            for c in sweep.cells]
    columns = [[c.values.get(k) for c in sweep.cells] for k in keys]
    right = [False, False, *(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)
                             for col in columns)]  # numbers line up on their last digit
    header = ["hash", "status", *(short[k] for k in keys)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    finished = sum(s in results.FINISHED for s in status.values())
    failed = sum(s == "failed" for s in status.values())
    running = sum(s == "running" for s in status.values())
    runs = f"{len(rows)} run" + ("s" if len(rows) != 1 else "")
    count = (f"{runs}: {len(rows) - finished - failed} to run, {finished} finished, {failed} failed"
             + (f" ({running} running now, in another process)" if running else "")
             + (" (--retry-failed runs them again)" if failed else ""))
    return [f"sweep {sweep.name}: {runs} in {sweep_dir}",
            line(header), *(line(r) for r in rows), count]


def _value_text(value) -> str:
    """A swept value in one word, as YAML spells it: true, null, [a,b], {name=adam,lr=0.001}."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return " ".join(str(value).split()) or "''"  # no line breaks; an empty string still shows


def print_plan(sweep: sweepmod.Sweep, sweep_dir: Path) -> None:
    """``--dry-run``: :func:`plan_lines` on stdout, as plain text (no wrapping, no borders)."""
    print("\n".join(plan_lines(sweep, sweep_dir)))


def launcher_settings(sweep: sweepmod.Sweep, overrides: dict) -> dict:
    """The sweep file's ``launcher:`` section with command-line settings on top. Every key must be a
    setting of some launcher; each launcher reads its own (so a file set up for SLURM runs locally too)."""
    from vgp.launch import local, slurm

    settings = {**sweep.launcher, **{k: v for k, v in overrides.items() if v is not None}}
    name = settings.setdefault("name", "local")
    if name not in LAUNCHERS:
        raise UserError(f"launcher: unknown launcher '{name}'{did_you_mean(str(name), LAUNCHERS)} "
                        f"(valid: {', '.join(LAUNCHERS)})")
    known = {"name", *local.SETTINGS, *slurm.DEFAULTS}
    for key in settings:
        if key not in known:
            raise UserError(f"launcher: unknown setting '{key}'{did_you_mean(str(key), sorted(known))} "
                            f"(valid: {', '.join(sorted(known))})")
    if name == "slurm":
        settings = {**slurm.DEFAULTS, **{k: v for k, v in settings.items() if k in slurm.DEFAULTS}}
    return settings


def status_of(sweep_dir: Path, cells) -> dict[str, str | None]:
    return {c.id: results.read_status(Path(sweep_dir) / "runs" / c.id) for c in cells}


def launch(sweep: sweepmod.Sweep, out: Path, settings: dict, retry_failed: bool = False, wait: bool = True,
           quiet: bool = False) -> Report:
    """Run every cell of ``sweep`` that is not finished into ``<out>/<sweep.name>/`` and rewrite the
    sweep's summary.csv; returns what is finished, failed and missing afterwards."""
    sweep_dir = Path(out) / sweep.name
    sweepmod.write_spec(sweep, sweep_dir)
    before = status_of(sweep_dir, sweep.cells)
    todo = [c for c in sweep.cells if before[c.id] not in results.FINISHED
            and (retry_failed or before[c.id] != "failed")]
    order = [c.id for c in sweep.cells]
    ran = 0 if settings["name"] == "local" else None
    try:
        if todo:
            if settings["name"] == "local":
                from vgp.launch import local

                ran = local.launch(sweep, todo, sweep_dir, settings, retry_failed, before, quiet)
            else:
                from vgp.launch import slurm

                slurm.launch(sweep, todo, sweep_dir, settings, retry_failed, before, wait, quiet)
    finally:
        sweepmod.write_summary(sweep_dir, order)
    after = status_of(sweep_dir, sweep.cells)
    return Report(sweep_dir, len(sweep.cells), sum(s in results.FINISHED for s in after.values()),
                  [i for i, s in after.items() if s == "failed"],
                  [i for i, s in after.items() if s not in results.FINISHED and s != "failed"], ran)

