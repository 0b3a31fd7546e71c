"""Figures of recorded gradients, headless (matplotlib's Agg backend), as PNG or SVG.

Kinds (``vgp plot PATH --kind K``; ``all``: every kind that applies, into ``PATH/plots/``):

* ``profile``: the gradient norm ||dLoss/dz_l|| against layer at the first recorded step (the
  init), log y; the mean-field prediction dashed where it applies. For recurrent nets
  (``model.arch`` rnn, lstm, gru) the time profile ||dLoss/dh_t|| against time step t instead;
* ``heatmap``: log10 of that norm over layer (time step t) x training step;
* ``time``: recurrent nets: ||dLoss/dh_t|| against t, one line per training step;
* ``training``: the training loss (one run: also accuracy and the total gradient norm) against step;
* ``summary``: one number per run (a summary.csv column, or ``steps_to_loss`` with a target loss)
  against a config key (:mod:`vgp.plots_summary`);
* ``phase``: that number over sigma_w^2 (or another key) x depth as a heatmap, the mean-field depth
  limit 6 xi_c drawn over it (:mod:`vgp.plots_phase`); with ``all``, only for sweeps over the init
  and the depth.

One run: its steps are the lines (below). Several runs or a sweep: the runs are split by facet
(:mod:`vgp.facets`): a colour per value of ``hue``, panels by ``col`` and ``row``, defaults from the
sweep's declared axes; the runs of a line (seeds, and whatever else the title names) are drawn as a
mean line and a band (:mod:`vgp.plots_group`). Each kind reads only what it draws: ``summary`` the
study's table (one CSV for a sweep), the others the runs' CSVs, all at once (:mod:`vgp.rundata`).

Norms of exactly 0 (float32 underflow) and NaN/inf (diverged runs) cannot go on a log axis: they are
left out and the title says how many.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: smaller, searchable
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vgp import analysis, facets, rundata, study as studies  # noqa: E402
from vgp import plots_group as group  # noqa: E402
from vgp import plots_phase, plots_summary  # noqa: E402
from vgp.errors import UserError  # noqa: E402
from vgp.results import check_creatable  # noqa: E402
from vgp.registry import did_you_mean  # noqa: E402

KINDS = ("profile", "heatmap", "time", "training", "summary", "phase")
METRICS = ["step", "loss", "acc", "grad_norm", "grad_norm_clipped", "lr", "test_loss", "test_acc"]  # what training draws


# -- the entry points ------------------------------------------------------------------------

def plot(paths, kind: str = "all", out: str | Path | None = None, steps=None, x=None, y="decay_per_layer",
         by=None, fmt: str = "png", warn=analysis.warn, *, hue=None, col=None, row=None, where=(),
         target_loss: float | None = None, study: studies.Study | None = None) -> list[Path]:
    """Draw one kind (to ``out``, a file) or all that apply (into ``out``, a folder; default
    ``PATH/plots/``). Returns the files written. ``by`` is another name for ``hue``; ``study``: the
    runs already loaded (:func:`vgp.study.load`), read instead of ``paths``. See :func:`figures`."""
    _check_kind(kind)
    if out is not None:
        _check_out(Path(out), one_file=kind != "all")
    figs = figures(paths, kind, steps=steps, x=x, y=y, hue=hue or by, col=col, row=row, where=where,
                   target_loss=target_loss, study=study, warn=warn)
    first = Path(paths[0]) if paths else Path(study.paths[0])
    base = Path(out) if out is not None else (first if first.is_dir() else first.parent) / "plots"
    if kind != "all":
        return [_save(figs[kind], base if out is not None else base / f"{kind}.{fmt}")]
    return [_save(fig, base / f"{k}.{fmt}") for k, fig in figs.items()]


def figures(paths=(), kind: str = "all", steps=None, x=None, y="decay_per_layer", hue=None, col=None, row=None,
            where=(), target_loss: float | None = None, study: studies.Study | None = None,
            warn=analysis.warn) -> dict[str, plt.Figure]:
    """The figures of ``kind`` (or every kind that applies) as {kind: matplotlib Figure}, not saved.

    Among several runs, a run folder that cannot be read is left out with a ``warn`` line; unfinished
    runs are drawn from the steps they recorded, with a note on standard error. With ``all``, a kind
    that cannot be drawn (too many panels) is left out with a ``warn`` line naming what to do."""
    _check_kind(kind)
    if study is None and len(paths) == 1 and analysis.is_run_folder(Path(paths[0])) and not where:
        if kind == "summary":
            raise UserError("summary plots compare runs: give a sweep folder or several run folders")
        return one_run(analysis.read_run(paths[0]), kind, steps)  # its own errors, whichever file is damaged
    s = studies.where(study if study is not None else load(paths, warn), list(where))
    folders = [f for f in s.table.get("folder", pd.Series(dtype=object)) if isinstance(f, str) and f]
    if len(s.table) == 1 and folders:
        if kind == "summary":
            raise UserError("summary plots compare runs: give a sweep folder or several run folders")
        return one_run(analysis.read_run(folders[0]), kind, steps)
    files = None
    if (kind not in ("summary", "phase") or y == plots_summary.STEPS_TO_LOSS) and folders:
        files = rundata.read(s.table, warn)
        note = _unfinished_note(files)
        if note:
            analysis.note(note)
    elif kind not in ("summary", "phase", "all"):
        raise UserError(f"--kind {kind} draws the runs' own files, and {', '.join(map(str, s.paths))} holds none "
                        f"(summary CSVs only): give run or sweep folders, or draw --kind summary")
    d = group.Data(s, files, facets.fixed_text(s, list(where)))
    options = dict(steps=steps, x=x, y=y, hue=hue, col=col, row=row, target_loss=target_loss)
    kinds = [kind] if kind != "all" else _kinds(s, files)
    out, said = {}, set()

    def warn_once(message):
        if message not in said:
            said.add(message)
            warn(message)

    for k in kinds:
        try:
            out[k] = _group_figure(k, d, options, warn_once)
        except UserError as e:
            if kind != "all":
                raise
            warn(f"{k} figure not drawn: {e}")
    if not out:
        raise UserError("no figure could be drawn (see the warnings above)")
    return out


def load(paths, warn=analysis.warn) -> studies.Study:
    """:func:`vgp.study.load`, a file among ``paths`` named as what plot takes when it is not a summary CSV."""
    for p in map(Path, paths):
        if p.is_file():
            try:
                studies._summary(p, in_folder=False)
            except UserError as e:
                raise UserError(f"{p}: a file, not a run folder, a sweep folder or a summary CSV "
                                f"({str(e).removeprefix(str(p) + ': ')})") from None
    return studies.load(paths, warn)


def _kinds(s: studies.Study, files) -> list[str]:
    if files is None:
        return (["summary"] if s.axes else []) + (["phase"] if plots_phase.applies(s) else [])
    kinds = ["profile"]
    steps = files.grads.groupby("run")["step"].nunique() if len(files.grads) else pd.Series(dtype=int)
    if len(steps) and steps.max() > 1:
        kinds.append("heatmap")
    else:
        analysis.note("heatmap left out: every run recorded one step")
    losses = files.metrics.dropna(subset=["loss"]) if "loss" in files.metrics else files.metrics.iloc[:0]
    if len(losses) and losses.groupby("run")["step"].nunique().max() > 1:
        kinds.append("training")
    else:
        analysis.note("training left out: no run recorded two steps of metrics")
    if len(files.time):
        kinds.append("time")
    if s.axes:
        kinds.append("summary")
    if plots_phase.applies(s):
        kinds.append("phase")
    return kinds


def _sub(s: studies.Study, index) -> studies.Study:
    t = s.table.loc[list(index)]
    return studies.Study(t, [a for a in s.axes if any(studies._differs(t[c]) for c in a)], s.paths, s.declared)


def _group_figure(kind: str, d: group.Data, o: dict, warn) -> plt.Figure:
    f = d.files
    hue, col, row = o["hue"], o["col"], o["row"]
    if kind == "phase":
        return plots_phase.figure(d, o, warn)
    if kind == "summary":
        s2, xk, ycol, ylabel = plots_summary.prepare(d.s, o["x"], o["y"], o["target_loss"], f)
        p = facets.plan(s2, "summary", x=xk, hue=hue, col=col, row=row)
        facets.warn_mixed(p, warn)
        return plots_summary.summary(group.Data(s2, f, d.fixed), p, ycol, ylabel)
    recurrent = [r for r in f.runs if f.recurrent(r)]
    layered = [r for r in f.runs if not f.recurrent(r)]
    if kind == "time":
        runs = sorted(set(f.time["run"])) if len(f.time) else []
        if not runs:
            raise UserError("no time_grads.csv in these runs (it is written for recurrent nets: "
                            "model.arch=rnn|lstm|gru)")
        p = facets.plan(_sub(d.s, runs), kind, hue=hue, col=col, row=row, panels_only=True)
        return group.time_steps(d, p, f.time, o["steps"])
    if kind == "training":
        p = facets.plan(_sub(d.s, f.runs), kind, hue=hue, col=col, row=row)
        facets.warn_mixed(p, warn)
        return group.training(d, p)
    use_time = layered == [] and len(f.time) > 0
    runs = recurrent if use_time else layered
    dd = d if use_time or not recurrent else \
        group.Data(d.s, f, "; ".join(t for t in (d.fixed, f"{len(recurrent)} recurrent runs: see time.png") if t))
    p = facets.plan(_sub(d.s, runs), kind, hue=hue, col=col, row=row, layered=not use_time,
                    panels_only=kind == "heatmap")
    facets.warn_mixed(p, warn)
    if use_time:
        frame = f.time[f.time["layer"] == f.time.groupby("run")["layer"].transform("min")]
        if kind == "profile":
            return group.profile(dd, p, frame, "t", "gradient back through time ||dLoss/dh_t||", "time step t",
                                 "||dLoss/dh_t||", o["steps"])
        return group.heatmap(dd, p, frame, "t", "||dLoss/dh_t||", "time step t")
    frame = f.grads[f.grads["kind"] == "output_grad"]
    if kind == "profile":
        return group.profile(dd, p, frame, "layer", "gradient norm by layer ||dLoss/dz_l|| (output_grad)",
                             "layer (1 = input side)", "||dLoss/dz_l||", o["steps"], theory=True)
    return group.heatmap(dd, p, frame, "layer", "||dLoss/dz_l||", "layer")


def _unfinished_note(files: rundata.RunFiles) -> str | None:
    left = list(files.unfinished.values())
    if not left:
        return None
    shown = ", ".join(f"{r.folder.name} ({r.unfinished_why()})" for r in left[:3]) + (", ..." if len(left) > 3 else "")
    return f"{len(left)} of {len(files.runs)} runs unfinished, drawn from the steps they recorded so far: {shown}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS + ("all",):
        raise UserError(f"unknown plot kind '{kind}'{did_you_mean(kind, KINDS + ('all',))} "
                        f"(valid: {', '.join(KINDS)}, all)")


# -- one run: its recorded steps are the lines ----------------------------------------------------

def one_run(run: analysis.Run, kind: str, steps=None) -> dict[str, plt.Figure]:
    """The figures of one run (a UserError for a kind it has no data for, e.g. time for an MLP)."""
    note = analysis.unfinished_note([run])
    if note:
        analysis.note(note)
    recurrent = str((run.config.get("model") or {}).get("arch")) in rundata.RECURRENT and \
        run.time is not None and len(run.time)
    has_time = run.time is not None and len(run.time)
    draw = {"profile": lambda: time_profile(run, steps) if recurrent else profile(run, steps),
            "heatmap": lambda: heatmap(run, "t" if recurrent else "layer"),
            "time": lambda: time_profile(run, steps), "training": lambda: training(run)}
    if kind == "time" and not has_time:
        raise UserError(f"no time_grads.csv in {run.folder} (it is written for recurrent nets: "
                        f"model.arch=rnn|lstm|gru)")
    if kind != "all":
        return {kind: draw[kind]()}
    kinds = ["profile", "heatmap", "training"] + (["time"] if has_time else [])
    return {k: draw[k]() for k in kinds}


def _positive(x, y):
    """The points with y > 0 and finite, and how many were 0 and how many non-finite."""
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    return x[ok], y[ok], int(np.sum(y == 0)), int(np.sum(~np.isfinite(y)))


def _masked_note(zeros: int, bad: int) -> str:
    parts = ([f"{zeros} zero (underflow)"] if zeros else []) + ([f"{bad} NaN/inf"] if bad else [])
    return f"\n(not drawn: {', '.join(parts)} values)" if parts else ""


def _pick_steps(steps, chosen=None, n: int = 5, where: str = "") -> list[int]:
    steps = sorted(int(s) for s in steps)
    if chosen:
        missing = [s for s in chosen if s not in steps]
        if missing:
            recorded = f"{steps[0]}..{steps[-1]}, {len(steps)} steps" if steps else "none"
            raise UserError(f"{where}step(s) {missing} not recorded (recorded: {recorded})")
        return list(chosen)
    if len(steps) <= n:
        return steps
    if n == 1:
        return steps[:1]
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def _log_if_wide(ax, decades: float = 1.0) -> None:
    """Log y where the positive data drawn span more than ``decades`` decades."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines] or [np.array([])])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if len(ys) and ys.max() / ys.min() > 10 ** decades:
        ax.set_yscale("log")


def _legend_outside(fig, axes, **kw) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False, **kw)


def _unfinished(run) -> str:
    return "" if run.finished else " (unfinished)"


def profile(run: analysis.Run, steps=None) -> plt.Figure:
    """output_grad (left) and weight_grad (right) against layer, one line per recorded step (up to 5);
    the mean-field prediction dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, layout="constrained")
    g = run.grads
    recorded = sorted(g.step.unique())
    chosen = _pick_steps(recorded, steps, n=5)
    colours = group.VIRIDIS(np.linspace(0, 1, len(chosen)))
    zeros = bad = 0
    for j, step in enumerate(chosen):
        for ax, kind in zip(axes, ("output_grad", "weight_grad")):
            s = analysis.layer_norms(g, step, kind)
            x, y, z, b = _positive(s.index, s.to_numpy())
            zeros, bad = zeros + z, bad + b
            ax.plot(x, y, "o-", ms=3, color=colours[j], label=f"step {step}")
    og = analysis.layer_norms(g, recorded[0])
    if len(og) >= 2 and og.iloc[-1] > 0 and math.isfinite(og.iloc[-1]):
        t = analysis.theory_for(run, analysis.fit_layers(list(og.index)))
        if t.get("applies"):  # anchored at the measured output layer, step 0
            pred = np.array(t["predicted_norms"]) * og.iloc[-1]
            axes[0].plot(og.index, pred, "--", color="k", lw=1.2, label=f"mean-field theory (step {recorded[0]})")
    for ax, what in zip(axes, ("output_grad  ||dLoss/dz_l||", "weight_grad  ||dLoss/dW_l||")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side, last = output layer)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
        group.integer_ticks(ax.xaxis)
    _legend_outside(fig, axes)
    fig.suptitle(f"gradient norm by layer - {run.name}{_unfinished(run)}{_masked_note(zeros, bad)}", fontsize=10)
    return fig


def heatmap(run: analysis.Run, ycol: str = "layer") -> plt.Figure:
    """log10 output_grad over layer x step (``ycol`` 't': log10 ||dLoss/dh_t|| over time step x step)."""
    if ycol == "t":
        g = run.time[run.time.layer == run.time.layer.min()]
        what, label = "||dLoss/dh_t||", "time step t"
    else:
        g = run.grads[run.grads.kind == "output_grad"]
        what, label = "||dLoss/dz_l|| (output_grad)", "layer"
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    if g.empty:
        ax.set_title(f"{run.name}\n(no output_grad recorded)")
        return fig
    table = g.pivot_table(index=ycol, columns="step", values="value", aggfunc="first")
    v = table.to_numpy(dtype=float)
    ok = np.isfinite(v) & (v > 0)
    logv = np.ma.masked_array(np.log10(np.where(ok, v, 1.0)), ~ok)
    steps, ys = table.columns.to_numpy(), table.index.to_numpy()
    mesh = ax.pcolormesh(np.arange(len(steps) + 1) - 0.5, np.arange(len(ys) + 1) + ys.min() - 0.5, logv,
                         cmap=group.HEAT, shading="flat")
    group.step_ticks(ax, steps)
    ax.set_xlabel("training step")
    ax.set_ylabel(label)
    if ycol == "layer" and len(ys) > 1 and np.any(np.diff(ys) != 1) and "name" in g:
        # only some layers have output_grad (a transformer: embed, blocks.i, head): rows by name
        names = g.drop_duplicates("layer").set_index("layer")["name"]
        rows = np.unique(np.linspace(0, len(ys) - 1, min(len(ys), 16)).round().astype(int))
        ax.set_yticks(rows + ys.min(), [f"{names.get(ys[i], ys[i])} ({ys[i]})" for i in rows], fontsize=7)
    else:
        group.integer_ticks(ax.yaxis)
    fig.colorbar(mesh, ax=ax, label=f"log10 {what.split(' ')[0]}")
    masked = int((~ok).sum())
    ax.set_title(f"log10 {what} by {label} and step - {run.name}{_unfinished(run)}" +
                 (f"\n(grey: {masked} zero or NaN/inf values)" if masked else ""), fontsize=10)
    return fig


def time_profile(run: analysis.Run, steps=None) -> plt.Figure:
    """||dLoss/dh_t|| against t: one line per recorded step (up to 4) and recurrent layer."""
    if run.time is None or not len(run.time):
        raise UserError(f"no time_grads.csv in {run.folder} (it is written for recurrent nets: "
                        f"model.arch=rnn|lstm|gru)")
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    chosen = _pick_steps(run.time.step.unique(), steps, n=4)
    layers = sorted(run.time.layer.unique())
    colours = group.VIRIDIS(np.linspace(0, 1, len(chosen)))
    zeros = bad = 0
    for j, step in enumerate(chosen):
        for k, layer in enumerate(layers):
            d = run.time[(run.time.step == step) & (run.time.layer == layer)].sort_values("t")
            x, y, z, b = _positive(d.t, d.value)
            zeros, bad = zeros + z, bad + b
            ax.plot(x, y, group.STYLES[k % 4], color=colours[j],
                    label=f"step {step}" + (f", layer {layer}" if len(layers) > 1 else ""))
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dLoss/dh_t||")
    group.integer_ticks(ax.xaxis)
    ax.grid(True, alpha=0.3)
    _legend_outside(fig, [ax])
    ax.set_title(f"gradient back through time - {run.name}{_unfinished(run)}" + _masked_note(zeros, bad),
                 fontsize=10)
    return fig


def training(run: analysis.Run) -> plt.Figure:
    """Loss, accuracy and total gradient norm (pre- and post-clip) against step; the learning rate on a
    second axis of the loss panel where a schedule changes it."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    m = run.metrics.reindex(columns=list(dict.fromkeys(list(run.metrics.columns) + METRICS)))  # old runs: empty
    tr, te = m.dropna(subset=["loss"]), m.dropna(subset=["test_loss"])
    x, y, _, bad = _positive(tr.step, tr.loss)
    axes[0].plot(x, y, color="C0", label="train")
    axes[0].plot(te.step, te.test_loss, "o--", ms=3, color="C1", label="test")
    if tr.acc.notna().any():
        axes[1].plot(tr.step, tr.acc, color="C0", label="train")
        axes[1].plot(te.step, te.test_acc, "o--", ms=3, color="C1", label="test")
    x, y, _, b = _positive(tr.step, tr.grad_norm)
    bad += b
    clipped = not np.allclose(tr.grad_norm, tr.grad_norm_clipped, equal_nan=True)
    axes[2].plot(x, y, color="C0", label="gradient norm before clipping" if clipped else None)
    if clipped:
        x, y, _, _ = _positive(tr.step, tr.grad_norm_clipped)
        axes[2].plot(x, y, ":", color="C2", label="after clipping")
    for ax, label in zip(axes, ("loss", "accuracy", "total gradient norm")):
        ax.set_ylabel(label)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in (axes[0], axes[2]):
        _log_if_wide(ax)
    lr = m.dropna(subset=["lr"])
    extra = []
    if lr.lr.nunique() > 1:  # the lr each recorded update used
        ax = axes[0].twinx()
        ax.plot(lr.step, lr.lr, color="0.5", lw=1, label="learning rate")
        ax.set_ylabel("learning rate")
        extra.append(ax)
    _legend_outside(fig, list(axes) + extra)
    if not len(run.metrics):
        axes[1].text(0.5, 0.5, "no metrics recorded yet", ha="center", transform=axes[1].transAxes)
    elif not axes[1].lines:
        axes[1].text(0.5, 0.5, "regression: no accuracy", ha="center", transform=axes[1].transAxes)
    fig.suptitle(f"training - {run.name}{_unfinished(run)}" +
                 (f"  (not drawn: {bad} NaN/inf values - diverged)" if bad else ""))
    return fig


# -- writing ---------------------------------------------------------------------------------

def _check_out(out: Path, one_file: bool) -> None:
    """Refuse, before drawing anything, an output path that cannot be what it has to be."""
    if one_file:
        if out.is_dir():
            raise UserError(f"-o {out}: a folder; one kind is drawn into a file (e.g. {out / 'profile.png'}), "
                            "every kind into a folder (--kind all)")
        if out.suffix.lower() not in (".png", ".svg"):
            raise UserError(f"{out}: write .png or .svg")
    elif out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: a file; with --kind all, -o names a folder for the figures")
    check_creatable(out, "-o", folder=not one_file)


def _save(fig, out: Path) -> Path:
    out = Path(out)
    try:
        _check_out(out, one_file=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out
