"""What mixed precision costs per step on this machine: `vgp.train.run` at fp32, bf16 and fp16.

The same config (a `--depth`-layer width-`--width` tanh MLP, batch 128, recording every 10th step)
in each precision, in one process, repetitions interleaved, the median of each run's loop time
(`train_s`) per step. On a CPU, autocast to float16 and bfloat16 is emulated by slower kernels;
on a GPU it is the fast path.

    python scripts/bench_precision.py                  # CPU, one thread
    python scripts/bench_precision.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from vgp import config
from vgp.train import run

VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
            "fp16, loss scaling": {"precision": "fp16", "loss_scale": "dynamic"},
            "fp16, no loss scaling": {"precision": "fp16", "loss_scale": "none"}}


def make_cfg(args, name: str, train: dict) -> config.Config:
    return config.from_dict({
        "name": name.replace(",", "").replace(" ", "-"), "device": args.device,
        "model": {"depth": args.depth, "width": args.width, "activation": "tanh", "init": "xavier_normal"},
        "data": {"name": "teacher", "dim": 64, "n_train": 4096, "n_test": 256},
        "train": {"steps": args.steps, "batch_size": 128, "eval_every": 10**9,
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, **train},
        "log": {"every": 10},
    })


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    times = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, train in VARIANTS.items():
                s = run(make_cfg(args, name, train), out=out, force=True, quiet=True).summary["train_s"]
                if rep:
                    times[name].append(s / args.steps)
    base = statistics.median(times["fp32"])
    print(f"{args.depth}-layer width-{args.width} tanh MLP, batch 128, {args.steps} steps on {args.device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:24s} {1000 * med:8.2f} ms/step  {med / base:6.2f}x fp32  "
              f"(spread {1000 * min(ts):.2f}-{1000 * max(ts):.2f})")


if __name__ == "__main__":
    main()
