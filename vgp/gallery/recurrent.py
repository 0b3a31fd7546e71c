"""Gallery entries on recurrent nets: gradients that explode back through time and the clipping that
tames them (Pascanu, Mikolov & Bengio 2013), and the adding problem that a tanh RNN cannot learn while
an IRNN, an LSTM and a GRU can (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015).

Both read ``time_grads.csv`` at step 0: ||dLoss/dh_t|| for every time step t, where the loss sits on
the last step T only, so that dLoss/dh_1 over dLoss/dh_T says how much of the loss's gradient reaches
the first input (``reach``) and ``decay_per_step`` (summary.csv) is its typical factor per step
(above 1: the gradient grows back through time).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vgp import compare as comparemod
from vgp import study as studies
from vgp.gallery import Entry, Figure, Finding, register


def reach(sweep, step: int | None = 0, last: bool = True) -> pd.Series:
    """Per run (indexed like ``sweep.table``): ||dLoss/dh_1|| / ||dLoss/dh_T|| at ``step`` (None: the
    run's last recorded step) in the first recurrent layer, or with ``last=False`` ||dLoss/dh_1|| /
    ||dLoss/dh_2||, the first step's factor; 0 where dLoss/dh_1 underflowed, NaN where a norm is not
    finite or the run recorded no such step."""
    t = sweep.time()
    t = t[t["layer"] == t["layer"].min()]
    by_run = {}
    for run, g in t.groupby("run"):
        g = g[g["step"] == (g["step"].max() if step is None else step)]
        v = g.sort_values("t")["value"].to_numpy(dtype=float)
        v = v if last else v[:2]
        by_run[run] = v[0] / v[-1] if len(v) > 1 and v[-1] > 0 and np.isfinite(v).all() else math.nan
    return sweep.table["name"].map(by_run).astype(float)


def tail_loss(sweep, tail: float = 0.1) -> pd.Series:
    """Per run: the mean batch loss over the recorded steps in the last ``tail`` of training (the last
    recorded step at least): one odd batch does not move it, as it does ``final_loss``."""
    m = sweep.metrics()
    m = m[m["loss"].notna()]
    by_run = {}
    for run, g in m.groupby("run"):
        last = g["step"].max()
        by_run[run] = float(g.loc[g["step"] >= (1 - tail) * last, "loss"].mean())
    return sweep.table["name"].map(by_run).astype(float)


def compare_table(sweep, table: pd.DataFrame, by: list[str], metrics: list[str]) -> str:
    """The markdown of ``vgp compare`` grouped ``by``, over ``table`` (``sweep.table`` with extra
    metric columns: names ending in ``_ratio`` or ``_norm`` are aggregated as geometric means)."""
    s = studies.Study(table, sweep._study.axes, sweep._study.paths, sweep._study.declared)
    frame = comparemod.compare([sweep.folder], by=by, metrics=metrics, loaded=s, warn=lambda m: None)
    return comparemod.markdown(frame)


def _seeds(frame: pd.DataFrame) -> str:
    seeds = sorted(pd.to_numeric(frame["seed"], errors="coerce").dropna().astype(int).unique())
    return f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"


def _small(numbers: dict, key: str) -> str:
    """A geometric mean of gradient-norm ratios, ``numbers[key]``; where it is 0 (a seed's norm fell below
    float32's range), the largest seed's value instead, ``numbers[<key with _max>]``."""
    x = numbers[key]
    if x == 0:
        top = numbers[key.replace("reach_", "reach_max_", 1)]
        return f"0 in a seed (float32 underflow; {top:.2g} at most)" if top > 0 else "0 (float32 underflow)"
    return f"{x:.2g}"


def _num(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce")


# -- 8. exploding gradients back through time, and clipping --------------------------------------

def measure_rnn_clipping(sweep) -> Finding:
    t = sweep.table.copy()
    t["gain"] = _num(t, "model.recurrent_init.gain")
    t["clip"] = t["train.clip.mode"].astype(str)
    t["reach_ratio"] = reach(sweep).values
    t["first_step_ratio"] = reach(sweep, last=False).values
    m = sweep.metrics()
    finite = m[np.isfinite(m["grad_norm"])]
    t["max_grad_norm"] = t["name"].map(finite.groupby("run")["grad_norm"].max()).astype(float)
    t["step0_grad_norm"] = t["name"].map(m[m["step"] == 0].groupby("run")["grad_norm"].first()).astype(float)
    t["diverged"] = t["status"].eq("diverged")
    # a loss spike: the largest batch loss over training against the first (inf for a run whose loss
    # overflowed), and where training ended against where it began
    losses = m.groupby("run")["loss"]
    first = losses.first()
    t["spike_ratio"] = t["name"].map(losses.max() / first).astype(float)
    t["end_ratio"] = (tail_loss(sweep) / t["name"].map(first).astype(float)).values
    baseline = float(_num(t, "task_baseline").dropna().iloc[0])
    gains = sorted(t["gain"].unique())
    numbers: dict = {"baseline": baseline, "gains": [float(g) for g in gains]}

    # the growth per step back through time at init, one number per gain (every run of a gain:
    # clipped or not, the init and step 0 are the same)
    decay = {g: studies.gmean_gsd(t.loc[t["gain"] == g, "decay_per_step"])[0] for g in gains}
    reaches = {g: studies.gmean_gsd(t.loc[t["gain"] == g, "reach_ratio"])[0] for g in gains}
    # the first step back from t = 2 to t = 1, where h_t is still small and tanh nearly linear: there
    # the factor is about the gain itself, as in Pascanu et al.'s linear analysis
    early = {g: studies.gmean_gsd(t.loc[t["gain"] == g, "first_step_ratio"])[0] for g in gains}
    for g in gains:
        numbers[f"decay_per_step_{g:g}"] = decay[g]
        numbers[f"reach_{g:g}"] = reaches[g]
        numbers[f"first_step_{g:g}"] = early[g]
    # training: per gain and clipping mode, how many runs diverged, and how the others ended
    for (g, clip), rows in t.groupby(["gain", "clip"]):
        done = rows[~rows["diverged"]]
        key = f"{clip}_{g:g}"
        numbers[f"runs_{key}"] = len(rows)
        numbers[f"diverged_{key}"] = int(rows["diverged"].sum())
        numbers[f"diverged_step_{key}"] = float(_num(rows, "diverged_step").median())
        numbers[f"final_test_loss_{key}"] = float(_num(done, "final_test_loss").mean()) if len(done) else math.nan
        numbers[f"max_grad_norm_{key}"] = float(rows["max_grad_norm"].max())
        numbers[f"spike_{key}"] = float(done["spike_ratio"].max()) if len(done) else math.nan
        numbers[f"end_{key}"] = float(done["end_ratio"].max()) if len(done) else math.nan
    n = numbers
    below, above = [g for g in gains if g < 1], [g for g in gains if g > 1]
    # (1) growth: below gain 1 the gradient shrinks back through time, above it grows, and the
    # faster the larger the gain
    growth = (all(decay[g] < 1 for g in below) and all(decay[g] > 1 for g in above)
              and all(np.diff([decay[g] for g in gains]) > 0))
    # (2) instability: without clipping every run with gain > 1 diverges, none with gain < 1 does (the
    # same learning rate: it is the gain that blows the training up)
    unclipped = (all(n.get(f"diverged_none_{g:g}", 0) == n.get(f"runs_none_{g:g}", -1) for g in above)
                 and all(n.get(f"diverged_none_{g:g}", 1) == 0 for g in below))
    # (3) clipping keeps it stable: no clipped run diverges, none has a batch loss above twice its
    # first, and every one with gain < 1 ends (its last tenth of steps) below where it began. Above 1
    # the clipped trajectory is chaotic: where it ends is decided by rounding (one quick-sized run, gain
    # 2, seed 0, 100 steps, ended at 0.84, 0.19 and 1.11 of its first loss fused, unrolled and batched,
    # whose gradients agree to 1e-7 at step 0), so there it only has to stay bounded
    clipped = all(n.get(f"diverged_norm_{g:g}", 1) == 0 and n.get(f"spike_norm_{g:g}", math.inf) < 2
                  for g in gains) and all(n.get(f"end_norm_{g:g}", math.inf) < 1 for g in below)
    n.update(growth=growth, unclipped_diverge=unclipped, clipped_stable=clipped)
    lo, hi = gains[0], gains[-1]
    steps = int(_num(t, "train.steps").max())
    lr = float(_num(t, "train.optimizer.lr").iloc[0])
    div_above = sum(n.get(f"diverged_none_{g:g}", 0) for g in above)
    runs_above = sum(n.get(f"runs_none_{g:g}", 0) for g in above)
    per_gain = ", ".join(f"x{decay[g]:.3f} at gain {g:g}" for g in gains)
    div_below = sum(n.get(f"diverged_none_{g:g}", 0) for g in below)
    runs_below = sum(n.get(f"runs_none_{g:g}", 0) for g in below)
    div_steps = [n[f"diverged_step_none_{g:g}"] for g in above if n.get(f"diverged_none_{g:g}")]
    max_norm = float(_num(t, "train.clip.max_norm").iloc[0])
    clipped_rows = t[t["clip"] == "norm"]
    measured = (
        f"At init (geometric mean over {_seeds(t)}), ||dLoss/dh_t|| changes per step back through time by "
        f"{per_gain} (dLoss/dh_1 over dLoss/dh_T: {reaches[lo]:.2g} at gain {lo:g}, {reaches[hi]:.2g} at "
        f"{hi:g}); from t = 2 to t = 1, where the state is still small and tanh nearly linear, by "
        + ", ".join(f"x{early[g]:.2f}" for g in gains)
        + (", within 10% of the gains" if all(abs(early[g] / g - 1) < 0.1 for g in gains) else
           f" against gains {', '.join(f'{g:g}' for g in gains)}")
        + f". Plain SGD (lr {lr:g}, {steps} steps) diverged in {div_above} of {runs_above} "
        f"runs with gain > 1"
        + (f" (median step {np.median(div_steps):.0f})" if div_steps else "")
        + f" and in {div_below} of {runs_below} with gain < 1; clipping the norm at {max_norm:g}, "
        f"{int(clipped_rows['diverged'].sum())} of {len(clipped_rows)} diverged, the largest batch loss was "
        f"{clipped_rows['spike_ratio'].max():.2f}x the first, and at gain {hi:g} the test MSE ended at "
        f"{n[f'final_test_loss_norm_{hi:g}']:.3f} (baseline {baseline:.3f}) after gradient norms up to "
        f"{n[f'max_grad_norm_norm_{hi:g}']:.3g}.")
    table = compare_table(sweep, t, ["model.recurrent_init.gain", "train.clip.mode"],
                          ["decay_per_step", "first_step_ratio", "reach_ratio", "step0_grad_norm", "max_grad_norm",
                           "spike_ratio", "final_test_loss"])
    why = ""
    if not growth:
        why = ("the gradient did not shrink back through time below gain 1 and grow above it, increasing with "
               "the gain, in the geometric mean of the seeds")
    elif not unclipped:
        why = (f"at lr {lr:g} plain SGD did not diverge in every run with gain > 1, or diverged with gain < 1: "
               "the learning rate, not only the gain, decides whether the explosion blows training up")
    elif not clipped:
        why = ("a clipped run diverged, had a batch loss above twice its first, or (with gain < 1) ended above "
               "where it began")
    if growth and any(decay[g] < 0.9 * g for g in above):
        why = (why + "; " if why else "") + (
            "the typical growth per step stays below the gain itself (only the first step, near h = 0, "
            "grows by about the gain): tanh saturates where the gain pushes the state, and its slope < 1 "
            "there scales each step's Jacobian down (Pascanu et al.: a spectral radius > 1 is necessary "
            "for the explosion, not sufficient)")
    return Finding(growth and unclipped and clipped, measured, table, numbers, why)


register(Entry(
    8, "rnn-clipping", "Pascanu et al. 2013: exploding gradients through time, and gradient clipping",
    quick=("model.recurrent_init.gain=0.9,2.0", "seed=0,1", "train.steps=100"),
    measure=measure_rnn_clipping,
    figures=(
        Figure("time", "profile", "||dLoss/dh_t|| at init against time step t (the loss is on t = 50): with the "
               "recurrent matrix's spectral radius (the gain) below 1 it shrinks back through time, above 1 it "
               "grows.", {"hue": "model.recurrent_init.gain", "steps": [0], "where": ["train.clip.mode=none"]}),
        Figure("training", "training", "Training loss by step, one panel per gain: without clipping the runs "
               "with gain > 1 leave the plot (their loss overflows) within about 40 steps; clipped, every run "
               "stays near the baseline's 0.167.", {"hue": "train.clip.mode", "col": "model.recurrent_init.gain"}),
    ),
))


# -- 9. the adding problem: tanh RNN against IRNN, LSTM and GRU ------------------------------------

# a run "stays at the baseline" above this share of its MSE, and "learns" the task below this one
STUCK, SOLVED = 0.8, 0.1


def variant(row) -> str:
    """A run's recurrent net in the papers' words: tanh RNN, IRNN (ReLU with identity recurrent init),
    LSTM, GRU (another vanilla RNN: '<activation> RNN')."""
    arch = str(row["model.arch"])
    if arch != "rnn":
        return arch.upper()
    act = str(row.get("model.activation.name", row.get("model.activation", "")))
    init = str(row.get("model.recurrent_init.name", row.get("model.recurrent_init", "")))
    return "IRNN" if act == "relu" and init == "identity" else f"{act} RNN"


def measure_adding_problem(sweep) -> Finding:
    t = sweep.table.copy()
    t["variant"] = t.apply(variant, axis=1)
    t["T"] = _num(t, "data.seq_len").astype(int)
    t["reach_ratio"] = reach(sweep).values
    t["trained_reach_ratio"] = reach(sweep, None).values
    t["mse"] = _num(t, "final_test_loss")
    baseline = float(_num(t, "task_baseline").dropna().iloc[0])
    t["mse_over_baseline_ratio"] = t["mse"] / baseline
    lengths = sorted(t["T"].unique())
    order = [v for v in ("tanh RNN", "IRNN", "LSTM", "GRU") if v in set(t["variant"])] + \
        sorted(set(t["variant"]) - {"tanh RNN", "IRNN", "LSTM", "GRU"})
    numbers: dict = {"baseline": baseline, "lengths": [int(x) for x in lengths]}
    for (v, T), rows in t.groupby(["variant", "T"]):
        key = f"{v.replace(' ', '_')}_{T}"
        numbers[f"mse_{key}"] = float(rows["mse"].mean())
        numbers[f"mse_max_{key}"] = float(rows["mse"].max())
        numbers[f"mse_min_{key}"] = float(rows["mse"].min())
        numbers[f"reach_{key}"] = studies.gmean_gsd(rows["reach_ratio"])[0]
        numbers[f"reach_max_{key}"] = float(rows["reach_ratio"].max())
        numbers[f"trained_reach_{key}"] = studies.gmean_gsd(rows["trained_reach_ratio"])[0]
        numbers[f"trained_reach_max_{key}"] = float(rows["trained_reach_ratio"].max())
        numbers[f"decay_per_step_{key}"] = studies.gmean_gsd(rows["decay_per_step"])[0]
        numbers[f"steps_{key}"] = int(_num(rows, "train.steps").max())
        numbers[f"runs_{key}"] = len(rows)
        numbers[f"diverged_{key}"] = int(rows["status"].eq("diverged").sum())
    n = numbers
    learners = [v for v in order if v != "tanh RNN"]

    def k(v, T):
        return f"{v.replace(' ', '_')}_{T}"

    # (1) the tanh RNN stays at the baseline: every seed at every T above STUCK x its MSE
    stuck = {T: n.get(f"mse_min_{k('tanh RNN', T)}", 0) > STUCK * baseline for T in lengths}
    # (2) the others learn it: every seed at every T below SOLVED x the baseline's MSE (a net missing
    # at some T, as in a partly finished sweep, fails too)
    solved = {(v, T): n.get(f"mse_max_{k(v, T)}", math.inf) < SOLVED * baseline for v in learners for T in lengths}
    # (3) at init the tanh RNN's gradient at t = 1 is below 1e-6 of the last step's, the IRNN's and the
    # LSTM's above 1e-3
    reaches = {T: n.get(f"reach_{k('tanh RNN', T)}", math.inf) < 1e-6 and all(
        n[f"reach_{k(v, T)}"] > 1e-3 for v in ("IRNN", "LSTM") if f"runs_{k(v, T)}" in n) for T in lengths}
    missing = [f"{v} at T = {T}" for v in order for T in lengths if f"runs_{k(v, T)}" not in n]
    held = all(stuck.values()) and all(solved.values()) and all(reaches.values())
    n.update(tanh_stuck=all(stuck.values()), all_solved=all(solved.values()), reach_init=all(reaches.values()))

    def mse(v, T):
        return (f"{n[f'mse_{k(v, T)}']:.3g}" + (f" ({n[f'mse_min_{k(v, T)}']:.2g}-{n[f'mse_max_{k(v, T)}']:.2g})"
                                                  if n[f"runs_{k(v, T)}"] > 1 else ""))

    parts = []
    for T in lengths:
        parts.append(f"T = {T}: " + ", ".join(f"{v} {mse(v, T)}" for v in order if f"mse_{k(v, T)}" in n))
    Tmax = lengths[-1]
    measured = (
        f"Test MSE over {_seeds(t)} (baseline {baseline:.3f}): " + "; ".join(parts) + ". "
        f"At init, dLoss/dh_1 over dLoss/dh_T at T = {Tmax}: "
        + ", ".join(f"{v} {_small(n, f'reach_{k(v, Tmax)}')}" for v in order if f"reach_{k(v, Tmax)}" in n)
        + "; at the last step: "
        + ", ".join(f"{v} {_small(n, f'trained_reach_{k(v, Tmax)}')}" for v in order if f"reach_{k(v, Tmax)}" in n)
        + ".")
    table = compare_table(sweep, t, ["data.seq_len", "model.arch", "model.activation"],
                          ["final_test_loss", "decay_per_step", "reach_ratio", "trained_reach_ratio", "steps_done"])
    why = [f"no finished run of {', '.join(missing)}"] if missing else []
    for T, ok in stuck.items():
        if not ok:
            why.append(f"at T = {T} a tanh RNN seed got below {STUCK:g}x the baseline's MSE: the task is "
                       "short enough for it at this lr and these steps")
    failed = [f"{v} at T = {T}" for (v, T), ok in solved.items() if not ok and f"runs_{k(v, T)}" in n]
    if failed:
        why.append(f"{', '.join(failed)} did not get every seed below {SOLVED:g}x the baseline's MSE in the steps "
                   "this CPU budget allows (the papers train for 10^5-10^6 steps)")
    for T, ok in reaches.items():
        if not ok:
            why.append(f"at T = {T} the gradients at init did not split as claimed (tanh below 1e-6, IRNN and "
                       "LSTM above 1e-3)")
    return Finding(held, measured, table, numbers, "; ".join(why))



register(Entry(
    9, "adding-problem", "Le et al. 2015, Hochreiter & Schmidhuber 1997: the adding problem, tanh RNN against IRNN, "
    "LSTM and GRU",
    quick=("data.seq_len=50", "seed=0"),
    measure=measure_adding_problem,
    figures=(
        Figure("training", "training", "Training loss (MSE) by step, one panel per sequence length, a colour per "
               "net (arch, activation, recurrent init, lr, steps): the tanh RNN stays on the dashed baseline "
               "(always answering 1), the IRNN (relu, identity), the LSTM and the GRU fall two orders below it.",
               {"hue": "model.arch", "col": "data.seq_len"}),
        Figure("time", "profile", "||dLoss/dh_t|| at init against time step t (the loss is on the last step): the "
               "tanh RNN's vanishes back through time (at T = 100 below 1e-20, where float32 can underflow to 0 "
               "near t = 1), the IRNN's stays flat, the LSTM's (forget bias 2) shrinks slowly; the GRU's vanishes at init too, "
               "yet it learns fastest: its gates open in training.",
               {"hue": "model.arch", "col": "data.seq_len", "steps": [0]}),
    ),
))
