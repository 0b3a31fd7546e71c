"""The study at a glance: one number per run against a config key, one line per hue value.

``y`` is any number column of ``summary.csv`` (``decay_per_layer``, ``final_loss``,
``final_test_acc``, ``grad_ratio``, ...) or ``steps_to_loss``: the first recorded step whose training
loss (``metrics.csv``) is at most ``--target-loss``; a run that never got there is not dropped but
marked at the top of its panel and counted. ``x`` is any config key, or ``sigma_w^2``: the weight
variance times fan-in that the init gives the hidden layers (:func:`vgp.theory.from_config`: 1/3 for
PyTorch's default, 2 for He-ReLU, ``init.scale`` for ``variance_scaling``), which is the mean-field
theory's sigma_w^2. So "decay per layer against sigma_w^2, one line per depth" is
``vgp plot SWEEP --kind summary --x sigma_w^2 --hue depth``.

Only finished runs (completed or diverged) have a summary; the others are counted in the title, as
``vgp compare`` counts them under 'failed'. The mean-field prediction (``predicted_<y>``, where the
summary has it) is dashed in the line's colour.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from vgp import facets, study as studies
from vgp.errors import UserError
from vgp.plots_group import (Data, Layout, aggregate, band, decorate, label_axes, log_y, no_minor, panel_axes,
                             right_margin, shape, title)

STEPS_TO_LOSS = "steps_to_loss"
SIGMA_W2 = "sigma_w^2"
SIGMA_ALIASES = ("sigma_w^2", "sigma_w2", "sigma_w**2", "weight_var")
LABELS = {"decay_per_layer": "decay per layer at step 0  (||dz_l|| / ||dz_l+1||)",
          "decay_per_layer_last": "decay per layer at the last step", "decay_per_step": "decay per time step",
          "final_loss": "final training loss", "final_test_loss": "final test loss",
          "final_test_acc": "final test accuracy", "grad_ratio": "grad ratio  (first / last hidden layer)",
          "steps_done": "steps done", SIGMA_W2: "sigma_w^2  (weight variance x fan_in, from the init)"}


def steps_to_loss(metrics: pd.DataFrame, target: float) -> pd.Series:
    """Per run (the ``run`` column), the first recorded step whose training loss is <= ``target``;
    the runs that never got there are left out (NaN once reindexed)."""
    if not len(metrics) or "loss" not in metrics:
        return pd.Series(dtype=float)
    reached = metrics[pd.to_numeric(metrics["loss"], errors="coerce") <= target]
    return reached.groupby("run")["step"].min().astype(float)


def configs(table: pd.DataFrame):
    """Per row of ``table``, its config as a nested dict, from the dotted config columns (blanks left out)."""
    config_cols = [c for c in table.columns if studies.is_config(c) and "." in c]
    for row in table[config_cols].itertuples(index=False):
        cfg: dict = {}
        for c, v in zip(config_cols, row):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            node = cfg
            *parents, last = c.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = v.item() if isinstance(v, np.generic) else v
        yield cfg


def sigma_w2(table: pd.DataFrame) -> pd.Series:
    """Per run, the hidden layers' sigma_w^2 from its config (NaN where the theory does not apply)."""
    from vgp import theory

    cache: dict = {}
    out = []
    for cfg in configs(table):
        key = repr(sorted((k, repr(v)) for k, v in cfg.get("model", {}).items()))
        if key not in cache:
            try:
                cache[key] = float(theory.from_config(cfg).hidden[0])
            except (theory.NotApplicable, UserError, KeyError, TypeError, ValueError, AttributeError):
                cache[key] = math.nan
        out.append(cache[key])
    return pd.Series(out, index=table.index, dtype=float)


def prepare(s: studies.Study, x: str | None, y: str, target_loss: float | None, files) -> tuple:
    """The study with the y values in a column ``_y`` (and sigma_w^2 computed when asked for), the x
    key, y's label and its column name. UserError for an unknown or non-numeric y."""
    table = s.table.copy()
    if y == STEPS_TO_LOSS:
        if target_loss is None or not math.isfinite(target_loss):
            raise UserError("--y steps_to_loss needs --target-loss X: the training loss to reach (e.g. 0.5)")
        table["_y"] = steps_to_loss(files.metrics, target_loss).reindex(table.index)
        table["_reached"] = table["_y"].notna()
        table["_counted"] = table.index.isin(files.runs)
        ycol, ylabel = STEPS_TO_LOSS, f"steps to training loss <= {target_loss:g}"
    else:
        if y == "decay_per_layer" and not _has_numbers(table, y) and _has_numbers(table, "decay_per_step"):
            y = "decay_per_step"  # the default, for recurrent nets: their decay is over time steps
        ycol = studies.resolve(table, y, "--y")
        numbers = [c for c in table.columns if not studies.is_config(c) and c not in ("folder", "status", "name")
                   and pd.to_numeric(table[c], errors="coerce").notna().any()] + [STEPS_TO_LOSS]
        if studies.is_config(ycol) or ycol not in numbers:
            raise UserError(f"--y {y}: " + ("a config key; put it on --x or --hue" if studies.is_config(ycol)
                                           else "not a number column") + f" (number columns: {', '.join(numbers)})")
        table["_y"] = pd.to_numeric(table[ycol], errors="coerce")
        table["_counted"] = table["status"].isin(studies.FINISHED)
        ylabel = LABELS.get(ycol, ycol)
    if x is not None and x.lower() in SIGMA_ALIASES:
        table[SIGMA_W2] = sigma_w2(table)
        x = SIGMA_W2
    return studies.Study(table, s.axes, s.paths, s.declared), x, ycol, ylabel


def _has_numbers(table: pd.DataFrame, column: str) -> bool:
    return column in table and pd.to_numeric(table[column], errors="coerce").notna().any()


def xlabel(p: facets.Plan, s: studies.Study) -> str:
    col = p.x.columns[0]
    if col == SIGMA_W2:
        return LABELS[SIGMA_W2]
    if col == "model.init.scale" and s.constant().get("model.init.name") == "variance_scaling":
        return "sigma_w^2  (init.scale of variance_scaling)"
    return p.x.name


def grouped(p: facets.Plan, ycol: str):
    """The finished runs of ``p`` (``_counted``) by facet group: (those runs, each one's group key, a frame
    of group ``g``, value ``y`` and ``run``, whether ``ycol`` is averaged in log space, and the per-group
    aggregate of :func:`vgp.plots_group.aggregate`)."""
    t = p.table
    counted = t[t["_counted"]]
    keys = facets.group_ids(p, pd.Series(counted.index, index=counted.index))
    frame = pd.DataFrame({"g": keys.to_numpy(), "y": counted["_y"].to_numpy(dtype=float), "run": counted.index})
    log = studies.is_log_metric(ycol)
    return counted, keys, frame, log, aggregate(frame, ["g"], "y", log=log)


def summary(d: Data, p: facets.Plan, ycol: str, ylabel: str) -> plt.Figure:
    """y against x, one colour per hue value, panels by col and row: the mean (geometric for ratios)
    over a point's runs and the min-max band; theory dashed; runs that never reached a target loss
    marked at the top."""
    t = p.table
    counted, keys, frame, log, agg = grouped(p, ycol)
    pred = f"predicted_{ycol}"
    theory = {}
    if pred in t:
        pf = pd.DataFrame({"g": keys.to_numpy(), "y": pd.to_numeric(counted[pred], errors="coerce").to_numpy()})
        pa = aggregate(pf.dropna(), ["g"], "y", log=True)
        theory = {g: c for g, c, n in zip(pa["g"], pa["centre"], pa["n"]) if n}
    missed = {}
    if "_reached" in t:
        m = counted[~counted["_reached"]]
        missed = facets.group_ids(p, pd.Series(m.index, index=m.index)).value_counts().to_dict()
    numeric = p.x.numeric
    pos = {v: (float(v[0]) if numeric else i) for i, v in enumerate(p.x.values)}
    lines: dict = {}
    for g, c, lo, hi, n in zip(agg["g"], agg["centre"], agg["lo"], agg["hi"], agg["n"]):
        lines.setdefault(g[1:], []).append((pos[g[0]], c, lo, hi, n, g))
    hue_n = frame["g"].map(lambda g: g[1]).value_counts().to_dict()  # runs behind each colour, drawn or not
    top = sum(missed.values())
    extra = []
    if theory:
        extra.append((Line2D([], [], color="k", ls="--", lw=1.1), "mean-field prediction"))
    if top:
        extra.append((Line2D([], [], color="grey", marker="^", mfc="none", ls=""),
                      f"never reached it: {top} run{'s' if top > 1 else ''}\n(at the top, not in the line)"))
    left = int((~t["_counted"]).sum())
    why = "whose metrics.csv could not be read" if "_reached" in t else "without a summary (unfinished or failed)"
    nan = int(len(counted) - agg["n"].sum() - top)
    notes = [f"{left} run{'s' if left > 1 else ''} {why} left out" if left else "",
             f"{nan} run{'s' if nan > 1 else ''} with no {ycol} value (NaN/inf) not drawn" if nan > 0 else ""]
    nrows, ncols = shape(p)
    layout = Layout(nrows, ncols, title(f"{ylabel.split('  (')[0]} against {xlabel(p, d.s).split('  (')[0]}", d, p,
                                        [q[4] for pts in lines.values() for q in pts],
                                        "geometric mean" if log else "mean", notes),
                    right_margin(p, hue_n, [label for _, label in extra]), sharex=True, sharey=True,
                    panel_title_lines=len([f for f in (p.col, p.row) if f]))
    panel = panel_axes(layout, p)
    colours = facets.colours(p.hue)
    for (h, col, row), pts in lines.items():
        pts.sort(key=lambda q: q[0])
        xs = np.array([q[0] for q in pts])
        ys, los, his = (np.array([q[k] for q in pts], dtype=float) for k in (1, 2, 3))
        ok = np.array([q[4] > 0 for q in pts])
        ax, colour = panel[(col, row)], colours[h]
        ax.plot(xs[ok], ys[ok], "o-", ms=4, lw=1.4, color=colour)
        if (np.array([q[4] for q in pts]) > 1).any():
            band(ax, xs[ok], los[ok], his[ok], colour)
        th = [(x_, theory[q[5]]) for x_, q in zip(xs, pts) if q[5] in theory]
        if th:
            ax.plot([a for a, _ in th], [b for _, b in th], "--", color=colour, lw=1.1)
    for g, k in missed.items():
        ax = panel[(g[2], g[3])]
        trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        stack = p.hue.values.index(g[1]) if p.hue else 0  # one above the other where colours share an x
        ax.plot([pos[g[0]]], [0.97 - 0.045 * stack], marker="^", ms=7, mfc="none", mec=colours[g[1]], mew=1.5, ls="",
                transform=trans, clip_on=False)
    ys = agg["centre"].to_numpy(dtype=float)
    ys = ys[np.isfinite(ys)]
    logy = len(ys) and (agg["lo"].dropna() > 0).all() and (ys > 0).all() and ys.max() / ys.min() > 30
    xv = np.array(list(pos.values()))
    for ax in panel.values():
        if logy:
            log_y(ax)
        if numeric:
            if (xv > 0).all() and xv.max() / xv.min() >= 100:
                ax.set_xscale("log")
                no_minor(ax.xaxis)
            if len(xv) <= 12:
                ax.xaxis.set_major_locator(plt.FixedLocator(sorted(xv)))
                ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: facets.value_text(v)))
        else:
            ax.set_xticks(list(pos.values()), [p.x.short(v) for v in pos], rotation=30 if len(pos) > 4 else 0,
                          ha="right" if len(pos) > 4 else "center")
        if ycol.startswith("decay"):
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    label_axes(panel.values(), xlabel(p, d.s), ylabel, bottom_only=True)
    decorate(layout, p, hue_n, extra)
    return layout.fig
