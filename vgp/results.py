"""Run folders: atomic writes, streamed CSVs, and a completion marker.

A run folder ``<out>/<name>/`` holds ``config.yaml``, ``meta.json``, ``grad_norms.csv``,
``metrics.csv`` and, written last, ``summary.csv``. While a run is going, its CSVs are
``*.csv.partial``; they get their final names only when the run completed or diverged (the
rows of a killed, failed or interrupted run stay in the ``.partial`` files), and
``summary.csv`` exists only for a finished run: a folder without it is not finished, whatever
else it holds. ``meta.json`` always says the status.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import yaml

from vgp.errors import UserError

FINISHED = ("completed", "diverged")
RUN_FILES = ("config.yaml", "meta.json", "grad_norms.csv", "metrics.csv", "summary.csv", "time_grads.csv", "error.txt")


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old one or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_yaml(path: Path, obj) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False))


def _cell(v):
    if v is None:
        return ""
    return v


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


class CsvStream:
    """A CSV written row by row to ``name.partial``, renamed to ``name`` by :meth:`finish`."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.columns = columns
        self._f = open(self.partial, "w", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(columns)

    def write(self, rows) -> None:
        """Rows as sequences in column order."""
        self._w.writerows(rows)

    def write_values(self, step: int, prefixes: list[str], values: list[float]) -> None:
        """Rows ``step,<prefix>,value``, one per prefix (pre-formatted, comma-free leading cells).

        The same bytes as :meth:`write` (floats as repr), several times faster for the hundreds of
        rows of a recorded step."""
        self._f.write("".join(f"{step},{p},{v!r}\n" for p, v in zip(prefixes, values)))

    def finish(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Close without giving the file its final name (the run did not end properly)."""
        if not self._f.closed:
            self._f.close()


def read_status(folder: Path) -> str | None:
    """'completed' | 'diverged' | 'running' | 'failed' | 'interrupted', or None for no run."""
    folder = Path(folder)
    if (folder / "summary.csv").exists():
        with open(folder / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and rows[0].get("status") in FINISHED:
            return rows[0]["status"]
    try:
        return json.loads((folder / "meta.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def prepare(folder: Path, force: bool) -> Path:
    """Make an empty-enough run folder: refuse a finished run unless ``force``; clear stale files."""
    folder = Path(folder)
    status = read_status(folder)
    if status in FINISHED and not force:
        raise UserError(f"{folder} already holds a finished run (status: {status}); use --force to overwrite it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {folder}: {e.strerror or e} (see --out or 'out' in the config)") \
            from None
    # the marker goes first, so that the folder never looks finished while it is rewritten
    for name in ("summary.csv",) + RUN_FILES:
        (folder / name).unlink(missing_ok=True)
        (folder / (name + ".partial")).unlink(missing_ok=True)
    return folder
