"""Sweep files: many runs of one base config, and the summary that collects them.

A sweep file names a base config and what to vary::

    name: activation-init-depth
    base: ../quickstart.yaml       # a config file (relative to this file) or an inline mapping
    fixed: {train.steps: 300}      # overrides applied to every run
    grid:                          # the Cartesian product over dotted keys
      model.activation: [sigmoid, relu]
      model.depth: [5, 10]
    zip:                           # lists walked in step, not crossed
      train.optimizer.name: [sgd, adam]
      train.optimizer.lr: [0.1, 0.001]
    seeds: [0, 1, 2]
    launcher: {name: local}        # where the runs execute (vgp.launch)

expands into 2 x 2 x 2 x 3 = 24 runs ("cells"). A cell's id says what it varies and ends with a short
hash of its resolved config, e.g. ``activation-relu_depth-10_optimizer-adam_lr-0.001_seed-2_3f9a1c0e``,
so the same cell always maps to the same folder ``<out>/<name>/runs/<id>/`` and a sweep run again
runs only the cells whose folder holds no finished run.

Command-line overrides use the ``vgp run`` grammar; ``key=a,b,c`` adds (or replaces) a grid axis, as in
Hydra's multirun, ``seed=0,1,2`` sets the seeds and ``launcher.key=value`` a launcher setting.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import itertools
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgp import config, results
from vgp.errors import ConfigError, clipped, shown
from vgp.registry import did_you_mean

SWEEP_KEYS = ("name", "base", "fixed", "grid", "zip", "seeds", "launcher")
MAX_CELLS = 100_000  # runs in one sweep: expanding and validating 10^4 takes seconds, 10^6 would take minutes
NOT_PER_RUN = {"name": "a sweep's runs are named by what they vary; name the sweep with its own name: key",
               "out": "a sweep writes into <out>/<sweep name>/; set out in the base config or use --out"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class Cell:
    """One run of a sweep: its id, the values it varies (dotted key -> value) and its resolved config."""
    id: str
    values: dict
    cfg: config.Config


@dataclass
class Sweep:
    name: str
    source: str
    base: dict
    fixed: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    zip: dict = field(default_factory=dict)
    seeds: list | None = None
    launcher: dict = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def spec(self) -> dict:
        """The expanded sweep, as written to ``sweep.yaml``: the settings, then every run's id and values."""
        return {"name": self.name, "source": self.source, "base": self.base, "fixed": self.fixed,
                "grid": self.grid, "zip": self.zip, "seeds": self.seeds, "launcher": self.launcher,
                "runs": [{"id": c.id, **c.values} for c in self.cells]}


def is_sweep_file(raw: dict) -> bool:
    """A sweep file, not a run config: it has a key only sweep files have (base, fixed, grid, zip, seeds,
    launcher). ``vgp run`` and ``vgp sweep`` use the same test, so each says the other is meant."""
    return any(k in raw for k in config.SWEEP_ONLY_KEYS)


def load(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read a sweep file, apply command-line overrides and expand it; every cell is validated."""
    path = Path(path)
    raw = config.read_yaml(path)
    return from_dict(raw, overrides, source=str(path), root=path.parent)


def from_dict(raw: dict, overrides: list[str] = (), source: str = "sweep", root: Path = Path(".")) -> Sweep:
    if not is_sweep_file(raw):
        raise ConfigError(f"{source}: a sweep file was expected, but this looks like a run config (it has none of "
                          f"{', '.join(config.SWEEP_ONLY_KEYS)}); run it with: vgp run {source}; or write a sweep "
                          f"file whose base: is this file (see configs/sweeps/)")
    for key in raw:
        if key not in SWEEP_KEYS:
            hint = " (config keys go into base: or fixed:)" if key in config.fields_of(config.Config) else ""
            raise ConfigError(f"{source}: unknown sweep key {shown(key)}{did_you_mean(str(key), SWEEP_KEYS)} "
                              f"(valid: {', '.join(SWEEP_KEYS)}){hint}")
    base = raw.get("base") or {}
    if isinstance(base, str):
        try:
            base = config.read_yaml(root / base)
        except ConfigError as e:
            raise ConfigError(f"{source}: base: {e}") from None
        if is_sweep_file(base):
            raise ConfigError(f"{source}: base: {root / raw['base']} is a sweep file; base names a run config")
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: base: expected a config file name or a mapping, got {shown(base)}")
    name = str(raw.get("name") or Path(source).stem)
    sweep = Sweep(name=name, source=source, base={k: v for k, v in base.items() if k != "name"},
                  fixed=_mapping(raw, "fixed", source), grid=_mapping(raw, "grid", source),
                  zip=_mapping(raw, "zip", source), seeds=raw.get("seeds"), launcher=_mapping(raw, "launcher", source))
    _apply_overrides(sweep, overrides)
    _check(sweep)
    sweep.cells = expand(sweep)
    return sweep


def _mapping(raw: dict, key: str, source: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping of dotted keys, got {shown(value)}")
    return dict(value)


def _split_list(text: str):
    """``'10,20'`` -> ``[10, 20]``; None when the text is one value (flow lists and mappings are one)."""
    text = text.strip()
    if "," not in text or text[:1] in "[{\"'":
        return None
    try:
        return yaml.safe_load(f"[{text}]")
    except yaml.YAMLError:
        return None


def _apply_overrides(sweep: Sweep, overrides: list[str]) -> None:
    for item in overrides:
        key, _, text = item.partition("=")
        values = _split_list(text)
        (key, value), = config.parse_overrides([item])
        if key.startswith("launcher."):
            sweep.launcher[key.removeprefix("launcher.")] = value
        elif key in ("seed", "seeds"):
            sweep.seeds = values if values is not None else value if isinstance(value, list) else [value]
        else:
            for d in (sweep.grid, sweep.zip, sweep.fixed):
                d.pop(key, None)
            if values is not None:
                sweep.grid[key] = values
            else:
                sweep.fixed[key] = value


def _check(sweep: Sweep) -> None:
    src = sweep.source
    if not config._NAME.match(sweep.name) or len(sweep.name) > config.MAX_NAME:
        raise ConfigError(f"{src}: name: {shown(sweep.name)} may only use letters, digits, '.', '_' and '-' "
                          f"(at most {config.MAX_NAME})")
    for kind in ("fixed", "grid", "zip"):
        for key in getattr(sweep, kind):
            if config.key_problem(key):
                raise ConfigError(f"{src}: {kind}: {config.key_problem(key)}")
    for key in sweep.fixed:
        if key in NOT_PER_RUN:
            raise ConfigError(f"{src}: fixed: {key} cannot be set for the runs of a sweep: {NOT_PER_RUN[key]}")
    if "seed" in sweep.fixed and sweep.seeds is not None:
        raise ConfigError(f"{src}: fixed: seed and seeds: both set the runs' seeds; keep one")
    for kind in ("grid", "zip"):
        for key, values in getattr(sweep, kind).items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{src}: {kind}: {key}: expected a non-empty list of values, got {shown(values)}")
            if key in ("seed", "name", "out"):
                hint = " (use seeds: [...])" if key == "seed" else f": {NOT_PER_RUN[key]}" if key in NOT_PER_RUN else ""
                raise ConfigError(f"{src}: {kind}: {key} cannot be swept{hint}")
            if key in sweep.fixed:
                raise ConfigError(f"{src}: {key} is both in fixed and in {kind}; the {kind} values would replace "
                                  f"the fixed one in every run: keep one")
    lengths = {k: len(v) for k, v in sweep.zip.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"{src}: zip: the lists must have the same length, got "
                          + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
    both = set(sweep.grid) & set(sweep.zip)
    if both:
        raise ConfigError(f"{src}: {', '.join(sorted(both))} both in grid and in zip")
    if sweep.seeds is not None:
        if isinstance(sweep.seeds, int) and not isinstance(sweep.seeds, bool) and 0 < sweep.seeds <= MAX_CELLS:
            sweep.seeds = list(range(sweep.seeds))  # seeds: 3 -> [0, 1, 2]
        if not isinstance(sweep.seeds, list) or not sweep.seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in sweep.seeds):
            raise ConfigError(f"{src}: seeds: expected a non-empty list of integers or a count from 1 to "
                              f"{MAX_CELLS:,}, got {shown(sweep.seeds)}")
    n = count(sweep)
    if n > MAX_CELLS:
        sizes = [f"{k}: {len(v)}" for k, v in sweep.grid.items()]
        sizes += [f"zip: {len(next(iter(sweep.zip.values())))}"] if sweep.zip else []
        sizes += [f"seeds: {len(sweep.seeds)}"] if sweep.seeds else []
        raise ConfigError(f"{src}: {n:,} runs ({' x '.join(sizes)}); a sweep has at most {MAX_CELLS:,}: "
                          f"use fewer values, or split it into several sweep files")


def count(sweep: Sweep) -> int:
    """How many runs a (checked) sweep expands into, without expanding it."""
    n = 1
    for values in sweep.grid.values():
        n *= len(values)
    if sweep.zip:
        n *= len(next(iter(sweep.zip.values())))
    return n * (len(sweep.seeds) if sweep.seeds is not None else 1)


def labels(keys: list[str]) -> dict[str, str]:
    """Short names for swept keys in run ids and tables: the last part ('model.depth' -> 'depth'), the one before it
    for a spec's name ('train.optimizer.name' -> 'optimizer'), the whole key when two would clash."""
    def short(k):
        parts = k.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
    counts: dict[str, int] = {}
    for k in keys:
        counts[short(k)] = counts.get(short(k), 0) + 1
    return {k: short(k) if counts[short(k)] == 1 else k for k in keys}


def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    text = _UNSAFE.sub("~", str(value)).strip("~")
    return text[:24] or "~"


def config_hash(cfg: config.Config) -> str:
    """Eight hex digits of the resolved config, its name and output folder left out."""
    return _hashes(cfg)[0]


def _hashes(cfg: config.Config) -> tuple[str, str]:
    """(:func:`config_hash`, the JSON text of the config without its seed): two cells whose texts are
    equal differ only in their seed, which no preflight check reads, so one preflight serves both."""
    d = config.to_dict(cfg)
    d.pop("name"), d.pop("out")
    full = hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
    d.pop("seed")
    return full, json.dumps(d, sort_keys=True, default=str)


def run_id(values: dict, cfg: config.Config, digest: str | None = None) -> str:
    short = labels(list(values))
    readable = "_".join(f"{short[k]}-{_text(v)}" for k, v in values.items())[:160]
    digest = digest or config_hash(cfg)
    return f"{readable}_{digest}" if readable else digest


def expand(sweep: Sweep) -> list[Cell]:
    """Every cell of the sweep, in order (grid axes outermost, then zip, then seeds), validated through
    :func:`vgp.config.from_dict`; one bad cell fails the whole sweep with the cell named.

    Every cell is validated, yet what is the same across cells is checked once: the seed is a field of
    its own that no other check reads (not ``config``'s cross-checks, not the preflight's miniature
    model), so each seed value is validated through ``from_dict`` in the first cell that has it, and a
    later cell differing from the one before it only in its seed is that config with the seed set.
    The preflight likewise runs once per config up to the seed. 10^4 cells = 500 configs x 20 seeds
    cost 500 ``from_dict`` calls and preflights (a few seconds less than 10^4 of each)."""
    from vgp import preflight

    axes = [[(k, v) for v in values] for k, values in sweep.grid.items()]
    if sweep.zip:
        axes.append([tuple(zip(sweep.zip, row)) for row in zip(*sweep.zip.values())])
    if sweep.seeds is not None:
        axes.append([("seed", s) for s in sweep.seeds])
    n_seeds = len(sweep.seeds) if sweep.seeds is not None else 0
    cells, seen, checked, seeds_checked, group, group_cfg = [], {}, set(), set(), None, None
    for i, combo in enumerate(itertools.product(*axes)):
        values = {}
        for item in combo:
            for k, v in (item if item and isinstance(item[0], tuple) else (item,)):
                values[k] = v
        where = ", ".join(f"{k}={clipped(v, 40) if isinstance(v, str) else shown(v, 40)}"
                          for k, v in values.items()) or "the only run"
        source = f"{sweep.source} (run {where})"
        try:
            if n_seeds and i // n_seeds == group and values["seed"] in seeds_checked:
                cfg = pickle.loads(group_cfg)  # the cell before (a copy: pickle is 10x faster than deepcopy)
                cfg.seed = values["seed"]
            else:
                cfg = config.from_dict({**sweep.base, "name": sweep.name},
                                       list(sweep.fixed.items()) + list(values.items()), source=source, preflight=False)
                if n_seeds:
                    group, group_cfg = i // n_seeds, pickle.dumps(cfg)
                    seeds_checked.add(values["seed"])
            digest, unseeded = _hashes(cfg)
            if unseeded not in checked:
                preflight.check(cfg, source)
                checked.add(unseeded)
        except ConfigError as e:
            msg = str(e)
            if "(run " not in msg:
                msg = f"{sweep.source} (run {where}): {msg}"
            raise ConfigError(msg) from None
        cfg.name = run_id(values, cfg, digest)
        if cfg.name in seen:
            raise ConfigError(f"{sweep.source}: runs {seen[cfg.name]} and {where} have the same config")
        seen[cfg.name] = where
        cells.append(Cell(cfg.name, values, cfg))
    return cells


# -- the sweep folder ----------------------------------------------------------------------------

@contextlib.contextmanager
def locked(path: Path, wait: bool = True):
    """An exclusive POSIX lock on ``path`` (created if missing); yields False when ``wait`` is False and
    another process holds it. The kernel drops it when the holder dies, so a killed sweep leaves none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def lock_path(sweep_dir: Path, name: str) -> Path:
    return Path(sweep_dir) / ".locks" / f"{name}.lock"


def read_run_summary(path: Path) -> tuple[list[dict] | None, str, str | None]:
    """One run's ``summary.csv``: (its rows, its text, what is wrong with it or None). Rows are None
    when the file does not exist (the run is not finished). A file that cannot be read (binary, not
    CSV, cut short, empty, no status column, a metric that is not a number) gives its problem."""
    from vgp.analysis import SCHEMAS

    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
        got = list(csv.DictReader(text.splitlines(keepends=True)))
    except FileNotFoundError:  # not finished
        return None, "", None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], "", f"cannot be read as CSV text ({type(e).__name__}: {e})"
    if "\0" in text:
        return got, text, "binary data (a NUL byte)"
    if not got:
        return got, text, "empty" if not text.strip() else "no row"
    if not text.endswith("\n"):  # vgp ends every line with one
        return got, text, "cut short (its last line is incomplete)"
    if any(None in r or None in r.values() for r in got):
        return got, text, "a row whose fields do not match the header"
    if "status" not in got[0]:
        return got, text, "no status column"
    return got, text, next((f"{c} is {r[c]!r}, not a number" for r in got for c in SCHEMAS["summary.csv"]["numbers"]
                            if r.get(c) and not _is_number(r[c])), None)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _left_out(path: Path, problem: str) -> None:
    import sys

    print(f"vgp: warning: {path}: {problem}; left out of the sweep summary", file=sys.stderr)


def collect(sweep_dir: Path, order: list[str] = ()) -> tuple[list[dict], list[str]]:
    """The summary rows of every finished run in ``<sweep_dir>/runs`` (in ``order`` first, then by id)
    and the union of their columns, in order of first appearance. A run summary that cannot be read
    (:func:`read_run_summary`) is left out with a warning line on stderr."""
    rows, columns, _ = _collect(sweep_dir, order)
    return rows, columns


def _collect(sweep_dir: Path, order: list[str] = ()) -> tuple[list[dict], list[str], dict[str, str]]:
    """:func:`collect`, and the text of each run summary it took rows from (run id -> text)."""
    runs = Path(sweep_dir) / "runs"
    names = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    rank = {n: i for i, n in enumerate(order)}
    names.sort(key=lambda n: (rank.get(n, len(rank)), n))
    rows, columns, texts = [], {}, {}
    for n in names:
        path = runs / n / "summary.csv"
        got, text, problem = read_run_summary(path)
        if got is None:
            continue
        if problem:
            _left_out(path, problem)
            continue
        texts[n] = text
        for r in got:
            rows.append(r)
            columns.update(dict.fromkeys(r))
    return rows, list(columns), texts


# The sweep's summary.csv is kept up to date as runs finish (add_to_summary) at a cost per run that
# does not grow with the sweep: a finished run's rows are appended, as whole lines in one write, under
# the summary lock. The index, <sweep>/.summary-index/<run id>, holds the text of the run summary each
# run's rows came from: a run added again with the same summary (a requeued SLURM task) is skipped,
# one with another summary (run again) has its rows replaced. Replacing rows, or a row with columns the
# header lacks (a recurrent run's), rewrites the file once, atomically. A missing or damaged file, or
# a missing index, is rebuilt from the runs' own summaries (write_summary), which stays the ground
# truth: `vgp sweep` ends with it, which also puts the rows in the sweep's order.
INDEX = ".summary-index"


def write_summary(sweep_dir: Path, order: list[str] = ()) -> int:
    """Rewrite ``<sweep_dir>/summary.csv`` (atomically, under a lock) from the runs' own summaries;
    returns the number of rows. Safe to call from any number of processes at once. Reads every run's
    summary: call it once, at the end; as runs finish, :func:`add_to_summary`."""
    sweep_dir = Path(sweep_dir)
    with locked(lock_path(sweep_dir, "summary")):
        return _rebuild(sweep_dir, order)


def _rebuild(sweep_dir: Path, order: list[str]) -> int:
    import shutil

    rows, columns, texts = _collect(sweep_dir, order)
    index = sweep_dir / INDEX
    shutil.rmtree(index, ignore_errors=True)
    index.mkdir(parents=True, exist_ok=True)
    for run, text in texts.items():  # before the file: a crash in between loses rows (the next rebuild
        (index / run).write_text(text, encoding="utf-8")  # restores them) rather than doubles them
    results.atomic_write(sweep_dir / "summary.csv", results.csv_text(rows, columns))
    return len(rows)


def add_to_summary(sweep_dir: Path, ids: list[str], order: list[str] = ()) -> None:
    """Bring the rows of runs ``ids`` (just finished, or not finished after all) into
    ``<sweep_dir>/summary.csv``, reading only their own summaries: the cost per run does not grow with
    the number of runs. Safe from any number of processes at once (under the summary lock); a reader
    sees whole lines only (one ``write`` of whole lines at the end of the file, or an atomic rewrite)."""
    sweep_dir = Path(sweep_dir)
    path, index = sweep_dir / "summary.csv", sweep_dir / INDEX
    with locked(lock_path(sweep_dir, "summary")):
        header = _header(path) if index.is_dir() else None
        if header is None:  # none yet, damaged, or written before the index existed
            _rebuild(sweep_dir, order)
            return
        for run in ids:
            run_path = sweep_dir / "runs" / run / "summary.csv"
            got, text, problem = read_run_summary(run_path)
            if problem:
                _left_out(run_path, problem)
                got, text = None, ""
            try:
                before = (index / run).read_text(encoding="utf-8")
            except FileNotFoundError:
                before = None
            if (before or "") == text:  # in the file as it is now, or in it neither before nor now
                continue
            if before is None and all(c in header for r in got for c in r):
                lines = results.csv_text(got, header).split("\n", 1)[1]
                (index / run).write_text(text, encoding="utf-8")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, lines.encode("utf-8"))
                finally:
                    os.close(fd)
            elif not _replace(sweep_dir, run, got or [], text):
                _rebuild(sweep_dir, order)
                return
            header = _header(path)


def _header(path: Path) -> list[str] | None:
    """The columns of a sweep summary, or None when it is missing, empty or does not end with a newline
    (a write cut short): looks at its first line and its last byte only."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except OSError:  # missing, or empty (seeking before the start)
        return None
    if not first.endswith(b"\n") or last != b"\n":
        return None
    try:
        return next(csv.reader([first.decode("utf-8")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return None


def _replace(sweep_dir: Path, run: str, rows: list[dict], text: str) -> bool:
    """Rewrite the sweep summary with run ``run``'s rows replaced by ``rows`` (and new columns added
    to the header); False when the file's rows cannot be told apart by run (then rebuild it)."""
    path = sweep_dir / "summary.csv"
    try:
        old = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(keepends=True)))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    header = _header(path)
    if not header or "name" not in header or any(None in r or None in r.values() for r in old) or \
            any(r.get("name") != run for r in rows):
        return False
    columns = dict.fromkeys(header)
    for r in rows:
        columns.update(dict.fromkeys(r))
    kept = [r for r in old if r["name"] != run] + rows
    if rows:
        (sweep_dir / INDEX / run).write_text(text, encoding="utf-8")
    else:
        (sweep_dir / INDEX / run).unlink(missing_ok=True)
    results.atomic_write(path, results.csv_text(kept, list(columns)))
    return True


def write_spec(sweep: Sweep, sweep_dir: Path) -> None:
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(lock_path(sweep_dir, "summary")):
        results.write_yaml(sweep_dir / "sweep.yaml", sweep.spec())
