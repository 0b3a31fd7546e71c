"""Gallery entries on normalisation and shortcuts: batch norm rescuing a deep sigmoid net (Ioffe &
Szegedy 2015), the degradation of deep plain nets that residual connections remove (He et al. 2016),
and the gradient explosion that batch norm itself causes in deep nets without shortcuts (Yang et al.
2019).

Each ``measure`` reads only the finished runs of its sweep (:func:`vgp.gallery.build.run_entry`); the
training loss it judges is the mean batch loss over the last tenth of the recorded steps, not the
single last batch (``final_loss``), which one odd batch can move.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vgp import compare as comparemod
from vgp import study as studies
from vgp.gallery import Entry, Figure, Finding, register

# the share of the recorded steps, at the end, whose batch losses make the training loss
TAIL = 0.1


def train_loss(sweep, tail: float = TAIL) -> pd.Series:
    """Per run (indexed like ``sweep.table``): the mean batch loss over the recorded steps in the last
    ``tail`` of training (steps >= (1 - tail) x the last step; at least the last recorded one)."""
    m = sweep.metrics()
    m = m[m["loss"].notna() & np.isfinite(m["loss"])]
    by_run = {}
    for run, g in m.groupby("run"):
        last = g["step"].max()
        by_run[run] = float(g.loc[g["step"] >= (1 - tail) * last, "loss"].mean())
    return sweep.table["name"].map(by_run).astype(float)


def compare_table(sweep, by: list[str], metrics: list[str], extra: dict | None = None) -> pd.DataFrame:
    """``sweep.compare(by, metrics)`` with ``extra`` columns ({name: values aligned with
    ``sweep.table``}) aggregated as metrics too (mean ± std over each row's seeds)."""
    table = sweep.table.copy()
    for name, values in (extra or {}).items():
        table[name] = values
    s = studies.Study(table, sweep._study.axes, sweep._study.paths, sweep._study.declared)
    return comparemod.compare([sweep.folder], by=by, metrics=metrics, loaded=s, warn=lambda m: None)


def classes_of(sweep) -> int:
    """The number of classes of the sweep's data set (its first run's resolved ``data``)."""
    from vgp import data

    return data.shapes(sweep.runs[sweep.table["name"].iloc[0]].config["data"]).num_outputs


def _seeds(frame: pd.DataFrame) -> str:
    seeds = sorted(pd.to_numeric(frame["seed"], errors="coerce").dropna().astype(int).unique())
    return f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"


def _truthy(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


# -- 3. batch norm lets a deep sigmoid net train --------------------------------------------------

def measure_batchnorm_sigmoid(sweep) -> Finding:
    t = sweep.table.assign(train_loss=train_loss(sweep).values)
    classes = classes_of(sweep)
    chance_loss, chance_acc = math.log(classes), 1 / classes
    numbers = {"chance_loss": chance_loss, "chance_acc": chance_acc}
    for norm in ("none", "batchnorm"):
        rows = t[t["model.norm"].astype(str) == norm]
        numbers[f"{norm}_train_loss"] = float(rows["train_loss"].mean())
        numbers[f"{norm}_train_loss_max"] = float(rows["train_loss"].max())
        numbers[f"{norm}_train_loss_min"] = float(rows["train_loss"].min())
        numbers[f"{norm}_test_acc"] = float(pd.to_numeric(rows["final_test_acc"], errors="coerce").mean())
        numbers[f"{norm}_test_acc_min"] = float(pd.to_numeric(rows["final_test_acc"], errors="coerce").min())
        numbers[f"{norm}_test_acc_max"] = float(pd.to_numeric(rows["final_test_acc"], errors="coerce").max())
        numbers[f"{norm}_grad_ratio"] = studies.gmean_gsd(rows["grad_ratio"])[0]
        numbers[f"{norm}_runs"] = len(rows)
    n = numbers
    # stuck: every plain run within 10% of the chance loss and below twice the chance accuracy;
    # trains: every batch-norm run below half the chance loss and above three times chance accuracy
    stuck = n["none_train_loss_min"] > 0.9 * chance_loss and n["none_test_acc_max"] < 2 * chance_acc
    trains = n["batchnorm_train_loss_max"] < 0.5 * chance_loss and n["batchnorm_test_acc_min"] > 3 * chance_acc
    depth = int(pd.to_numeric(t["model.depth"]).iloc[0])
    measured = (
        f"Over {_seeds(t)}, the {depth}-layer sigmoid net without batch norm stays at chance: training loss "
        f"{n['none_train_loss']:.3f} (ln {classes} = {chance_loss:.3f}), test accuracy {n['none_test_acc']:.3f} "
        f"(chance {chance_acc:.2f}), its first layer's gradient {n['none_grad_ratio']:.1e} of the output layer's "
        f"at init; with batch norm it trains: training loss {n['batchnorm_train_loss']:.3f} "
        f"({n['batchnorm_train_loss_min']:.3f}-{n['batchnorm_train_loss_max']:.3f}), test accuracy "
        f"{n['batchnorm_test_acc']:.3f} ({n['batchnorm_test_acc_min']:.3f}-{n['batchnorm_test_acc_max']:.3f}), "
        f"gradient ratio {n['batchnorm_grad_ratio']:.2g}.")
    table = compare_table(sweep, ["model.norm"], ["train_loss", "final_test_loss", "final_test_acc", "grad_ratio"],
                          {"train_loss": t["train_loss"].values})
    why = ""
    if not (stuck and trains):
        why = ("the plain net did not stay at chance in every seed" if not stuck else
               "batch norm did not bring every seed below half the chance loss and above three times chance "
               "accuracy in this many steps")
    return Finding(stuck and trains, measured, comparemod.markdown(table), numbers, why)


register(Entry(
    3, "batchnorm-sigmoid", "Ioffe & Szegedy 2015: batch norm lets a deep sigmoid net train",
    quick=("seed=0,1", "train.steps=150"),
    measure=measure_batchnorm_sigmoid,
    figures=(
        Figure("training", "training", "Training loss by step: without batch norm the sigmoid net's loss stays "
               "at ln 10 = 2.30 (chance), with it the loss falls.", {"hue": "model.norm"}),
        Figure("profile", "profile", "Gradient norm by layer at step 0: without batch norm it shrinks by about "
               "a factor 7 per layer toward the input, with it it stays within an order of magnitude.",
               {"hue": "model.norm", "steps": [0]}),
    ),
))


# -- 4. deeper plain nets train worse; residual ones do not --------------------------------------

def measure_plain_vs_residual(sweep) -> Finding:
    t = sweep.table.assign(train_loss=train_loss(sweep).values)
    t["skip"] = _truthy(t["model.skip"])
    t["depth"] = pd.to_numeric(t["model.depth"]).astype(int)
    shallow, deep = t["depth"].min(), t["depth"].max()
    cell = t.groupby(["skip", "depth"])["train_loss"]
    mean, lo, hi = cell.mean(), cell.min(), cell.max()
    numbers = {"shallow": int(shallow), "deep": int(deep)}
    for skip, label in ((False, "plain"), (True, "residual")):
        for depth, size in ((shallow, "shallow"), (deep, "deep")):
            numbers[f"{label}_{size}"] = float(mean[(skip, depth)])
            numbers[f"{label}_{size}_min"] = float(lo[(skip, depth)])
            numbers[f"{label}_{size}_max"] = float(hi[(skip, depth)])
    # per seed: did the deeper plain net end above the shallower one?
    plain = t[~t["skip"]].pivot_table(index="seed", columns="depth", values="train_loss")
    numbers["plain_deep_worse_seeds"] = int((plain[deep] > plain[shallow]).sum())
    numbers["seeds"] = int(len(plain))
    n = numbers
    # degradation: the deep plain net's mean loss at least twice the shallow one's and 0.1 above it;
    # residual: the deep net within 0.05 of the shallow one (or below it) and under a tenth of deep plain
    degrades = n["plain_deep"] > 2 * n["plain_shallow"] and n["plain_deep"] > n["plain_shallow"] + 0.1
    residual_ok = n["residual_deep"] < n["residual_shallow"] + 0.05 and n["residual_deep"] < 0.1 * n["plain_deep"]
    measured = (
        f"Training loss (mean batch loss over the last {TAIL:.0%} of steps) over {_seeds(t)}: plain {shallow} "
        f"layers {n['plain_shallow']:.3f} ({n['plain_shallow_min']:.3f}-{n['plain_shallow_max']:.3f}), plain "
        f"{deep} layers {n['plain_deep']:.3f} ({n['plain_deep_min']:.3f}-{n['plain_deep_max']:.3f}; higher in "
        f"{n['plain_deep_worse_seeds']} of {n['seeds']} seeds); residual {shallow} layers "
        f"{n['residual_shallow']:.4f}, residual {deep} layers {n['residual_deep']:.4f}.")
    table = compare_table(sweep, ["model.skip", "model.depth"], ["train_loss", "final_test_acc"],
                          {"train_loss": t["train_loss"].values})
    why = ""
    if not degrades:
        why = f"at this scale the plain {deep}-layer net did not end clearly above the {shallow}-layer one"
    elif not residual_ok:
        why = f"the residual {deep}-layer net ended above the {shallow}-layer one by more than 0.05"
    elif n["residual_deep"] > n["residual_shallow"]:
        from vgp import data

        run = sweep.runs[t["name"].iloc[0]].config
        size, dataset = data.shapes(run["data"]), run["data"]["name"]
        steps = int(pd.to_numeric(t["train.steps"]).max())
        why = (f"In part: the residual {deep}-layer net ends a little above the {shallow}-layer one "
               f"({n['residual_deep']:.4f} against {n['residual_shallow']:.4f}), both below "
               f"{max(n['residual_deep'], n['residual_shallow']) / n['plain_deep']:.1%} of the plain {deep}-layer "
               f"net's loss: {steps} steps on {size.n_train:,} training examples ({dataset}) bring both residual nets to "
               f"nearly zero training loss, where the paper's deeper ResNet ends lower than the shallower one after 64k steps on CIFAR-10.")
    return Finding(degrades and residual_ok, measured, comparemod.markdown(table), numbers, why)


register(Entry(
    4, "plain-vs-residual", "He et al. 2016: deeper plain nets train worse, residual ones do not",
    quick=("seed=0", "train.steps=150"),
    measure=measure_plain_vs_residual,
    figures=(
        Figure("training", "training", "Training loss by step, plain (left) and residual (right): the plain "
               "56-layer net stays above the 20-layer one, the residual 56-layer net reaches the 20-layer one's "
               "loss.", {"hue": "model.depth", "col": "model.skip"}),
        Figure("final", "summary", "Training loss at the end (last batch) against depth, plain and residual.",
               {"x": "model.depth", "y": "final_loss", "hue": "model.skip"}),
    ),
))


# -- 7. batch norm makes gradients explode toward the input ---------------------------------------

# sqrt(pi / (pi - 1)): the per-layer growth of the gradient norm in a wide ReLU net with batch norm before
# each ReLU, for a large batch (the batch statistics' own gradients neglected). After batch norm a
# pre-activation is N(0, 1) over the batch; its ReLU has variance (1/2 - 1/(2 pi)) = (pi - 1)/(2 pi), so the
# next pre-activation's batch variance is sigma_w^2 (pi - 1)/(2 pi). Backward, the ReLU keeps half the
# squared gradient, the weights multiply it by sigma_w^2 and the next batch norm divides it by that
# variance: pi/(pi - 1) per layer for the squared norm, whatever sigma_w^2 is.
RELU_LARGE_BATCH = math.sqrt(math.pi / (math.pi - 1))


def measure_batchnorm_explosion(sweep) -> Finding:
    t = sweep.table.copy()
    t["batch"] = pd.to_numeric(t["train.batch_size"]).astype(int)
    t["width"] = pd.to_numeric(t["model.width"]).astype(int)
    t["rate"] = pd.to_numeric(t["decay_per_layer"], errors="coerce")
    rates = t.groupby(["width", "batch"])["rate"].apply(lambda s: studies.gmean_gsd(s)[0]).unstack("width")
    batches, widths = list(rates.index), list(rates.columns)
    numbers = {"rate_min": float(t["rate"].min()), "batches": batches, "widths": widths,
               "relu_large_batch": RELU_LARGE_BATCH}
    falls = True
    for w in widths:
        r = rates[w]
        numbers[f"rate_w{w}_smallest_batch"] = float(r.iloc[0])
        numbers[f"rate_w{w}_largest_batch"] = float(r.iloc[-1])
        # non-increasing in the batch size, up to 0.005 between neighbours (the seeds' spread is about that)
        steps = np.diff(r.values)
        numbers[f"rate_w{w}_largest_rise"] = float(steps.max()) if len(steps) else 0.0
        falls &= bool(len(steps) and (steps < 0.005).all() and r.iloc[0] > r.iloc[-1] + 0.02)
    numbers["rate_largest_batch"] = float(rates.iloc[-1].mean())
    numbers["diverged"] = int((t["status"] == "diverged").sum())
    explodes = numbers["rate_min"] > 1.05
    depth = int(pd.to_numeric(t["model.depth"]).iloc[0])
    act = str(t["model.activation.name"].iloc[0]) if "model.activation.name" in t else "relu"
    n = numbers
    per_batch = ", ".join(f"{b}: {rates.loc[b].mean():.3f}" for b in batches)
    measured = (
        f"At init, the gradient of a {depth}-layer {act} MLP with batch norm grows toward the input in every run "
        f"(smallest rate {n['rate_min']:.3f} per layer, {_seeds(t)}, width{'s' * (len(widths) != 1)} "
        f"{', '.join(map(str, widths))}). The "
        f"rate falls as the batch grows (batch size: rate, mean over widths: {per_batch}), toward "
        f"{n['rate_largest_batch']:.3f} at batch {batches[-1]}, against sqrt(pi/(pi-1)) = {RELU_LARGE_BATCH:.3f} "
        f"from the large-batch estimate for ReLU."
        + (f" {n['diverged']} runs diverged at their one SGD step (the exploded gradient at lr 0.1)."
           if n["diverged"] else ""))
    table = compare_table(sweep, ["model.width", "train.batch_size"], ["decay_per_layer", "grad_ratio"])
    why = ""
    if not explodes:
        why = "some run's gradient did not grow toward the input by more than 5% per layer"
    elif not falls:
        why = "the rate did not fall with the batch size at every width"
    return Finding(explodes and falls, measured, comparemod.markdown(table), numbers, why)


register(Entry(
    7, "batchnorm-explosion", "Yang et al. 2019: batch norm makes gradients explode toward the input",
    quick=("seed=0,1", "model.width=64", "train.batch_size=4,16,1024"),
    measure=measure_batchnorm_explosion,
    figures=(
        Figure("rate", "summary", "Gradient growth per layer toward the input at init against the batch size, "
               "one line per width: above 1 everywhere, falling toward a limit as the batch grows.",
               {"x": "train.batch_size", "y": "decay_per_layer", "hue": "model.width"}),
        Figure("profile", "profile", "Gradient norm by layer at step 0 (width 64), one line per batch size: a "
               "straight line on the log axis, steeper for small batches.",
               {"hue": "train.batch_size", "where": ["model.width=64"], "steps": [0]}),
    ),
))
