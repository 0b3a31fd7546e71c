"""Figures of recorded gradients, headless (matplotlib's Agg backend), as PNG or SVG.

Kinds (``vgp plot PATH --kind K``):

* ``profile``: output_grad and weight_grad against layer, one line per recorded step (or per run
  for a group), log y, with the mean-field prediction dashed where it applies;
* ``heatmap``: layer x step, colour = log10 output_grad (one panel per run);
* ``time``: recurrent nets: ||dLoss/dh_t|| against t, one line per step (per run for a group);
* ``training``: loss, accuracy and total gradient norm (before and after clipping) against step;
* ``summary``: a summary column against a config key, one line per value of another key, with the
  mean and spread (min-max) over the remaining runs (seeds).

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

from vgp import analysis  # noqa: E402
from vgp.errors import UserError  # noqa: E402
from vgp.registry import did_you_mean  # noqa: E402

KINDS = ("profile", "heatmap", "time", "training", "summary")
METRICS = ["step", "loss", "acc", "grad_norm", "grad_norm_clipped", "test_loss", "test_acc"]  # what training draws
IGNORED_KEYS = ("name", "out", "log.kinds", "device")  # differ between runs without describing them


# -- finding runs and naming them ---------------------------------------------------------

def find_runs(paths, warn=analysis.warn) -> list[analysis.Run]:
    """Run folders named directly, inside a sweep (``<sweep>/runs/<id>/``) or inside a results folder;
    among several, one that cannot be read is left out with a warning (:func:`vgp.analysis.find_runs`)."""
    return analysis.find_runs(paths, warn)


def _ordered(runs) -> list:
    """Runs sorted by the config values that tell them apart (numbers as numbers: depth 5 before 10)."""
    keys = differing(runs)
    flats = [_flat(r) for r in runs]

    def key(i):
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in
                     (flats[i].get(k) for k in reversed(keys)))

    return [runs[i] for i in sorted(range(len(runs)), key=key)]


def _flat(run: analysis.Run) -> dict:
    from vgp.config import flatten

    return flatten(run.config)


def differing(runs) -> list[str]:
    """Config keys (flattened) whose values differ between the runs, in config order."""
    flats = [_flat(r) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    varied = [k for k in keys if k not in IGNORED_KEYS and len({repr(f.get(k)) for f in flats}) > 1]

    def explained(k: str) -> bool:  # init.mode differs only because init.name does (kaiming vs xavier)
        parent = k.rsplit(".", 1)[0] + ".name"
        if k.endswith(".name") or parent not in varied:
            return False
        per_name = {}
        for f in flats:
            per_name.setdefault(repr(f.get(parent)), set()).add(repr(f.get(k)))
        return all(len(v) == 1 for v in per_name.values())

    return [k for k in varied if not explained(k)]


def short(key: str) -> str:
    """model.activation.name -> activation; model.init.scale -> init.scale."""
    for prefix in ("model.", "train.", "data."):
        key = key.removeprefix(prefix)
    return key.removesuffix(".name")


def labels(runs, seeds: bool = True) -> list[str]:
    """What tells the runs apart, e.g. 'depth=20, activation=tanh' (without the seed if not ``seeds``)."""
    keys = [k for k in differing(runs) if seeds or k != "seed"]
    if not keys:
        return [r.name for r in runs]
    return [", ".join(f"{short(k)}={_flat(r).get(k)}" for k in keys) for r in runs]


# -- helpers ---------------------------------------------------------------------------------

def _positive(x, y):
    """The points with y > 0 and finite, and how many were 0 and how many non-finite."""
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    return x[ok], y[ok], int(np.sum(y == 0)), int(np.sum(~np.isfinite(y)))


def _masked_note(zeros: int, bad: int) -> str:
    parts = ([f"{zeros} zero (underflow)"] if zeros else []) + ([f"{bad} NaN/inf"] if bad else [])
    return f"\n(not drawn: {', '.join(parts)} values)" if parts else ""


def _unfinished(runs) -> str:
    """' (unfinished)' for one run, '\n(2 of 8 runs unfinished: ...)' for a group, '' if all finished."""
    n = sum(not r.finished for r in runs)
    if not n:
        return ""
    return " (unfinished)" if len(runs) == 1 else f"\n({n} of {len(runs)} runs unfinished: drawn as far as they got)"


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
    above = out.parent if one_file else out
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"-o {out}: cannot be created, {above} is a file")


def _save(fig, out: Path) -> Path:
    out = Path(out)
    try:
        _check_out(out, one_file=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100, bbox_inches="tight")
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


# -- the kinds --------------------------------------------------------------------------------

def profile(runs, out, steps=None) -> Path:
    """output_grad (left) and weight_grad (right) against layer; theory dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    group = len(runs) > 1
    names = labels(runs, seeds=False)  # runs that differ only by seed share a colour and a label
    index = {n: i for i, n in enumerate(dict.fromkeys(names))}
    colours = plt.cm.tab10.colors if len(index) <= 10 else plt.cm.turbo(np.linspace(0, 1, len(index)))
    zeros = bad = 0
    theory_drawn = False
    seen = set()
    for r, run in enumerate(runs):
        i = index[names[r]]
        g = run.grads
        recorded = sorted(g.step.unique())
        chosen = _pick_steps(recorded, steps, n=1 if group else 5, where=f"{run.folder}: " if group else "")
        cmap = plt.cm.viridis(np.linspace(0, 0.9, len(chosen)))
        for j, step in enumerate(chosen):
            colour = colours[i] if group else cmap[j]
            label = (names[r] if names[r] not in seen else None) if group else f"step {step}"
            for ax, kind in zip(axes, ("output_grad", "weight_grad")):
                s = analysis.layer_norms(g, step, kind)
                x, y, z, b = _positive(s.index, s.to_numpy())
                zeros, bad = zeros + z, bad + b
                ax.plot(x, y, "o-", ms=3, color=colour, label=label)
        seen.add(names[r])
        og = analysis.layer_norms(g, recorded[0])
        if len(og) >= 2 and og.iloc[-1] > 0 and math.isfinite(og.iloc[-1]):
            t = analysis.theory_for(run, analysis.fit_layers(list(og.index)))
            if t.get("applies"):  # anchored at the measured output layer, step 0
                pred = np.array(t["predicted_norms"]) * og.iloc[-1]
                axes[0].plot(og.index, pred, "--", color=colours[i] if group else "k", lw=1.2,
                             label=None if theory_drawn and not group else
                             ("mean-field theory (step 0)" if not group else None))
                theory_drawn = True
    for ax, what in zip(axes, ("output_grad  ||dLoss/dz_l||", "weight_grad  ||dLoss/dW_l||")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side, last = output layer)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
    title = "dashed: mean-field theory" if theory_drawn and group else None
    if group and len(index) > 4:  # beside the plots, not over the lines
        axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=7, title=title, title_fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        axes[0].legend(fontsize=8, title=title, title_fontsize=8)
    title = ("gradient norm by layer" + (f", step {chosen[0]}" if group else "") +
             (f" - {runs[0].name}" if not group else "") + _unfinished(runs) + _masked_note(zeros, bad))
    fig.suptitle(title)
    return _save(fig, out)


def heatmap(runs, out) -> Path:
    """log10 output_grad over layer x step, one panel per run (up to 12)."""
    runs = runs[:12]
    n = len(runs)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    names = labels(runs) if n > 1 else [runs[0].name]
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, run, name in zip(axes.flat, runs, names):
        g = run.grads[run.grads.kind == "output_grad"]
        if g.empty:
            ax.set_title(f"{name}\n(no output_grad recorded)")
            continue
        table = g.pivot_table(index="layer", columns="step", values="value", aggfunc="first")
        v = table.to_numpy(dtype=float)
        ok = np.isfinite(v) & (v > 0)
        logv = np.ma.masked_array(np.log10(np.where(ok, v, 1.0)), ~ok)
        steps, layers = table.columns.to_numpy(), table.index.to_numpy()
        cmap = plt.cm.viridis.with_extremes(bad="lightgrey")
        mesh = ax.pcolormesh(np.arange(len(steps) + 1) - 0.5, np.arange(len(layers) + 1) + 0.5, logv,
                             cmap=cmap, shading="flat")
        ticks = _pick_steps(range(len(steps)), n=6)
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.colorbar(mesh, ax=ax, label="log10 output_grad")
        masked = int((~ok).sum())
        ax.set_title(name + ("" if run.finished else " (unfinished)") +
                     (f"\n(grey: {masked} zero or NaN/inf values)" if masked else ""), fontsize=9)
    fig.suptitle("log10 ||dLoss/dz_l|| by layer and step")
    fig.tight_layout()
    return _save(fig, out)


def time(runs, out, steps=None) -> Path:
    """||dLoss/dh_t|| against t: one line per step and recurrent layer (per run for a group)."""
    runs_t = [r for r in runs if r.time is not None and len(r.time)]
    if not runs_t:
        raise UserError("no time_grads.csv in " + ", ".join(str(r.folder) for r in runs) +
                        " (it is written for recurrent nets: model.arch=rnn|lstm|gru)")
    group = len(runs_t) > 1
    names = labels(runs_t)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    zeros = bad = 0
    for i, run in enumerate(runs_t):
        chosen = _pick_steps(run.time.step.unique(), steps, n=1 if group else 4)
        layers = sorted(run.time.layer.unique())
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(chosen)))
        for j, step in enumerate(chosen):
            for k, layer in enumerate(layers):
                d = run.time[(run.time.step == step) & (run.time.layer == layer)].sort_values("t")
                x, y, z, b = _positive(d.t, d.value)
                zeros, bad = zeros + z, bad + b
                label = (names[i] if group else f"step {step}") + (f", layer {layer}" if len(layers) > 1 else "")
                ax.plot(x, y, ["-", "--", ":", "-."][k % 4], color=plt.cm.tab10.colors[i % 10] if group
                        else colours[j], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dLoss/dh_t||")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("gradient back through time" + (f" - {runs_t[0].name}" if not group else "") +
                 _masked_note(zeros, bad))
    return _save(fig, out)


def training(runs, out) -> Path:
    """Loss, accuracy and total gradient norm (pre- and post-clip) against step."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = labels(runs) if len(runs) > 1 else ["train"]
    bad = 0
    for i, run in enumerate(runs):
        c = plt.cm.tab10.colors[i % 10]
        m = run.metrics.reindex(columns=list(dict.fromkeys(list(run.metrics.columns) + METRICS)))  # old runs: empty
        tr, te = m.dropna(subset=["loss"]), m.dropna(subset=["test_loss"])
        name = names[i] + ("" if run.finished or len(runs) == 1 else " (unfinished)")
        x, y, _, b = _positive(tr.step, tr.loss)
        bad += b
        axes[0].plot(x, y, color=c, label=name)
        axes[0].plot(te.step, te.test_loss, "o--", ms=3, color=c, label="test" if len(runs) == 1 else None)
        if tr.acc.notna().any():
            axes[1].plot(tr.step, tr.acc, color=c, label=name)
            axes[1].plot(te.step, te.test_acc, "o--", ms=3, color=c, label="test" if len(runs) == 1 else None)
        x, y, _, b = _positive(tr.step, tr.grad_norm)
        bad += b
        axes[2].plot(x, y, color=c, label="before clipping" if len(runs) == 1 else name)
        if not np.allclose(tr.grad_norm, tr.grad_norm_clipped, equal_nan=True):
            x, y, _, _ = _positive(tr.step, tr.grad_norm_clipped)
            axes[2].plot(x, y, ":", color=c, label="after clipping" if len(runs) == 1 else None)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy")
    axes[2].set_ylabel("total gradient norm")
    for ax in (axes[0], axes[2]):
        _log_if_wide(ax)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not any(len(r.metrics) for r in runs):
        axes[1].text(0.5, 0.5, "no metrics recorded yet", ha="center", transform=axes[1].transAxes)
    elif not axes[1].lines:
        axes[1].text(0.5, 0.5, "regression: no accuracy", ha="center", transform=axes[1].transAxes)
    fig.suptitle("training" + (f" - {runs[0].name}" if len(runs) == 1 else "") + _unfinished(runs).replace("\n", " ") +
                 (f"  (not drawn: {bad} NaN/inf values - diverged)" if bad else ""))
    fig.tight_layout()
    return _save(fig, out)


def summary_table(runs) -> pd.DataFrame:
    """One row per run: flattened config + summary columns (diagnosed where missing: older or unfinished runs)."""
    rows = []
    for r in runs:
        row = {**_flat(r), **(r.summary or {"status": r.status})}
        if "verdict" not in row or "decay_per_layer" not in row:
            row.update(analysis.summary_columns(r.folder, r))
        rows.append(row)
    return pd.DataFrame(rows)


def _column(table: pd.DataFrame, key: str | None) -> str | None:
    """A column by its full or short name: 'depth' -> 'model.depth'."""
    if key is None or key in table:
        return key
    match = [c for c in table.columns if short(c) == key]
    return match[0] if len(match) == 1 else key


def summary(runs, out, x: str | None = None, y: str = "decay_per_layer", by: str | None = None) -> Path:
    """y against x, one line per value of ``by``, mean and min-max spread over the rest (seeds)."""
    table = summary_table(runs)
    keys = differing(runs)
    x = x or next((k for k in keys if k != "seed" and pd.api.types.is_numeric_dtype(table[k])), None) or \
        next((k for k in keys if k != "seed"), None)
    if x is None:
        raise UserError("the runs differ in no config key but the seed; name one with --x")
    if by is None:
        by = next((k for k in keys if k not in ("seed", x)), None)
    x, y, by = (_column(table, k) for k in (x, y, by))
    for key in (x, y) + ((by,) if by else ()):
        if key not in table:
            raise UserError(f"no column '{key}'{did_you_mean(key, table.columns)} (e.g. {', '.join(keys[:5])})")
    table[y] = pd.to_numeric(table[y], errors="coerce")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = table.groupby(by, dropna=False) if by else [(None, table)]
    theory_drawn = False
    for i, (value, t) in enumerate(groups):
        stats = t.groupby(x)[y].agg(["mean", "min", "max", "count"]).sort_index()
        xs = stats.index if pd.api.types.is_numeric_dtype(stats.index) else [str(v) for v in stats.index]
        c = plt.cm.tab10.colors[i % 10]
        ax.plot(xs, stats["mean"], "o-", color=c, label=f"{short(by)}={value}" if by else None)
        if (stats["count"] > 1).any():
            ax.fill_between(xs, stats["min"], stats["max"], color=c, alpha=0.2)
        pred = f"predicted_{y}"
        if pred in t and pd.to_numeric(t[pred], errors="coerce").notna().any():
            p = pd.to_numeric(t[pred], errors="coerce").groupby(t[x]).mean().sort_index()
            ax.plot(xs, p.to_numpy(), "--", color=c, lw=1.2)
            theory_drawn = True
    v = table[y].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and (v > 0).all() and v.max() / v.min() > 30:
        ax.set_yscale("log")
    if y.startswith("decay"):
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(short(x))
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    if by:
        ax.legend(fontsize=8, title="dashed: mean-field theory" if theory_drawn else None, title_fontsize=8)
    n = table.groupby([x] + ([by] if by else [])).size().max()
    ax.set_title(f"{y} against {short(x)}" + (f": mean and min-max over {n} runs each" if n > 1 else ""))
    return _save(fig, out)


def plot(paths, kind: str = "all", out: str | Path | None = None, steps=None, x=None, y="decay_per_layer",
         by=None, fmt: str = "png", warn=analysis.warn) -> list[Path]:
    """Draw one kind (to ``out``, a file) or all that apply (into ``out``, a folder). Returns the files.

    Among several runs, one that cannot be read is left out with a ``warn`` line; unfinished runs
    are drawn from the steps they recorded, with a note on standard error."""
    if kind not in KINDS + ("all",):
        raise UserError(f"unknown plot kind '{kind}'{did_you_mean(kind, KINDS + ('all',))} "
                        f"(valid: {', '.join(KINDS)}, all)")
    if out is not None:
        _check_out(Path(out), one_file=kind != "all")
    runs = _ordered(find_runs(paths, warn))
    note = analysis.unfinished_note(runs)
    if note:
        analysis.note(note)
    group = len(runs) > 1
    first = Path(paths[0])
    base = Path(out) if out is not None else first / "plots"
    draw = {"profile": lambda o: profile(runs, o, steps), "heatmap": lambda o: heatmap(runs, o),
            "time": lambda o: time(runs, o, steps), "training": lambda o: training(runs, o),
            "summary": lambda o: summary(runs, o, x, y, by)}
    if kind != "all":
        if kind == "summary" and not group:
            raise UserError("summary plots compare runs: give a sweep folder or several run folders")
        return [draw[kind](base if out is not None else base / f"{kind}.{fmt}")]
    kinds = ["profile", "heatmap", "training"]
    if any(r.time is not None and len(r.time) for r in runs):
        kinds.append("time")
    if group and any(k != "seed" for k in differing(runs)):
        kinds.append("summary")
    return [draw[k](base / f"{k}.{fmt}") for k in kinds]
