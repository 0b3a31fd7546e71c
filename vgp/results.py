"""Run folders: atomic writes, streamed CSVs, and a completion marker.

A run folder ``<out>/<name>/`` holds ``config.yaml``, ``meta.json``, ``grad_norms.csv``,
``metrics.csv`` and, written last, ``summary.csv``. While a run is going, its CSVs are
``*.csv.partial``; they get their final names only when the run completed or diverged (the
rows of a killed, failed or interrupted run stay in the ``.partial`` files), and
``summary.csv`` exists only for a finished run: a folder without it is not finished, whatever
else it holds (one rule, read by :func:`read_status` everywhere: runs, sweeps, diagnosis).
``meta.json`` says how an unfinished run ended (running, failed, interrupted).

Files are written with the permissions the umask allows (0644 under the usual umask 022), like
any file a program creates, so that colleagues on a shared filesystem can read the results; a
temporary file is never left behind (a stale one from a killed process is removed when the
folder is prepared again). A run folder is locked (``flock`` on the folder itself) while a run
writes into it, so that two processes never write the same run.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import fcntl
import io
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import yaml

from vgp.errors import UserError

FINISHED = ("completed", "diverged")
RUN_FILES = ("config.yaml", "meta.json", "grad_norms.csv", "metrics.csv", "summary.csv", "time_grads.csv", "error.txt")


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (setting it briefly would
    race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_creatable(path: Path, option: str, folder: bool = False) -> None:
    """Refuse, before any work, an output ``path`` (a file, or a ``folder``) that cannot be created
    because what lies above it is a file: 'OPTION PATH: cannot be created, /dev/null is a file'."""
    above = Path(path) if folder else Path(path).parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"{option} {path}: cannot be created, {above} is a file")


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old one or the new one, never a torn one.

    The file gets the permissions ``open`` would give it (0666 less the umask), not mkstemp's 0600.
    Raises OSError (disk full, read-only folder); the temporary file is removed then."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_text(obj) -> str:
    """How run folders write JSON (``meta.json``): indented, anything unusual as its str."""
    return json.dumps(obj, indent=2, default=str) + "\n"


def write_json(path: Path, obj) -> None:
    atomic_write(path, json_text(obj))


def now() -> str:
    """The time stamps of ``meta.json``: UTC, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_yaml(path: Path, obj) -> None:
    """``obj`` as YAML, atomically. Emitted by libyaml where PyYAML has it (about 4x as fast, the same
    text: the representer is PyYAML's safe one either way)."""
    atomic_write(path, yaml.dump(obj, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))


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


ENDING_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # what ends a run as interrupted


@contextlib.contextmanager
def signals_held(then_raise: bool = True):
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then take effect as they would have
    (``then_raise`` False: they are dropped, for a block that marks a run already ending).
    Around the writes of one recorded step: a signal between its grad_norms.csv rows and its
    metrics.csv row left an interrupted run with a step in one file and not in the other.

    Their handlers are swapped for one that notes the signal, then restored, and a noted signal is
    raised again. (Blocking them with pthread_sigmask would not do: the kernel hands a signal that
    the main thread blocks to another thread, such as one of PyTorch's OpenMP workers, and Python
    then runs the handler in the main thread at once.) Outside the main thread, where handlers
    cannot be set, and for an ignored signal or one whose handler Python did not install, nothing
    changes."""
    noted: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in ENDING_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None and handler != signal.SIG_IGN:
                old[sig] = signal.signal(sig, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(noted) if then_raise else ():
            signal.raise_signal(sig)  # its own handler, now


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

    def flush(self) -> None:
        """Hand the rows written so far to the OS: a process killed after this loses none of them."""
        self._f.flush()

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
    """How the run in ``folder`` ended, by one rule: finished means ``summary.csv`` exists.

    'completed' | 'diverged' (from summary.csv), else 'running' | 'failed' | 'interrupted' from
    meta.json, where a meta.json that says finished without the marker (a run stopped between the
    two writes, or whose summary.csv was deleted) reads 'interrupted'; 'damaged' when summary.csv
    exists but cannot be read; None when the folder holds no run (or an unreadable meta.json)."""
    folder = Path(folder)
    marker = folder / "summary.csv"
    if marker.exists():
        try:
            with open(marker, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return "damaged"
        if rows and rows[0].get("status") in FINISHED:
            return rows[0]["status"]
        return "damaged"
    try:
        status = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    if status in FINISHED:
        return "interrupted"
    return status if isinstance(status, str) else None


@contextlib.contextmanager
def run_lock(folder: Path, wait: bool = False):
    """Create ``folder`` and hold an exclusive lock on it while the block runs; yields False (and
    holds nothing) when another process holds it and ``wait`` is False.

    ``flock`` on the folder itself: no lock file is left in it, the kernel drops the lock when the
    holder dies (even by SIGKILL), and Linux maps it to POSIX locks on NFS. Raises UserError when
    the folder cannot be created."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"cannot create the run folder {folder}: {e.strerror or e} (see --out or 'out' in the config)") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def prepare(folder: Path, force: bool) -> Path:
    """Make an empty-enough run folder (the caller holds :func:`run_lock`): refuse a finished run
    unless ``force``; clear the files of an earlier attempt and stale temporary files."""
    folder = Path(folder)
    status = read_status(folder)
    if status in FINISHED and not force:
        raise UserError(f"{folder} already holds a finished run (status: {status}); use --force to overwrite it")
    try:
        # the marker goes first, so that the folder never looks finished while it is rewritten
        for name in ("summary.csv",) + RUN_FILES:
            (folder / name).unlink(missing_ok=True)
            (folder / (name + ".partial")).unlink(missing_ok=True)
        for tmp in folder.glob(".*.tmp"):  # left by a process killed inside atomic_write
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot clear the run folder {folder}: {e.strerror or e}") from None
    return folder
