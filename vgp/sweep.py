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
    d = config.to_dict(cfg)
    d.pop("name"), d.pop("out")
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_id(values: dict, cfg: config.Config) -> str:
    short = labels(list(values))
    readable = "_".join(f"{short[k]}-{_text(v)}" for k, v in values.items())[:160]
    return f"{readable}_{config_hash(cfg)}" if readable else config_hash(cfg)


def expand(sweep: Sweep) -> list[Cell]:
    """Every cell of the sweep, in order (grid axes outermost, then zip, then seeds), validated through
    :func:`vgp.config.from_dict`; one bad cell fails the whole sweep with the cell named."""
    axes = [[(k, v) for v in values] for k, values in sweep.grid.items()]
    if sweep.zip:
        axes.append([tuple(zip(sweep.zip, row)) for row in zip(*sweep.zip.values())])
    if sweep.seeds is not None:
        axes.append([("seed", s) for s in sweep.seeds])
    cells, seen = [], {}
    for combo in itertools.product(*axes):
        values = {}
        for item in combo:
            for k, v in (item if item and isinstance(item[0], tuple) else (item,)):
                values[k] = v
        where = ", ".join(f"{k}={clipped(v, 40) if isinstance(v, str) else shown(v, 40)}"
                          for k, v in values.items()) or "the only run"
        try:
            cfg = config.from_dict({**sweep.base, "name": sweep.name}, list(sweep.fixed.items()) + list(values.items()),
                                   source=f"{sweep.source} (run {where})")
        except ConfigError as e:
            msg = str(e)
            if "(run " not in msg:
                msg = f"{sweep.source} (run {where}): {msg}"
            raise ConfigError(msg) from None
        cfg.name = run_id(values, cfg)
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


def collect(sweep_dir: Path, order: list[str] = ()) -> tuple[list[dict], list[str]]:
    """The summary rows of every finished run in ``<sweep_dir>/runs`` (in ``order`` first, then by id)
    and the union of their columns, in order of first appearance. A run summary that cannot be read
    (binary, not CSV, cut short, empty, no status column, a metric that is not a number) is left out
    with a warning line on stderr."""
    import sys

    from vgp.analysis import SCHEMAS

    def _is_number(text: str) -> bool:
        try:
            float(text)
            return True
        except ValueError:
            return False

    numbers = SCHEMAS["summary.csv"]["numbers"]
    runs = Path(sweep_dir) / "runs"
    names = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    rank = {n: i for i, n in enumerate(order)}
    names.sort(key=lambda n: (rank.get(n, len(rank)), n))
    rows, columns = [], {}
    for n in names:
        path = runs / n / "summary.csv"
        try:
            with open(path, newline="", encoding="utf-8") as f:
                text = f.read()
            got = list(csv.DictReader(text.splitlines(keepends=True)))
        except FileNotFoundError:  # not finished
            continue
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            got, problem = [], f"cannot be read as CSV text ({type(e).__name__}: {e})"
        else:
            problem = None
            if "\0" in text:
                problem = "binary data (a NUL byte)"
            elif not got:
                problem = "empty" if not text.strip() else "no row"
            elif not text.endswith("\n"):  # vgp ends every line with one
                problem = "cut short (its last line is incomplete)"
            elif any(None in r or None in r.values() for r in got):
                problem = "a row whose fields do not match the header"
            elif "status" not in got[0]:
                problem = "no status column"
            else:
                problem = next((f"{c} is {r[c]!r}, not a number" for r in got for c in numbers
                                if r.get(c) and not _is_number(r[c])), None)
        if problem:
            print(f"vgp: warning: {path}: {problem}; left out of the sweep summary", file=sys.stderr)
            continue
        for r in got:
            rows.append(r)
            columns.update(dict.fromkeys(r))
    return rows, list(columns)


def write_summary(sweep_dir: Path, order: list[str] = ()) -> int:
    """Rewrite ``<sweep_dir>/summary.csv`` (atomically, under a lock) from the runs' own summaries;
    returns the number of rows. Safe to call from any number of processes at once."""
    sweep_dir = Path(sweep_dir)
    with locked(lock_path(sweep_dir, "summary")):
        rows, columns = collect(sweep_dir, order)
        results.atomic_write(sweep_dir / "summary.csv", results.csv_text(rows, columns))
    return len(rows)


def write_spec(sweep: Sweep, sweep_dir: Path) -> None:
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(lock_path(sweep_dir, "summary")):
        results.write_yaml(sweep_dir / "sweep.yaml", sweep.spec())
