"""Facets: how the runs of a study are split over one figure, so that hundreds of runs stay readable.

Words used (as in seaborn and ggplot2):

* **hue**: the key whose values get one colour each (``--hue activation``: sigmoid, tanh, relu);
* **col**, **row**: the keys whose values get one panel each, side by side and one above the other;
* **facet**: one of these, a study axis (:mod:`vgp.study`): one config column, or the columns of a
  zip walked together, labelled as one ("optimizer=sgd, lr=0.1");
* **group**: the runs with one value of every facet (and of the x key, for the summary), which is one
  line, one point or one panel: a row of ``vgp compare``'s table. Its runs are averaged, with a band.

Defaults come from the axes the sweep declared: the hue is the first axis that is not on the x axis,
then col, then row. The axes left over are averaged over with the seeds, and the figure's title
says so ("3 seeds and optimizer (sgd, adam)"), as a warning line does. A layer axis is never averaged
over nets of different depths: ``model.depth`` takes the first free facet when it varies.

More than :data:`MAX_COLOURS` values of a text hue, or more than :data:`MAX_PANELS` panels, is a
UserError saying what to do; a numeric hue with many values is drawn with a colour bar instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vgp import study as studies
from vgp.errors import UserError

MAX_COLOURS = 12  # text values one legend can tell apart by colour
MAX_PANELS = 36  # panels in one figure (6 x 6)
DEPTH = "model.depth"
NONE = "none"  # --col none: no facet there (its axis is averaged over)
# constant keys worth naming in a title: what a reader needs to know the runs were
TITLE_KEYS = ("model.arch", "model.depth", "model.width", "model.activation.name", "model.init.name", "model.norm",
              "model.norm_position", "model.skip", "model.residual_scale", "data.name", "train.optimizer.name",
              "train.optimizer.lr")
# colour-blind-safe qualitative colours: matplotlib's tab10, then two more
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#aec7e8"]


value_text = studies.value_text


@dataclass
class Facet:
    """One axis of a study put on the hue, the panels or the x axis: its ``columns`` (several for a
    zip), ``values`` (one tuple per value, sorted: numbers as numbers) and their short ``names``."""

    columns: list[str]
    values: list[tuple]
    names: list[str]

    @property
    def name(self) -> str:
        return ", ".join(self.names)

    @property
    def numeric(self) -> bool:
        return len(self.columns) == 1 and all(isinstance(v[0], (int, float, np.number)) and not isinstance(v[0], bool)
                                              and math.isfinite(float(v[0])) for v in self.values)

    def text(self, value: tuple) -> str:
        """'optimizer=sgd, lr=0.1'."""
        return ", ".join(f"{n}={value_text(v)}" for n, v in zip(self.names, value))

    def short(self, value: tuple) -> str:
        """'sgd, 0.1' (the legend's title names the keys)."""
        return ", ".join(value_text(v) for v in value)


def facet(table: pd.DataFrame, axes: list[list[str]], key: str, option: str) -> Facet:
    """The facet a key names: its whole axis when it is one of the study's (``--hue lr`` colours by the
    optimizer and lr zipped with it), else that one column."""
    column = key if key in table.columns else studies.resolve(table, key, f"--{option}")
    columns = next((a for a in axes if column in a), [column])
    return make(table, columns)


def make(table: pd.DataFrame, columns: list[str]) -> Facet:
    """The facet of ``columns``: numbers sorted by value, text in the order the runs come (a sweep's
    summary lists them in the order its file declares: sigmoid, tanh, relu)."""
    keys = table[columns].drop_duplicates()
    if all(pd.to_numeric(keys[c], errors="coerce").notna().sum() == keys[c].notna().sum() for c in columns):
        keys = keys.sort_values(columns, key=studies.sort_key, kind="stable", na_position="last")
    values = [tuple(_plain(v) for v in row) for row in keys.itertuples(index=False)]
    names = studies.labels(columns)
    return Facet(list(columns), values, [names[c] for c in columns])


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


@dataclass
class Plan:
    """The runs of ``table`` split by facets: ``x`` (summary only), ``hue``, ``col``, ``row`` (each a
    Facet or None), ``mixed`` (keys averaged over beyond the seeds: {column: values}) and
    ``dropped`` (axes that would have been facets by default but did not fit: averaged over). A
    group's key is the tuple of its x, hue, col and row values (() for a facet not used)."""

    table: pd.DataFrame
    x: Facet | None
    hue: Facet | None
    col: Facet | None
    row: Facet | None
    mixed: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)  # default facets averaged over to fit one figure

    @property
    def facets(self) -> list[Facet]:
        return [f for f in (self.x, self.hue, self.col, self.row) if f is not None]

    @property
    def by(self) -> list[str]:
        return [c for f in self.facets for c in f.columns]

    def key(self, f: Facet | None, frame: pd.DataFrame | None = None) -> pd.Series:
        """Per row of ``frame`` (default the table), its value of facet ``f`` as a tuple (() for None)."""
        frame = self.table if frame is None else frame
        if f is None:
            return pd.Series([()] * len(frame), index=frame.index, dtype=object)
        cols = [[_plain(v) for v in frame[c].tolist()] for c in f.columns]  # NaN -> None, as in Facet.values
        return pd.Series(list(zip(*cols)), index=frame.index, dtype=object)

    def panels(self) -> list[tuple[tuple, tuple]]:
        """(col value, row value) of every panel, row by row."""
        cols = self.col.values if self.col else [()]
        rows = self.row.values if self.row else [()]
        return [(c, r) for r in rows for c in cols]

    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the panel grid."""
        return (len(self.row.values) if self.row else 1), (len(self.col.values) if self.col else 1)

    def panel_title(self, c: tuple, r: tuple) -> str:
        return "\n".join(t for t in ((self.col.text(c) if self.col else ""), (self.row.text(r) if self.row else ""))
                         if t)

    def averaged(self, counts, centre: str = "mean", band: str | None = "min-max") -> str:
        """'line: mean, band: min-max over 3 runs (3 seeds)', or '... over 6 runs (3 seeds and optimizer
        (sgd, adam))' where keys not on a facet differ too; ``counts``: the runs behind each line drawn."""
        counts = [int(n) for n in counts if n]
        if not counts:
            return ""
        lo, hi = min(counts), max(counts)
        if hi <= 1:
            return "one run per line" if band else "one run per panel"
        n = f"{lo}" if lo == hi else f"{lo}-{hi}"
        seeds = self.table["seed"].nunique() if "seed" in self.table else 1
        parts = [f"{seeds} seeds"] if seeds > 1 else []
        parts += [f"{studies.short(c)} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})"
                  for c, v in self.mixed.items()]
        over = f" ({' and '.join(parts)})" if parts else ""
        fit = f"; {' and '.join(self.dropped)} averaged over to fit one figure (choose with --hue, --col, --row)" \
            if self.dropped else ""
        if band is None:
            return f"{centre} over {n} runs{over}{fit}"
        return f"line: {centre}, band: {band} over {n} runs{over}{fit}"


def plan(s: studies.Study, kind: str, x=None, hue=None, col=None, row=None, layered: bool = False,
         panels_only: bool = False) -> Plan:
    """The facets of a figure of kind ``kind`` for study ``s``: the keys given (config keys, short
    names allowed; ``none``: no facet), the rest from the study's axes in order. ``layered``: the figure has a layer axis,
    so nets of different depths are never averaged together. UserError for an unknown key, a key given
    twice, or more colours or panels than fit."""
    table, axes = s.table, [a for a in s.axes if all(c in s.table for c in a)]
    given = {"x": x, "hue": hue, "col": col, "row": row}
    chosen: dict[str, Facet | None] = {k: facet(table, axes, v, k) if v and v != NONE else None
                                       for k, v in given.items()}
    used = [c for f in chosen.values() if f for c in f.columns]
    for k, f in chosen.items():
        others = [c for k2, f2 in chosen.items() if f2 and k2 != k for c in f2.columns]
        if f and set(f.columns) & set(others):
            raise UserError(f"--{k} {given[k]}: already on another facet; give each key once")
    free = [a for a in axes if not set(a) & set(used)]
    if kind == "summary" and chosen["x"] is None:
        numeric = [a for a in free if len(a) == 1 and pd.api.types.is_numeric_dtype(table[a[0]])
                   and a[0] != "source"]
        pick = (numeric or free or [None])[0]
        if pick is None:
            raise UserError("the runs differ in no config key but the seed: name the x axis with --x KEY")
        chosen["x"] = make(table, pick)
        free = [a for a in free if a != pick]
    if chosen["x"] is not None:  # an axis that x already tells apart (sigma_w^2 from the activation) is no facet
        free = [a for a in free if not _one_to_one(table, chosen["x"].columns, a)]
    for k in ("hue", "col", "row"):
        if chosen[k] is None and free and given[k] is None:
            chosen[k] = make(table, free.pop(0))
    if layered and DEPTH in table and studies._differs(table[DEPTH]) and DEPTH not in \
            [c for f in chosen.values() if f for c in f.columns]:
        slot = next((k for k in ("row", "col", "hue") if given[k] is None), None)
        if slot is None:
            raise UserError("the runs have different depths, and layers of different nets cannot be averaged: "
                            "put depth on --hue, --col or --row, or keep one with --where depth=N")
        if chosen[slot] is not None:
            free.insert(0, chosen[slot].columns)
        chosen[slot] = facet(table, axes, DEPTH, slot)
    # defaults that do not fit are averaged over instead (and said so); what was asked for is refused
    defaulted = [k for k in ("row", "col", "hue") if given[k] is None and chosen[k] is not None
                 and not (layered and DEPTH in chosen[k].columns)]
    dropped = []
    while True:
        p = Plan(table, chosen["x"], chosen["hue"], chosen["col"], chosen["row"])
        problem = _too_big(p, s, panels_only)
        if problem is None:
            break
        if not defaulted:
            raise UserError(problem)
        k = defaulted.pop(0)
        dropped.append(chosen[k].name)
        chosen[k] = None
    p.dropped = dropped
    p.mixed = studies.mixed(s, p.by) if len(table) > 1 else {}
    return p


def _one_to_one(table: pd.DataFrame, a: list[str], b: list[str]) -> bool:
    def text(cols):  # one string per row (map(str): NaN is 'nan', which astype(str) keeps as NaN in pandas 3)
        return pd.Series(["|".join(t) for t in zip(*(table[c].map(str) for c in cols))], index=table.index)

    pairs = pd.DataFrame({"a": text(a), "b": text(b)}).drop_duplicates()
    return bool(pairs["a"].is_unique and pairs["b"].is_unique)


def _too_big(p: Plan, s: studies.Study, panels_only: bool) -> str | None:
    """Why ``p`` does not fit in one figure (too many colours or panels), or None."""
    varied = ", ".join(studies.labels([c for a in s.axes for c in a]).values()) or "none"
    if not panels_only and p.hue and len(p.hue.values) > MAX_COLOURS and not p.hue.numeric:
        return (f"--hue {p.hue.name}: {len(p.hue.values)} values, more than {MAX_COLOURS} colours can tell "
                f"apart: keep some with --where {p.hue.names[0]}=VALUE, or colour by another key with "
                f"--hue KEY (the keys varied: {varied})")
    n = len(panels(p, panels_only))
    if n > MAX_PANELS:
        sizes = " x ".join(f"{len(f.values)} {f.name}" for f in ([p.hue] if panels_only and p.hue else []) +
                           [f for f in (p.col, p.row) if f])
        return (f"{n} panels ({sizes}), more than {MAX_PANELS} fit in one figure: keep fewer runs with "
                f"--where KEY=VALUE, or choose the facets with --hue, --col and --row (the keys varied: {varied})")
    return None


def panels(p: Plan, with_hue: bool = False) -> list[tuple[tuple, tuple, tuple]]:
    """(hue, col, row) values of every panel; with ``with_hue`` one panel per hue value too (heatmaps,
    whose colour is the data): the groups that have runs."""
    hues = (p.hue.values if p.hue else [()]) if with_hue else [()]
    present = set(zip(p.key(p.hue), p.key(p.col), p.key(p.row))) if with_hue else None
    out = []
    for c, r in p.panels():
        for h in hues:
            if present is None or (h, c, r) in present:
                out.append((h, c, r))
    return out


def colours(f: Facet | None) -> dict:
    """A colour per value: qualitative for text, viridis (in order) for numbers."""
    import matplotlib.pyplot as plt

    if f is None:
        return {(): PALETTE[0]}
    n = len(f.values)
    if f.numeric:
        if n > MAX_COLOURS:  # by value, read off a colour bar
            norm = colour_norm(f)
            return {v: plt.cm.viridis(0.9 * norm(float(v[0]))) for v in f.values}
        return {v: plt.cm.viridis(0.9 * i / max(n - 1, 1)) for i, v in enumerate(f.values)}
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(f.values)}


def colour_norm(f: Facet):
    import matplotlib.colors as mcolors

    vals = np.array([float(v[0]) for v in f.values])
    if (vals > 0).all() and vals.max() / vals.min() > 100:
        return mcolors.LogNorm(vals.min(), vals.max())
    return mcolors.Normalize(vals.min(), vals.max())


def fixed_text(s: studies.Study, where=()) -> str:
    """'where depth=20; arch=mlp, width=128, data=teacher': the conditions, then the constant keys
    that say what the runs were (norm, skip and residual scaling only when they are on; keys only where
    the runs' architecture uses them)."""
    const = s.constant()  # a key blank for some runs (an LSTM's activation) is not constant over them
    named = set()
    for item in where:
        try:
            named.add(studies.resolve(s.table, item.partition("=")[0].strip()))
        except UserError:
            pass
    keys = [k for k in TITLE_KEYS if k in const and k not in named and s.table[k].notna().all()
            and not (k in ("model.norm", "model.residual_scale") and const[k] == "none")
            and not (k == "model.skip" and not const[k])]
    names = studies.labels(keys)
    parts = [f"{names[k]}={value_text(_plain(const[k]))}" for k in keys]
    return "; ".join(t for t in ("where " + ", ".join(where) if where else "", ", ".join(parts)) if t)


def warn_mixed(p: Plan, warn) -> None:
    """A warning line, as ``vgp compare`` gives, when a line averages over more than seeds."""
    if p.mixed:
        keys = "; ".join(f"{studies.short(c)} ({', '.join(v[:6])}{', ...' if len(v) > 6 else ''})"
                         for c, v in p.mixed.items())
        warn(f"each line also averages over {keys}, besides seeds (put it on --hue, --col or --row, or keep "
             f"one value with --where)")


def group_ids(p: Plan, frame_runs: pd.Series) -> pd.Series:
    """For rows of a run-level frame (a ``run`` column: table index), their group key."""
    keys = pd.Series(list(zip(p.key(p.x), p.key(p.hue), p.key(p.col), p.key(p.row))), index=p.table.index,
                     dtype=object)
    return frame_runs.map(keys)
