"""``vgp compare``: the runs of a study grouped by what it varied, each metric aggregated over seeds.

Reads only summaries and configs (:mod:`vgp.study`), never the training code. By default the rows
are the sweep's declared axes (its grid and zip keys), so that every row is one configuration and
its runs are seeds; ``--by`` groups otherwise, and any key that then differs inside a row is named
in a warning. Ratios and decay rates (:data:`vgp.study.LOG_METRICS`) are geometric means ×/÷ their
geometric standard deviation, the rest means ± standard deviations, over the finished runs of each
row; ``n``, ``diverged`` and ``failed`` count its runs.

Output: a table fitted to the terminal (metrics that do not fit are named in a note), or, with
``--format`` or when piped, markdown, CSV or JSON with every column.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from vgp import analysis, study
from vgp.errors import UserError
from vgp.results import check_creatable

FORMATS = ("table", "markdown", "csv", "json")


def split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def compare(paths: list[Path], by: list[str] | None = None, metrics: list[str] | None = None,
            where: list[str] = (), warn=analysis.warn, loaded: study.Study | None = None) -> pd.DataFrame:
    """One row per group (:func:`vgp.study.aggregate`), with ``attrs``: ``by`` (the grouped columns),
    ``metrics``, ``mixed`` ({column: values} differing inside some row), ``runs`` and ``seeds`` (the
    most runs of one row). Mixed keys are named in a ``warn`` line; summaries that cannot be read
    are left out, each with a ``warn`` line. ``loaded``: the runs of ``paths`` already read
    (:func:`vgp.study.load`). UserError for an unknown key or no run."""
    s = study.where(loaded if loaded is not None else study.load(paths, warn), list(where))
    by_cols = study.by_columns(s, by)
    if "source" in s.table and "source" not in by_cols:  # several sweeps: side by side
        by_cols.insert(0, "source")
    if metrics:
        metrics = [study.resolve(s.table, m, "metric") for m in metrics]
        bad = [m for m in metrics if study.is_config(m)]
        if bad:
            raise UserError(f"--metrics {', '.join(bad)}: config keys, not summary columns; group by them with --by")
    else:
        metrics = [m for m in study.DEFAULT_METRICS
                   if m in s.table and pd.to_numeric(s.table[m], errors="coerce").notna().any()]
    mixed = study.mixed(s, by_cols)
    if mixed:
        what = "; ".join(f"{study.short(c)} ({', '.join(v[:6])}{', ...' if len(v) > 6 else ''})"
                         for c, v in mixed.items())
        warn(f"the runs of a row also differ in {what}: each row aggregates over them as well as over seeds "
             f"(group by them with --by, or keep one value with --where)")
    left = s.table[~s.table["status"].isin(study.FINISHED)]
    if len(left):
        kinds = ", ".join(f"{n} {k}" for k, n in left["status"].value_counts().items())
        names = left["name"].astype(str).tolist() if "name" in left else []
        analysis.note(f"{len(left)} of {len(s.table)} runs not finished ({kinds}): counted under 'failed', no metrics"
                      + (": " + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else ""))
    table = study.aggregate(s, by_cols, metrics)
    table.attrs.update(by=by_cols, metrics=metrics, mixed=mixed, runs=len(s.table),
                       seeds=int(table["n"].max()) if len(table) else 0)
    return table


# -- output ----------------------------------------------------------------------------------

def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x, digits: int = 3) -> str:
    if _missing(x):
        return ""
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) < 1e6 else f"{x:.{digits}g}"
    return str(x)


def mean_std(mean: float, std: float) -> str:
    """'0.138 ± 0.012': the spread to 2 significant digits, the mean to the same decimal place (at
    least 3 significant digits); '40' alone where the spread is 0 or unknown."""
    if _missing(mean):
        return ""
    if _missing(std) or std == 0 or not math.isfinite(std) or not math.isfinite(mean):
        return _num(mean, 4)
    place = 1 - math.floor(math.log10(std))  # decimals that show the spread's 2 leading digits
    place = max(place, 3 - 1 - math.floor(math.log10(abs(mean)))) if mean else place
    if 0 <= place <= 8 and abs(mean) < 1e6:
        return f"{mean:.{place}f} ± {std:.2g}"
    return f"{mean:.3g} ± {std:.2g}"


def cell(row, m: str) -> str:
    """'0.138 ± 0.012' or '3.57e-04 ×/÷ 1.06' (empty when there is no value)."""
    if f"{m}_gmean" in row:
        centre, spread = row[f"{m}_gmean"], row[f"{m}_gsd"]
        if _missing(centre):
            return ""
        text = _num(centre)
        return text if _missing(spread) else f"{text} ×/÷ {spread:.3g}"
    return mean_std(row[f"{m}_mean"], row[f"{m}_std"])


def title(table: pd.DataFrame) -> str:
    a = table.attrs
    by = list(study.labels(a.get("by", [])).values())
    runs = a.get("runs", int(table["n"].sum()))
    text = f"{runs} run{'s' * (runs != 1)} in {len(table)} row{'s' * (len(table) != 1)}" + \
        (f" by {', '.join(by)}" if by else "")
    mixed = a.get("mixed") or {}
    text += ("; each row mixes " + ", ".join(study.short(c) for c in mixed) + " and seeds" if mixed
             else "; each row: its seeds")
    kinds = [m for m in a.get("metrics", []) if f"{m}_gmean" in table]
    if kinds:
        text += "; ratios: geometric mean ×/÷ geometric std, others mean ± std"
    else:
        text += "; mean ± std"
    return text


def terse_title(table: pd.DataFrame) -> str:
    """:func:`title`, saying which counts (diverged, failed) are left out because no run had one."""
    quiet = [c for c in ("diverged", "failed") if c not in counts(table, all_counts=False)]
    return title(table) + (f"; no run {' or '.join(quiet)}" if quiet else "")


def counts(table: pd.DataFrame, all_counts: bool) -> list[str]:
    """'n', and 'diverged' and 'failed' where some run did (always, with ``all_counts``)."""
    return ["n"] + [c for c in ("diverged", "failed") if all_counts or table[c].sum() > 0]


def _header(table: pd.DataFrame, all_counts: bool = True) -> list[str]:
    return list(study.labels(table.attrs.get("by", [])).values()) + counts(table, all_counts) + \
        list(table.attrs.get("metrics", []))


def rows(table: pd.DataFrame, all_counts: bool = True) -> list[list[str]]:
    by, metrics = table.attrs.get("by", []), table.attrs.get("metrics", [])
    shown = counts(table, all_counts)
    return [[study.value_text(row[c]) for c in by] + [str(int(row[c])) for c in shown]
            + [cell(row, m) for m in metrics] for _, row in table.iterrows()]


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table, preceded by its title line."""
    head, body = _header(table), rows(table)
    esc = [[c.replace("|", "\\|") for c in r] for r in [head] + body]
    widths = [max(len(r[i]) for r in esc) for i in range(len(head))]
    n_keys = len(table.attrs.get("by", []))

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i < n_keys else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) \
            + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i < n_keys else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([f"{title(table)}", "", line(esc[0]), rule, *map(line, esc[1:])]) + "\n"


def csv_text(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, float_format="%.17g")


def json_text(table: pd.DataFrame) -> str:
    """{"title", "by", "metrics", "mixed", "rows": [...]} with NaN as null."""
    records = json.loads(table.to_json(orient="records", double_precision=15))
    a = table.attrs
    return json.dumps({"title": title(table), "by": a.get("by", []), "metrics": a.get("metrics", []),
                       "mixed": a.get("mixed", {}), "rows": records}, indent=1) + "\n"


def show(table: pd.DataFrame, fmt: str | None = None, file=None) -> None:
    """Print ``table`` as ``fmt`` (default: a fitted table on a terminal, markdown when piped)."""
    from rich.console import Console

    file = file or sys.stdout
    if fmt is None:
        fmt = "table" if file.isatty() else "markdown"
    if fmt not in FORMATS:
        raise UserError(f"--format: one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "table":
        file.write({"markdown": markdown, "csv": csv_text, "json": json_text}[fmt](table))
        return
    console = Console(file=file, highlight=False)
    rich_table, dropped = fitted(table, console.width)
    console.print(rich_table)
    if dropped:
        analysis.note(f"left out to fit {console.width} columns: {', '.join(dropped)} "
                      f"(choose with --metrics, or see every column with --format markdown|csv|json)")


def fitted(table: pd.DataFrame, width: int):
    """A Rich table no wider than ``width``: the metrics that do not fit are left out (returned)."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    head, body = _header(table, all_counts=False), rows(table, all_counts=False)
    n_keys, n_fixed = len(table.attrs.get("by", [])), len(head) - len(table.attrs.get("metrics", []))
    caption = terse_title(table)

    def build(keep: int) -> Table:
        t = Table(title=caption, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
                  pad_edge=False, show_edge=False)
        for i, h in enumerate(head[:keep]):
            t.add_column(h, justify="left" if i < n_keys else "right", no_wrap=i >= n_keys, overflow="fold")
        for r in body:
            t.add_row(*r[:keep])
        return t

    console = Console(width=10_000)
    keep = len(head)
    while keep > n_fixed + 1:
        need = Measurement.get(console, console.options, build(keep)).maximum
        if need <= width:
            break
        keep -= 1
    return build(keep), head[keep:]


def check_csv_path(path: Path) -> None:
    """Refuse, before any work, a --csv path that names a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--csv {path}: a folder; give a file name, e.g. {path / 'compare.csv'}")
    check_creatable(path, "--csv")


def write_csv(table: pd.DataFrame, path: Path) -> None:
    from vgp.results import atomic_write

    check_csv_path(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), csv_text(table))
    except OSError as e:
        raise UserError(f"--csv {path}: cannot write it ({e.strerror or e})") from None
