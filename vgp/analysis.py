"""Diagnosis: read a run folder's CSVs and say whether its gradients vanish, explode or flow.

Only reads files (pandas); never imports the training code. The words used:

* **decay per layer** ``d``: the geometric-mean ratio ``output_grad(l) / output_grad(l+1)`` of
  consecutive layers, from a robust (Theil-Sen) line through log-norm against layer over the hidden
  layers, so that one odd layer or a norm that underflowed to 0 does not move it. ``d < 1``: the
  gradient shrinks toward the input. For recurrent nets, the **decay per step** is the same over
  time steps: ``||dLoss/dh_t|| / ||dLoss/dh_{t+1}||`` (``time_grads.csv``).
* **compounded** ``d ** n``: what that rate does across *this* network (``n`` = layers from the
  input layer to the output layer, or time steps from the first to the last). A rate of 0.9 is
  harmless at depth 5 (0.59) and fatal at depth 100 (3e-5).
* **verdict**: ``vanishing`` when the compounded ratio is below ``Thresholds.vanishing``,
  ``exploding`` above ``Thresholds.exploding``, else ``healthy``; judged at step 0 (what the init
  and the architecture do), and again at the last recorded step (``verdict_last``).
* **evidence**: whether the loss fell (``stalled``), the fractions of saturated and dead units,
  where the norm drops below ``Thresholds.drop`` times the output layer's, and the mean-field
  prediction (:mod:`vgp.theory`) beside the measurement where it applies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vgp.errors import UserError


@dataclass
class Thresholds:
    vanishing: float = 0.1  # compounded ratio (input-side over output-side gradient) below this: vanishing
    exploding: float = 10.0  # ... above this: exploding
    drop: float = 0.01  # a layer (time step) whose norm is below drop x the output layer's (last step's) is cut off
    stall: float = 0.02  # the loss fell by less than this fraction from the first to the last recorded steps: stalled
    saturated: float = 0.2  # a mean fraction of saturated units above this is called out as evidence
    dead: float = 0.2  # ... of dead units


# -- reading --------------------------------------------------------------------------------

@dataclass
class Run:
    folder: Path
    config: dict  # the resolved config (config.yaml), {} if missing
    grads: pd.DataFrame  # grad_norms.csv
    metrics: pd.DataFrame  # metrics.csv
    time: pd.DataFrame | None  # time_grads.csv, for recurrent nets
    summary: dict | None  # summary.csv's row, None while the run is not finished

    @property
    def name(self) -> str:
        return self.config.get("name") or self.folder.name


def _csv(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    for path in (folder / name, folder / (name + ".partial")):  # a failed run keeps its rows in .partial
        if path.exists():
            try:
                return pd.read_csv(path)
            except pd.errors.EmptyDataError:
                break
    if required:
        raise UserError(f"{folder}: no {name} (is this a vgp run folder?)")
    return None


def read_run(folder: str | Path) -> Run:
    """The CSVs of one run folder; a missing folder or grad_norms.csv is a UserError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    cfg = {}
    if (folder / "config.yaml").exists():
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    grads = _csv(folder, "grad_norms.csv")
    metrics = _csv(folder, "metrics.csv", required=False)
    summary = _csv(folder, "summary.csv", required=False)
    return Run(folder, cfg, grads, metrics if metrics is not None else pd.DataFrame(columns=["step", "loss"]),
               _csv(folder, "time_grads.csv", required=False),
               summary.iloc[0].to_dict() if summary is not None and len(summary) else None)


# -- measuring -------------------------------------------------------------------------------

def theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    """The median of the slopes between all pairs of points: a line fit that ignores outliers."""
    i, j = np.triu_indices(len(x), 1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i]))) if len(i) else math.nan


def decay_rate(norms) -> tuple[float, int, int]:
    """(rate per position, zeros, non-finite) for norms at positions 1, 2, ...: exp(-slope) of a
    Theil-Sen fit of log-norm against position, over the positive finite norms only; NaN with
    fewer than two. rate < 1: the norm shrinks toward position 1."""
    v = np.asarray(norms, dtype=float)
    pos = np.arange(1, len(v) + 1, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    zeros = int(np.sum(v == 0))
    bad = int(np.sum(~np.isfinite(v)))
    if ok.sum() < 2:
        return math.nan, zeros, bad
    return math.exp(-theil_sen(pos[ok], np.log(v[ok]))), zeros, bad


def judge(compounded: float, zeros: int, nonfinite: int, th: Thresholds) -> str:
    """vanishing | exploding | healthy from a compounded ratio; 'unknown' without one."""
    if math.isnan(compounded):
        if nonfinite:
            return "exploding"
        return "vanishing" if zeros else "unknown"
    if compounded < th.vanishing:
        return "vanishing"
    return "exploding" if compounded > th.exploding else "healthy"


def _ratio(a: float, b: float) -> float:
    if b == 0 or not math.isfinite(b):
        return math.nan if (a == 0 or not math.isfinite(a) or not math.isfinite(b)) else math.inf
    return a / b


def _drop(norms: np.ndarray, ref: float, th: Thresholds) -> int | None:
    """The highest position (1-based) whose norm is outside [drop, 1/drop] x ref: from it down to
    position 1 the signal is cut off (or blown up). None if every norm is within."""
    rel = norms / ref if ref > 0 and math.isfinite(ref) else np.full(len(norms), math.nan)
    out = np.flatnonzero(~((rel >= th.drop) & (rel <= 1 / th.drop)) & ~np.isnan(rel))
    return int(out[-1]) + 1 if len(out) else None


def layer_norms(grads: pd.DataFrame, step: int, kind: str = "output_grad") -> pd.Series:
    """value by layer (1..L+1) of one kind at one step."""
    g = grads[(grads.step == step) & (grads.kind == kind)]
    return g.set_index("layer").value.sort_index().astype(float)


def fit_layers(layers: list[int]) -> list[int]:
    """The layers a decay rate is fitted over: the hidden ones (all but the last, the output layer)
    when there are two or more of them, else all (depth 1: the hidden layer and the output)."""
    return layers[:-1] if len(layers) >= 3 else layers


def depth_stats(grads: pd.DataFrame, step: int, th: Thresholds) -> dict:
    """Decay per layer, compounded, ratios and the drop layer from output_grad at one step."""
    s = layer_norms(grads, step)
    layers = list(s.index)
    out = {"step": int(step), "layers": len(layers), "decay_per_layer": math.nan, "compounded": math.nan,
           "grad_ratio": math.nan, "first_over_output": math.nan, "drop_layer": None, "zeros": 0,
           "nonfinite": 0, "verdict": "unknown"}
    if len(layers) < 2:
        return out
    v = s.to_numpy()
    fit = fit_layers(layers)
    rate, zeros, bad = decay_rate(s.loc[fit].to_numpy())
    out.update(decay_per_layer=rate, zeros=int(np.sum(v == 0)), nonfinite=int(np.sum(~np.isfinite(v))))
    out["compounded"] = rate ** (len(layers) - 1) if math.isfinite(rate) else math.nan
    hidden = v[:-1]
    out["grad_ratio"] = _ratio(hidden[0], hidden[-1]) if len(hidden) >= 2 else math.nan
    out["first_over_output"] = _ratio(v[0], v[-1])
    out["drop_layer"] = _drop(v[:-1], v[-1], th)
    out["verdict"] = judge(out["compounded"], out["zeros"] if v[-1] > 0 else 0, out["nonfinite"], th)
    return out


def time_stats(times: pd.DataFrame, step: int, th: Thresholds) -> list[dict]:
    """Per recurrent layer: decay per time step of ||dLoss/dh_t||, compounded over the sequence."""
    rows = []
    for layer, g in times[times.step == step].groupby("layer"):
        v = g.sort_values("t").value.to_numpy(dtype=float)
        rate, zeros, bad = decay_rate(v)
        compounded = rate ** (len(v) - 1) if math.isfinite(rate) else math.nan
        rows.append({"layer": int(layer), "steps": len(v), "decay_per_step": rate, "compounded": compounded,
                     "first_over_last": _ratio(v[0], v[-1]), "drop_t": _drop(v[:-1], v[-1], th) if len(v) > 1
                     else None, "zeros": zeros, "nonfinite": bad,
                     "verdict": judge(compounded, zeros if v[-1] > 0 else 0, bad, th)})
    return rows


def combine(verdicts: list[tuple[str, float]]) -> str:
    """One verdict from several axes (depth, time per layer): the most extreme problem wins."""
    bad = [(abs(math.log(c)) if c and math.isfinite(c) and c > 0 else math.inf, v) for v, c in verdicts
           if v in ("vanishing", "exploding")]
    if bad:
        return max(bad)[1]
    return "healthy" if any(v == "healthy" for v, _ in verdicts) else "unknown"


def _act_mean(grads: pd.DataFrame, step: int, kind: str) -> float:
    s = layer_norms(grads, step, kind)
    return float(s.mean()) if len(s) else math.nan


def loss_evidence(metrics: pd.DataFrame, th: Thresholds) -> dict:
    """First and last training loss (median of up to 3 recorded values at each end) and 'stalled'."""
    m = metrics.dropna(subset=["loss"]) if "loss" in metrics else metrics.iloc[:0]
    losses = m.loss.to_numpy(dtype=float)
    out = {"loss_first": math.nan, "loss_last": math.nan, "loss_drop": math.nan, "stalled": None,
           "diverged": bool(len(losses) and not np.all(np.isfinite(losses)))}
    if len(losses) < 2:
        return out
    k = max(1, min(3, len(losses) // 4))
    first, last = float(np.median(losses[:k])), float(np.median(losses[-k:]))
    out.update(loss_first=first, loss_last=last)
    if math.isfinite(first) and math.isfinite(last) and first > 0:
        out["loss_drop"] = (first - last) / first
        out["stalled"] = bool(out["loss_drop"] < th.stall)
    return out


def theory_for(run: Run, fit: list[int]) -> dict:
    """The mean-field prediction beside a measured MLP: per-layer ratios over the same layers, fitted
    the same way. {'applies': False, 'reason': ...} where the theory does not describe the net."""
    from vgp import theory

    if not run.config.get("model"):
        return {"applies": False, "reason": "no config.yaml"}
    try:
        setting = theory.from_config(run.config)
    except theory.NotApplicable as e:
        return {"applies": False, "reason": str(e)}
    if setting.depth < 1 or len(fit) < 2:
        return {"applies": False, "reason": "no hidden layer with output_grad recorded"}
    p = theory.profile(setting.activation, setting.weight_vars, setting.bias_vars)
    norm = np.array(p.norm)
    rate, _, _ = decay_rate(norm[[l - 1 for l in fit]])
    sw2, sb2 = setting.hidden
    chi = theory.chi1(setting.activation, sw2, sb2)
    return {"applies": True, "predicted_decay_per_layer": rate, "predicted_ratios": p.ratio,
            "predicted_norms": p.norm, "weight_var": sw2, "bias_var": sb2, "chi1": chi,
            "ratio_per_layer": math.sqrt(chi), "phase": theory.phase(chi), "depth_scale": theory.depth_scale(chi),
            "notes": setting.notes}


# -- the diagnosis --------------------------------------------------------------------------

def _advice(d: dict, act: str) -> str:
    v, ev, th = d["verdict"], d["evidence"], d["thresholds"]
    sat, dead = ev.get("saturation_first", math.nan), ev.get("dead_first", math.nan)
    recurrent = d["time"] is not None
    if ev.get("diverged") and v != "vanishing":
        return "the run diverged: lower the learning rate, clip gradients (train.clip.mode=norm) or shrink the init"
    if v == "vanishing":
        if recurrent:
            return ("gradients fade back through time: try an LSTM/GRU, an orthogonal or identity recurrent init "
                    "(model.recurrent_init), or shorter sequences")
        if act in ("sigmoid", "tanh", "softsign", "softplus"):
            why = f"saturated {act} units" if sat > th["saturated"] else f"{act}'s small slopes"
            return (f"{why} and vanishing gradients: try a ReLU-family activation with He init "
                    "(kaiming_normal), batch norm or skip connections")
        if dead > th["dead"]:
            return "many dead units: use He init with zero biases, a leaky_relu/elu activation, or a smaller lr"
        return ("gradients shrink layer by layer: raise the weight variance toward the critical one "
                "(vgp theory CONFIG --critical), or add batch norm or skip connections")
    if v == "exploding":
        if recurrent:
            return "gradients grow back through time: clip gradients (train.clip.mode=norm) or shrink the recurrent init"
        return ("gradients grow layer by layer: lower the weight variance (He/Xavier init, or toward the critical "
                "one: vgp theory CONFIG --critical) and clip gradients (train.clip.mode=norm)")
    if v == "healthy" and ev.get("stalled"):
        return "gradients reach every layer but the loss does not fall: look at the learning rate and the data"
    if v == "healthy":
        return "gradients reach every layer at a similar size: nothing to fix"
    return "too little was recorded to judge (no output_grad over two or more layers)"


def diagnose(folder: str | Path, th: Thresholds | None = None, run: Run | None = None) -> dict:
    """The diagnosis of one run folder as a JSON-able dict (see the module docstring)."""
    th = th or Thresholds()
    run = run or read_run(folder)
    g = run.grads
    steps = sorted(g.step.unique())
    if not steps:
        raise UserError(f"{run.folder}: grad_norms.csv has no rows")
    first, last = int(steps[0]), int(steps[-1])
    has_og = bool((g.kind == "output_grad").any())
    per_step = {}
    for name, step in (("first", first), ("last", last)):
        st = depth_stats(g, step, th) if has_og else None
        ts = time_stats(run.time, step, th) if run.time is not None and len(run.time) else None
        axes = ([(st["verdict"], st["compounded"])] if st and st["verdict"] != "unknown" else []) + \
               [(t["verdict"], t["compounded"]) for t in ts or []]
        per_step[name] = {"depth": st, "time": ts, "verdict": combine(axes)}
    m = run.config.get("model", {})
    act = (m.get("activation") or {}).get("name", "") if isinstance(m.get("activation"), dict) else str(m.get("activation", ""))
    if m.get("arch") in ("lstm", "gru"):
        act = ""  # their gates fix their nonlinearities; model.activation is not used
    evidence = loss_evidence(run.metrics, th)
    for kind in ("saturation", "dead"):
        evidence[f"{kind}_first"] = _act_mean(g, first, kind)
        evidence[f"{kind}_last"] = _act_mean(g, last, kind)
    if run.summary is not None and run.summary.get("status") == "diverged":
        evidence["diverged"] = True
    d0, dl = per_step["first"]["depth"] or {}, per_step["last"]["depth"] or {}
    layers = sorted(layer_norms(g, first).index) if has_og else []
    theory = theory_for(run, fit_layers(layers))
    times0 = per_step["first"]["time"] or []
    worst_time = max(times0, key=lambda t: abs(math.log(t["compounded"])) if t["compounded"] and
                     math.isfinite(t["compounded"]) and t["compounded"] > 0 else -1, default=None)
    out = {
        "run": str(run.folder), "status": (run.summary or {}).get("status", "unfinished"),
        "arch": m.get("arch"), "activation": act, "depth": m.get("depth"),
        "verdict": per_step["first"]["verdict"], "verdict_last": per_step["last"]["verdict"],
        "decay_per_layer": d0.get("decay_per_layer", math.nan), "compounded": d0.get("compounded", math.nan),
        "grad_ratio": d0.get("grad_ratio", math.nan), "first_over_output": d0.get("first_over_output", math.nan),
        "drop_layer": d0.get("drop_layer"), "decay_per_layer_last": dl.get("decay_per_layer", math.nan),
        "decay_per_step": worst_time["decay_per_step"] if worst_time else math.nan,
        "predicted_decay_per_layer": theory.get("predicted_decay_per_layer", math.nan),
        "steps": {"first": per_step["first"], "last": per_step["last"]},
        "time": times0 or None, "evidence": evidence, "theory": theory, "thresholds": asdict(th),
    }
    out["advice"] = _advice(out, act)
    return out


def summary_columns(folder: str | Path) -> dict:
    """The columns a finished run adds to summary.csv. Never raises: a run's completion marker must
    not be lost to its analysis (the error is written into the 'verdict' column instead)."""
    try:
        d = diagnose(folder)
        t = d["theory"]
        return {"decay_per_layer": d["decay_per_layer"], "decay_per_layer_last": d["decay_per_layer_last"],
                "decay_per_step": d["decay_per_step"], "verdict": d["verdict"], "verdict_last": d["verdict_last"],
                "predicted_decay_per_layer": t.get("predicted_decay_per_layer"), "theory_chi1": t.get("chi1"),
                "theory_phase": t.get("phase")}
    except Exception as e:  # noqa: BLE001
        return {"verdict": f"error: {type(e).__name__}: {e}"}


# -- the report -----------------------------------------------------------------------------

def _fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def report(d: dict) -> str:
    """A short report in rich markup: verdict, the evidence, one line of advice."""
    colour = {"vanishing": "blue", "exploding": "red", "healthy": "green"}.get(d["verdict"], "yellow")
    th, ev, t = d["thresholds"], d["evidence"], d["theory"]
    about = ", ".join(str(v) for v in (d["arch"], f"depth {d['depth']}", d["activation"], d["status"]) if v)
    lines = [f"[bold]{d['run']}[/bold]  ({about})",
             f"verdict: [bold {colour}]{d['verdict']}[/] at step {d['steps']['first']['depth']['step'] if d['steps']['first']['depth'] else 0}"
             f", {d['verdict_last']} at the last recorded step  (vanishing: compounded < {th['vanishing']:g}, "
             f"exploding: > {th['exploding']:g})"]
    for name in ("first", "last"):
        s = d["steps"][name]["depth"]
        if s and s["layers"] >= 2:
            lines.append(
                f"  step {s['step']}: output_grad decays by {_fmt(s['decay_per_layer'])} per layer "
                f"-> x{_fmt(s['compounded'])} over {s['layers'] - 1} layers; layer 1 / output layer "
                f"{_fmt(s['first_over_output'])}"
                + (f"; below {th['drop']:g} x output from layer {s['drop_layer']} down" if s["drop_layer"] else "")
                + (f"; {s['zeros']} layer(s) underflowed to 0" if s["zeros"] else "")
                + (f"; {s['nonfinite']} non-finite" if s["nonfinite"] else ""))
        for r in d["steps"][name]["time"] or []:
            lines.append(f"  step {d['steps'][name]['depth']['step'] if d['steps'][name]['depth'] else ''} recurrent "
                         f"layer {r['layer']}: dLoss/dh_t decays by {_fmt(r['decay_per_step'])} per time step -> "
                         f"x{_fmt(r['compounded'])} over {r['steps'] - 1} steps ({r['verdict']})")
    if t.get("applies"):
        lines.append(f"  theory: sigma_w^2={_fmt(t['weight_var'])}, sigma_b^2={_fmt(t['bias_var'])}: chi_1="
                     f"{_fmt(t['chi1'])} ({t['phase']}), predicted decay {_fmt(t['predicted_decay_per_layer'])} per "
                     f"layer vs measured {_fmt(d['decay_per_layer'])}" + "".join(f"; {n}" for n in t["notes"]))
    else:
        lines.append(f"  theory: does not apply ({t.get('reason')})")
    loss = (f"  loss {_fmt(ev['loss_first'])} -> {_fmt(ev['loss_last'])}"
            + (" [bold]stalled[/bold]" if ev["stalled"] else "") + (" [bold red]diverged[/]" if ev["diverged"] else ""))
    sat = (f"; saturated units {_fmt(ev['saturation_first'], '.0%')} -> {_fmt(ev['saturation_last'], '.0%')}, "
           f"dead units {_fmt(ev['dead_first'], '.0%')} -> {_fmt(ev['dead_last'], '.0%')} (mean over hidden layers)")
    lines.append(loss + (sat if not math.isnan(ev["saturation_first"]) else ""))
    lines.append(f"[bold]advice:[/bold] {d['advice']}")
    return "\n".join(lines)


def jsonable(obj):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
