"""``vgp compare``: summary rows grouped by config keys, each metric as mean ± std over seeds.

Reads only summary CSVs (a sweep folder's ``summary.csv``, or its runs' own when it has none yet, a
run folder's, or any CSV of summary rows), never the training code. Runs from older versions that
lack a column show it empty. With several paths, a ``source`` column (the folder's name) tells them
apart, so two sweeps can be compared side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vgp.errors import UserError
from vgp.registry import did_you_mean

CONFIG_SECTIONS = ("model", "data", "train", "log")
NOT_GROUPED = ("name", "seed", "out")
DEFAULT_METRICS = ("final_test_acc", "final_test_loss", "final_loss", "grad_ratio", "decay_per_layer", "steps_done")


def split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _read(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / "summary.csv").exists():
        files = [path / "summary.csv"]
    elif (path / "runs").is_dir():  # a sweep that has not written its summary yet
        files = sorted((path / "runs").glob("*/summary.csv"))
    else:
        raise UserError(f"{path}: not a sweep folder, run folder or summary CSV (no summary.csv in it)")
    frames = []
    for f in files:
        try:
            frames.append(pd.read_csv(f))
        except pd.errors.EmptyDataError:
            continue
        except (OSError, pd.errors.ParserError) as e:
            raise UserError(f"{f}: cannot read it as CSV ({e})") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load(paths: list[Path]) -> pd.DataFrame:
    """All summary rows of ``paths``, a ``source`` column naming each path when there are several."""
    labels = [Path(p).name if Path(p).name != "summary.csv" else Path(p).parent.name for p in paths]
    if len(set(labels)) < len(labels):  # two sweeps of the same name: their paths tell them apart
        labels = [str(p) for p in paths]
    frames = []
    for p, label in zip(paths, labels):
        df = _read(p)
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
            where: list[str] = ()) -> pd.DataFrame:
    """One row per group: the ``by`` columns, ``n`` (runs), ``diverged`` (how many of them), and for each
    metric ``<metric>_mean`` and ``<metric>_std`` (over seeds; empty for a single run)."""
    df = _filter(load(paths), list(where))
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


def write_csv(table: pd.DataFrame, path: Path) -> None:
    from vgp.results import atomic_write

    atomic_write(Path(path), table.to_csv(index=False))
