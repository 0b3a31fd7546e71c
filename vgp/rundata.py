"""The files of many run folders read at once, with the checks :func:`vgp.analysis.read_run` makes.

Why: ``read_run`` reads one folder in about 15 ms (a pure-Python YAML parse, four ``read_csv`` calls,
each with its own pandas set-up), so a 1,000-run sweep took 15 s before anything was drawn. Here
every finished run's ``grad_norms.csv`` (likewise ``metrics.csv``, ``time_grads.csv``) is checked
as text (UTF-8, no NUL byte, whole lines, as many fields on every line as in the header) and the
clean ones are parsed by one ``pandas.read_csv`` call; the integer, number and text columns are
then checked on the whole frame. Whatever fails a check, and every unfinished run (``.partial``
files, a last step cut short), goes through :mod:`vgp.analysis` itself, so a damaged folder is
named by the same one line as with ``vgp diagnose``, and left out with a ``warn`` line.

The result is one frame per kind of file, with a ``run`` column: the row of the run in the study's
table (:mod:`vgp.study`), so that grouping runs is a vectorised ``groupby``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vgp import analysis
from vgp.errors import UserError

FILES = ("grad_norms.csv", "metrics.csv", "time_grads.csv")
GRAD_KINDS = ("output_grad", "weight_grad")  # the kinds of grad_norms.csv that the figures draw
RECURRENT = ("rnn", "lstm", "gru")


@dataclass
class RunFiles:
    """What the runs of a table recorded. ``runs``: the table rows read (others were left out);
    ``grads`` (run, step, layer, kind, value; :data:`GRAD_KINDS` only), ``metrics`` (run, step,
    loss, ...), ``time`` (run, step, layer, t, value); ``configs``: run -> config.yaml's mapping;
    ``unfinished``: run -> its :class:`vgp.analysis.Run` (read from its .partial files)."""

    runs: list[int]
    grads: pd.DataFrame
    metrics: pd.DataFrame
    time: pd.DataFrame
    configs: dict[int, dict] = field(default_factory=dict)
    unfinished: dict[int, analysis.Run] = field(default_factory=dict)

    def recurrent(self, run: int) -> bool:
        return str((self.configs.get(run, {}).get("model") or {}).get("arch")) in RECURRENT


def read(table: pd.DataFrame, warn=analysis.warn, alone: bool = False) -> RunFiles:
    """The files of every run of ``table`` that has a ``folder``. A folder that cannot be read is
    left out with a ``warn`` line ('<file>: <what is wrong>; left out'); with ``alone`` (one folder
    named by itself) that line is the UserError. UserError when no run is left."""
    folders = table["folder"] if "folder" in table else pd.Series([None] * len(table))
    fast: dict[str, list] = {name: [] for name in FILES}  # name -> [(run, path, text)]
    problems: dict[int, str] = {}
    configs: dict[int, dict] = {}
    slow: dict[int, analysis.Run] = {}
    for i, folder in zip(table.index, folders):
        if not isinstance(folder, str) or not folder:
            continue
        f = Path(folder)
        try:
            if not (f / "summary.csv").is_file() or any((f / (n + ".partial")).exists() for n in FILES):
                slow[i] = analysis.read_run(f)  # unfinished: .partial files, steps cut short
                configs[i] = slow[i].config
                continue
            configs[i] = _config(f)
            if (f / "meta.json").exists():
                _meta(f / "meta.json")
            for name in FILES:
                path = f / name
                if path.exists() or name == "grad_norms.csv":
                    fast[name].append((i, path, _text(path, name)))
        except UserError as e:
            problems[i] = str(e)
    frames = {}
    for name in FILES:
        frame, bad = _bulk(fast[name], name)
        for i, message in bad.items():
            problems.setdefault(i, message)
        frames[name] = frame
    for i, run in slow.items():
        for name, df in (("grad_norms.csv", run.grads), ("metrics.csv", run.metrics), ("time_grads.csv", run.time)):
            if df is not None and len(df):
                frames[name] = pd.concat([frames[name], df.assign(run=i)], ignore_index=True)
    grads = frames["grad_norms.csv"]
    counted = set(grads["run"].unique()) if len(grads) else set()
    for i, path, _ in fast["grad_norms.csv"]:
        if i not in counted and i not in problems:
            problems[i] = f"{path}: no recorded step"
    for i, message in sorted(problems.items()):
        if alone:
            raise UserError(message)
        warn(f"{message}; left out")
    runs = [i for i in table.index if i in configs and i not in problems]
    keep = {name: frames[name][frames[name]["run"].isin(runs)] if len(frames[name]) else frames[name]
            for name in FILES}
    g = keep["grad_norms.csv"]
    g = g[g["kind"].astype(str).isin(GRAD_KINDS)] if len(g) else g
    named = [f for f in folders if isinstance(f, str) and f]
    if not runs and named:
        raise UserError(f"none of the {len(named)} run folders can be read (see the warnings above)")
    return RunFiles(runs, g.reset_index(drop=True), keep["metrics.csv"].reset_index(drop=True),
                    keep["time_grads.csv"].reset_index(drop=True), {i: configs[i] for i in runs},
                    {i: r for i, r in slow.items() if i in runs})


# -- one folder's small files ------------------------------------------------------------------

def _config(folder: Path) -> dict:
    """config.yaml (:func:`vgp.analysis.read_yaml`), {} where the folder has none."""
    path = folder / "config.yaml"
    return analysis.read_yaml(path) if path.exists() else {}


def _meta(path: Path) -> None:
    try:
        ok = isinstance(json.loads(analysis._text(path)), dict)
    except json.JSONDecodeError:
        ok = False
    if not ok:
        analysis.read_json(path)  # raises, naming the file


def _text(path: Path, name: str) -> str:
    if not path.exists():
        raise UserError(f"{path.parent}: no {name} (is this a vgp run folder?)")
    return analysis._text(path)


# -- many CSVs of one kind in one parse ------------------------------------------------------------

def _clean(text: str) -> bool:
    """Whole lines, nothing quoted, as many commas on every line as on the header's (counted over
    the whole text: a line with one field too many and another with one too few would pass, and
    are caught by the number checks, or read again by read_csv)."""
    if not text.endswith("\n") or '"' in text:
        return False
    header = text[:text.index("\n")]
    return text.count(",") == header.count(",") * text.count("\n")


def _bulk(items: list, name: str) -> tuple[pd.DataFrame, dict[int, str]]:
    """One frame (with ``run``) of the files ``items`` = [(run, path, text)], and {run: message} for
    those that fail a check of :func:`vgp.analysis.read_csv`."""
    schema = analysis.SCHEMAS[name]
    problems: dict[int, str] = {}
    frames = []
    by_header: dict[str, list] = {}
    for i, path, text in items:
        if not text.strip():
            continue  # an empty file: no rows (for grad_norms.csv: no recorded step, said by the caller)
        if _clean(text):
            by_header.setdefault(text[:text.index("\n")], []).append((i, path, text))
            continue
        try:  # quoted, cut short or ragged: read_csv tells which
            frames.append(analysis.read_csv(path, **schema).assign(run=i))
        except UserError as e:
            problems[i] = str(e)
    for header, group in by_header.items():
        cols = header.split(",")
        missing = [c for c in schema["columns"] if c not in cols]
        if missing:
            for i, path, _ in group:
                problems[i] = str(_error(path, schema))
            continue
        body = "".join(t[len(header) + 1:] for _, _, t in group)
        counts = [t.count("\n") - 1 for _, _, t in group]
        use = [c for c in cols if c in schema["columns"] + schema.get("integers", ()) + schema.get("numbers", ())
               + schema.get("texts", ())]
        try:
            df = pd.read_csv(io.StringIO(header + "\n" + body), usecols=use, low_memory=False)
        except (pd.errors.ParserError, ValueError):
            bad_rows = None
        else:
            df["run"] = np.repeat([i for i, _, _ in group], counts)
            bad_rows = _bad_rows(df, schema)
        if bad_rows is None or len(bad_rows):  # read those files alone, for the message naming the line
            suspects = {i for i, _, _ in group} if bad_rows is None else set(df["run"].to_numpy()[bad_rows])
            for i, path, _ in group:
                if i in suspects:
                    try:
                        frames.append(analysis.read_csv(path, **schema).assign(run=i))
                    except UserError as e:
                        problems[i] = str(e)
            if bad_rows is None:
                continue
            df = df[~df["run"].isin(suspects)]
        frames.append(_typed(df, schema))
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(schema["columns"]) + ["run"])
    return out, problems


def _bad_rows(df: pd.DataFrame, schema: dict) -> np.ndarray:
    """Positions of rows with an integer that is not one, a number that is not one, an empty text."""
    bad = np.zeros(len(df), dtype=bool)
    for c in schema.get("integers", ()):
        if c in df and not pd.api.types.is_integer_dtype(df[c]):
            v = pd.to_numeric(df[c], errors="coerce")
            bad |= (v.isna() | (v % 1 != 0)).to_numpy()
    for c in schema.get("numbers", ()):
        if c in df and not pd.api.types.is_numeric_dtype(df[c]):
            v = pd.to_numeric(df[c], errors="coerce")
            bad |= (v.isna() & df[c].notna()).to_numpy()
    for c in schema.get("texts", ()):
        if c in df:
            bad |= df[c].isna().to_numpy()
    return np.flatnonzero(bad)


def _typed(df: pd.DataFrame, schema: dict) -> pd.DataFrame:
    for c in schema.get("integers", ()):
        if c in df:
            df[c] = pd.to_numeric(df[c]).astype("int64")
    for c in schema.get("numbers", ()):
        if c in df:
            df[c] = pd.to_numeric(df[c]).astype(float)
    return df


def _error(path: Path, schema: dict) -> UserError:
    try:
        analysis.read_csv(path, **schema)
    except UserError as e:
        return e
    return UserError(f"{path}: cannot be read")
