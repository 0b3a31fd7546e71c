"""A study: the runs of sweep folders, run folders, folders of runs or summary CSVs as one table, and
what the study varied. ``vgp compare``, ``vgp plot`` and ``vgp report`` all start here.

Words used:

* **table**: one row per run, its config flattened as ``summary.csv`` spells it (``model.depth``,
  ``model.activation.name``, ``train.optimizer.lr``), its summary columns (``final_loss``,
  ``grad_ratio``, ...), ``status`` and ``folder`` (the run folder, where there is one). A key that the
  run's architecture does not use (the activation of an LSTM, the forget bias of a GRU or an MLP,
  :func:`vgp.config.applies`) is empty, so that it never looks like something the runs differ in.
* **axes**: what the study varied on purpose, each a list of columns that move together. For a
  sweep folder, the keys its ``sweep.yaml`` declared: every ``grid`` key is an axis, the ``zip`` keys
  are one axis together (``train.optimizer.name`` and ``train.optimizer.lr``). Elsewhere, every config
  column whose value differs between runs, less the sub-keys that only follow from another choice
  (``model.init.mode`` follows ``model.init.name``: kaiming has one, xavier none). The **seed** is
  never an axis: runs that differ only in their seed are repetitions, and always aggregated.
* **mixed**: a key that differs between the runs of one group although it is not grouped by; it is
  named in a warning, because the group's mean is then over more than seeds.
* **log-scale metrics** (ratios, norms, decay rates, which span orders of magnitude) are aggregated
  as a geometric mean with a geometric standard deviation (the spread as a factor: ``x ×/÷ 1.4``,
  Kirkwood 1979); the others as mean ± standard deviation. Only finite values enter either; a
  geometric mean over a value of exactly 0 (a norm that underflowed) is 0.

Reading costs one CSV for a finished sweep (its ``summary.csv``) plus one small read per run that
has not finished; a folder of runs costs one ``summary.csv`` per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vgp import analysis
from vgp.errors import UserError
from vgp.registry import did_you_mean

CONFIG_SECTIONS = ("model", "data", "train", "log")
# config columns that differ between runs without describing them
NOT_AXES = ("name", "seed", "out", "device", "log.kinds", "folder", "source")
FINISHED = ("completed", "diverged")
# summary columns aggregated in log space: each spans orders of magnitude
LOG_METRICS = ("grad_ratio", "decay_per_layer", "decay_per_layer_last", "decay_per_step", "decay_per_block",
               "predicted_decay_per_layer", "theory_chi1")
DEFAULT_METRICS = ("final_test_acc", "final_test_loss", "final_loss", "grad_ratio", "decay_per_layer",
                   "decay_per_step", "decay_per_block", "steps_done")


@dataclass
class Study:
    """The runs read from ``paths``: ``table`` (one row per run), ``axes`` (lists of columns varied on
    purpose, in the order declared), ``declared`` (whether the axes came from sweep files)."""

    table: pd.DataFrame
    axes: list[list[str]]
    paths: list[Path] = field(default_factory=list)
    declared: bool = False

    @property
    def axis_columns(self) -> list[str]:
        return [c for axis in self.axes for c in axis]

    @property
    def seeds(self) -> int:
        """How many seeds the most repeated configuration has."""
        if "seed" not in self.table or self.table.empty:
            return 1
        by = [c for c in self.axis_columns if c in self.table]
        sizes = self.table.groupby(by, dropna=False).size() if by else pd.Series([len(self.table)])
        return int(sizes.max())

    def constant(self) -> dict:
        """The config columns with one value over every run (empty ones and unused keys left out)."""
        out = {}
        for c in self.table.columns:
            if is_config(c) and c not in NOT_AXES:
                values = self.table[c].dropna().unique()
                if len(values) == 1:
                    out[c] = values[0]
        return out


def is_config(column: str) -> bool:
    return column.split(".")[0] in CONFIG_SECTIONS or column in ("name", "seed", "device", "out", "source")


def short(column: str) -> str:
    """model.activation.name -> activation; train.optimizer.lr -> optimizer.lr; model.init.gain -> init.gain."""
    for prefix in ("model.", "train.", "data.", "log."):
        column = column.removeprefix(prefix)
    return column.removesuffix(".name")


def labels(columns) -> dict[str, str]:
    """Short, unambiguous names for columns, as run ids name swept keys (:func:`vgp.sweep.labels`:
    'train.optimizer.lr' -> 'lr', 'train.optimizer.name' -> 'optimizer'), :func:`short` where two of
    them would clash."""
    from vgp.sweep import labels as names

    return {c: n if n != c else short(c) for c, n in names(list(columns)).items()}


def value_text(v) -> str:
    """A config value as people write it: 20 not 20.0, 0.001 not 1e-03, 'n/a' for a key the run's
    architecture does not use (or an older run lacks)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{float(v):.4g}"
    return str(v)


def is_log_metric(column: str) -> bool:
    return column in LOG_METRICS or column.endswith(("_norm", "_ratio", "_grad"))


# -- reading ---------------------------------------------------------------------------------

def _summary(path: Path, in_folder: bool = True) -> pd.DataFrame:
    """One summary CSV, checked (a UserError naming the file if it is not one). ``in_folder``: written
    by vgp into a run or sweep folder, so every line ends with a newline and there is a status column."""
    schema = analysis.SCHEMAS["summary.csv"]
    df = analysis.read_csv(path, columns=schema["columns"] if in_folder else (), numbers=schema["numbers"],
                           whole_lines=in_folder)
    if in_folder and df.empty:
        raise UserError(f"{path}: no row (a finished run's summary has one)")
    if len(df.columns) and not any(c.split(".")[0] in CONFIG_SECTIONS or c == "seed" for c in df.columns):
        raise UserError(f"{path}: no config column (model.*, train.*, seed, ...): not a summary of runs")
    return df


def _unfinished_row(folder: Path, warn) -> dict | None:
    """A run folder without summary.csv: its config and how it ended (meta.json), or None (warned)
    if not even its config can be read."""
    from vgp.config import flatten
    from vgp.results import read_status

    try:
        cfg = analysis.read_yaml(folder / "config.yaml") if (folder / "config.yaml").exists() else {}
    except UserError as e:
        warn(f"{e}; left out")
        return None
    status = read_status(folder) or "unfinished"
    return {**flatten(cfg), "name": cfg.get("name", folder.name), "status": status, "folder": str(folder)}


def _run_row(folder: Path, warn) -> pd.DataFrame | None:
    if (folder / "summary.csv").exists():
        try:
            df = _summary(folder / "summary.csv")
        except UserError as e:
            warn(f"{e}; left out")
            return None
        return df.assign(folder=str(folder))
    row = _unfinished_row(folder, warn)
    return pd.DataFrame([row]) if row else None


def _run_rows(folders: list[Path], warn) -> list[pd.DataFrame]:
    """The rows of many run folders. Summaries of one row under the same header are checked and parsed
    as one CSV (a thousand ``read_csv`` calls would cost seconds); a group that fails is read file by
    file, so that the message names the file."""
    by_header: dict[str, list[tuple[Path, str]]] = {}
    frames = []
    for q in folders:
        path = q / "summary.csv"
        if not path.exists():
            frames += [r for r in [_run_row(q, warn)] if r is not None]
            continue
        try:
            text = analysis._text(path)
        except UserError as e:
            warn(f"{e}; left out")
            continue
        lines = text.split("\n")
        if len(lines) == 3 and lines[2] == "" and "status" in lines[0]:
            by_header.setdefault(lines[0], []).append((q, lines[1]))
        else:
            frames += [r for r in [_run_row(q, warn)] if r is not None]
    schema = analysis.SCHEMAS["summary.csv"]
    for header, items in by_header.items():
        text = header + "\n" + "".join(line + "\n" for _, line in items)
        try:
            df = analysis.read_csv(items[0][0] / "summary.csv", columns=schema["columns"], numbers=schema["numbers"],
                                   text=text)
            if len(df) != len(items):
                raise UserError("a row spans lines")
        except UserError:
            frames += [r for q, _ in items for r in [_run_row(q, warn)] if r is not None]
            continue
        frames.append(df.assign(folder=[str(q) for q, _ in items]))
    return frames


def _sweep_frame(path: Path, warn) -> pd.DataFrame:
    """A sweep folder: its summary.csv (else its runs' own), and a row for every run not in it."""
    runs_dir = path / "runs"
    folders = {q.name: q for q in sorted(runs_dir.iterdir()) if q.is_dir()}
    frame = None
    if (path / "summary.csv").exists():
        try:
            frame = _summary(path / "summary.csv")
        except UserError as e:
            warn(f"{e}; reading its runs' own summaries instead")
    if frame is not None and "name" in frame:
        frame = frame[frame["name"].astype(str).isin(folders)]  # a run deleted since: not there
        frame = frame.assign(folder=[str(folders[n]) for n in frame["name"].astype(str)])
        known = set(frame["name"].astype(str))
    else:
        frame, known = None, set()
    # runs finished after the summary was written (a sweep still running), or not finished at all
    extra = _run_rows([q for n, q in folders.items() if n not in known], warn)
    frames = ([frame] if frame is not None else []) + extra
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _frame(path: Path, warn) -> tuple[pd.DataFrame, dict | None]:
    """The rows of one path and its sweep.yaml (None when it is not a sweep folder)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        return _summary(path, in_folder=False), None
    if (path / "runs").is_dir():
        return _sweep_frame(path, warn), _sweep_spec(path, warn)
    if analysis.is_run_folder(path):
        return _run_row(path, _raise), None
    folders = sorted(q for q in path.iterdir() if analysis.is_run_folder(q))
    if not folders:
        raise UserError(f"{path}: not a sweep folder, run folder, folder of runs or summary CSV")
    rows = _run_rows(folders, warn)
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), None


def _raise(message: str) -> None:
    """A ``warn`` for one path named alone: what would leave it out is an error."""
    raise UserError(message.removesuffix("; left out"))


def _sweep_spec(path: Path, warn) -> dict | None:
    """The settings of ``<sweep>/sweep.yaml`` (without its list of runs), None if missing or unreadable."""
    spec = path / "sweep.yaml"
    if not spec.exists():
        return None
    import yaml

    try:
        text = analysis._text(spec)
        head = text.split("\nruns:", 1)[0]  # the list of every run's values is not needed, and long
        data = yaml.load(head, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (UserError, yaml.YAMLError) as e:
        warn(f"{spec}: cannot be read ({str(e).splitlines()[0]}); the axes are taken from what differs")
        return None
    return data if isinstance(data, dict) else None


def _blank_unused(table: pd.DataFrame) -> pd.DataFrame:
    """Empty the keys a run's architecture does not use (the forget bias of a GRU)."""
    from vgp.config import applies

    if "model.arch" not in table:
        return table
    arch = table["model.arch"].astype(str)
    for c in table.columns:
        if c.startswith("model."):
            archs = arch.unique()
            unused = [a for a in archs if not applies(c, a)]
            if unused:
                table[c] = table[c].astype(object)  # a bool or number column cannot hold None in pandas 3
                table.loc[arch.isin(unused), c] = None
    return table


def load(paths, warn=analysis.warn) -> Study:
    """The runs of ``paths`` (sweep folders, run folders, folders of runs, summary CSVs) and their axes.

    With several paths, a ``source`` column (the folder's name) tells them apart and is the first
    axis, unless each holds one run (runs named one by one are compared by their configs). Among several paths, one that exists but cannot be read is left out with a ``warn`` line;
    a summary that cannot be read is left out with a warning. Raises UserError when no run is left."""
    paths = [Path(p) for p in paths]
    labels = [p.name if p.name != "summary.csv" else p.parent.name for p in paths]
    if len(set(labels)) < len(labels):  # two sweeps of the same name: their paths tell them apart
        labels = [str(p) for p in paths]
    frames, specs = [], []
    for p, label in zip(paths, labels):
        try:
            df, spec = _frame(p, warn)
        except UserError as e:
            if len(paths) == 1 or not p.exists():
                raise
            warn(f"{e}; left out")
            continue
        frames.append((label, df))
        specs.append(spec)
    if len(frames) > 1 and any(len(df) != 1 for _, df in frames):
        for label, df in frames:
            df.insert(0, "source", label)
    frames = [df for _, df in frames]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        raise UserError(f"no runs in {', '.join(map(str, paths))}")
    if "status" not in table:
        table["status"] = "completed"
    table["status"] = table["status"].fillna("unfinished").astype(str)
    table = _blank_unused(table)
    declared = bool(specs) and all(s is not None for s in specs)
    axes = _declared_axes(table, specs) if declared else _together(table, varying(table))
    if "source" in table and ["source"] not in axes:
        axes.insert(0, ["source"])
    return Study(table, axes, paths, declared)


def _declared_axes(table: pd.DataFrame, specs: list[dict]) -> list[list[str]]:
    """The axes the sweep files declared, as table columns; an axis whose values are whole mappings
    (``train.optimizer: [{name: sgd}, {name: adam}]``) is the columns under it that differ."""
    axes: list[list[str]] = []

    def columns(key: str) -> list[str]:
        for c in (key, f"{key}.name"):
            if c in table:
                return [c]
        return [c for c in table.columns if c.startswith(key + ".") and _differs(table[c])]

    for spec in specs:
        for cols in [columns(str(k)) for k in spec.get("grid") or {}] + \
                [[c for k in (spec.get("zip") or {}) for c in columns(str(k))]]:
            taken = {c for a in axes for c in a}  # two sweeps may declare a column twice (zipped, crossed)
            cols = [c for c in dict.fromkeys(cols) if c not in taken and c != "seed"]
            if cols:
                axes.append(cols)
    return axes


def _together(table: pd.DataFrame, columns: list[str]) -> list[list[str]]:
    """Columns as axes, those whose values map one to one onto each other's (a zipped pair such as
    activation and init: sigmoid-default, tanh-xavier) joined into one axis."""
    axes: list[list[str]] = []
    text = {c: table[c].astype(str) for c in columns}
    for c in columns:
        for axis in axes:
            a = axis[0]
            pairs = pd.DataFrame({"a": text[a], "c": text[c]}).drop_duplicates()
            if pairs["a"].is_unique and pairs["c"].is_unique:
                axis.append(c)
                break
        else:
            axes.append([c])
    return axes


def _differs(col: pd.Series) -> bool:
    return col.dropna().astype(str).nunique() > 1


def varying(table: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between the rows (seed, name and the like excluded), less
    the sub-keys that only follow from another column that differs (``model.init.mode`` from
    ``model.init.name``)."""
    varied = [c for c in table.columns if is_config(c) and c not in NOT_AXES and _differs(table[c])]
    return [c for c in varied if not _follows(table, c, varied)]


def _follows(table: pd.DataFrame, column: str, varied: list[str]) -> bool:
    parent = column.rsplit(".", 1)[0] + ".name"
    if column.endswith(".name") or parent not in varied:
        return False
    per_parent = table.groupby(table[parent].astype(str))[column].nunique(dropna=False)
    return bool((per_parent <= 1).all())


# -- choosing and grouping ---------------------------------------------------------------------

def resolve(table: pd.DataFrame, key: str, what: str = "column") -> str:
    """A key as the table spells it: 'model.activation' and 'activation' are 'model.activation.name',
    'depth' is 'model.depth'. Unknown or ambiguous: a UserError listing what is there."""
    for candidate in (key, f"{key}.name"):
        if candidate in table.columns:
            return candidate
    matches = [c for c in table.columns if short(c) == key or c.rsplit(".", 1)[-1] == key and is_config(c)]
    matches = list(dict.fromkeys(matches))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"{what} '{key}' is ambiguous: {', '.join(matches)}")
    config = [c for c in table.columns if is_config(c)]
    others = [c for c in table.columns if not is_config(c) and c != "folder"]
    raise UserError(f"unknown {what} '{key}'{did_you_mean(key, list(table.columns) + [short(c) for c in config])} "
                    f"(config keys: {', '.join(short(c) for c in config if c not in NOT_AXES)}; "
                    f"summary columns: {', '.join(others)})")


def where(study: Study, conditions) -> Study:
    """Only the runs that match every ``KEY=VALUE`` (the value parsed as YAML: ``depth=20``,
    ``activation=tanh``, ``lr=1e-3``). An axis left with one value stops being an axis."""
    import yaml

    table = study.table
    for item in conditions:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--where {item!r}: expected KEY=VALUE, for example model.depth=20")
        col = resolve(table, key.strip())
        value = yaml.safe_load(text) if text else ""
        try:  # 5e-2 is a number here, though YAML 1.1 reads it as text
            value = float(text) if isinstance(value, str) else value
        except ValueError:
            pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            num = pd.to_numeric(table[col], errors="coerce")
            keep = np.isclose(num, float(value), rtol=1e-12, atol=0) & num.notna()
        else:
            keep = table[col].astype(str) == str(value)
        if not keep.any():
            seen = ", ".join(sorted(table[col].dropna().astype(str).unique())[:12])
            raise UserError(f"--where {item}: no run has {col} = {text} (its values: {seen})")
        table = table[keep]
    axes = [a for a in study.axes if any(_differs(table[c]) for c in a)]
    return Study(table.reset_index(drop=True), axes, study.paths, study.declared)


def by_columns(study: Study, by=None) -> list[str]:
    """The columns to group by: ``by`` (keys, resolved) or the study's axes."""
    if by:
        return list(dict.fromkeys(resolve(study.table, k) for k in by))
    return list(dict.fromkeys(c for c in study.axis_columns if c in study.table))


def mixed(study: Study, by: list[str]) -> dict[str, list[str]]:
    """Keys that differ inside some group of ``by`` (seeds aside): {column: its values}. A sub-key is
    left out where its parent is named (``model.init.mode`` beside ``model.init.name``)."""
    table = study.table
    candidates = [c for c in varying(table) if c not in by]
    out = {}
    for c in candidates:
        if by:
            counts = table.groupby(by, dropna=False)[c].nunique()
            if not (counts > 1).any():
                continue
        out[c] = sorted(table[c].dropna().astype(str).unique(), key=_natural)
    return out


def _natural(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def sort_key(col: pd.Series) -> pd.Series:
    """Numbers by value (depth 5 before 40), text as text, empty last."""
    num = pd.to_numeric(col, errors="coerce")
    return num if num.notna().sum() == col.notna().sum() else col.astype(str)


def gmean_gsd(values) -> tuple[float, float]:
    """Geometric mean and geometric standard deviation (a factor >= 1, with ddof 1) of the finite
    values; (0, nan) if one of them is 0, (nan, nan) for none or a negative one."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v) or (v < 0).any():
        return math.nan, math.nan
    if (v == 0).any():
        return 0.0, math.nan
    logs = np.log(v)
    gsd = math.exp(float(np.std(logs, ddof=1))) if len(v) > 1 else math.nan
    return math.exp(float(logs.mean())), gsd


def aggregate(study: Study, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group of ``by``: the ``by`` columns, ``n`` (runs), ``diverged``, ``failed`` (runs
    that did not finish: failed, interrupted, damaged or still running), and per metric either
    ``<m>_gmean`` and ``<m>_gsd`` (log-scale metrics) or ``<m>_mean`` and ``<m>_std``, over the finite
    values of the group's finished runs. Sorted by the ``by`` columns (numbers as numbers)."""
    df = study.table.copy()
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    df["_diverged"] = df["status"].eq("diverged")
    df["_failed"] = ~df["status"].isin(FINISHED)
    keys = by or ["_all"]
    if not by:
        df["_all"] = "all"
    grouped = df.groupby(keys, dropna=False, sort=False)
    out = grouped.size().rename("n").to_frame()
    out["diverged"] = grouped["_diverged"].sum()
    out["failed"] = grouped["_failed"].sum()
    done = df[~df["_failed"]]
    g = done.groupby(keys, dropna=False, sort=False)
    for m in metrics:
        if is_log_metric(m):
            stats = g[m].apply(lambda s: pd.Series(gmean_gsd(s), index=["gmean", "gsd"])).unstack()
            out[f"{m}_gmean"], out[f"{m}_gsd"] = stats.get("gmean"), stats.get("gsd")
        else:
            finite = done[m].where(np.isfinite(done[m]))
            out[f"{m}_mean"] = finite.groupby([done[k] for k in keys], dropna=False, sort=False).mean()
            out[f"{m}_std"] = finite.groupby([done[k] for k in keys], dropna=False, sort=False).std()
    out = out.reset_index()
    out = out.sort_values(keys, key=sort_key, kind="stable").reset_index(drop=True)
    return out.drop(columns=["_all"], errors="ignore")
