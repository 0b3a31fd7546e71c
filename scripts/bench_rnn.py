"""Recurrent nets at fused speed? vgp's loop against a bare loop with PyTorch's fused nn.LSTM/GRU/RNN.

vgp unrolls the recurrence cell by cell on recorded steps only (to expose each h_t) and runs the
fused kernels on the others; "vgp, always unrolled" (``RecurrentNet.fused = False``) is how every
step ran before. Same task, sizes, optimizer and steps, in one process; repetitions are
interleaved and the median taken. Prints ms/step and the ratios to the bare loop.

    python scripts/bench_rnn.py                                  # adding task, T=100, width 64, CPU
    python scripts/bench_rnn.py --arch lstm --width 128 --device cuda --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from torch import nn

from vgp import config, data as datasets
from vgp.models.rnn import RecurrentNet
from vgp.train import loss_fn, run

from bench_overhead import timed_steps  # scripts/ is on the path of a script run from it

FUSED = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def make_cfg(args, arch: str, every: int) -> config.Config:
    return config.from_dict({
        "name": f"bench-{arch}-every{every}", "device": args.device,
        "model": {"arch": arch, "depth": args.depth, "width": args.width, "activation": "tanh"},
        "data": {"name": "adding", "seq_len": args.seq_len, "n_train": 4096, "n_test": 256},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "eval_every": 10**9},
        "log": {"every": every},
    })


class Bare(nn.Module):
    """What a person would write: the fused module and a linear head on the last step."""

    def __init__(self, arch: str, in_size: int, width: int, depth: int, out_size: int):
        super().__init__()
        self.rnn = FUSED[arch](in_size, width, depth, batch_first=True)
        self.out = nn.Linear(width, out_size)

    def forward(self, x):  # (B, T, F) -> (B, out)
        return self.out(self.rnn(x)[0][:, -1])


def bare(cfg: config.Config) -> float:
    """Seconds for cfg.train.steps steps of a hand-written loop around the fused module."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed).to(device)
    model = Bare(cfg.model.arch, d.shape[-1], cfg.model.width, cfg.model.depth, d.num_outputs).to(device)
    return timed_steps(model, loss_fn(d.task), d, cfg, device)


def vgp_loop(cfg: config.Config, out: str, fused: bool) -> float:
    """vgp's loop alone (train_s), fused on unrecorded steps or unrolled on every step."""
    RecurrentNet.fused = fused
    try:
        return run(cfg, out=out, force=True, quiet=True).summary["train_s"]
    finally:
        RecurrentNet.fused = True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="lstm,gru,rnn", help="comma-separated: lstm, gru, rnn (tanh)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=10, help="log.every of the vgp runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for arch in args.arch.split(","):
        cfg = make_cfg(args, arch, args.every)
        variants = {
            f"bare loop, fused nn.{FUSED[arch].__name__}": lambda out: bare(cfg),
            f"vgp, log.every {args.every}, fused between": lambda out: vgp_loop(cfg, out, True),
            f"vgp, log.every {args.every}, always unrolled": lambda out: vgp_loop(cfg, out, False),
        }
        times = {name: [] for name in variants}
        with tempfile.TemporaryDirectory() as out:
            vgp_loop(make_cfg(args, arch, 1), out, True)  # warm-up: allocator, first-call overheads
            bare(cfg)
            for _ in range(args.repeats):
                for name, f in variants.items():
                    times[name].append(f(out))
        base = statistics.median(next(iter(times.values())))
        print(f"{arch}, depth {args.depth}, width {args.width}, adding task T={args.seq_len}, batch "
              f"{args.batch_size}, {args.steps} steps on {args.device} ({torch.get_num_threads()} threads), "
              f"median of {args.repeats}:")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:40s} {1000 * med / args.steps:7.2f} ms/step  {med / base:5.2f}x bare")


if __name__ == "__main__":
    main()
