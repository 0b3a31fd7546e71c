"""Figures of many runs, split by facet (:mod:`vgp.facets`): one colour per value of the hue key, one
panel per value of the col and row keys, the runs of a line (seeds, and whatever else was not put on
a facet, which the title names) drawn as a centre line and a band.

* gradient norms and other ratios (:func:`vgp.study.is_log_metric`) are averaged in log space: the
  line is the geometric mean and the band min-max (the same in log space); a norm of exactly 0
  (float32 underflow) makes the geometric mean 0, which a log axis cannot show: counted in the title;
* losses and accuracies: arithmetic mean, band min-max;
* heatmaps: one panel per group, the geometric mean per cell, one colour scale for all panels;
* every legend lies outside the panels, with the number of runs behind each colour.

Each function returns a matplotlib Figure (drawn, not saved), so that tests can read the lines back.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.lines import Line2D

from vgp import facets, study as studies
from vgp.errors import UserError
from vgp.rundata import RunFiles

VIRIDIS = ListedColormap(plt.cm.viridis(np.linspace(0, 0.9, 256)))  # without the yellow end, pale on white
HEAT = plt.cm.viridis.with_extremes(bad="lightgrey")
STYLES = ["-", ":", "-.", (0, (5, 1))]
PANEL_W, PANEL_H = 3.5, 2.6


@dataclass
class Data:
    """What the figures of one study draw: the study (after --where), its runs' files (None when only
    summaries are needed), what the title says was fixed."""

    s: studies.Study
    files: RunFiles | None
    fixed: str


# -- aggregating ---------------------------------------------------------------------------------

def aggregate(frame: pd.DataFrame, keys: list[str], column: str, log: bool) -> pd.DataFrame:
    """Per group of ``keys``: ``centre`` (geometric mean if ``log``, else mean, of the finite values;
    0 when one of them is 0 in log space), ``lo``/``hi`` (min, max), ``n`` (finite values), ``zeros``
    and ``bad`` (non-finite values)."""
    v = frame[column].to_numpy(dtype=float)
    finite = np.isfinite(v)
    df = frame[keys].copy()
    df["v"] = np.where(finite, v, np.nan)
    df["bad"] = ~finite
    df["zero"] = v == 0
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            df["lv"] = np.where(finite & (v > 0), np.log(np.where(v > 0, v, 1.0)), np.nan)
    g = df.groupby(keys, sort=False, dropna=False)
    out = g.agg(lo=("v", "min"), hi=("v", "max"), n=("v", "count"), bad=("bad", "sum"), zeros=("zero", "sum"),
                **({"lv": ("lv", "mean"), "mean": ("v", "mean")} if log else {"mean": ("v", "mean")}))
    if log:
        out["centre"] = np.where(out["zeros"] > 0, 0.0, np.exp(out["lv"]))
    else:
        out["centre"] = out["mean"]
    return out.reset_index()


def _positive(y) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return np.where(np.isfinite(y) & (y > 0), y, np.nan)


def band(ax, x, lo, hi, colour, alpha: float = 0.18) -> None:
    """A min-max band (what ``fill_between`` draws, broken where a bound is missing), added without
    ``fill_between``'s immediate autoscaling, which with shared axes cost O(panels) per band: the
    band's corners go into the data limits, which the next draw scales to."""
    from matplotlib.collections import PolyCollection

    x, lo, hi = (np.asarray(v, dtype=float) for v in (x, lo, hi))
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    polys, start = [], None
    for i in range(len(x) + 1):
        if i < len(x) and ok[i]:
            start = i if start is None else start
        elif start is not None:
            seg = slice(start, i)
            polys.append(np.concatenate([np.column_stack([x[seg], lo[seg]]),
                                         np.column_stack([x[seg], hi[seg]])[::-1]]))
            start = None
    if not polys:
        return
    ax.add_collection(PolyCollection(polys, facecolors=colour, alpha=alpha, linewidths=0), autolim=False)
    ax.update_datalim(np.concatenate(polys))
    ax._request_autoscale_view()


def _with_groups(p: facets.Plan, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[frame["run"].isin(p.table.index)].copy()
    frame["g"] = facets.group_ids(p, frame["run"]).to_numpy()
    return frame


# -- the figure: panels, legend and title laid out in inches ---------------------------------------

def legend_width(labels, title: str | None = None) -> float:
    """Inches a legend of these labels takes at font size 8 (handle, gap and text)."""
    lines = [line for text in list(labels) + [title or ""] for line in str(text).split("\n")]
    return 0.75 + 0.068 * max((len(line) for line in lines), default=0)


class Layout:
    """A figure laid out in inches (no layout engine: matplotlib's constrained layout took more than
    half the time of drawing a sweep): the title on top, left-aligned and wrapped to the figure's
    width; ``nrows`` x ``ncols`` panels of ``w`` x ``h``; a column of ``right`` inches on the right
    for the legend or colour bar, so that neither ever lies over the data."""

    def __init__(self, nrows: int, ncols: int, title: list[str], right: float, w: float = PANEL_W,
                 h: float = PANEL_H, panel_title_lines: int = 1, sharex: bool = False, sharey: bool = False):
        gap_w = 0.3 if sharey else 0.75
        gap_h = 0.15 * panel_title_lines + (0.25 if sharex else 0.6)
        left, bottom = 0.85, 0.6
        width, height = ncols * w + (ncols - 1) * gap_w, nrows * h + (nrows - 1) * gap_h
        W = left + width + right
        lines = [wrapped for line in title if line
                 for wrapped in textwrap.wrap(line, max(40, int((W - 0.2) * 14)), subsequent_indent="  ")]
        top = 0.2 + 0.17 * len(lines) + 0.15 * panel_title_lines
        H = top + height + bottom
        self.fig = plt.figure(figsize=(W, H))
        gs = self.fig.add_gridspec(nrows, ncols, left=left / W, right=(left + width) / W, bottom=bottom / H,
                                   top=(bottom + height) / H, wspace=gap_w / w, hspace=gap_h / h)
        self.axes = gs.subplots(sharex=sharex, sharey=sharey, squeeze=False)
        self.fig.text(0.1 / W, 1 - 0.1 / H, "\n".join(lines), ha="left", va="top", fontsize=9)
        self.W, self.H, self.height = W, H, height
        self.x_right, self.y_top = (left + width + 0.2) / W, (bottom + height) / H

    def legend(self, handles, labels, title: str | None = None, below: float = 0.0) -> None:
        if handles:
            self.fig.legend(handles, labels, loc="upper left",
                            bbox_to_anchor=(self.x_right, self.y_top - below / self.H),
                            borderaxespad=0, fontsize=8, title=title, title_fontsize=8, frameon=False,
                            alignment="left")

    def colorbar(self, mappable, label: str) -> float:
        """A colour bar at the top of the right column; returns the inches it takes."""
        h = min(self.height, 3.5)
        cax = self.fig.add_axes((self.x_right, self.y_top - h / self.H, 0.15 / self.W, h / self.H))
        self.fig.colorbar(mappable, cax=cax, label=label)
        return h + 0.3

    def panels(self, n: int) -> list:
        """The first ``n`` panels, row by row; the others are hidden."""
        flat = list(self.axes.flat)
        for ax in flat[n:]:
            ax.set_visible(False)
        return flat[:n]


def shape(p: facets.Plan) -> tuple[int, int]:
    """(rows, columns) of the panels of ``p``: col x row, or for many col values alone, wrapped."""
    nrows, ncols = p.shape()
    if p.row is None and ncols > 6:
        ncols = math.ceil(math.sqrt(ncols))
        nrows = math.ceil(len(p.panels()) / ncols)
    return nrows, ncols


def hue_entries(p: facets.Plan, counts: dict) -> tuple[list, list, bool]:
    """Legend handles and labels of the hue's values ('tanh  (n=12)'), and whether a colour bar
    stands for them instead (a numeric hue with more values than a legend tells apart)."""
    if p.hue is None:
        return [], [], False
    if p.hue.numeric and len(p.hue.values) > facets.MAX_COLOURS:
        return [], [], True
    colours = facets.colours(p.hue)
    values = [v for v in p.hue.values if counts.get(v)]
    return ([Line2D([], [], color=colours[v], marker="o", ms=4, lw=1.5) for v in values],
            [f"{p.hue.short(v)}  (n={counts[v]})" for v in values], False)


def decorate(layout: Layout, p: facets.Plan, counts: dict, extra=()) -> None:
    """The legend of the hue (or its colour bar) and the ``extra`` (handle, label) pairs."""
    handles, labels, bar = hue_entries(p, counts)
    below = 0.0
    if bar:
        sm = plt.cm.ScalarMappable(norm=facets.colour_norm(p.hue), cmap=VIRIDIS)
        below = layout.colorbar(sm, f"{p.hue.name}  (n = {sum(counts.values())} runs)")
    handles += [h for h, _ in extra]
    labels += [label for _, label in extra]
    layout.legend(handles, labels, title=p.hue.name if p.hue and not bar else None, below=below)


def right_margin(p: facets.Plan, counts: dict, extra_labels=()) -> float:
    _, labels, bar = hue_entries(p, counts)
    return max(legend_width(list(labels) + list(extra_labels), p.hue.name if p.hue else None), 1.4 if bar else 0)


def panel_axes(layout: Layout, p: facets.Plan) -> dict:
    """{(col value, row value): its Axes}, each titled with its values."""
    cells = p.panels()
    out = {}
    for ax, (c, r) in zip(layout.panels(len(cells)), cells):
        out[(c, r)] = ax
        title = p.panel_title(c, r)
        if title:
            ax.set_title(title, fontsize=8, y=1.0, pad=3)  # y given: no costly automatic placement
    return out


def label_axes(axes, xlabel: str, ylabel: str, bottom_only: bool = False) -> None:
    """Axis labels: y on the first column, x on every panel (``bottom_only``: on the last row, for
    panels sharing their x axis)."""
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            ax.set_ylabel(ylabel, fontsize=8)
        if not bottom_only or spec.is_last_row():
            ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)


def no_minor(axis) -> None:
    """No minor ticks: on log axes over 40 decades they were most of the drawing time."""
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def log_y(ax) -> None:
    """Log y; minor ticks (and their labels) only where the data span under 3 decades."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 1e3:
        no_minor(ax.yaxis)


def step_ticks(ax, steps) -> None:
    """Training steps under the columns of a heatmap (every one up to 8, else 6 evenly spread)."""
    n = len(steps)
    ticks = list(range(n)) if n <= 8 else sorted({int(i * (n - 1) / 5 + 0.5) for i in range(6)})
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])


def masked_note(zeros: int, bad: int) -> str:
    parts = ([f"{zeros} zero (underflow)"] if zeros else []) + ([f"{bad} NaN/inf (diverged)"] if bad else [])
    return f"not drawn: {', '.join(parts)} values" if parts else ""


def unfinished_note(d: Data, runs) -> str:
    n = sum(1 for r in set(runs) if d.files is not None and r in d.files.unfinished)
    return f"{n} of {len(set(runs))} runs unfinished: drawn as far as they got" if n else ""


def integer_ticks(axis) -> None:
    axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))


def _hue_counts(p: facets.Plan, frame: pd.DataFrame) -> tuple[dict, list[int]]:
    """Runs per hue value and per line (group) in a run-level frame with a 'g' column."""
    per_group = frame.groupby("g", sort=False)["run"].nunique()
    hues: dict = {}
    for g, n in per_group.items():
        hues[g[1]] = hues.get(g[1], 0) + int(n)
    return hues, list(per_group.to_numpy())


def title(what: str, d: Data, p: facets.Plan, counts, centre: str, notes=(), band: str | None = "min-max") -> list:
    return [what] + [t for t in (d.fixed, p.averaged(counts, centre, band)) if t] + [n for n in notes if n]


# -- profiles: a norm against layer (or time step), one line per group ----------------------------------

def first_steps(frame: pd.DataFrame, steps) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per step drawn: the first step each run recorded, or each of ``steps``, which every
    run must have recorded (a UserError naming one that has not)."""
    if not steps:
        first = frame.groupby("run")["step"].transform("min")
        chosen = frame[frame["step"] == first]
        label = sorted(chosen["step"].unique())
        return [(f"step {label[0]}" if len(label) == 1 else "first recorded step", chosen)]
    if len(steps) > len(STYLES):
        raise UserError(f"--steps: at most {len(STYLES)} steps for several runs (one line style each)")
    out = []
    have = frame.groupby("run")["step"].agg(lambda s: set(s.tolist()))
    for step in steps:
        lacking = [r for r, s in have.items() if step not in s]
        if lacking:
            recorded = sorted(have[lacking[0]])
            raise UserError(f"step {step} not recorded by {len(lacking)} of {len(have)} runs (one records "
                            f"{recorded[0]}..{recorded[-1]}, {len(recorded)} steps)")
        out.append((f"step {step}", frame[frame["step"] == step]))
    return out


def profile(d: Data, p: facets.Plan, frame: pd.DataFrame, xcol: str, what: str, xlabel: str, ylabel: str,
            steps=None, theory: bool = False) -> plt.Figure:
    """``value`` against ``xcol`` (layer or t), log y: per group the geometric mean and its min-max band,
    at the first recorded step (or ``steps``, one line style each); the mean-field decay rate dashed."""
    frame = _with_groups(p, frame)
    if frame.empty:
        raise UserError("no gradient norms recorded by these runs")
    chosen = first_steps(frame, steps)
    aggs = [aggregate(rows, ["g", xcol], "value", log=True) for _, rows in chosen]
    counts, per_line = _hue_counts(p, chosen[0][1])
    rates = _predicted_rates(d, p) if theory else {}
    extra = [(Line2D([], [], color="k", ls=STYLES[k]), label) for k, (label, _) in enumerate(chosen)] \
        if len(chosen) > 1 else []
    if rates:
        extra.append((Line2D([], [], color="k", ls="--", lw=1), "mean-field decay rate\n(from the last hidden layer)"))
    zeros, bad = sum(int(a["zeros"].sum()) for a in aggs), sum(int(a["bad"].sum()) for a in aggs)
    step_text = ", ".join(label for label, _ in chosen)
    nrows, ncols = shape(p)
    layout = Layout(nrows, ncols, title(f"{what}, {step_text}", d, p, per_line, "geometric mean",
                                        [masked_note(zeros, bad), unfinished_note(d, frame["run"])]),
                    right_margin(p, counts, [label for _, label in extra]), sharey=True,
                    panel_title_lines=len([f for f in (p.col, p.row) if f]))
    panel = panel_axes(layout, p)
    colours = facets.colours(p.hue)
    for k, agg in enumerate(aggs):
        for g, sub in agg.groupby("g", sort=False):
            sub = sub.sort_values(xcol)
            ax, colour = panel[(g[2], g[3])], colours[g[1]]
            xs, centre = sub[xcol].to_numpy(), sub["centre"].to_numpy(dtype=float)
            ax.plot(xs, _positive(centre), "o", ls=STYLES[k], ms=2.5, lw=1.3, color=colour)
            if (sub["n"] > 1).any():
                band(ax, xs, _positive(sub["lo"]), _positive(sub["hi"]), colour)
            rate = rates.get(g)
            if k == 0 and rate and len(xs) >= 3 and centre[-2] > 0 and math.isfinite(centre[-2]):
                hidden = xs[:-1]
                ax.plot(hidden, centre[-2] * rate ** (hidden[-1] - hidden), "--", color=colour, lw=1, alpha=0.9)
    for ax in panel.values():
        log_y(ax)
        integer_ticks(ax.xaxis)
    label_axes(panel.values(), xlabel, ylabel)
    decorate(layout, p, counts, extra)
    return layout.fig


def _predicted_rates(d: Data, p: facets.Plan) -> dict:
    """Per group, the geometric mean of the runs' ``predicted_decay_per_layer`` (their summaries), where
    every run of the group has one (plain MLPs; not a group that mixes settings the theory tells apart)."""
    col = "predicted_decay_per_layer"
    if col not in p.table:
        return {}
    t = p.table
    v = pd.to_numeric(t[col], errors="coerce")
    keys = pd.Series(list(zip(p.key(p.x), p.key(p.hue), p.key(p.col), p.key(p.row))), index=t.index)
    out = {}
    for g, vals in v.groupby(keys, sort=False):
        vals = vals.to_numpy()
        if np.isfinite(vals).all() and (vals > 0).all() and vals.max() / vals.min() < 1.0001:
            out[g] = float(np.exp(np.log(vals).mean()))
    return out


# -- heatmaps: one panel per group, one colour scale ----------------------------------------------

def group_cells(p: facets.Plan, present) -> tuple[list, int, int]:
    """The (hue, col, row) of every group that has runs, and the (rows, columns) of their panels: one
    column per hue value (up to 6), else wrapped."""
    hues = p.hue.values if p.hue else [()]
    cells = [(h, c, r) for (c, r) in p.panels() for h in hues if (h, c, r) in present]
    ncols = len(hues) if 1 < len(hues) <= 6 else min(len(cells), 6 if len(cells) > 16 else 4)
    return cells, math.ceil(len(cells) / ncols), ncols


def cell_title(p: facets.Plan, cell: tuple, n: int) -> str:
    """'activation=relu' over 'init=default, depth=5  (n=6)'."""
    h, c, r = cell
    first = p.hue.text(h) if p.hue else ""
    rest = ", ".join(f.text(v) for f, v in ((p.col, c), (p.row, r)) if f is not None)
    return "\n".join(t for t in (first, rest) if t) + f"  (n={n})"


def heatmap(d: Data, p: facets.Plan, frame: pd.DataFrame, ycol: str, what: str, ylabel: str) -> plt.Figure:
    """log10 of the geometric mean of ``value`` over ``ycol`` (layer, t) x training step, one panel per
    group (hue, col, row), all panels on one colour scale."""
    frame = _with_groups(p, frame)
    if frame.empty:
        raise UserError("no gradient norms recorded by these runs")
    agg = aggregate(frame, ["g", ycol, "step"], "value", log=True)
    tables = {(g[1], g[2], g[3]): sub.pivot_table(index=ycol, columns="step", values="centre", aggfunc="first")
              for g, sub in agg.groupby("g", sort=False)}
    cells, nrows, ncols = group_cells(p, tables)
    logs = {}
    for cell, t in tables.items():
        v = t.to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs[cell] = np.log10(np.where(np.isfinite(v) & (v > 0), v, np.nan))
    finite = np.concatenate([x[np.isfinite(x)] for x in logs.values()])
    norm = Normalize(finite.min(), finite.max()) if len(finite) else Normalize(0, 1)
    masked = sum(int((~np.isfinite(x)).sum()) for x in logs.values())
    counts = frame.groupby("g", sort=False)["run"].nunique()
    runs_of = {(g[1], g[2], g[3]): int(n) for g, n in counts.items()}
    layout = Layout(nrows, ncols, title(f"log10 {what} by {ylabel} and training step: one panel per group", d, p,
                                        list(counts.to_numpy()), "geometric mean per cell",
                                        [f"grey: {masked} cells whose mean is 0 or NaN/inf" if masked else "",
                                         unfinished_note(d, frame["run"])], band=None),
                    1.3, w=3.0, h=2.2, panel_title_lines=2)
    mesh = None
    for k, (ax, cell) in enumerate(zip(layout.panels(len(cells)), cells)):
        t, lv = tables[cell], logs[cell]
        steps, ys = t.columns.to_numpy(), t.index.to_numpy()
        mesh = ax.pcolormesh(np.arange(len(steps) + 1) - 0.5, np.arange(len(ys) + 1) + ys.min() - 0.5,
                             np.ma.masked_invalid(lv), cmap=HEAT, norm=norm, shading="flat")
        step_ticks(ax, steps)
        integer_ticks(ax.yaxis)
        ax.set_title(cell_title(p, cell, runs_of.get(cell, 0)), fontsize=7, y=1.0, pad=3)
        label_axes([ax], "training step" if k + ncols >= len(cells) else "", ylabel)
        ax.grid(False)
    if mesh is not None:
        layout.colorbar(mesh, f"log10 {what}")
    return layout.fig


# -- the time kind: recurrent nets, one panel per group, one line per training step --------------------

def time_steps(d: Data, p: facets.Plan, frame: pd.DataFrame, steps=None, n: int = 5) -> plt.Figure:
    """||dLoss/dh_t|| against t, one panel per group, one line (geometric mean over its runs) per
    training step: ``steps`` or up to ``n`` spread over those recorded."""
    frame = _with_groups(p, frame)
    if frame.empty:
        raise UserError("no time_grads.csv rows in these runs (they are written for model.arch=rnn|lstm|gru)")
    recorded = sorted(frame["step"].unique())
    if steps:
        missing = [s for s in steps if s not in recorded]
        if missing:
            raise UserError(f"step(s) {missing} not recorded (recorded: {recorded[0]}..{recorded[-1]})")
        chosen = list(steps)
    else:
        chosen = recorded if len(recorded) <= n else \
            sorted({recorded[round(i * (len(recorded) - 1) / (n - 1))] for i in range(n)})
    frame = frame[frame["step"].isin(chosen)]
    frame = frame[frame["layer"] == frame.groupby("run")["layer"].transform("min")]
    agg = aggregate(frame, ["g", "step", "t"], "value", log=True)
    counts = frame.groupby("g", sort=False)["run"].nunique()
    runs_of = {(g[1], g[2], g[3]): int(n) for g, n in counts.items()}
    cells, nrows, ncols = group_cells(p, runs_of)
    colour = {s: VIRIDIS(i / max(len(chosen) - 1, 1)) for i, s in enumerate(chosen)}
    layout = Layout(nrows, ncols, title("gradient back through time ||dLoss/dh_t|| (first recurrent layer), one line "
                                        "per training step, one panel per group", d, p, list(counts.to_numpy()),
                                        "geometric mean",
                                        [masked_note(int(agg["zeros"].sum()), int(agg["bad"].sum())),
                                         unfinished_note(d, frame["run"])]),
                    legend_width([str(s) for s in chosen], "training step"), sharey=True, panel_title_lines=2)
    where = dict(zip(cells, layout.panels(len(cells))))
    for (g, step), sub in agg.groupby(["g", "step"], sort=False):
        ax = where[(g[1], g[2], g[3])]
        sub = sub.sort_values("t")
        ax.plot(sub["t"], _positive(sub["centre"]), color=colour[step], lw=1.2)
        if (sub["n"] > 1).any():
            band(ax, sub["t"], _positive(sub["lo"]), _positive(sub["hi"]), colour[step], 0.12)
    for cell, ax in where.items():
        ax.set_title(cell_title(p, cell, runs_of[cell]), fontsize=8, y=1.0, pad=3)
        log_y(ax)
        integer_ticks(ax.xaxis)
    label_axes(where.values(), "time step t", "||dLoss/dh_t||")
    layout.legend([Line2D([], [], color=colour[s], lw=2) for s in chosen], [str(s) for s in chosen], "training step")
    return layout.fig


# -- training curves ---------------------------------------------------------------------------------

def task_baseline(table: pd.DataFrame) -> float | None:
    """The loss of the task's trivial answer (summary.csv's ``task_baseline``: the adding problem's 1/6)
    where every run that has one has the same, else None."""
    if "task_baseline" not in table:
        return None
    values = pd.to_numeric(table["task_baseline"], errors="coerce")
    values = values[np.isfinite(values)].unique()
    return float(values[0]) if len(values) == 1 and values[0] > 0 else None


def training(d: Data, p: facets.Plan) -> plt.Figure:
    """Training loss against step, one panel per (col, row), one colour per hue value: the mean over
    a group's runs and its min-max band; log y where the losses span more than a decade; the task's
    baseline loss dashed where the runs share one (:func:`task_baseline`)."""
    m = d.files.metrics
    m = m[["run", "step", "loss"]].dropna(subset=["loss"]) if len(m) and "loss" in m else \
        pd.DataFrame(columns=["run", "step", "loss"])
    frame = _with_groups(p, m)
    agg = aggregate(frame, ["g", "step"], "loss", log=False)
    counts, per_line = _hue_counts(p, frame)
    bad = int(agg["bad"].sum())
    nrows, ncols = shape(p)
    baseline = task_baseline(d.s.table)
    layout = Layout(nrows, ncols, title("training loss by step", d, p, per_line, "mean",
                                        [f"dashed: the task's baseline loss, {baseline:.3g}" if baseline else "",
                                         f"not drawn: {bad} NaN/inf losses (diverged)" if bad else "",
                                         unfinished_note(d, frame["run"])]),
                    right_margin(p, counts), sharex=True, sharey=True,
                    panel_title_lines=len([f for f in (p.col, p.row) if f]))
    panel = panel_axes(layout, p)
    colours = facets.colours(p.hue)
    for g, sub in agg.groupby("g", sort=False):
        sub = sub.sort_values("step")
        ax, colour = panel[(g[2], g[3])], colours[g[1]]
        ax.plot(sub["step"], sub["centre"], "o-" if len(sub) <= 3 else "-", ms=3, color=colour, lw=1.3)
        if (sub["n"] > 1).any():
            band(ax, sub["step"], sub["lo"], sub["hi"], colour, 0.15)
    ys = agg["centre"].to_numpy(dtype=float)
    ys = ys[np.isfinite(ys) & (ys > 0)]
    log = len(ys) and ys.max() / ys.min() > 10 and (agg["lo"].dropna() > 0).all()
    for ax in panel.values():
        if baseline:
            ax.axhline(baseline, color="0.45", ls="--", lw=1, zorder=0)
        if log:
            log_y(ax)
        integer_ticks(ax.xaxis)
        if not len(frame):
            ax.text(0.5, 0.5, "no metrics recorded yet", ha="center", transform=ax.transAxes)
    label_axes(panel.values(), "step", "training loss", bottom_only=True)
    decorate(layout, p, counts)
    return layout.fig
