"""Gallery entry 10: pre- against post-LN transformers, with and without warm-up (Xiong et al. 2020)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vgp import compare as comparemod
from vgp.gallery import Entry, Figure, Finding, register

LEARNS = 0.9  # a run learns when its final test loss is below this fraction of task_baseline


def _at_init_ratio(sweep) -> pd.Series:
    """Per run: the last block's MLP weight gradient over the first block's at step 0, each block's the
    norm of its fc1 and fc2 weight gradients together (Xiong et al. 2020, Theorem 1 and Fig. 3: post-LN's
    grow toward the output, pre-LN's do not)."""
    g = sweep.grads(kinds=None)
    g = g[(g["step"] == 0) & (g["kind"] == "weight_grad") & g["name"].str.fullmatch(r"blocks\.\d+\.mlp\.fc[12]")]
    g = g.assign(block=g["name"].str.extract(r"blocks\.(\d+)\.")[0].astype(int), sq=g["value"].astype(float) ** 2)
    out = {}
    for run, rows in g.groupby("run"):
        per_block = np.sqrt(rows.groupby("block")["sq"].sum().sort_index())
        out[run] = per_block.iloc[-1] / per_block.iloc[0]
    return pd.Series(out, name="init_ratio")


def measure(sweep) -> Finding:
    t = sweep.table.copy()
    t["init_ratio"] = t["name"].map(_at_init_ratio(sweep))
    t["schedule"] = t["train.schedule.name"].astype(str)
    t["norm_position"] = t["model.norm_position"].astype(str)
    t["rel_loss"] = t["final_test_loss"].astype(float) / t["task_baseline"].astype(float)
    rows = []
    for (norm, sched), r in t.groupby(["norm_position", "schedule"], sort=True):
        ratio = np.exp(np.log(r["init_ratio"].astype(float)).mean())
        rows.append(dict(norm=norm, schedule=sched, n=len(r), loss=r["final_test_loss"].mean(),
                         loss_std=r["final_test_loss"].std(ddof=1) if len(r) > 1 else float("nan"),
                         rel=r["rel_loss"].mean(), learned=int((r["rel_loss"] < LEARNS).sum()), ratio=ratio))
    cell = {(r["norm"], r["schedule"]): r for r in rows}
    baseline, best = float(t["task_baseline"].mean()), float(t["task_best"].mean())

    def get(norm, sched, key):
        return float(cell[(norm, sched)][key]) if (norm, sched) in cell else float("nan")

    warm = next((s for s in sorted(t["schedule"].unique()) if s != "constant"), "warmup")
    n = dict(post_constant_rel=get("post", "constant", "rel"), post_warmup_rel=get("post", warm, "rel"),
             pre_constant_rel=get("pre", "constant", "rel"), pre_warmup_rel=get("pre", warm, "rel"),
             post_init_ratio=float(np.exp(np.log(t.loc[t["norm_position"] == "post", "init_ratio"]).mean())),
             pre_init_ratio=float(np.exp(np.log(t.loc[t["norm_position"] == "pre", "init_ratio"]).mean())),
             task_baseline=baseline, task_best=best, seeds=int(t["seed"].nunique()))
    grows = n["post_init_ratio"] > 1 and n["pre_init_ratio"] <= 1
    rescued = (n["post_constant_rel"] >= LEARNS and n["post_warmup_rel"] < LEARNS
               and n["post_warmup_rel"] < n["post_constant_rel"])
    pre_ok = n["pre_constant_rel"] < LEARNS
    held = grows and rescued and pre_ok
    table = ["| norm | schedule | runs | final test loss | / task_baseline | runs that learn (< 0.9) | "
             "last/first block's MLP weight gradient at init |", "|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        table.append(f"| {r['norm']}-LN | {r['schedule']} | {r['n']} | "
                     f"{comparemod.mean_std(r['loss'], r['loss_std'])} | {r['rel']:.2f} | {r['learned']}/{r['n']} | "
                     f"{r['ratio']:.2f} |")
    measured = (f"At init the last block's MLP weight gradient is {n['post_init_ratio']:.2f}x the first block's in "
                f"post-LN and {n['pre_init_ratio']:.2f}x in pre-LN (geometric means over {n['seeds']} seed{'s' if n['seeds'] != 1 else ''}). After "
                f"training, the final test loss over task_baseline ({baseline:.2f}; the chain's entropy is "
                f"{best:.2f}): post-LN {n['post_constant_rel']:.2f} without warm-up, {n['post_warmup_rel']:.2f} with "
                f"it; pre-LN {n['pre_constant_rel']:.2f} without, {n['pre_warmup_rel']:.2f} with.")
    why = ""
    if not held:
        parts = []
        if not grows:
            parts.append("the post-LN gradients did not grow toward the output (or pre-LN's did) at this size")
        if not rescued:
            parts.append("post-LN without warm-up learned, or the warm-up did not bring it below 0.9x the "
                         "baseline, within 300 steps at 12 blocks of width 64")
        if not pre_ok:
            parts.append("pre-LN without warm-up did not learn within the steps run")
        why = "; ".join(parts) + "."
    elif n["pre_warmup_rel"] > n["pre_constant_rel"]:
        why = ("Held. The warm-up slows pre-LN at this length (it spends a third of the 300 steps at a small "
               "learning rate), as Xiong et al. report: pre-LN does not need it.")
    return Finding(held, measured, "\n".join(table), n, why)


register(Entry(
    number=10, name="transformer-warmup",
    title="Xiong et al. 2020: pre- against post-LN transformers, with and without warm-up",
    quick=("seed=0", "train.steps=150", "train.schedule=constant,{name: warmup, warmup_steps: 50}"),
    measure=measure,
    figures=(
        Figure("training", "training",
               "Training loss, mean and min-max over the seeds: post-LN without warm-up (orange, left) stays at the "
               "no-memory baseline; with the warm-up (right) it trains as pre-LN does.",
               {"hue": "model.norm_position", "col": "train.schedule.name"}),
        Figure("profile", "profile",
               "The residual stream's gradient at step 0: at the embedding (layer 1), after each block and at the "
               "head (the last point); post-LN's stays above pre-LN's through the blocks.", {"hue": "model.norm_position", "steps": [0], "where": ["train.schedule.name=constant"]}),
    ),
))
