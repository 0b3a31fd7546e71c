"""The phase diagram: one number per run over sigma_w^2 x depth, with the mean-field depth limit on it.

Schoenholz et al. 2017 ("Deep Information Propagation", fig. 5) colour each (sigma_w^2, depth) cell of
a grid of tanh nets by the accuracy it trained to, and draw over it 6 xi_c, six times the correlation
depth scale (:func:`vgp.theory.correlation_depth`): nets train below that curve and not above, and
it diverges at the order-to-chaos transition, so the deepest trainable nets sit there.
``vgp plot SWEEP --kind phase --y final_test_acc`` draws that figure from a sweep over ``model.init``
(e.g. ``variance_scaling`` scales) and ``model.depth``:

* horizontal: ``--x``, by default ``sigma_w^2`` (what the init gives the hidden layers, as in
  :mod:`vgp.plots_summary`), or any numeric config key; vertical: ``model.depth`` (log where the
  depths are spread geometrically);
* colour: ``--y``, any number column of ``summary.csv`` (or ``steps_to_loss``), the mean over a
  cell's runs (geometric for ratios), written in the cell; a cell without runs is grey; for losses
  (and steps) the colour scale is reversed, so that bright is the better end for every metric;
* dashed: ``XI_MULTIPLE`` x xi_c for the runs' activation and sigma_b^2, where x is sigma_w^2 and
  the panel's runs share both; dotted: the critical sigma_w^2 (chi_1 = 1);
* panels by ``--col`` and ``--row`` (other keys the sweep varies); ``--hue`` has no place here.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from vgp import facets, study as studies
from vgp import plots_summary
from vgp.errors import UserError
from vgp.plots_group import HEAT, Data, Layout, legend_width, no_minor, panel_axes, shape

XI_MULTIPLE = 6.0  # Schoenholz et al.: networks train up to about 6 xi_c layers
DEPTH = facets.DEPTH
CURVE_POINTS = 48
HEAT_R = plt.cm.viridis_r.with_extremes(bad="lightgrey")


def applies(s: studies.Study) -> bool:
    """Whether ``--kind all`` draws a phase diagram: the study varies ``model.depth`` and the init
    (an axis), and the init gives at least two sigma_w^2."""
    t = s.table
    cols = [c for a in s.axes for c in a]
    if DEPTH not in cols or not any(c.startswith("model.init") for c in cols) or t[DEPTH].nunique() < 2:
        return False
    w = plots_summary.sigma_w2(t)
    return w[np.isfinite(w)].nunique() >= 2


def figure(d: Data, o: dict, warn) -> plt.Figure:
    """The phase diagram of ``d`` for the plot options ``o`` (x, y, hue, col, row, target_loss)."""
    if o.get("hue"):
        raise UserError("--kind phase: the colour is --y and the vertical axis the depth, so there is no "
                        "--hue; split the runs into panels with --col or --row")
    x = o.get("x") or plots_summary.SIGMA_W2
    if x.lower() not in plots_summary.SIGMA_ALIASES and x in ("depth", DEPTH):
        raise UserError("--kind phase: the depth is the vertical axis; --x names the horizontal one "
                        "(default sigma_w^2)")
    if DEPTH not in d.s.table or d.s.table[DEPTH].nunique() < 2:
        found = ", ".join(map(studies.value_text, sorted(d.s.table[DEPTH].dropna().unique()))) \
            if DEPTH in d.s.table else "none (not an MLP sweep)"
        raise UserError(f"--kind phase draws a metric over {x} x model.depth and needs runs of at least two "
                        f"depths; these have depth {found}")
    s2, xk, ycol, ylabel = plots_summary.prepare(d.s, x, o["y"], o.get("target_loss"), d.files)
    xcol = xk if xk in s2.table else studies.resolve(s2.table, xk, "--x")
    xv = pd.to_numeric(s2.table[xcol], errors="coerce")
    if xv.dropna().nunique() < 2:
        why = (" (the mean-field theory gives none for these runs' init or architecture)"
               if xcol == plots_summary.SIGMA_W2 and xv.isna().all() else "")
        raise UserError(f"--kind phase: --x {x} must take at least two numeric values across the runs; "
                        f"it takes {xv.dropna().nunique()}{why}: vary it (e.g. model.init.scale of "
                        f"variance_scaling) or name another key with --x")
    s2 = studies.Study(s2.table[xv.notna()], s2.axes, s2.paths, s2.declared)
    p = facets.plan(s2, "phase", x=xcol, hue=DEPTH, col=o.get("col"), row=o.get("row"))
    facets.warn_mixed(p, warn)
    return draw(Data(s2, d.files, d.fixed), p, ycol, ylabel)


def mean_field(table: pd.DataFrame) -> tuple[dict | None, float | None, str]:
    """The activation spec and sigma_b^2 (of the hidden layers) that all of ``table``'s runs share,
    or (None, None, why not)."""
    from vgp import theory

    seen = set()
    for cfg in plots_summary.configs(table):
        try:
            setting = theory.from_config(cfg)
        except (theory.NotApplicable, UserError, KeyError, TypeError, ValueError, AttributeError) as e:
            return None, None, f"the mean-field theory does not apply ({e})"
        act = setting.activation if isinstance(setting.activation, dict) else {"name": setting.activation}
        seen.add((json.dumps(act, sort_keys=True), setting.hidden[1]))
        if len(seen) > 1:
            return None, None, "the runs differ in activation or sigma_b^2"
    if not seen:
        return None, None, "no runs"
    (act, sb2), = seen
    return json.loads(act), sb2, ""


@lru_cache(maxsize=64)
def _curve(act: str, bias_var: float, lo: float, hi: float, k: float, log: bool):
    from vgp import theory

    activation = json.loads(act)
    try:
        crit = theory.critical_weight_var(activation, bias_var)
    except UserError:
        crit = None
    xs = np.geomspace(lo, hi, CURVE_POINTS) if log else np.linspace(lo, hi, CURVE_POINTS)
    if crit is not None and lo < crit < hi:  # the curve's peak: dense on both sides of it
        near = crit * (1 + np.outer([-1, 1], np.geomspace(1e-4, 3e-2, 8)).ravel())
        xs = np.unique(np.concatenate([xs, near]))
    ys = []
    for w in xs:
        try:
            ys.append(k * theory.correlation_depth(activation, float(w), bias_var))
        except UserError:  # no finite fixed point at this sigma_w^2
            ys.append(math.nan)
    return xs, np.array(ys), crit


def curve(activation, bias_var: float, lo: float, hi: float, k: float = XI_MULTIPLE, log: bool = False):
    """(sigma_w^2 values in [lo, hi], k xi_c at each, the critical sigma_w^2 or None): the line the phase
    diagram draws (cached: the chaotic side needs the correlation fixed point at every point)."""
    spec = activation if isinstance(activation, dict) else {"name": activation}
    return _curve(json.dumps(spec, sort_keys=True), float(bias_var), float(lo), float(hi), float(k), bool(log))


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres ``v``: midpoints (geometric on a log axis), the ends mirrored."""
    u = np.log(v) if log else v.astype(float)
    if len(u) == 1:
        e = np.array([u[0] - 0.5, u[0] + 0.5])
    else:
        mid = (u[1:] + u[:-1]) / 2
        e = np.concatenate([[2 * u[0] - mid[0]], mid, [2 * u[-1] - mid[-1]]])
    return np.exp(e) if log else e


def _geometric(v: np.ndarray) -> bool:
    """Spread by ratios rather than steps: positive, max/min >= 8 and the ratios more even than the steps."""
    if len(v) < 3 or (v <= 0).any() or v.max() / v.min() < 8:
        return len(v) == 2 and (v > 0).all() and v.max() / v.min() >= 8
    return np.std(np.diff(np.log(v))) / np.mean(np.diff(np.log(v))) < np.std(np.diff(v)) / np.mean(np.diff(v))


def draw(d: Data, p: facets.Plan, ycol: str, ylabel: str) -> plt.Figure:
    """The heatmap(s) of ``p`` (x = p.x, depth = p.hue, panels by p.col and p.row); the mean-field curve
    where x is sigma_w^2."""
    t = p.table
    counted, keys, frame, log, agg = plots_summary.grouped(p, ycol)
    di = p.hue.columns.index(DEPTH)
    xs = np.array([float(v[0]) for v in p.x.values])
    depths = np.array(sorted({float(v[di]) for v in p.hue.values}))
    value = {}
    for g, c, n in zip(agg["g"], agg["centre"], agg["n"]):
        if n:
            value[(g[2], g[3], float(g[0][0]), float(g[1][di]))] = (c, int(n))
    finite = np.array([c for c, _ in value.values() if math.isfinite(c) and (c > 0 or not log)])
    if not len(finite):
        raise UserError(f"--kind phase: no run has a finite {ycol}")
    log_scale = log and finite.max() >= 10 * finite.min() > 0  # a narrower range reads better linear
    norm = LogNorm(finite.min(), finite.max()) if log_scale else \
        Normalize(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1)
    lower_better = "loss" in ycol or ycol == plots_summary.STEPS_TO_LOSS  # bright: the better end, as for accuracy
    cmap = HEAT_R if lower_better else HEAT
    logx, logy = _geometric(xs), _geometric(depths)
    xe, ye = _edges(xs, logx), _edges(depths, logy)
    is_sigma = p.x.columns[0] == plots_summary.SIGMA_W2
    curves, notes = {}, []
    for c, r in p.panels():
        runs = t[(p.key(p.col) == c) & (p.key(p.row) == r)]
        if not is_sigma:
            notes.append(f"{XI_MULTIPLE:g} xi_c not drawn: x is not sigma_w^2")
            break
        act, sb2, why = mean_field(runs)
        if act is None:
            notes.append(f"{XI_MULTIPLE:g} xi_c not drawn: {why}")
            continue
        curves[(c, r)] = (act, sb2, curve(act, sb2, xe[0], xe[-1], XI_MULTIPLE, logx))
    missing = sum(1 for c, r in p.panels() for x in xs for y in depths if (c, r, x, y) not in value)
    counts = [n for _, n in value.values()]
    nrows, ncols = shape(p)
    labels = [f"{XI_MULTIPLE:g} xi_c  (mean field,\nSchoenholz et al. 2017)", "critical sigma_w^2\n(chi_1 = 1)"]
    what = f"{ylabel.split('  (')[0]} by {plots_summary.xlabel(p, d.s).split('  (')[0]} and depth"
    centre = "geometric mean" if log else "mean"
    per_cell = "one run per cell" if max(counts) <= 1 else f"{p.averaged(counts, centre, band=None)}, per cell"
    layout = Layout(nrows, ncols, [what, d.fixed, per_cell,
                                   f"grey: {missing} cells without a run" if missing else "", *dict.fromkeys(notes)],
                    max(1.6, legend_width(labels)), w=4.4, h=3.2, sharex=True, sharey=True,
                    panel_title_lines=len([f for f in (p.col, p.row) if f]))
    panel = panel_axes(layout, p)
    mesh, drew_curve, drew_crit = None, False, False
    for (c, r), ax in panel.items():
        grid = np.full((len(depths), len(xs)), np.nan)
        for i, y in enumerate(depths):
            for j, x in enumerate(xs):
                if (c, r, x, y) in value:
                    grid[i, j] = value[(c, r, x, y)][0]
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(grid), cmap=cmap, norm=norm, shading="flat")
        if grid.size <= 150:
            for i, y in enumerate(depths):
                for j, x in enumerate(xs):
                    v = grid[i, j]
                    if math.isfinite(v):
                        dark = sum(cmap(norm(v))[:3]) < 1.5  # white text on the dark end of the scale
                        text = studies.value_text(float(f"{v:.2g}")) if abs(v) < 1e4 else f"{v:.1e}"
                        ax.text(x, y, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        if (c, r) in curves:
            _, _, (cx, cy, crit) = curves[(c, r)]
            ax.plot(cx, cy, "--", color="white", lw=2.2)
            ax.plot(cx, cy, "--", color="black", lw=1.1, label=labels[0])
            drew_curve = True
            if crit is not None and xe[0] < crit < xe[-1]:
                ax.axvline(crit, color="0.3", ls=":", lw=1.2, label=labels[1])
                drew_crit = True
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(xs, [studies.value_text(float(f"{v:.3g}")) for v in xs], rotation=45 if len(xs) > 6 else 0)
        ax.set_yticks(depths, [studies.value_text(v) for v in depths])
        no_minor(ax.xaxis)
        no_minor(ax.yaxis)
        ax.tick_params(labelsize=7)
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            ax.set_ylabel("depth (hidden layers)", fontsize=8)
        if spec.is_last_row():
            ax.set_xlabel(plots_summary.xlabel(p, d.s), fontsize=8)
    cb_h = min(layout.height, 3.5) - (0.5 * len(labels) + 0.3 if curves else 0)
    cax = layout.fig.add_axes((layout.x_right, layout.y_top - cb_h / layout.H, 0.15 / layout.W, cb_h / layout.H))
    layout.fig.colorbar(mesh, cax=cax, label=ylabel.split("  (")[0] + ("  (log)" if log_scale else "") +
                        ("\n(reversed: low is bright)" if lower_better else ""))
    below = cb_h + 0.25
    extra = ([(Line2D([], [], color="black", ls="--", lw=1.1), labels[0])] if drew_curve else []) + \
        ([(Line2D([], [], color="0.3", ls=":", lw=1.2), labels[1])] if drew_crit else [])
    layout.legend([h for h, _ in extra], [lb for _, lb in extra], below=below)
    return layout.fig
