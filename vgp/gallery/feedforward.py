"""Gallery entries on initialising deep feedforward nets: Glorot & Bengio 2010, He et al. 2015, and
orthogonal weights (Saxe et al. 2014, Pennington et al. 2017).

Each ``measure`` reads only the finished runs it is given (their summaries, ``grad_norms.csv`` and
``metrics.csv``): the per-layer ``output_grad`` at step 0, the activation statistics over training,
the training loss. Layers are numbered from the input; an MLP of depth L has hidden layers 1..L and
its output layer L+1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vgp import compare as comparemod
from vgp.gallery import Entry, Figure, Finding, register

ACT, INIT, DEPTH = "model.activation.name", "model.init.name", "model.depth"


def _runs(sweep, kinds, cols) -> pd.DataFrame:
    """``sweep.grads(kinds)`` with the config columns ``cols`` and ``seed`` of each run."""
    g = sweep.grads(kinds=list(kinds))
    t = sweep.table[["name", *cols, "seed"]].rename(columns={"name": "run"})
    return g.merge(t, on="run")


def _gmean(x) -> float:
    x = np.asarray(list(x), dtype=float)
    return float(np.exp(np.log(x).mean())) if len(x) and (x > 0).all() else math.nan


def _gsd(x) -> float:
    x = np.asarray(list(x), dtype=float)
    return float(np.exp(np.log(x).std(ddof=1))) if len(x) > 1 and (x > 0).all() else math.nan


def _table(sweep, by, metrics) -> str:
    return comparemod.markdown(sweep.compare(by=by, metrics=metrics))


# -- 1. Glorot & Bengio 2010 -------------------------------------------------------------------

# where an activation's output sits at rest, and half its range: a top layer's mean is read as a
# shift from the centre in units of the half-range (-1: all units at the bottom of the range)
CENTRE = {"sigmoid": (0.5, 0.5), "tanh": (0.0, 1.0), "softsign": (0.0, 1.0)}


def measure_glorot(sweep) -> Finding:
    t = sweep.table
    ratio = {(a, i): _gmean(d["grad_ratio"]) for (a, i), d in t.groupby([ACT, INIT])}
    acts = sorted({a for a, _ in ratio}, key=list(CENTRE).index)
    n = {}
    for (a, i), r in ratio.items():
        n[f"grad_ratio_{a}_{i}"] = r

    # (a) at init: is Xavier's layer-1/layer-L ratio closer to 1 than the standard init's, on a log scale?
    closer = {a: abs(math.log(ratio[a, "xavier_uniform"])) < 0.5 * abs(math.log(ratio[a, "default"]))
              for a in acts if a != "sigmoid" and (a, "default") in ratio and (a, "xavier_uniform") in ratio}
    held_a = bool(closer) and all(closer.values()) and all(ratio[a, "default"] < 0.5 for a in closer)

    # (b) in training: the top hidden layer's mean at the last recorded step, as a shift from the centre
    g = _runs(sweep, ["act_mean", "saturation"], [ACT, INIT, DEPTH])
    g = g[g["step"] == g.groupby("run")["step"].transform("max")]
    top = g[g["layer"] == g[DEPTH]]
    lower = g[g["layer"] < g[DEPTH]]

    def shift(frame, a):
        c, h = CENTRE[a]
        return (frame["value"] - c) / h

    rows = {}
    for (a, i), d in top.groupby([ACT, INIT]):
        mean = d[d["kind"] == "act_mean"]
        sat = d[d["kind"] == "saturation"]["value"]
        low = lower[(lower[ACT] == a) & (lower[INIT] == i) & (lower["kind"] == "act_mean")]
        rows[a, i] = dict(top_mean=mean["value"].mean(), top_shift=shift(mean, a).mean(),
                          lower_shift=shift(low, a).abs().max(), top_saturation=sat.mean(), seeds=len(mean))
        for k in ("top_mean", "top_shift", "lower_shift", "top_saturation"):
            n[f"{k}_{a}_{i}"] = float(rows[a, i][k])
    sig = rows.get(("sigmoid", "default"))
    others = [rows[a, i] for (a, i) in rows if a != "sigmoid"]
    # driven: the sigmoid's top layer more than a third of the way from 0.5 to 0, and at least 3x as far
    # from 0.5 as any lower layer; the tanh and softsign top layers neither shifted nor saturated (a
    # symmetric unit driven to its tails keeps a mean near 0, so its saturated fraction is what shows it)
    held_b = sig is not None and sig["top_shift"] < -1 / 3 and -sig["top_shift"] > 3 * sig["lower_shift"] \
        and bool(others) \
        and all(abs(r["top_shift"]) < 0.2 and r["top_saturation"] < 0.2 for r in others)
    n["held_gradients"], n["held_saturation"] = bool(held_a), bool(held_b)

    lines = ["| activation | init | seeds | top layer's mean at the end | its shift from the centre "
             "(-1: all at the bottom) | lower layers' largest shift | top layer saturated |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for (a, i), r in sorted(rows.items(), key=lambda kv: (list(CENTRE).index(kv[0][0]), kv[0][1])):
        lines.append(f"| {a} | {i} | {r['seeds']} | {r['top_mean']:.3f} | {r['top_shift']:+.2f} | "
                     f"{r['lower_shift']:.2f} | {r['top_saturation']:.0%} |")
    table = _table(sweep, ["activation", "init"], ["grad_ratio", "final_loss", "final_test_acc"]) \
        + "\n" + "\n".join(lines) + "\n"

    step = int(g["step"].max())
    gr = "; ".join(f"{a} {ratio[a, 'default']:.3g} -> {ratio[a, 'xavier_uniform']:.3g}" for a in acts
                   if (a, "default") in ratio and (a, "xavier_uniform") in ratio)
    measured = (f"At init, layer 1's output_grad over layer {int(t[DEPTH].iloc[0])}'s (geometric mean of "
                f"{t.groupby([ACT, INIT]).size().min()} seeds), standard -> Xavier: {gr}. ")
    if sig is not None:
        measured += (f"At step {step} the sigmoid net's (standard init) top hidden layer has mean "
                     f"{sig['top_mean']:.3f} (from 0.5 at init; {sig['top_saturation']:.0%} of its entries below "
                     f"5% of the sigmoid's largest slope), its lower layers shift at most "
                     f"{sig['lower_shift']:.2f} of the half-range; the tanh and softsign top layers shift at most "
                     f"{max(abs(r['top_shift']) for r in others):.3f}, with at most "
                     f"{max(r['top_saturation'] for r in others):.0%} saturated.")
    why = []
    if not held_a:
        why.append("the normalised init did not bring the tanh/softsign gradient ratio at least halfway "
                   "(in log) to 1 here")
    if sig is not None and "sigmoid" in acts:
        why.append(f"for sigmoid both inits vanish at init ({ratio['sigmoid', 'default']:.2g} and "
                   f"{ratio['sigmoid', 'xavier_uniform']:.2g}): Xavier's normalisation assumes a unit slope "
                   "at 0, and the sigmoid's is 1/4; the paper's Fig. 7 is for tanh")
    if not held_b:
        why.append("the sigmoid top layer was not driven a third of the way to 0 and 3x as far as its lower "
                   "layers (or a tanh/softsign top layer also shifted or saturated) within these steps")
    elif sig["top_saturation"] < 0.5:
        why.append(f"the sigmoid's top layer is driven toward 0 steadily (mean {sig['top_mean']:.2f} at step "
                   f"{step}) but has not reached saturation in the paper's sense: "
                   f"{sig['top_saturation']:.0%} of its entries have a slope below 5% of the largest: at this "
                   "learning rate and number of steps it moves more slowly than in the paper's Fig. 2")
    return Finding(bool(held_a and held_b), measured, table, n, "; ".join(why) + ("." if why else ""))


# -- 2. He et al. 2015 -------------------------------------------------------------------------

PLATEAU = 2.0  # below chance level ln 10 = 2.30 on the 10 digit classes
LEARNED = 1.0  # a lowest recorded training loss below this: the net learned (chance is 2.30)


def measure_he(sweep) -> Finding:
    """Per depth and init: when each seed first leaves chance level (its first recorded loss below
    PLATEAU), the lowest loss it reached (a deep net at lr 0.01 and momentum 0.9 can spike back up
    or diverge later, so the last loss alone says less about whether it learned), the final loss."""
    t = sweep.table
    m = sweep.metrics().dropna(subset=["loss"])
    steps = int(t["train.steps"].max())
    first = m[m["loss"] < PLATEAU].groupby("run")["step"].min()
    lowest = m.groupby("run")["loss"].min()
    t = t.assign(escape=t["name"].map(first).astype(float),  # NaN: never below PLATEAU
                 lowest=t["name"].map(lowest).astype(float))
    n, rows = {}, []
    for (d, i), r in t.groupby([DEPTH, INIT]):
        esc = r["escape"].fillna(math.inf)
        key = f"{i.split('_')[0]}_{int(d)}"  # xavier_22, kaiming_30
        n[f"final_loss_{key}"] = float(r["final_loss"].mean())  # the finite ones (a diverged run has none)
        n[f"lowest_loss_{key}"] = float(r["lowest"].mean())
        n[f"lowest_loss_max_{key}"] = float(r["lowest"].max())
        n[f"escape_step_{key}"] = float(esc.median())
        n[f"escaped_{key}"], n[f"seeds_{key}"] = int(np.isfinite(esc).sum()), len(r)
        n[f"diverged_{key}"] = int((r["status"] == "diverged").sum())
        n[f"grad_ratio_{key}"] = _gmean(r["grad_ratio"])
        n[f"decay_per_layer_{key}"] = _gmean(r["decay_per_layer"])
        rows.append((int(d), i, r))
    depths = sorted({d for d, *_ in rows})
    deep, shallow = depths[-1], depths[0]

    def has(d):
        return all(f"seeds_{i}_{d}" in n for i in ("xavier", "kaiming"))

    def learned(i, d):  # every seed left chance and got below LEARNED
        return n[f"escaped_{i}_{d}"] == n[f"seeds_{i}_{d}"] and n[f"lowest_loss_max_{i}_{d}"] < LEARNED

    # stalls: the deep Xavier net stays at chance at least 4x as long as the He net (median over seeds),
    # and every He seed learns
    stall = has(deep) and n[f"escape_step_xavier_{deep}"] >= 4 * n[f"escape_step_kaiming_{deep}"] \
        and learned("kaiming", deep)
    trains = len(depths) > 1 and has(shallow) and learned("xavier", shallow) and learned("kaiming", shallow)
    slower = trains and n[f"escape_step_xavier_{shallow}"] > n[f"escape_step_kaiming_{shallow}"]
    n["held_stall"], n["held_trains"], n["held_slower"] = bool(stall), bool(trains), bool(slower)

    def when(x):
        return f"never in {steps}" if math.isinf(x) else f"{x:.0f}"

    lines = [f"| depth | init | seeds | first step with loss < {PLATEAU} | lowest loss | final loss |",
             "|---|---|--:|---|---|---|"]
    for d, i, r in rows:
        fin = ", ".join("diverged" if st == "diverged" else f"{x:.3g}" for x, st in zip(r["final_loss"], r["status"]))
        lines.append(f"| {d} | {i} | {len(r)} | {', '.join(when(x) for x in r['escape'].fillna(math.inf))} | "
                     f"{', '.join(f'{x:.3g}' for x in r['lowest'])} | {fin} |")
    table = _table(sweep, ["depth", "init"], ["final_loss", "final_test_acc", "grad_ratio", "decay_per_layer"]) \
        + "\n" + "\n".join(lines) + "\n"
    seeds = min(len(r) for *_, r in rows)
    parts = "; ".join(
        f"{d} layers: Xavier left chance at step {when(n[f'escape_step_xavier_{d}'])} and got to "
        f"{n[f'lowest_loss_xavier_{d}']:.2g}, He at step {when(n[f'escape_step_kaiming_{d}'])} and got to "
        f"{n[f'lowest_loss_kaiming_{d}']:.2g}" for d in depths if has(d))
    measured = (f"Median over {seeds} seeds of the first recorded step with training loss below {PLATEAU} "
                f"(chance: 2.30), and the mean lowest loss in {steps} SGD steps: {parts}. At init, layer 1's "
                f"output_grad over layer {deep}'s: Xavier {n[f'grad_ratio_xavier_{deep}']:.2g}, He "
                f"{n[f'grad_ratio_kaiming_{deep}']:.2g}.")
    why = []
    if not stall:
        why.append(f"the {deep}-layer Xavier net did not stay at chance at least 4x as long as the He net, "
                   f"or a {deep}-layer He seed did not get below {LEARNED}")
    elif math.isfinite(n[f"escape_step_xavier_{deep}"]):
        why.append(f"the {deep}-layer Xavier net stalls for a while, not for good: {n[f'escaped_xavier_{deep}']} "
                   f"of {n[f'seeds_xavier_{deep}']} seeds left chance level within {steps} steps (median step "
                   f"{n[f'escape_step_xavier_{deep}']:.0f})")
    if stall and (n[f"diverged_xavier_{deep}"] or n[f"diverged_kaiming_{deep}"]):
        why.append(f"at {deep} layers SGD at lr 0.01 with momentum 0.9 is at the edge of stability on this data: "
                   f"{n[f'diverged_xavier_{deep}'] + n[f'diverged_kaiming_{deep}']} run(s) diverged after leaving "
                   "chance, and the final losses swing; the lowest loss is what tells a net that learned")
    if not trains:
        why.append(f"not every {shallow}-layer net got below loss {LEARNED} in {steps} steps")
    elif not slower:
        why.append(f"the {shallow}-layer Xavier net was not slower than He here")
    return Finding(bool(stall and trains), measured, table, n, "; ".join(why) + ("." if why else ""))


# -- 5. orthogonal weights and dynamical isometry -----------------------------------------------

def measure_isometry(sweep) -> Finding:
    g = _runs(sweep, ["output_grad"], [ACT, INIT, DEPTH])
    g = g[(g["step"] == 0) & (g["layer"] <= g[DEPTH])]  # the hidden layers
    per_run = []
    for run, d in g.groupby("run"):
        depth, act = int(d[DEPTH].iloc[0]), d[ACT].iloc[0]
        v = d.sort_values("layer")["value"].to_numpy()
        # tanh: the upper half, past the transient in which q falls from the inputs' 1 to q*
        band = v if act == "identity" else v[depth // 2 - 1:]
        per_run.append(dict(run=run, act=act, init=d[INIT].iloc[0], depth=depth, seed=d["seed"].iloc[0],
                            spread=band.max() / band.min(), ratio=v[0] / v[-1]))
    r = pd.DataFrame(per_run)
    n, lines = {}, ["| activation | init | depth | seeds | output_grad max/min over the layers read "
                    "(geometric mean ×/÷ gsd) | layer 1 / layer L (×/÷ gsd over seeds) |",
                    "|---|---|--:|--:|--:|--:|"]
    for (a, i, d), x in r.groupby(["act", "init", "depth"]):
        key = f"{a}_{'orthogonal' if i == 'orthogonal' else 'gaussian'}_{d}"
        n[f"spread_{key}"], n[f"spread_max_{key}"] = _gmean(x["spread"]), float(x["spread"].max())
        n[f"ratio_{key}"], n[f"ratio_gsd_{key}"] = _gmean(x["ratio"]), _gsd(x["ratio"])
        lines.append(f"| {a} | {i} | {d} | {len(x)} | {_gmean(x['spread']):.4g} ×/÷ {_gsd(x['spread']):.3g} | "
                     f"{_gmean(x['ratio']):.4g} ×/÷ {_gsd(x['ratio']):.3g} |")
    depths = sorted(r["depth"].unique())
    deep = depths[-1]

    def get(name, default=math.nan):
        return n.get(name, default)

    lin_orth = [get(f"spread_max_identity_orthogonal_{d}") for d in depths]
    lin_gauss = get(f"spread_identity_gaussian_{deep}")
    held_linear = all(x < 1.001 for x in lin_orth) and lin_gauss > 1.1
    t_orth, t_gauss = get(f"spread_tanh_orthogonal_{deep}"), get(f"spread_tanh_gaussian_{deep}")
    held_tanh = math.log(t_gauss) > 2 * math.log(t_orth) and t_gauss > 1.1 \
        if t_orth > 0 and t_gauss > 0 else False
    n["held_linear"], n["held_tanh"] = bool(held_linear), bool(held_tanh)
    n["tanh_ratio_orthogonal_deep"], n["tanh_ratio_gaussian_deep"] = \
        get(f"ratio_tanh_orthogonal_{deep}"), get(f"ratio_tanh_gaussian_{deep}")

    seeds = int(r.groupby(["act", "init", "depth"]).size().min())
    measured = (f"At step 0, over {seeds} seeds: the linear nets' output_grad varies across the hidden layers by a "
                f"factor of at most {max(lin_orth):.6f} with orthogonal weights at depths "
                f"{', '.join(map(str, depths))}, and by {lin_gauss:.3g} (geometric mean, depth {deep}) with "
                f"Gaussian ones. tanh at the edge of chaos, depth {deep}, upper half of the layers: max/min "
                f"{t_orth:.3g} orthogonal against {t_gauss:.3g} Gaussian; layer 1 / layer {deep} "
                f"{get(f'ratio_tanh_orthogonal_{deep}'):.3g} ×/÷ {get(f'ratio_gsd_tanh_orthogonal_{deep}'):.3g} "
                f"against {get(f'ratio_tanh_gaussian_{deep}'):.3g} ×/÷ {get(f'ratio_gsd_tanh_gaussian_{deep}'):.3g}.")
    why = ["only gradient norms are recorded, so Pennington et al.'s claim about the whole singular-value "
           "spectrum of the input-output Jacobian is not tested"]
    tanh = sweep.table[(sweep.table[ACT] == "tanh") & (sweep.table[INIT] == "orthogonal")]
    if len(tanh):
        from vgp import theory

        q = theory.q_star("tanh", float(tanh["model.init.gain"].iloc[0]) ** 2,
                          float(tanh["model.bias_init.std"].iloc[0]) ** 2)
        why.append(f"in the tanh nets both inits lose a factor of about "
                   f"{1 / get(f'ratio_tanh_orthogonal_{deep}'):.2g} over the first layers, where the standardised "
                   f"inputs' variance 1 falls to the fixed point q* = {q:.2g}: the level profile holds past that "
                   "transient")
    if not held_linear:
        why.append("the linear nets' profiles did not separate as claimed")
    if not held_tanh:
        why.append("the tanh nets' upper-half spread was not clearly smaller with orthogonal weights")
    return Finding(bool(held_linear and held_tanh), measured, "\n".join(lines) + "\n", n, "; ".join(why) + ".")


register(Entry(
    1, "glorot-init", "Glorot & Bengio 2010: standard against normalised init in sigmoid, tanh and softsign nets",
    quick=("seed=0,1", "train.steps=800"),
    measure=measure_glorot,
    figures=(
        Figure("profile", "profile",
               "output_grad by layer at step 0 (layer 6 is the output layer): with the standard init it "
               "shrinks toward the input, with Xavier it is much flatter for tanh and softsign; the sigmoid "
               "nets' vanishes with both.",
               dict(steps=[0], hue="init", col="activation")),
        Figure("training", "training",
               "Training loss under SGD at lr 0.1: the sigmoid nets stay at chance (ln 10 = 2.30) with either "
               "init, while (see the table) their top layer drifts toward 0; tanh and softsign train, faster "
               "with Xavier.",
               dict(hue="init", col="activation")),
    )))

register(Entry(
    2, "he-init", "He et al. 2015: Xavier against He init in deep ReLU nets",
    quick=("seed=0,1", "train.steps=800"),
    measure=measure_he,
    figures=(
        Figure("training", "training",
               "Training loss of 22- and 30-layer ReLU MLPs: the 30-layer Xavier net sits at chance "
               "(ln 10) long after the He net has left it.",
               dict(hue="init", col="depth")),
        Figure("profile", "profile",
               "output_grad by layer at step 0: Xavier halves the signal's variance at each ReLU layer, "
               "so the gradient shrinks by about 0.7 per layer; He keeps it level.",
               dict(steps=[0], hue="init", col="depth")),
    )))

register(Entry(
    5, "orthogonal-isometry", "Saxe et al. 2014, Pennington et al. 2017: orthogonal weights keep gradient norms level",
    quick=("seed=0,1,2", "model.depth=10,100"),
    measure=measure_isometry,
    figures=(
        Figure("profile", "profile",
               "output_grad by layer at step 0, depth 100: orthogonal weights give a level line in the linear "
               "net and, past the first layers' transient, in the critical tanh net; Gaussian ones wander.",
               dict(steps=[0], hue="init", where=["depth=100"])),
        Figure("ratio", "summary",
               "Layer 1's output_grad over layer L's against depth: exactly 1 for orthogonal linear nets; "
               "the Gaussian nets' ratios spread out with depth.",
               dict(x="depth", y="grad_ratio", hue="init")),
    )))
