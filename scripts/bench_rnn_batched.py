"""Would recurrent nets gain from batching seeds, as MLPs do (vgp.batched)? A measurement, not a feature.

vgp trains an MLP's seeds as one stacked model (torch.baddbmm over a member dimension). A recurrent
net's unrecorded steps run PyTorch's fused kernels (torch._VF.lstm/gru/rnn_tanh, what nn.LSTM
calls), which take one weight set: K members cannot share one call. Batching them means unrolling
the cell over time with batched matrix products. This script times one training step (forward,
backward, SGD update) of K members three ways, interleaved, medians:

* ``fused, one after another``: K separate nn.LSTM / nn.GRU / nn.RNN modules (what vgp runs alone);
* ``unrolled, one after another``: the same cell unrolled per member (what a recorded step costs);
* ``unrolled, batched``: one unrolled cell over (K, B, H) states with torch.bmm, the K members'
  weights stacked.

The adding task's shapes (T time steps of 2 features, a regression on the last state).

    python scripts/bench_rnn_batched.py                       # lstm, K=8, T=100, width 64, batch 64
    python scripts/bench_rnn_batched.py --arch gru --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def cell(arch: str, xw, h, c, w_hh, b_hh):
    """One step of the cell on stacked (K, B, .) tensors; xw: the input's projection W_ih x + b_ih."""
    hw = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh.transpose(1, 2))
    if arch == "lstm":
        i, f, g, o = (xw + hw).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if arch == "gru":  # PyTorch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        xr, xz, xn = xw.chunk(3, -1)
        hr, hz, hn = hw.chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        return (1 - z) * torch.tanh(xn + r * hn) + z * h, c
    return torch.tanh(xw + hw), c


def unrolled(arch: str, params, x, y):
    """Loss of K members (stacked params: (K, G H, F), (K, G H, H), (K, G H), (K, G H), head (K, 1, H), (K, 1))."""
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = params
    k, b, t, _ = x.shape
    hidden = w_hh.shape[-1]
    xw = torch.baddbmm(b_ih.unsqueeze(1), x.reshape(k, b * t, -1), w_ih.transpose(1, 2)).view(k, b, t, -1)
    h = c = x.new_zeros(k, b, hidden)
    for step in xw.unbind(2):
        h, c = cell(arch, step, h, c, w_hh, b_hh)
    out = torch.baddbmm(b_out.unsqueeze(1), h, w_out.transpose(1, 2))  # (K, B, 1)
    return F.mse_loss(out, y, reduction="none").mean((1, 2)).sum()


def timed(fn, steps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="lstm", choices=list(GATES))
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k, b, t, h = args.members, args.batch_size, args.seq_len, args.width
    x, y = torch.randn(k, b, t, 2), torch.randn(k, b, 1)
    mods = [MODULES[args.arch](2, h, batch_first=True) for _ in range(k)]
    heads = [nn.Linear(h, 1) for _ in range(k)]
    opts = [torch.optim.SGD([*m.parameters(), *o.parameters()], lr=1e-3) for m, o in zip(mods, heads)]
    stacked = [nn.Parameter(torch.stack([getattr(m, n).detach() for m in mods]))
               for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    stacked += [nn.Parameter(torch.stack([o.weight.detach() for o in heads])),
                nn.Parameter(torch.stack([o.bias.detach() for o in heads]))]
    opt_b = torch.optim.SGD(stacked, lr=1e-3)
    solo = [[*(nn.Parameter(s[i].detach().clone().unsqueeze(0)) for s in stacked)] for i in range(k)]
    opt_s = [torch.optim.SGD(ps, lr=1e-3) for ps in solo]

    def fused():
        for i in range(k):
            out, _ = mods[i](x[i])
            loss = F.mse_loss(heads[i](out[:, -1]), y[i])
            opts[i].zero_grad(set_to_none=True)
            loss.backward()
            opts[i].step()

    def one_by_one():
        for i in range(k):
            loss = unrolled(args.arch, solo[i], x[i:i + 1], y[i:i + 1])
            opt_s[i].zero_grad(set_to_none=True)
            loss.backward()
            opt_s[i].step()

    def batched():
        loss = unrolled(args.arch, stacked, x, y)
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()

    # the batched unrolled loss equals the members' fused losses (same weights, same arithmetic)
    with torch.no_grad():
        ref = sum(F.mse_loss(heads[i](mods[i](x[i])[0][:, -1]), y[i]) for i in range(k))
        got = unrolled(args.arch, stacked, x, y)
    assert torch.allclose(ref, got, rtol=1e-4), (ref, got)

    variants = {"fused, one after another": fused, "unrolled, one after another": one_by_one,
                "unrolled, batched": batched}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.steps))
    base = statistics.median(times["fused, one after another"])
    print(f"{k} members of a {args.arch}, T={t}, width {h}, batch {b}; {torch.get_num_threads()} threads; "
          f"one step of all members, median of {args.repeats} x {args.steps} steps:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {1000 * med:8.1f} ms  ({1000 * min(ts):.1f}-{1000 * max(ts):.1f})  "
              f"{base / med:5.2f}x the fused runs' speed")


if __name__ == "__main__":
    main()
