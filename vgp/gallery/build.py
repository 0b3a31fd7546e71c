"""Train a gallery entry's sweep and read it back: what ``vgp gallery`` and the gallery's tests call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vgp.gallery import Entry, Finding


@dataclass
class Outcome:
    """One entry after :func:`run_entry`: the sweep folder, the runs of this expansion as a
    :class:`vgp.api.Sweep` (``None`` when none finished), what ``measure`` found (``None`` likewise),
    how many runs the expansion has and how many finished, and the wall time of the training."""

    entry: Entry
    folder: Path
    sweep: object
    finding: Finding | None
    runs: int
    finished: int
    train_s: float


def expansion(entry: Entry, quick: bool = False, overrides=()):
    """The entry's sweep (:class:`vgp.sweep.Sweep`), with ``entry.quick`` applied for ``quick`` and
    then ``overrides``."""
    from vgp import sweep as sweepmod

    return sweepmod.load(entry.config, [*(entry.quick if quick else ()), *overrides])


def run_entry(entry: Entry, out: Path, quick: bool = False, jobs: int | None = None, train: bool = True,
              overrides=(), quiet: bool = True) -> Outcome:
    """Run what is missing of ``entry``'s sweep into ``<out>/<sweep name>/`` (``train=False``: nothing;
    only read what is there), then measure the runs of this expansion. Cells are trained with
    ``vgp sweep``'s local launcher (``jobs`` workers, default one per core; seeds batched where they
    can be), so a second call keeps every finished run."""
    import time

    from vgp import api, launch, study as studies

    sw = expansion(entry, quick, overrides)
    folder = Path(out) / sw.name
    t0 = time.perf_counter()
    if train:
        settings = launch.launcher_settings(sw, {"name": "local", "jobs": jobs})
        launch.launch(sw, Path(out), settings, quiet=quiet)
    train_s = time.perf_counter() - t0
    ids = {c.id for c in sw.cells}
    if not (folder / "runs").is_dir():
        return Outcome(entry, folder, None, None, len(ids), 0, train_s)
    s = studies.load([folder], warn=lambda m: None)
    table = s.table[s.table["folder"].map(lambda f: isinstance(f, str) and Path(f).name in ids)]
    table = table[table["status"].isin(["completed", "diverged"])].reset_index(drop=True)
    if table.empty:
        return Outcome(entry, folder, None, None, len(ids), 0, train_s)
    s = studies.Study(table, s.axes, s.paths, s.declared)
    sweep = api.Sweep(folder, s)
    return Outcome(entry, folder, sweep, entry.measure(sweep), len(ids), len(table), train_s)


def draw(outcome: Outcome, into: Path) -> list[tuple[Path, str]]:
    """Draw ``outcome``'s figures with :func:`vgp.plots.plot` as ``<into>/<entry>-<figure>.png``;
    returns (file, caption) pairs."""
    from vgp import plots

    out = []
    into.mkdir(parents=True, exist_ok=True)
    for fig in outcome.entry.figures:
        path = into / f"{outcome.entry.name}-{fig.name}.png"
        plots.plot([], kind=fig.kind, out=path, study=outcome.sweep._study, warn=lambda m: None, **fig.options)
        out.append((path, fig.caption))
    return out
