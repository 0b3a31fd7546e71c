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
  where the norm falls below ``Thresholds.drop`` or rises above ``Thresholds.rise`` times the output
  layer's, and the mean-field prediction (:mod:`vgp.theory`) beside the measurement where it applies.
* **advice**: drawn from both verdicts, that evidence and the config (it never proposes what the
  config already does).

A run folder is **finished** when it holds ``summary.csv``; an unfinished one (running, killed,
failed, interrupted) is diagnosed from the steps its ``*.csv.partial`` files recorded, and says so.
A file that cannot be read as what vgp writes (binary, not CSV/YAML/JSON, truncated, a column
missing, a non-number where a number belongs) is a :class:`~vgp.errors.UserError` naming the file
and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vgp import blocks
from vgp.errors import UserError


@dataclass
class Thresholds:
    vanishing: float = 0.1  # compounded ratio (input-side over output-side gradient) below this: vanishing
    exploding: float = 10.0  # ... above this: exploding
    drop: float = 0.01  # a layer (time step) whose norm is below drop x the output layer's (last step's) is cut off
    stall: float = 0.02  # the loss fell by less than this fraction from the first to the last recorded steps: stalled
    saturated: float = 0.2  # a mean fraction of saturated units above this is called out as evidence
    dead: float = 0.2  # ... of dead units
    underflow: float = 0.1  # a layer with more than this fraction of its weight gradient's entries underflowed
    rise: float = 100.0  # a layer (time step) whose norm is above rise x the output layer's (last step's) is blown up


def warn(message: str) -> None:
    """One line on standard error, for a run left out or a file that is not what it should be."""
    print(f"vgp: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """One line on standard error about what was read (unfinished runs drawn as far as they got)."""
    print(f"vgp: note: {message}", file=sys.stderr)


# -- reading files --------------------------------------------------------------------------

# What each CSV of a run folder must hold: columns, integer columns (never empty), number columns
# (empty, nan and inf allowed), text columns (never empty).
SCHEMAS = {
    "grad_norms.csv": dict(columns=("step", "layer", "kind", "value"), integers=("step", "layer"),
                           numbers=("value",), texts=("kind",)),
    "metrics.csv": dict(columns=("step", "loss"), integers=("step",),
                        numbers=("loss", "acc", "grad_norm", "grad_norm_clipped", "lr", "elapsed_s", "test_loss",
                                 "test_acc", "loss_scale", "skipped")),
    "time_grads.csv": dict(columns=("step", "layer", "t", "value"), integers=("step", "layer", "t"),
                           numbers=("value",)),
    "summary.csv": dict(columns=("status",),
                        numbers=("steps_done", "final_loss", "final_test_loss", "final_test_acc", "grad_ratio",
                                 "decay_per_layer", "decay_per_layer_last", "decay_per_step", "decay_per_block",
                                 "predicted_decay_per_layer", "wall_s", "skipped_steps", "underflow_max",
                                 "underflow_max_last")),
}


def _text(path: Path) -> str:
    """A file's text. Unreadable, binary or not UTF-8: a UserError naming the file."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: a folder where a file belongs") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"{path}: binary data, not text (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: binary data, not UTF-8 text (offset {e.start})") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_csv(path: str | Path, columns=(), integers=(), numbers=(), texts=(), partial: bool = False,
             whole_lines: bool = True, text: str | None = None) -> pd.DataFrame:
    """A CSV checked against what vgp writes; anything else is a UserError '<file>: <what is wrong>'.

    Every row must have the header's number of fields, ``columns`` must be there, ``integers`` and
    ``texts`` filled in every row, ``numbers`` numbers where filled (nan, inf allowed). An empty file
    is an empty frame. vgp ends every line with a newline, so a file that does not (with
    ``whole_lines``) was cut short; ``partial``: a file still being written, or whose writer was
    killed, where an incomplete last line is expected and dropped. ``text``: the file's text, already
    read (``path`` then only names it in messages)."""
    path = Path(path)
    text = _text(path) if text is None else text
    if text and not text.endswith("\n"):
        if partial:
            text = text[:text.rfind("\n") + 1]
        elif whole_lines:
            raise UserError(f"{path}: truncated: its last line (line {text.count(chr(10)) + 1}) is incomplete")
    if not text or text.isspace():
        return pd.DataFrame(columns=list(columns))
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        # every row as long as the header: counted fast where nothing is quoted, found row by row where not
        if '"' in text or text.count(",") != (len(header) - 1) * text.count("\n"):
            for row in reader:
                if len(row) != len(header):
                    raise UserError(f"{path}: line {reader.line_num} has {len(row)} fields, the header {len(header)}"
                                    + (" (an empty line)" if not row else ""))
        df = pd.read_csv(io.StringIO(text), skip_blank_lines=False)
    except (csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UserError(f"{path}: not a valid CSV file ({_first_line(e)})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (its columns: "
                        f"{', '.join(map(str, df.columns[:8]))}{', ...' if len(df.columns) > 8 else ''})")
    for c in integers + numbers:
        if c not in df.columns:
            continue
        kind = df[c].dtype.kind  # what the parser made of the column: numbers throughout need no check
        if kind in "iu" or (kind == "f" and c not in integers):
            df[c] = df[c].astype("int64") if c in integers else df[c].astype(float)
            continue
        v = pd.to_numeric(df[c], errors="coerce")
        bad = (v.isna() | (v % 1 != 0)) if c in integers else (v.isna() & df[c].notna())
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raw = df[c].iloc[i]
            shown = raw if isinstance(raw, str) else format(float(raw), "g")
            what = "empty" if pd.isna(raw) else f"'{shown}', not {'an integer' if c in integers else 'a number'}"
            raise UserError(f"{path}: line {i + 2}: {c} is {what}")
        df[c] = v.astype("int64") if c in integers else v.astype(float)
    for c in texts:
        if c in df.columns and df[c].isna().any():
            raise UserError(f"{path}: line {int(np.flatnonzero(df[c].isna().to_numpy())[0]) + 2}: {c} is empty")
    return df


def read_yaml(path: Path) -> dict:
    """A run's config.yaml: a mapping whose sections are mappings; else a UserError naming the file.
    Parsed by libyaml where PyYAML has it (about 6 times as fast); a file it rejects is parsed again
    by PyYAML's own parser, whose error says where and what."""
    text = _text(path)
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        data = _yaml_again(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {type(data).__name__}, not a mapping of config keys")
    for section in ("model", "data", "train", "log"):
        if section in data and not isinstance(data[section], (dict, type(None))):
            raise UserError(f"{path}: '{section}' is {data[section]!r}, not a mapping")
    return data


def _yaml_again(path: Path, text: str):
    """``text`` parsed by PyYAML's Python parser; its error as a UserError naming the file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise UserError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML ({e.problem or e.context})") \
            from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({_first_line(e)})") from None


def read_json(path: Path) -> dict:
    """A run's meta.json: one JSON object; else a UserError naming the file."""
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


# -- reading a run folder --------------------------------------------------------------------

@dataclass
class Run:
    folder: Path
    config: dict  # the resolved config (config.yaml), {} if missing
    grads: pd.DataFrame  # grad_norms.csv (or .partial)
    metrics: pd.DataFrame  # metrics.csv (or .partial); no rows if missing
    time: pd.DataFrame | None  # time_grads.csv, for recurrent nets
    summary: dict | None  # summary.csv's row, None while the run is not finished
    meta: dict | None = None  # meta.json, None if missing
    partial: tuple = ()  # the files read from their .partial (unfinished runs)

    @property
    def name(self) -> str:
        return self.config.get("name") or self.folder.name

    @property
    def finished(self) -> bool:
        """A run is finished when its folder holds summary.csv (the completion marker)."""
        return self.summary is not None

    @property
    def status(self) -> str:
        return str(self.summary.get("status")) if self.finished else "unfinished"

    def unfinished_why(self) -> str:
        """'no summary.csv; meta.json says running' (empty for a finished run)."""
        if self.finished:
            return ""
        said = (self.meta or {}).get("status")
        return "no summary.csv" + (f"; meta.json says {said!r}" if said else "") + \
            ("; see error.txt" if (self.folder / "error.txt").exists() else "")


RUN_MARKERS = ("grad_norms.csv", "grad_norms.csv.partial", "summary.csv", "meta.json", "config.yaml")


def is_run_folder(p: Path) -> bool:
    """A folder holding any file a run writes (a sweep folder, with runs/ in it, is not one)."""
    return p.is_dir() and not (p / "runs").is_dir() and any((p / n).exists() for n in RUN_MARKERS)


def _run_csv(folder: Path, name: str) -> tuple[pd.DataFrame | None, Path | None]:
    """A run's CSV under its final name, else its .partial (the rows of a run that did not finish)."""
    for path, partial in ((folder / name, False), (folder / (name + ".partial"), True)):
        if path.exists():
            return read_csv(path, partial=partial, **SCHEMAS[name]), path
    return None, None


def _complete_steps(df: pd.DataFrame, expected_layers: int | None = None) -> pd.DataFrame:
    """Without the last recorded step if a killed writer left it incomplete (fewer rows than the
    steps before it, or, for a single step, fewer layers than the config has)."""
    if df.empty:
        return df
    counts = df.groupby("step").size()
    last = counts.index[-1]
    if len(counts) > 1:
        short = counts.iloc[-1] < counts.iloc[:-1].max()
    else:
        short = expected_layers is not None and "layer" in df and df.layer.max() < expected_layers
    return df[df.step != last] if short else df


def _expected_layers(cfg: dict) -> int | None:
    m = cfg.get("model") or {}
    depth = m.get("depth")
    return depth + 1 if m.get("arch", "mlp") == "mlp" and isinstance(depth, int) else None


def read_run(folder: str | Path) -> Run:
    """The files of one run folder. A missing folder, a run that recorded no step yet, or a file
    that cannot be read is a UserError naming it; an unfinished run is read from its .partial files."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such run folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: a file, not a run folder")
    cfg = read_yaml(folder / "config.yaml") if (folder / "config.yaml").exists() else {}
    meta = read_json(folder / "meta.json") if (folder / "meta.json").exists() else None
    summary = None
    if (folder / "summary.csv").exists():
        s = read_csv(folder / "summary.csv", **SCHEMAS["summary.csv"])
        if s.empty:
            raise UserError(f"{folder / 'summary.csv'}: no row (a finished run's summary has one)")
        summary = s.iloc[0].to_dict()
    run = Run(folder, cfg, pd.DataFrame(), pd.DataFrame(), None, summary, meta)
    grads, path = _run_csv(folder, "grad_norms.csv")
    if grads is None:
        raise UserError(f"{folder}: no grad_norms.csv " + (f"(unfinished: {run.unfinished_why()})" if not run.finished
                                                           else "(is this a vgp run folder?)"))
    partial = [path.name] if path.name.endswith(".partial") else []
    if partial:
        grads = _complete_steps(grads, _expected_layers(cfg))
    if grads.empty:
        raise UserError(f"{path}: no recorded step" + (f" yet (unfinished: {run.unfinished_why()})"
                                                       if not run.finished else ""))
    metrics, mpath = _run_csv(folder, "metrics.csv")
    times, tpath = _run_csv(folder, "time_grads.csv")
    if tpath is not None and tpath.name.endswith(".partial"):
        times = _complete_steps(times)
    partial += [p.name for p in (mpath, tpath) if p is not None and p.name.endswith(".partial")]
    run.grads = grads
    run.metrics = metrics if metrics is not None else pd.DataFrame(columns=["step", "loss"])
    run.time = times
    run.partial = tuple(partial)
    return run


def find_runs(paths, warn=warn) -> list[Run]:
    """Run folders named directly, inside a sweep (``<sweep>/runs/<id>/``) or inside a results folder.

    One run folder that cannot be read is a UserError; among several, each one that cannot be read
    is left out with a ``warn`` line naming the file and what is wrong, and it is a UserError only
    when none is left. A path that does not exist is always a UserError."""
    folders = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if not p.is_dir():
            raise UserError(f"{p}: a file, not a run folder or a sweep folder")
        if is_run_folder(p):
            folders.append(p)
            continue
        base = p / "runs" if (p / "runs").is_dir() else p
        found = sorted(q for q in base.iterdir() if is_run_folder(q))
        if not found:
            raise UserError(f"{p}: " + ("a sweep with no run folder yet" if base != p
                                        else "neither a run folder (no grad_norms.csv) nor a folder of runs"))
        folders += found
    if len(folders) == 1:
        return [read_run(folders[0])]
    runs, problems = [], []
    for f in folders:
        try:
            runs.append(read_run(f))
        except UserError as e:
            problems.append(str(e))
    for message in problems:
        warn(f"{message}; left out")
    if not runs:
        raise UserError(f"none of the {len(folders)} run folders in {', '.join(map(str, paths))} can be read "
                        f"(see the warnings above)")
    return runs


def unfinished_note(runs) -> str | None:
    """'2 of 8 runs are unfinished ...: a (no summary.csv; ...), b (...)', or None."""
    left = [r for r in runs if not r.finished]
    if not left:
        return None
    shown = ", ".join(f"{r.folder.name} ({r.unfinished_why()})" for r in left[:3]) + (", ..." if len(left) > 3 else "")
    return (f"{len(left)} of {len(runs)} runs unfinished, drawn from the steps they recorded so far: {shown}"
            if len(runs) > 1 else f"{runs[0].folder}: unfinished ({left[0].unfinished_why()}), drawn from the steps it "
                                  f"recorded so far")


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


def _beyond(norms: np.ndarray, ref: float, th: Thresholds) -> dict:
    """Where the norms leave the band [drop, rise] x ref, each side on its own: ``drop_layer`` (the
    highest position, 1-based, below drop x ref), ``drop_count`` (how many positions up to it are
    below), and the same for ``rise`` (above rise x ref). None/0 where no norm leaves on that side."""
    rel = norms / ref if ref > 0 and math.isfinite(ref) else np.full(len(norms), math.nan)
    out = {}
    with np.errstate(invalid="ignore"):
        sides = (("drop", rel < th.drop), ("rise", (rel > th.rise) | (np.isinf(norms) & (ref > 0))))
    for side, outside in sides:
        pos = np.flatnonzero(outside)
        out[f"{side}_layer"] = int(pos[-1]) + 1 if len(pos) else None
        out[f"{side}_count"] = len(pos)
    return out


def layer_norms(grads: pd.DataFrame, step: int, kind: str = "output_grad") -> pd.Series:
    """value by layer (1..L+1) of one kind at one step: a float Series indexed by layer, sorted; a layer
    with several rows keeps its last. In numpy: a diagnosis takes a dozen of these, which as pandas
    filters cost about 1 ms each."""
    take = (grads.step.to_numpy() == step) & (grads.kind.to_numpy() == kind)
    by_layer = dict(zip(grads.layer.to_numpy()[take].tolist(), grads.value.to_numpy(dtype=float)[take].tolist()))
    layers = sorted(by_layer)  # the last row of each layer wins, as drop_duplicates(keep='last')
    return pd.Series([by_layer[i] for i in layers], index=pd.Index(layers, name="layer"), name="value", dtype=float)


def fit_layers(layers: list[int]) -> list[int]:
    """The layers a decay rate is fitted over: the hidden ones (all but the last, the output layer)
    when there are two or more of them, else all (depth 1: the hidden layer and the output)."""
    return layers[:-1] if len(layers) >= 3 else layers


def depth_stats(grads: pd.DataFrame, step: int, th: Thresholds) -> dict:
    """Decay per layer, compounded, ratios and where the norm leaves the band, from output_grad at one step."""
    s = layer_norms(grads, step)
    layers = list(s.index)
    out = {"step": int(step), "layers": len(layers), "decay_per_layer": math.nan, "compounded": math.nan,
           "grad_ratio": math.nan, "first_over_output": math.nan, "drop_layer": None, "drop_count": 0,
           "rise_layer": None, "rise_count": 0, "zeros": 0, "nonfinite": 0, "verdict": "unknown"}
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
    out.update(_beyond(v[:-1], v[-1], th))
    for side in ("drop_layer", "rise_layer"):  # a position among the rows -> its layer number (a
        if out[side] is not None:              # transformer's weight-only layers have no output_grad row)
            out[side] = int(layers[out[side] - 1])
    out["verdict"] = judge(out["compounded"], out["zeros"] if v[-1] > 0 else 0, out["nonfinite"], th)
    return out


def time_stats(times: pd.DataFrame, step: int, th: Thresholds) -> list[dict]:
    """Per recurrent layer: decay per time step of ||dLoss/dh_t||, compounded over the sequence."""
    rows = []
    for layer, g in times[times.step == step].groupby("layer"):
        v = g.sort_values("t").value.to_numpy(dtype=float)
        rate, zeros, bad = decay_rate(v)
        compounded = rate ** (len(v) - 1) if math.isfinite(rate) else math.nan
        band = _beyond(v[:-1], v[-1], th) if len(v) > 1 else {}
        rows.append({"layer": int(layer), "steps": len(v), "decay_per_step": rate, "compounded": compounded,
                     "first_over_last": _ratio(v[0], v[-1]), "drop_t": band.get("drop_layer"),
                     "rise_t": band.get("rise_layer"), "zeros": zeros, "nonfinite": bad,
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
        if setting.depth < 1 or len(fit) < 2:
            return {"applies": False, "reason": "no hidden layer with output_grad recorded"}
        p = theory.profile(setting.activation, setting.weight_vars, setting.bias_vars)
        few = theory.too_few_units(setting, p)
        if few:
            return {"applies": False, "reason": few}
        rate, _, _ = decay_rate(np.array(p.norm)[[l - 1 for l in fit]])
        sw2, sb2 = setting.hidden
        chi = theory.chi1(setting.activation, sw2, sb2)
    except theory.NotApplicable as e:
        return {"applies": False, "reason": str(e)}
    except (UserError, KeyError, TypeError, ValueError, AttributeError) as e:  # a config.yaml vgp did not write
        return {"applies": False, "reason": f"config.yaml: unexpected model settings ({type(e).__name__}: {e})"}
    return {"applies": True, "predicted_decay_per_layer": rate, "predicted_ratios": p.ratio,
            "predicted_norms": p.norm, "weight_var": sw2, "bias_var": sb2, "chi1": chi,
            "ratio_per_layer": math.sqrt(chi), "phase": theory.phase(chi), "depth_scale": theory.depth_scale(chi),
            "notes": setting.notes}


# -- the advice -----------------------------------------------------------------------------

SATURATING = ("sigmoid", "tanh", "softsign", "softplus", "hardtanh")
RECURRENT = ("rnn", "lstm", "gru")


def _name(spec) -> str:
    return str((spec.get("name") if isinstance(spec, dict) else spec) or "")


def setup(cfg: dict) -> dict:
    """What a run's config already does, in the terms the advice needs (None where it does not say)."""
    def section(d, key):
        v = d.get(key) if isinstance(d, dict) else None
        return v if isinstance(v, dict) else {}

    m, t, data = section(cfg, "model"), section(cfg, "train"), section(cfg, "data")
    opt, clip = section(t, "optimizer"), section(t, "clip")
    arch = m.get("arch", "mlp") if m else None  # None: no config.yaml to say
    gated = arch in ("lstm", "gru")  # their gates fix their nonlinearities; model.activation is not used
    act = "" if gated or not m else _name(m.get("activation", "relu"))
    lr = opt.get("lr")
    return {"arch": arch, "activation": act, "init": _name(m.get("init")), "bias_init": _name(m.get("bias_init")),
            "norm": m.get("norm") or "none", "skip": bool(m.get("skip")),
            "norm_position": m.get("norm_position"), "residual_scale": m.get("residual_scale") or "none",
            "recurrent_init": _name(m.get("recurrent_init")), "forget_bias": m.get("forget_bias"),
            "clip": clip.get("mode") or "none", "max_norm": clip.get("max_norm"),
            "lr": lr if isinstance(lr, (int, float)) else None,
            "schedule": _name(t.get("schedule")) or "constant",
            "steps": t.get("steps") if isinstance(t.get("steps"), int) else None,
            "seq_len": data.get("seq_len") if isinstance(data.get("seq_len"), int) else None,
            "order": data.get("order"), "precision": t.get("precision") or "fp32",
            "loss_scale": t.get("loss_scale") or "dynamic"}


def _or(fixes: list[str]) -> str:
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.0%}"


def _fixes_vanishing(s: dict, through_time: bool, saturated: bool) -> tuple[str, list[str]]:
    """(what is wrong, what to change) for gradients that vanish, from what the config does already."""
    arch, act, init = s["arch"], s["activation"], s["init"]
    if arch == "transformer":
        return "gradients shrink block by block", _fixes_transformer(s)
    if through_time:
        fixes = []
        if arch in (None, "rnn"):
            fixes.append("gated cells (model.arch=lstm or gru)")
        if arch in (None, "lstm"):
            fb = s["forget_bias"]
            fixes.append("a larger forget-gate bias" + (f" (model.forget_bias={max(3.0, 2 * fb):g}; now {fb:g})"
                                                        if isinstance(fb, (int, float)) else " (model.forget_bias)"))
        if s["recurrent_init"] not in ("orthogonal", "identity"):
            fixes.append("an orthogonal or identity recurrent init (model.recurrent_init=orthogonal)")
        if s["seq_len"]:
            fixes.append(f"shorter sequences (data.seq_len={max(1, s['seq_len'] // 2)}; now {s['seq_len']})")
        elif s["order"] == "pixel":
            fixes.append("shorter sequences (data.order=row)")
        else:
            fixes.append("shorter sequences")
        return "gradients fade back through time", fixes
    fixes = []
    if act in SATURATING:
        why = f"saturated {act} units" if saturated else f"{act}'s small slopes"
        what = f"{why} and vanishing gradients"
        fixes.append("a ReLU-family activation (model.activation=relu)"
                     + ("" if init.startswith("kaiming") else " with He init (model.init=kaiming_normal)"))
    else:
        what = "gradients shrink layer by layer"
        if act in ("relu", "leaky_relu") and not init.startswith("kaiming"):
            fixes.append("He init (model.init=kaiming_normal)")
        else:
            fixes.append("a weight variance closer to the critical one (vgp theory CONFIG --critical)")
    if s["norm"] == "none" and arch not in RECURRENT:
        fixes.append("batch norm (model.norm=batchnorm)")
    if not s["skip"] and arch not in RECURRENT:
        fixes.append("skip connections (model.skip=true)")
    return what, fixes


def _fixes_transformer(s: dict) -> list[str]:
    """A transformer's remedies (Xiong et al. 2020; Bachlechner et al. 2021; Wang et al. 2022), less
    what the config does already."""
    fixes = []
    if s["norm_position"] == "post":
        deepnorm = s["residual_scale"] == "deepnorm"  # post-LN only
        fixes.append("pre-LN (model.norm_position=pre" + (" model.residual_scale=none)" if deepnorm else ")"))
        if not deepnorm:
            fixes.append("DeepNorm's scaled residual (model.residual_scale=deepnorm)")
    elif s["residual_scale"] != "rezero":
        fixes.append("ReZero (model.residual_scale=rezero)")
    if not s["schedule"].startswith("warmup"):
        w = min(100, s["steps"] // 5) if s["steps"] else 0  # a warm-up over the first fifth, at most 100 steps
        fixes.append("a learning-rate warm-up" + (f" (train.schedule.name=warmup train.schedule.warmup_steps={w})"
                                                   if w else ""))
    fixes.append("a lower learning rate" + (f" (train.optimizer.lr={s['lr'] / 10:g}; now {s['lr']:g})"
                                            if s["lr"] else ""))
    return fixes


def _fixes_exploding(s: dict, through_time: bool) -> tuple[str, list[str]]:
    clip_fix = [] if s["clip"] != "none" else ["gradient clipping (train.clip.mode=norm)"]
    if through_time:
        fixes = ([] if s["recurrent_init"] in ("orthogonal",) else
                 ["an orthogonal recurrent init (model.recurrent_init=orthogonal)"]) + clip_fix
        if not fixes:
            fixes = ["a lower learning rate" + (f" (train.optimizer.lr={s['lr'] / 10:g})" if s["lr"] else ""),
                     "shorter sequences" + (f" (data.seq_len={max(1, s['seq_len'] // 2)})" if s["seq_len"] else "")]
        return "gradients grow back through time", fixes
    if s["arch"] == "transformer":
        return "gradients grow block by block", _fixes_transformer(s) + clip_fix
    init = s["init"]
    if init.startswith(("kaiming", "xavier")) or not init:
        lower = "a lower weight variance, toward the critical one (vgp theory CONFIG --critical)"
    else:
        he = s["activation"] in ("relu", "leaky_relu")
        lower = (f"a lower weight variance (model.init={'kaiming_normal' if he else 'xavier_normal'}, "
                 "or the critical one: vgp theory CONFIG --critical)")
    return "gradients grow layer by layer", [lower] + clip_fix


def construction_notes(s: dict) -> list[str]:
    """What a research fix does to the first steps' gradients by construction, so that zeros it makes
    are not read as vanishing gradients (``s``: :func:`setup`)."""
    notes = []
    if s["residual_scale"] == "rezero" and s["arch"] in ("mlp", "resnet"):
        notes.append("model.residual_scale=rezero: output_grad is taken at each block's output (the residual "
                     "stream); at step 0 every branch's scalar a is 0, so the branches' weights get exactly zero "
                     "gradient by construction, not because it vanished")
    if s["init"] == "fixup":
        notes.append("model.init=fixup: the classifier and each branch's last conv start at zero, so at step 0 no "
                     "gradient reaches below the classifier (and at step 1 none reaches the branches' first convs): "
                     "zero by construction, not vanishing; step 0 is not judged")
    return notes


TINY = {"fp16": "6.1e-05", "bf16": "1.2e-38", "fp32": "1.2e-38"}  # smallest normal numbers (torch.finfo.tiny)


def _underflow_advice(s: dict, ev: dict, th: dict) -> str | None:
    """What the ``underflow`` kind says, where it says something: in fp16, gradients lost below its
    smallest normal number; in float32 and bfloat16 (the same exponent range), exact zeros, which are
    underflow only where no unit is dead (a dead unit's whole row of dW is an exact 0)."""
    seen = [(ev.get(f"underflow_{n}", math.nan), n) for n in ("first", "last")]
    seen = [(frac, n) for frac, n in seen if math.isfinite(frac)]
    if not seen or max(f for f, _ in seen) <= th["underflow"]:
        return None
    frac, name = max(seen, key=lambda fn: fn[0])  # the first recorded step on a tie
    prec = s["precision"]
    dead = [ev.get("dead_first", math.nan), ev.get("dead_last", math.nan)]
    if prec != "fp16" and any(x > 0 for x in dead if math.isfinite(x)):
        return None  # zeros that dead units explain
    where = (f"{_pct(frac)} of layer {ev[f'underflow_layer_{name}']}'s weight-gradient entries "
             f"({ev[f'underflow_layers_{name}']} layer(s) over {_pct(th['underflow'])}) are zero or below "
             f"{prec}'s smallest normal number {TINY[prec]} at the {'first' if name == 'first' else 'last'} "
             f"recorded step")
    if prec == "fp16":
        fixes = (["dynamic loss scaling (train.loss_scale=dynamic)"] if s["loss_scale"] == "none" else []) \
            + ["bf16, which has float32's range (train.precision=bf16)", "float32 (train.precision=fp32)"]
        scaled = " even with loss scaling" if s["loss_scale"] != "none" else ""
        return f"gradients underflow float16{scaled}: {where}: try {_or(fixes)}"
    return (f"gradients underflow {'bfloat16' if prec == 'bf16' else 'float32'} to exact zeros: {where}; "
            "the layers below learn nothing: shorten the path (model.skip=true) or fix the vanishing gradient")


def advice(d: dict, cfg: dict) -> str:
    """One line of advice from both verdicts, the evidence (divergence, dead and saturated units, a
    stalled loss) and the config: never a change the config already has."""
    s = setup(cfg)
    ev, th = d["evidence"], d["thresholds"]
    v0, vl = d["verdict"], d["verdict_last"]
    lower_lr = "a lower learning rate" + (f" (train.optimizer.lr={s['lr'] / 10:g}; now {s['lr']:g})" if s["lr"] else "")
    items = []
    if ev.get("diverged"):
        if s["clip"] != "none":
            items.append(f"the run diverged although gradients are clipped (train.clip.mode={s['clip']}): "
                         f"{lower_lr} or a smaller init")
        else:
            items.append(f"the run diverged: clip gradients (train.clip.mode=norm) and use {lower_lr}")
    bad = vl if vl in ("vanishing", "exploding") else (v0 if v0 in ("vanishing", "exploding") else None)
    sat = [ev.get("saturation_first", math.nan), ev.get("saturation_last", math.nan)]
    dead = [ev.get("dead_first", math.nan), ev.get("dead_last", math.nan)]
    saturated = any(x > th["saturated"] for x in sat if math.isfinite(x))
    if bad:
        step = d["steps"]["last" if vl == bad else "first"]
        depth_bad = bool(step["depth"]) and step["depth"]["verdict"] == bad
        time_bad = any(t["verdict"] == bad for t in step["time"] or [])
        through_time = time_bad and (not depth_bad or s["arch"] in RECURRENT)
        what, fixes = (_fixes_vanishing(s, through_time, saturated) if bad == "vanishing"
                       else _fixes_exploding(s, through_time))
        if ev.get("diverged"):  # clipping is already the first thing said about the divergence
            fixes = [f for f in fixes if not f.startswith("gradient clipping")] or fixes
        when = ("" if vl == v0 else " at the last recorded step" if vl == bad
                else f" at step 0 (training recovered: {vl} at the last recorded step); to start healthy")
        items.append(f"{what}{when}: try {_or(fixes)}")
        if bad == "exploding" and s["clip"] != "none" and not through_time:
            items.append(f"clipping (train.clip.mode={s['clip']}) is on already: it bounds the update, "
                         "not the growth from layer to layer")
    if any(x > th["dead"] for x in dead if math.isfinite(x)):
        fixes = []
        if s["activation"] in ("relu", ""):
            fixes.append("leaky_relu or elu (model.activation=leaky_relu)")
        if s["init"] != "fixup" and (not s["init"].startswith("kaiming") or s["bias_init"] not in ("zeros",)):
            fixes.append("He init with zero biases (model.init=kaiming_normal model.bias_init=zeros)")
        if not (dead[1] <= dead[0]):  # more died during training (or step 0 unknown): the steps are too large
            fixes.insert(0, lower_lr)
        items.append(f"{_pct(dead[1])} of hidden units are dead at the last recorded step ({_pct(dead[0])} at "
                     f"step 0): try {_or(fixes or [lower_lr])}")
    underflow = _underflow_advice(s, ev, th)
    if underflow:
        items.append(underflow)
    # saturation is the flat tails of sigmoid-like units (for ReLU, half its units sit on the flat side by design);
    # for a vanishing net it is already the reason given above
    if saturated and s["activation"] in SATURATING and bad != "vanishing":
        fixes = (["batch norm (model.norm=batchnorm)"] if s["norm"] == "none" and s["arch"] not in RECURRENT else []) \
            + ([] if s["init"].startswith("xavier") else ["Xavier init (model.init=xavier_normal)"]) \
            + ([lower_lr] if not (sat[1] <= sat[0]) else [])
        items.append(f"{_pct(sat[1])} of hidden units are saturated at the last recorded step ({_pct(sat[0])} at "
                     f"step 0): try {_or(fixes or [lower_lr])}")
    if items:
        return "; ".join(items)
    if ev.get("stalled"):
        now = f" (now {s['lr']:g})" if s["lr"] else ""
        return (f"gradients reach every layer but the loss does not fall ({_num(ev['loss_first'])} -> "
                f"{_num(ev['loss_last'])}): look at the learning rate{now} and the data")
    if "healthy" in (v0, vl):
        measured = [word for word, xs in (("dead", dead), ("saturated", sat if s["activation"] in SATURATING else []))
                    if any(math.isfinite(x) for x in xs)]
        return ("gradients reach every layer at a similar size"
                + (f", few units are {' or '.join(measured)}" if measured else "") + ": nothing to fix")
    return "too little was recorded to judge (no output_grad over two or more layers)"


# -- the diagnosis --------------------------------------------------------------------------

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
    g = g[g.step.isin((first, last))]  # all that is read below: a few hundred rows, not every step's
    per_step = {}
    own_model = not run.config.get("model")  # recorded by vgp.Recorder: any model, layers in forward order
    # repeated blocks are read where they are the model's unit: any model vgp did not build, and a
    # transformer, whose output_grad rows are the residual stream after each block (blocks.i)
    by_block = own_model or (run.config.get("model") or {}).get("arch") == "transformer"
    for name, step in (("first", first), ("last", last)):
        st = depth_stats(g, step, th) if has_og else None
        ts = time_stats(run.time, step, th) if run.time is not None and len(run.time) else None
        bs = blocks.stats(g, step, th, judge, decay_rate) if has_og and by_block else None
        if bs and bs["verdict"] != "unknown":  # repeated blocks: like against like, block to block
            axes = [(bs["verdict"], bs["compounded"])]
        else:
            axes = [(st["verdict"], st["compounded"])] if st and st["verdict"] != "unknown" else []
        axes += [(t["verdict"], t["compounded"]) for t in ts or []]
        per_step[name] = {"depth": st, "time": ts, "blocks": bs, "verdict": combine(axes)}
    s = setup(run.config)
    m = run.config.get("model") or {}
    first_depth = per_step["first"]["depth"]
    if s["init"] == "fixup" and first == 0 and first_depth and per_step["first"]["verdict"] == "vanishing" \
            and (layer_norms(g, 0).iloc[:-1] == 0).all():  # zero by construction (construction_notes)
        first_depth["verdict"] = per_step["first"]["verdict"] = "unknown"
        first_depth["by_construction"] = True
    evidence = loss_evidence(run.metrics, th)
    for kind in ("saturation", "dead"):
        evidence[f"{kind}_first"] = _act_mean(g, first, kind)
        evidence[f"{kind}_last"] = _act_mean(g, last, kind)
    met = run.metrics
    evidence["skipped_steps"] = int(met.skipped.fillna(0).sum()) if "skipped" in met and len(met) else 0
    for name, step in (("first", first), ("last", last)):
        u = layer_norms(g, step, "underflow").dropna()  # the largest fraction over layers, and its layer
        evidence[f"underflow_{name}"] = float(u.max()) if len(u) else math.nan
        evidence[f"underflow_layer_{name}"] = int(u.idxmax()) if len(u) else None
        evidence[f"underflow_layers_{name}"] = int((u > th.underflow).sum()) if len(u) else 0
    if run.status == "diverged":
        evidence["diverged"] = True
    d0, dl = per_step["first"]["depth"] or {}, per_step["last"]["depth"] or {}
    layers = sorted(layer_norms(g, first).index) if has_og else []
    theory = theory_for(run, fit_layers(layers))
    times0 = per_step["first"]["time"] or []
    worst_time = max(times0, key=lambda t: abs(math.log(t["compounded"])) if t["compounded"] and
                     math.isfinite(t["compounded"]) and t["compounded"] > 0 else -1, default=None)
    out = {
        "run": str(run.folder), "status": run.status, "finished": run.finished,
        "unfinished": run.unfinished_why() or None, "partial_files": list(run.partial), "recorded_steps": len(steps),
        "arch": m.get("arch") or (run.summary or {}).get("model.class"),  # vgp.Recorder: the model's class
        "activation": s["activation"], "depth": m.get("depth"),
        "verdict": per_step["first"]["verdict"], "verdict_last": per_step["last"]["verdict"],
        "decay_per_layer": d0.get("decay_per_layer", math.nan), "compounded": d0.get("compounded", math.nan),
        "grad_ratio": d0.get("grad_ratio", math.nan), "first_over_output": d0.get("first_over_output", math.nan),
        "drop_layer": d0.get("drop_layer"), "rise_layer": d0.get("rise_layer"),
        "decay_per_layer_last": dl.get("decay_per_layer", math.nan),
        "decay_per_step": worst_time["decay_per_step"] if worst_time else math.nan,
        "decay_per_block": (per_step["first"]["blocks"] or {}).get("decay_per_block", math.nan),
        "predicted_decay_per_layer": theory.get("predicted_decay_per_layer", math.nan),
        "steps": {"first": per_step["first"], "last": per_step["last"]},
        "time": times0 or None, "evidence": evidence, "theory": theory, "thresholds": asdict(th),
        "notes": construction_notes(s),
    }
    out["advice"] = advice(out, run.config)
    return out


def summary_columns(folder: str | Path, run: Run | None = None) -> dict:
    """The columns a finished run adds to summary.csv. Never raises: a run's completion marker must
    not be lost to its analysis (the error is written into the 'verdict' column instead)."""
    try:
        d = diagnose(folder, run=run)
        t = d["theory"]
        return {"decay_per_layer": d["decay_per_layer"], "decay_per_layer_last": d["decay_per_layer_last"],
                "decay_per_step": d["decay_per_step"], "verdict": d["verdict"], "verdict_last": d["verdict_last"],
                **({"decay_per_block": d["decay_per_block"]} if math.isfinite(d["decay_per_block"]) else {}),
                "predicted_decay_per_layer": t.get("predicted_decay_per_layer"), "theory_chi1": t.get("chi1"),
                "theory_phase": t.get("phase"), "underflow_max": d["evidence"]["underflow_first"],
                "underflow_max_last": d["evidence"]["underflow_last"]}
    except Exception as e:  # noqa: BLE001
        return {"verdict": f"error: {type(e).__name__}: {e}"}


# -- the report -----------------------------------------------------------------------------

def _num(x, *sides, digits: int = 3) -> str:
    """x to ``digits`` significant digits, more where needed so that the printed number lies on the
    same side of each value in ``sides`` as x: chi_1 = 1.0037 beside 'chaotic' prints 1.004, not 1."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if not isinstance(x, (int, float, np.number)):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    for d in range(digits, 18):
        text = format(x, f".{d}g")
        if all((float(text) > r) == (x > r) and (float(text) < r) == (x < r) for r in sides):
            return text
    return repr(x)


def _fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _band(s: dict, th: dict, unit: str, key: str) -> str:
    """'; below 0.01 x output from layer 7 down' and/or '; above 100 x output ...' for one axis."""
    out = ""
    for side, word in (("drop", "below"), ("rise", "above")):
        pos, count = s.get(f"{side}_{key}"), s.get(f"{side}_count")
        if pos:
            where = f"from {unit} {pos} down" if count in (None, pos) else f"at {count} {unit}s up to {unit} {pos}"
            out += f"; {word} {th[side]:g} x output {where}"
    return out


def _rate(rate: float, per: str) -> str:
    """'shrinks by x0.14 per layer' / 'grows by x1.27 per layer' toward the input."""
    if not math.isfinite(rate):
        return f"has no measurable rate per {per}"
    return f"{'shrinks' if rate < 1 else 'grows' if rate > 1 else 'stays'} by x{_num(rate, 1)} per {per}"


def report(d: dict) -> str:
    """A short report in rich markup: verdict, the evidence, one line of advice."""
    colour = {"vanishing": "blue", "exploding": "red", "healthy": "green"}.get(d["verdict"], "yellow")
    th, ev, t = d["thresholds"], d["evidence"], d["theory"]
    about = ", ".join(str(v) for v in (d["arch"], f"depth {d['depth']}" if d["depth"] is not None else None,
                                       d["activation"], d["status"]) if v)
    sides = (th["vanishing"], th["exploding"])
    first = d["steps"]["first"]["depth"]
    lines = [f"[bold]{d['run']}[/bold]  ({about})"]
    if not d["finished"]:
        lines.append(f"  [bold yellow]unfinished[/] ({d['unfinished']}): diagnosed from the {d['recorded_steps']} "
                     f"step(s) recorded so far" + (f" ({', '.join(d['partial_files'])})" if d["partial_files"] else ""))
    lines.append(f"verdict: [bold {colour}]{d['verdict']}[/] at step {first['step'] if first else 0}, "
                 f"{d['verdict_last']} at the last recorded step  (vanishing: compounded < {th['vanishing']:g}, "
                 f"exploding: > {th['exploding']:g})")
    for name in ("first", "last"):
        s = d["steps"][name]["depth"]
        if s and s["layers"] >= 2:
            lines.append(
                f"  step {s['step']}: output_grad {_rate(s['decay_per_layer'], 'layer')} toward the input "
                f"-> x{_num(s['compounded'], *sides)} over {s['layers'] - 1} layers ({s['verdict']}); layer 1 / "
                f"output layer {_num(s['first_over_output'])}" + _band(s, th, "layer", "layer")
                + (f"; {s['zeros']} layer(s) 0 by construction (see the note)" if s.get("by_construction") else
                   f"; {s['zeros']} layer(s) underflowed to 0" if s["zeros"] else "")
                + (f"; {s['nonfinite']} non-finite" if s["nonfinite"] else ""))
        if d["steps"][name].get("blocks"):
            lines.append(blocks.describe(d["steps"][name]["blocks"], th, lambda x, *sides: _num(x, *sides)))
        for r in d["steps"][name]["time"] or []:
            step = d["steps"][name]["depth"]["step"] if d["steps"][name]["depth"] else ""
            lines.append(f"  step {step} recurrent layer {r['layer']}: dLoss/dh_t "
                         f"{_rate(r['decay_per_step'], 'time step')} back in time -> x{_num(r['compounded'], *sides)} "
                         f"over {r['steps'] - 1} steps ({r['verdict']})"
                         + _band({**r, "drop_count": None, "rise_count": None}, th, "time step", "t"))
    if t.get("applies"):
        lines.append(f"  theory: sigma_w^2={_num(t['weight_var'])}, sigma_b^2={_num(t['bias_var'])}: chi_1="
                     f"{_num(t['chi1'], 1)} ({t['phase']}), predicted decay {_num(t['predicted_decay_per_layer'], 1)} "
                     f"per layer vs measured {_num(d['decay_per_layer'], 1)}" + "".join(f"; {n}" for n in t["notes"]))
    else:
        lines.append(f"  theory: does not apply ({t.get('reason')})")
    lines += [f"  note: {n}" for n in d.get("notes") or []]
    loss = (f"  loss {_num(ev['loss_first'])} -> {_num(ev['loss_last'])}"
            + (" [bold]stalled[/bold]" if ev["stalled"] else "") + (" [bold red]diverged[/]" if ev["diverged"] else ""))
    sat = (f"; saturated units {_fmt(ev['saturation_first'], '.0%')} -> {_fmt(ev['saturation_last'], '.0%')}, "
           f"dead units {_fmt(ev['dead_first'], '.0%')} -> {_fmt(ev['dead_last'], '.0%')} (mean over hidden layers)")
    lines.append(loss + (sat if not math.isnan(ev["saturation_first"]) else ""))
    if ev.get("skipped_steps"):
        lines.append(f"  loss scaling: {ev['skipped_steps']} step(s) skipped because the scaled gradient overflowed "
                     f"float16 (the scale was halved each time; not divergence)")
    if math.isfinite(ev.get("underflow_first", math.nan)):
        lines.append(f"  underflow (weight-gradient entries below the smallest normal number, largest over layers): "
                     f"{_fmt(ev['underflow_first'], '.0%')} (layer {ev['underflow_layer_first']}) -> "
                     f"{_fmt(ev['underflow_last'], '.0%')} (layer {ev['underflow_layer_last']})")
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
