"""Phase diagrams of trainability: where in (sigma_w^2, depth) a tanh net trains, against mean-field theory.

Schoenholz et al. 2017 ("Deep Information Propagation") train tanh nets over a grid of sigma_w^2 and
depth and find that they train only while the depth is below about 6 xi_c, where xi_c is the
correlation depth scale (:func:`vgp.theory.correlation_depth`), which diverges at the order-to-chaos
transition. ``measure`` reads each cell's final training loss, calls it trained below half the loss
of chance (ln 10 / 2 for the ten digits), and compares the trained cells with depth < 6 xi_c.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vgp import gallery, plots_phase, plots_summary, theory
from vgp.gallery import Entry, Figure, Finding

CLASSES = 10  # the digits: chance is a loss of ln 10
NEAR = 1.25  # sigma_w^2 within this factor of the critical one counts as near criticality
K = plots_phase.XI_MULTIPLE  # Schoenholz et al.'s 6


def cells(sweep) -> tuple[pd.DataFrame, dict, float]:
    """One row per (sigma_w^2, depth): the mean final training loss and test accuracy over its runs
    (``loss``, ``loss_sd``, ``acc``, ``n``), ``trained`` (mean loss <= ln(classes) / 2), chi_1, xi_c
    and ``predicted`` (depth < 6 xi_c); with the activation and sigma_b^2 the runs share, and the
    critical sigma_w^2."""
    t = sweep.table.copy()
    t["sw2"] = plots_summary.sigma_w2(t).round(6)
    act, sb2, why = plots_phase.mean_field(t)
    if act is None:
        raise ValueError(f"phase-diagram: {why}")
    t["loss"] = pd.to_numeric(t["final_loss"], errors="coerce").where(t["status"] == "completed", math.log(CLASSES))
    g = t.groupby(["sw2", "model.depth"])
    c = pd.DataFrame({"loss": g["loss"].mean(), "loss_sd": g["loss"].std(), "n": g["loss"].size(),
                      "acc": g["final_test_acc"].mean()}).reset_index()
    c["trained"] = c["loss"] <= math.log(CLASSES) / 2
    xi = {w: theory.correlation_depth(act, w, sb2) for w in c["sw2"].unique()}
    c["chi1"] = c["sw2"].map(lambda w: theory.chi1(act, w, sb2))
    c["xi_c"] = c["sw2"].map(xi)
    c["predicted"] = c["model.depth"] < K * c["xi_c"]
    return c, {"activation": act, "bias_var": sb2}, theory.critical_weight_var(act, sb2)


def agreement(c: pd.DataFrame, k: float) -> float:
    """The share of cells where 'trained' equals depth < k xi_c."""
    return float((c["trained"] == (c["model.depth"] < k * c["xi_c"])).mean())


def measure(sweep) -> Finding:
    c, mf, crit = cells(sweep)
    depths = sorted(c["model.depth"].unique())
    rows, deepest = [], {}
    for w, sub in c.groupby("sw2"):
        sub = sub.set_index("model.depth")
        ok = [d for d in depths if d in sub.index and sub.loc[d, "trained"]]
        deepest[w] = int(max(ok)) if ok else 0
        failed = [d for d in depths if d in sub.index and not sub.loc[d, "trained"]]
        first_failed = int(min(failed)) if failed else None
        six = K * sub["xi_c"].iloc[0]
        cellv = [f"{sub.loc[d, 'loss']:.2f}" + ("" if sub.loc[d, "trained"] else " ✗") +
                 (f" ± {sub.loc[d, 'loss_sd']:.2f}" if sub.loc[d, "n"] > 1 else "")
                 if d in sub.index else "" for d in depths]
        rows.append([f"{w:g}", f"{sub['chi1'].iloc[0]:.3f}", f"{six:.0f}" if six < 1e4 else "> 10^4", *cellv,
                     str(deepest[w] or "none"), str(first_failed or "none"),
                     f"{int(sub['n'].min())}"])
    head = ["sigma_w^2", "chi_1", f"{K:g} xi_c", *[f"loss, depth {d}" for d in depths], "deepest trained",
            "first untrained", "seeds"]
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|",
                       *["| " + " | ".join(r) + " |" for r in rows]])
    table = ("Final training loss (mean over seeds, ± std where more than one; ✗: above ln 10 / 2 = "
             f"{math.log(CLASSES) / 2:.2f}, not trained)\n\n" + table + "\n")
    ws = sorted(deepest)
    near = [w for w in ws if abs(math.log(w / crit)) <= math.log(NEAR)]
    far = [ws[0], ws[-1]]
    d_near = max((deepest[w] for w in near), default=0)
    d_far = max(deepest[w] for w in far)
    agree = agreement(c, K)
    ks = np.arange(1.0, 12.01, 0.25)
    scores = np.array([agreement(c, k) for k in ks])
    best = ks[scores == scores.max()]
    numbers = {"critical_sigma_w2": crit, "deepest_near_critical": d_near, "deepest_far": d_far,
               "deepest_at_lowest": deepest[ws[0]], "deepest_at_highest": deepest[ws[-1]],
               "agreement_6xi": agree, "best_k_low": float(best.min()), "best_k_high": float(best.max()),
               "best_k_agreement": float(scores.max()), "cells": len(c),
               "deepest": {float(w): int(d) for w, d in deepest.items()},
               "six_xi_c": {float(w): K * float(x) for w, x in c.groupby("sw2")["xi_c"].first().items()}}
    held = d_near >= 2 * d_far and agree >= 0.75
    seeds = int(c["n"].min())
    measured = (f"Near the critical sigma_w^2 = {crit:.2f} ({', '.join(f'{w:g}' for w in near)}) nets of up to "
                f"{d_near} layers trained, at sigma_w^2 = {ws[0]:g} and {ws[-1]:g} only up to {deepest[ws[0]]} and "
                f"{deepest[ws[-1]]} ({seeds} seed{'s' if seeds > 1 else ''} per cell). "
                f"'Trained' matched depth < {K:g} xi_c in {agree:.0%} of the {len(c)} cells; the best k in "
                f"k xi_c is {best.min():g}-{best.max():g} ({scores.max():.0%} of cells).")
    # nets that fit their training set deep in the chaotic phase, against the critical ones of that depth
    nearest = min(ws, key=lambda w: abs(math.log(w / crit)))
    ref = c[c["sw2"] == nearest].set_index("model.depth")["acc"]
    chaotic = c[(c["sw2"] > crit * NEAR) & c["trained"]].copy()
    chaotic["gap"] = chaotic["model.depth"].map(ref) - chaotic["acc"]
    if len(chaotic) and chaotic["gap"].max() >= 0.2:
        worst = chaotic.loc[chaotic["gap"].idxmax()]
        measured += (f" Trained nets deep in the chaotic phase generalise worse: sigma_w^2 = {worst['sw2']:g} at "
                     f"depth {int(worst['model.depth'])} fits to a loss of {worst['loss']:.2f} but reaches "
                     f"{worst['acc']:.0%} test accuracy, against {ref[worst['model.depth']]:.0%} at "
                     f"sigma_w^2 = {nearest:g}.")
        numbers["chaotic_test_acc_gap"] = float(worst["gap"])
    why = "" if held else (
        f"Near criticality nets trained to {d_near} layers against {d_far} away from it (the claim needs at "
        f"least twice as deep), and trained cells matched depth < 6 xi_c in {agree:.0%} (needs 75%): at "
        "this scale (1,000 SGD steps, width 64) deep nets can fail for lack of steps rather than of signal.")
    return Finding(held, measured, table, numbers, why)


gallery.register(Entry(
    6, "phase-diagram", "Schoenholz et al. 2017: tanh nets train only within about 6 xi_c layers",
    ("model.depth=10,80", "model.init.scale=1.0,1.76,4.0", "train.steps=500", "train.eval_every=500",
     "log.every=500"),
    measure,
    (Figure("loss", "phase", "Final training loss over sigma_w^2 x depth (bright: trained); dashed: 6 xi_c, which "
            "diverges at the critical sigma_w^2 (dotted), where the trainable region reaches deepest.",
            {"y": "final_loss"}),
     Figure("test-acc", "phase", "The same nets' test accuracy: deep in the chaotic phase, nets that fit the "
            "training digits generalise worse.", {"y": "final_test_acc"})),
))
