"""``vgp report``: one self-contained HTML page for a run, several runs or a sweep, to send to someone.

The page holds what was read, what the runs differ in (the study's axes) and what they share, the
comparison table of :mod:`vgp.compare`, the diagnosis of each group (the verdicts its runs' summaries
recorded, counted, and their decay rates; for a few runs, each run's whole ``vgp diagnose`` text),
and the figures of :func:`vgp.plots.plot` as inline SVG. Nothing in it is fetched: CSS inline, no
script, no font or image file, no external URL, so that it opens the same offline, from an e-mail
attachment. Everything read from files is HTML-escaped (Jinja2's autoescape): a run name or a config
value is shown as text, never run as markup.

Cost: one study read and one comparison (a sweep's ``summary.csv``), the figures of ``plots.plot``
(the expensive part), and a full diagnosis only for up to :data:`FULL_DIAGNOSES` runs; the verdicts of
more runs come from their summaries, which ``vgp run`` already diagnosed.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from vgp import analysis, compare, study
from vgp.errors import UserError, clipped
from vgp.results import check_creatable

FULL_DIAGNOSES = 6  # up to this many runs, each run's whole diagnosis is in the page
# decay rates shown beside the verdicts (geometric mean ×/÷ geometric std over a group's runs)
RATES = {"decay_per_layer": "decay per layer, step 0", "decay_per_layer_last": "decay per layer, last step",
         "predicted_decay_per_layer": "decay per layer, theory", "decay_per_step": "decay per time step, step 0"}
VERDICTS = ("vanishing", "exploding", "healthy")


def output_path(paths: list[Path], out: Path | None) -> Path:
    """``out``, checked; default ``PATH/report.html`` for one folder (beside it for a summary CSV).
    A UserError, before any work, for an ``out`` that cannot be an HTML file."""
    if out is None:
        if len(paths) != 1:
            raise UserError("several paths: name the report with -o FILE.html")
        path = Path(paths[0])
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        out = (path if path.is_dir() else path.parent) / "report.html"
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o {out}: a folder; give a file name, e.g. {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"-o {out}: the report is HTML; give a name ending in .html")
    check_creatable(out, "-o")
    return out


def write(paths, out: Path | None = None, by: list[str] | None = None, where=(), warn=analysis.warn) -> Path:
    """Build the report of ``paths`` and write it atomically to ``out`` (:func:`output_path`)."""
    from vgp.results import atomic_write

    paths = [Path(p) for p in paths]
    out = output_path(paths, out)
    page = html(paths, by, where, warn)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, page)
    except OSError as e:
        raise UserError(f"-o {out}: cannot write it ({e.strerror or e})") from None
    return out


def html(paths, by: list[str] | None = None, where=(), warn=analysis.warn) -> str:
    """The page, as text. Warnings (runs left out, keys mixed inside a row) go to ``warn`` and into
    the page."""
    import jinja2

    from vgp import __version__

    paths = [Path(p) for p in paths]
    warnings: list[str] = []

    def keep(message: str) -> None:
        warnings.append(message)
        warn(message)

    loaded = study.load(paths, warn=keep)  # read once: for the table, the diagnoses and the figures
    table = compare.compare(paths, by=by, where=list(where), warn=keep, loaded=loaded)
    s = study.where(loaded, list(where))
    env = jinja2.Environment(loader=jinja2.PackageLoader("vgp", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    figures = _figures(paths, loaded, list(where), keep)
    diagnoses = _diagnoses(s)
    return env.get_template("report.html.j2").render(
        title=_title(paths), paths=[str(p) for p in paths], when=datetime.now().astimezone().strftime(
            "%Y-%m-%d %H:%M %Z"), version=__version__, statuses=_statuses(s), where=list(where),
        axes=_axes(s), declared=s.declared, seeds=_seeds(s), constant=_constant(s), warnings=warnings,
        comparison=_comparison(table), caption=compare.terse_title(table),
        diagnosis=_diagnosis(s, table, diagnoses), diagnoses=diagnoses, figures=figures)


# -- what was read -------------------------------------------------------------------------------

def _title(paths: list[Path]) -> str:
    names = ", ".join(p.name if p.name != "summary.csv" else p.parent.name for p in paths[:3])
    return names + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _statuses(s: study.Study) -> list[tuple[str, int]]:
    """[('completed', 210), ('diverged', 4), ('failed', 2)]: finished first, then the rest."""
    counts = s.table["status"].value_counts()
    order = [c for c in study.FINISHED if c in counts] + sorted(c for c in counts.index if c not in study.FINISHED)
    return [(c, int(counts[c])) for c in order]


def _axes(s: study.Study) -> list[dict]:
    """Each axis: its columns' short names and the values it takes (zipped columns together)."""
    out = []
    for axis in s.axes:
        cols = [c for c in axis if c in s.table]
        if not cols:
            continue
        combos = s.table[cols].drop_duplicates()
        combos = combos.sort_values(cols, key=study.sort_key, kind="stable")
        values = [" ".join(study.value_text(v) for v in row) for row in combos.itertuples(index=False)]
        out.append({"label": ", ".join(study.labels(cols).values()), "full": ", ".join(cols), "values": values})
    return out


def _seeds(s: study.Study) -> list[str]:
    if "seed" not in s.table:
        return []
    seeds = pd.Series(s.table["seed"].dropna().unique())
    return [study.value_text(v) for v in seeds.sort_values(key=study.sort_key)]


def _constant(s: study.Study) -> list[tuple[str, str]]:
    return [(k, study.value_text(v)) for k, v in s.constant().items() if k not in study.NOT_AXES]


# -- the comparison and the diagnosis ------------------------------------------------------------

def _comparison(table: pd.DataFrame) -> dict:
    """{'by': headers of the grouping columns, 'head': the other headers, 'rows': [(keys, cells)]}."""
    by, k = table.attrs["by"], len(table.attrs["by"])
    rows = [(r[:k], r[k:]) for r in compare.rows(table, all_counts=False)]  # the cells `vgp compare` prints
    return {"by": list(study.labels(by).values()), "head": compare.counts(table, all_counts=False)
            + list(table.attrs["metrics"]), "rows": rows}


def _members(s: study.Study, table: pd.DataFrame) -> list[list[int]]:
    """For each row of the comparison ``table``, the positions of its runs in the study's table
    (found by their key values in one pass: a mask per row would cost rows x runs)."""
    by = table.attrs["by"]
    if not by:
        return [list(range(len(s.table)))]

    def key(values):  # NaN never equals NaN: None stands for an empty key
        return tuple(None if pd.isna(v) else v for v in values)

    runs: dict[tuple, list[int]] = {}
    for i, values in enumerate(s.table[by].itertuples(index=False, name=None)):
        runs.setdefault(key(values), []).append(i)
    return [runs.get(key(values), []) for values in table[by].itertuples(index=False, name=None)]


def _counted(values: list, n: int) -> list[tuple[str, str]]:
    """[('3/3 vanishing', 'vanishing')]: each verdict's count over the ``n`` runs of a group, most
    first; a run with no verdict is counted as 'unfinished' (it has no summary yet) or 'no verdict'
    (an older run's summary)."""
    words = Counter("error" if str(v).startswith("error") else str(v) for v in values)
    return [(f"{k}/{n} {word}", word if word in VERDICTS else "other") for word, k in words.most_common()]


def _rate(values) -> str:
    g, gsd = study.gmean_gsd(values)
    return compare.cell({"r_gmean": g, "r_gsd": gsd}, "r")


def _diagnosis(s: study.Study, table: pd.DataFrame, diagnoses: list[dict]) -> dict:
    """Per row of the comparison: the verdicts at step 0 and at the last step, counted, and the decay
    rates over its finished runs (the summary columns each run's diagnosis wrote; for an unfinished
    run, the verdicts of its full diagnosis where there is one)."""
    t = s.table
    finished = t["status"].isin(study.FINISHED).to_numpy()
    folders = t["folder"].tolist() if "folder" in t else [None] * len(t)
    diagnosed = {d["folder"]: d for d in diagnoses if d["verdicts"]}

    def verdict(i: int, v, k: int) -> str:
        if isinstance(v, str) and v:
            return v
        if str(folders[i]) in diagnosed:
            return diagnosed[str(folders[i])]["verdicts"][k]
        return "no verdict" if finished[i] else "unfinished"

    verdicts = {c: [verdict(i, v, k) for i, v in enumerate(t[c] if c in t else [None] * len(t))]
                for k, c in enumerate(("verdict", "verdict_last"))}
    rates = {m: pd.to_numeric(t[m], errors="coerce").to_numpy(dtype=float) for m in RATES if m in t}
    rates = {m: v for m, v in rates.items() if np.isfinite(v).any()}
    errors = sorted({str(v) for vs in verdicts.values() for v in vs if str(v).startswith("error")})
    rows = []
    for members, keys in zip(_members(s, table), table[table.attrs["by"]].itertuples(index=False, name=None)):
        idx = np.asarray(members, dtype=int)
        done = idx[finished[idx]]
        rows.append(([study.value_text(k) for k in keys], str(len(idx)),
                     [_counted([vs[i] for i in idx], len(idx)) for vs in verdicts.values()],
                     [_rate(v[done]) for v in rates.values()]))
    return {"by": list(study.labels(table.attrs["by"]).values()), "rates": [RATES[m] for m in rates],
            "rows": rows, "overall": [_counted(vs, len(t)) for vs in verdicts.values()],
            "errors": [clipped(e, 300) for e in errors[:5]]}


def _diagnoses(s: study.Study) -> list[dict]:
    """Each run's whole diagnosis (``vgp diagnose``'s text), for up to FULL_DIAGNOSES runs."""
    from rich.text import Text

    if "folder" not in s.table or len(s.table) > FULL_DIAGNOSES:
        return []
    out = []
    for folder in s.table["folder"].dropna():
        try:
            d = analysis.diagnose(folder)
        except UserError as e:
            out.append({"folder": str(folder), "text": None, "error": str(e), "verdicts": None})
            continue
        text = analysis.report(d)
        try:
            text = Text.from_markup(text).plain
        except Exception:  # noqa: BLE001 - a name with brackets rich reads as markup: shown as it is
            pass
        out.append({"folder": str(folder), "text": text, "error": None, "verdicts": (d["verdict"], d["verdict_last"])})
    return out


# -- figures -------------------------------------------------------------------------------------

def _figures(paths: list[Path], s: study.Study, where: list[str], warn) -> list[dict]:
    """Every figure ``plots.plot`` draws (kind 'all') for the runs ``s`` (as loaded, before ``where``),
    as inline SVG: [{'name', 'svg' | 'error'}]. A kind that fails is shown as its message."""
    from vgp import plots

    if "folder" not in s.table or s.table["folder"].isna().all():
        return [{"name": "figures", "svg": None, "error": "no run folder to draw (summary CSVs only)"}]
    with tempfile.TemporaryDirectory(prefix="vgp-report-") as tmp:
        try:
            files = plots.plot(paths, "all", out=Path(tmp), fmt="svg", warn=warn, study=s, where=where)
            failed = []
        except UserError as e:  # one kind failed: draw each alone, to show the others
            files, failed = [], [{"name": "figures", "svg": None, "error": str(e)}]
            for kind in plots.KINDS:
                try:
                    files += plots.plot(paths, kind, out=Path(tmp) / f"{kind}.svg", fmt="svg", warn=lambda _: None,
                                        study=s, where=where)
                except UserError as e:
                    failed.append({"name": kind, "svg": None, "error": str(e)})
        figures = [{"name": Path(f).stem, "svg": inline_svg(Path(f).read_text(encoding="utf-8"), f"f{i}-"),
                    "error": None} for i, f in enumerate(files) if Path(f).suffix == ".svg"]
    return figures + failed


_PROLOG = re.compile(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<metadata>.*?</metadata>", re.S)
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def inline_svg(text: str, prefix: str) -> str:
    """An SVG file as markup to put inside HTML: without its XML prolog, DOCTYPE and metadata (which
    names matplotlib's web site), every id prefixed (matplotlib numbers ids the same way in every
    figure: 'patch_1', and clip paths by a hash of the rectangle, so two figures share ids and a
    reference would reach into the wrong one)."""
    text = _PROLOG.sub("", text).strip()
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
