"""Repeated blocks among a model's tracked layers, and how the gradient changes from block to block.

A deep model is mostly N copies of one block: GPT-2's ``transformer.h.0`` .. ``transformer.h.11``,
a ResNet's ``layer1.0`` .. ``layer4.1``, vgp's MLP ``blocks.0`` .. ``blocks.19``. The layers of
different kinds inside a block (attention projections, MLP linears, norms) have gradients of very
different sizes, so one line fitted through all layers in execution order mixes kinds; the same
*member* of consecutive blocks (``attn.c_proj`` of block 3 and of block 4) is comparable.

Words used:

* **block**: a layer's name up to its first part that is a whole number (``transformer.h.3`` of
  ``transformer.h.3.attn.c_proj``); **member**: the rest (``attn.c_proj``). Blocks are ordered as
  their first layer ran in the forward pass (layer numbers of ``grad_norms.csv``).
* **decay per block** of a member: exp(-slope) of a Theil-Sen line through log output_grad against
  block position (:func:`vgp.analysis.decay_rate`), over the blocks that have that member; below 1
  the gradient shrinks toward the input. The model's decay per block is the geometric median over
  members (the median of their log rates), compounded over the blocks like the decay per layer
  (:mod:`vgp.analysis`).
* **carriers**: the members whose decay per block lies furthest from 1, and the blocks whose
  output_grad (median over their members, relative to the same members in the last block) leaves
  the ``drop``/``rise`` band: where the vanishing or exploding signal is.

Only names are read: nothing here imports torch.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

MIN_BLOCKS = 3  # fewer repetitions make no profile
_INT = re.compile(r"^\d+$")


def split(name: str) -> tuple[str, str] | None:
    """('transformer.h.3', 'attn.c_proj') for 'transformer.h.3.attn.c_proj'; None without a part
    that is a whole number after a named container (the '2' of a plain nn.Sequential's '2' is a
    position, not a block). A block that is itself a tracked layer has the member ''."""
    parts = str(name).split(".")
    for i, p in enumerate(parts):
        if _INT.match(p):
            return (".".join(parts[:i + 1]), ".".join(parts[i + 1:])) if i > 0 else None
    return None


def find(names: pd.Series) -> pd.DataFrame | None:
    """The tracked layers that belong to repeated blocks: a frame indexed by layer number with
    ``block`` (name), ``position`` (1.. in forward order), ``member``; None when there are fewer
    than :data:`MIN_BLOCKS` blocks. ``names``: name by layer number (execution order)."""
    rows = []
    for layer, name in names.sort_index().items():
        s = split(name)
        if s is not None:
            rows.append((layer, *s))
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["layer", "block", "member"]).set_index("layer")
    order = list(dict.fromkeys(df["block"]))
    if len(order) < MIN_BLOCKS:
        return None
    df["position"] = df["block"].map({b: i + 1 for i, b in enumerate(order)})
    return df


def stats(grads: pd.DataFrame, step: int, th, judge, decay_rate) -> dict | None:
    """The decay of output_grad per block at one step (None without repeated blocks): ``blocks``
    (how many), ``decay_per_block``, ``compounded`` (over blocks - 1), ``verdict``, ``members``
    ([{member, blocks, decay_per_block}] sorted with the furthest from 1 first), ``drop_block`` and
    ``rise_block`` (the last block, counted from the input, whose members' median relative norm is
    below ``th.drop`` or above ``th.rise`` times the last block's; None if none), ``zeros`` and
    ``nonfinite``. ``judge`` and ``decay_rate`` are :mod:`vgp.analysis`'s (passed in to keep this
    module free of it)."""
    g = grads[(grads.step == step) & (grads.kind == "output_grad")].drop_duplicates("layer", keep="last")
    if g.empty or "name" not in g:
        return None
    blocks = find(g.set_index("layer")["name"])
    if blocks is None:
        return None
    norms = g.set_index("layer")["value"].astype(float)
    b = blocks.join(norms.rename("value"), how="inner")
    n_blocks = int(b["position"].max())
    members = []
    for member, m in b.groupby("member", sort=False):
        m = m.sort_values("position")
        if m["position"].nunique() < MIN_BLOCKS:
            continue
        rate, _, _ = decay_rate(m.groupby("position")["value"].first().to_numpy())
        if math.isfinite(rate):
            members.append({"member": member or "(block)", "blocks": int(m["position"].nunique()),
                            "decay_per_block": rate})
    v = b["value"].to_numpy()
    out = {"step": int(step), "blocks": n_blocks, "decay_per_block": math.nan, "compounded": math.nan,
           "verdict": "unknown", "members": [], "drop_block": None, "rise_block": None,
           "zeros": int(np.sum(v == 0)), "nonfinite": int(np.sum(~np.isfinite(v))),
           "first_block": str(blocks["block"].iloc[0]), "last_block": str(blocks["block"].iloc[-1])}
    if members:
        rate = math.exp(float(np.median([math.log(m["decay_per_block"]) for m in members])))
        out["decay_per_block"] = rate
        out["compounded"] = rate ** (n_blocks - 1)
        out["members"] = sorted(members, key=lambda m: -abs(math.log(m["decay_per_block"])))
    # each block against the last one, member by member: the median ratio says where the signal leaves
    last = b[b["position"] == n_blocks].set_index("member")["value"]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = b.assign(ref=b["member"].map(last)).eval("value / ref")
    per_block = rel.groupby(b["position"]).median()
    below = per_block.index[per_block < th.drop]
    above = per_block.index[(per_block > th.rise) | np.isinf(per_block)]
    out["drop_block"] = int(below.max()) if len(below) else None
    out["rise_block"] = int(above.max()) if len(above) else None
    last_ok = bool(np.isfinite(last).all() and (last > 0).all()) if len(last) else False
    out["verdict"] = judge(out["compounded"], out["zeros"] if last_ok else 0, out["nonfinite"], th)
    return out


def describe(s: dict, th: dict, num) -> str:
    """One line for ``vgp diagnose``: the rate per block, compounded, and where the signal is."""
    line = (f"  step {s['step']}: repeated blocks {s['first_block']} .. {s['last_block']} ({s['blocks']}): "
            f"output_grad x{num(s['decay_per_block'], 1.0)} per block toward the input -> x{num(s['compounded'])} "
            f"over {s['blocks'] - 1} blocks ({s['verdict']})")
    if s["members"]:
        line += "; most changed per block: " + ", ".join(
            f"{m['member']} x{num(m['decay_per_block'], 1.0)}" for m in s["members"][:3])
    if s["drop_block"]:
        line += f"; blocks 1-{s['drop_block']} below {th['drop']:g} x the last block's"
    if s["rise_block"]:
        line += f"; blocks 1-{s['rise_block']} above {th['rise']:g} x the last block's"
    return line
