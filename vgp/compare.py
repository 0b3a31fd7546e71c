"""``vgp compare``: summary rows grouped by config keys, each metric as mean ± std over seeds.

Reads only summary CSVs (a sweep folder's ``summary.csv``, or its runs' own when it has none yet or
it cannot be read, a run folder's, or any CSV of summary rows), never the training code. A summary
that cannot be read (binary, not CSV, truncated, a non-number in a metric column) is named in a
warning and left out; unfinished runs (no ``summary.csv``) are counted in a note. Runs from older versions that
lack a column show it empty. With several paths, a ``source`` column (the folder's name) tells them
apart, so two sweeps can be compared side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vgp import analysis
from vgp.errors import UserError
from vgp.registry import did_you_mean

CONFIG_SECTIONS = ("model", "data", "train", "log")
NOT_GROUPED = ("name", "seed", "out")
DEFAULT_METRICS = ("final_test_acc", "final_test_loss", "final_loss", "grad_ratio", "decay_per_layer", "steps_done")


def split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _summary(path: Path, in_folder: bool = True) -> pd.DataFrame:
    """One summary CSV, checked (a UserError naming the file if it is not one). ``in_folder``: written
    by vgp into a run or sweep folder, so every line ends with a newline and there is a status column."""
    schema = analysis.SCHEMAS["summary.csv"]
    df = analysis.read_csv(path, columns=schema["columns"] if in_folder else (), numbers=schema["numbers"],
                           whole_lines=in_folder)
    if len(df.columns) and not any(c.split(".")[0] in CONFIG_SECTIONS or c == "seed" for c in df.columns):
        raise UserError(f"{path}: no config column (model.*, train.*, seed, ...): not a summary of runs")
    return df


def _read(path: Path, warn=analysis.warn) -> pd.DataFrame:
    """The summary rows of a summary CSV, a run folder or a sweep folder (its summary.csv, or its runs'
    own ones, each that cannot be read left out with a warning); a UserError naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        return _summary(path, in_folder=False)
    sweep = (path / "runs").is_dir()
    if not sweep and (path / "summary.csv").exists():
        return _summary(path / "summary.csv")
    if not sweep:
        if analysis.is_run_folder(path):
            status = _meta_status(path)
            raise UserError(f"{path}: the run is not finished (no summary.csv"
                            + (f"; meta.json says {status!r}" if status else "") + ")")
        raise UserError(f"{path}: not a sweep folder, run folder or summary CSV (no summary.csv in it)")
    folders = sorted(q for q in (path / "runs").iterdir() if q.is_dir())
    left = [q.name for q in folders if not (q / "summary.csv").exists()]
    if left:
        analysis.note(f"{path}: {len(left)} of {len(folders)} runs not finished (no summary.csv), not compared: "
                      + ", ".join(left[:3]) + (", ..." if len(left) > 3 else ""))
    if (path / "summary.csv").exists():
        try:
            return _summary(path / "summary.csv")
        except UserError as e:
            warn(f"{e}; reading its runs' own summaries instead")
    frames = []
    for q in folders:
        if (q / "summary.csv").exists():
            try:
                frames.append(_summary(q / "summary.csv"))
            except UserError as e:
                warn(f"{e}; left out")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _meta_status(folder: Path) -> str | None:
    try:
        return analysis.read_json(folder / "meta.json").get("status") if (folder / "meta.json").exists() else None
    except UserError:
        return None


def load(paths: list[Path], warn=analysis.warn) -> pd.DataFrame:
    """All summary rows of ``paths``, a ``source`` column naming each path when there are several.
    Among several paths, one that exists but cannot be read is left out with a ``warn`` line."""
    labels = [Path(p).name if Path(p).name != "summary.csv" else Path(p).parent.name for p in paths]
    if len(set(labels)) < len(labels):  # two sweeps of the same name: their paths tell them apart
        labels = [str(p) for p in paths]
    frames = []
    for p, label in zip(paths, labels):
        try:
            df = _read(p, warn)
        except UserError as e:
            if len(paths) == 1 or not Path(p).exists():
                raise
            warn(f"{e}; left out")
            continue
        if len(paths) > 1:
            df.insert(0, "source", label)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        raise UserError(f"no finished runs in {', '.join(map(str, paths))}")
    return df


def is_config(column: str) -> bool:
    return column.split(".")[0] in CONFIG_SECTIONS or column in ("name", "seed", "device", "out", "source")


def resolve(df: pd.DataFrame, key: str) -> str:
    """A config key as the summary spells it: 'model.activation' is the column 'model.activation.name'."""
    for candidate in (key, f"{key}.name"):
        if candidate in df.columns:
            return candidate
    raise UserError(f"unknown column '{key}'{did_you_mean(key, list(df.columns))} "
                    f"(config keys: {', '.join(c for c in df.columns if is_config(c))})")


def _filter(df: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    import yaml

    for item in where:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--where {item!r}: expected KEY=VALUE, for example model.depth=20")
        col = resolve(df, key)
        value = yaml.safe_load(text) if text else ""
        df = df[df[col].astype(str) == str(value)]
    if df.empty:
        raise UserError(f"no runs left after --where {' '.join(where)}")
    return df


def varying(df: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between the rows, seed and name excluded."""
    return [c for c in df.columns if is_config(c) and c not in NOT_GROUPED
            and df[c].astype(str).nunique(dropna=False) > 1]


def compare(paths: list[Path], by: list[str] | None = None, metrics: list[str] | None = None,
            where: list[str] = (), warn=analysis.warn) -> pd.DataFrame:
    """One row per group: the ``by`` columns, ``n`` (runs), ``diverged`` (how many of them), and for each
    metric ``<metric>_mean`` and ``<metric>_std`` (over seeds; empty for a single run). Summaries that
    cannot be read are left out, each with a ``warn`` line."""
    df = _filter(load(paths, warn), list(where))
    by = [resolve(df, k) for k in by] if by else varying(df)
    if "source" in df.columns and "source" not in by:  # several sweeps: side by side
        by.insert(0, "source")
    if metrics:
        metrics = [resolve(df, m) for m in metrics]
    else:
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    if "status" not in df.columns:
        df["status"] = None
    df["_diverged"] = df["status"].astype(str).eq("diverged")
    if not by:  # all runs alike: one group
        df["_all"], by_cols = "all", ["_all"]
    else:
        by_cols = by
    grouped = df.groupby(by_cols, dropna=False, sort=False)
    out = grouped.size().rename("n").to_frame()
    out["diverged"] = grouped["_diverged"].sum()
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std()
    out = out.reset_index()
    out = out.sort_values(by_cols, key=_sort_key, kind="stable").reset_index(drop=True)
    out.attrs["by"], out.attrs["metrics"] = [c for c in by_cols if c != "_all"], metrics
    return out.drop(columns=["_all"], errors="ignore")


def _sort_key(col: pd.Series) -> pd.Series:
    """Numbers by value (depth 5 before 40), text as text, empty last."""
    num = pd.to_numeric(col, errors="coerce")
    return num if num.notna().sum() == col.notna().sum() else col.astype(str)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def show(table: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    by, metrics = table.attrs.get("by", []), table.attrs.get("metrics", [])
    t = Table(title=f"{int(table['n'].sum())} runs" + (f" by {', '.join(by)}" if by else "")
              + ": mean ± std over the runs of each row (seeds)", title_justify="left")
    for c in by:
        t.add_column(c.removesuffix(".name"), no_wrap=True)
    t.add_column("n", justify="right")
    t.add_column("diverged", justify="right")
    for m in metrics:
        t.add_column(m, justify="right", no_wrap=True)
    for _, row in table.iterrows():
        cells = [_fmt(row[c]) for c in by] + [str(int(row["n"])), str(int(row["diverged"]))]
        for m in metrics:
            mean, std = _fmt(row[f"{m}_mean"]), _fmt(row[f"{m}_std"])
            cells.append(f"{mean} ± {std}" if mean and std else mean)
        t.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # piped or captured: no wrapping at 80 columns
        console = Console(width=240)
    console.print(t)


def check_csv_path(path: Path) -> None:
    """Refuse, before any work, a --csv path that names a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--csv {path}: a folder; give a file name, e.g. {path / 'compare.csv'}")
    above = path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"--csv {path}: cannot be created, {above} is a file")


def write_csv(table: pd.DataFrame, path: Path) -> None:
    from vgp.results import atomic_write

    check_csv_path(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), table.to_csv(index=False))
    except OSError as e:
        raise UserError(f"--csv {path}: cannot write it ({e.strerror or e})") from None
