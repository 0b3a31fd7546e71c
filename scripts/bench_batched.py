"""How much faster are seeds trained as one batched model (vgp.batched) than one after another?

K seeds of one MLP config (default: 8 seeds, depth 20, width 64, tanh, the teacher data set, 300
steps of batch 128, vgp's default recording: every 10th step, all kinds). Two variants in one
process, each writing its run folders as a user's run would:

* ``alone``: ``vgp.train.run`` of each seed, one after another;
* ``batched``: ``vgp.batched.run_batched`` of the K seeds;
* with several activations (``--activation tanh,relu``, members cycling through them), also
  ``batched, one group per activation``: ``run_batched`` of each activation's members in turn.

Repetitions are interleaved (alone, batched, alone, batched, ...) so that drift of a shared machine
hits both alike; the median and the spread (min..max) of each are printed, for the whole time (set-up,
training, finishing the folders) and for the training loops alone (``train_s`` of summary.csv).

    python scripts/bench_batched.py                        # 8 seeds, 20x64, torch's default threads
    OMP_NUM_THREADS=1 python scripts/bench_batched.py --threads 1
    python scripts/bench_batched.py --sweep                # also whole `vgp sweep` processes, batched or not
    python scripts/bench_batched.py --activation tanh,relu,gelu,sigmoid   # members cycle through these
    python scripts/bench_batched.py --arch gru --depth 1 --batch-size 64  # recurrent, on the adding task
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from vgp import batched, config
from vgp.train import run


def raw_config(args) -> dict:
    data = {"name": "teacher", "dim": 64, "n_train": 4096, "n_test": 1024} if args.arch == "mlp" else \
        {"name": "adding", "seq_len": args.seq_len, "n_train": 4096, "n_test": 1024}
    return {"name": "bench", "device": "cpu",
            "model": {"arch": args.arch, "depth": args.depth, "width": args.width, "activation": args.activation},
            "data": data,
            "train": {"steps": args.steps, "batch_size": args.batch_size,
                      "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
            "log": {"every": args.every}}


def configs(args) -> list[config.Config]:
    raw = raw_config(args)
    acts = args.activation.split(",")  # member s gets acts[s % len(acts)]
    return [config.from_dict({**raw, "name": f"seed{s}", "seed": s,
                              "model": {**raw["model"], "activation": acts[s % len(acts)]}})
            for s in range(args.seeds)]


def train_s(folders) -> float:
    return sum(float(pd.read_csv(Path(f) / "summary.csv").train_s.iloc[0]) for f in folders)


def alone(cfgs, out: Path) -> tuple[float, float]:
    t = time.perf_counter()
    folders = [run(c, out=out, quiet=True, force=True).folder for c in cfgs]
    return time.perf_counter() - t, train_s(folders)


def together(cfgs, out: Path) -> tuple[float, float]:
    t = time.perf_counter()
    res = batched.run_batched(cfgs, out=out, force=True)
    return time.perf_counter() - t, float(pd.read_csv(res[0].folder / "summary.csv").train_s.iloc[0])


def by_activation(cfgs, out: Path) -> tuple[float, float]:
    """One batched group per activation, one after another (what a sweep does when each activation has
    enough cells to fill its own groups): summed times."""
    groups: dict = {}
    for c in cfgs:
        groups.setdefault(str(c.model.activation), []).append(c)
    times = [together(g, out) for g in groups.values()]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def sweep_process(args, out: Path, no_batch: bool) -> float:
    """A whole `vgp sweep` process of the seeds (into a fresh folder), start to exit."""
    spec = {"name": "bench", "base": {k: v for k, v in raw_config(args).items() if k != "name"},
            "seeds": list(range(args.seeds))}
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    folder = out / ("unbatched" if no_batch else "batched")
    cmd = [sys.executable, "-m", "vgp", "sweep", str(path), "--out", str(folder), "-q",
           *(["-j", str(args.jobs)] if args.jobs else []), *(["--no-batch"] if no_batch else [])]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    return wall


def show(name: str, times: list[float]) -> str:
    return (f"{name}: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
            f"n={len(times)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--arch", default="mlp", choices=["mlp", "rnn", "gru"], help="rnn, gru: on the adding task")
    p.add_argument("--seq-len", type=int, default=100, help="--arch rnn/gru: the adding task's T")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--activation", default="tanh", help="one, or several comma-separated: members cycle through them")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--every", type=int, default=10, help="log.every")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--sweep", action="store_true", help="also time whole `vgp sweep` processes")
    p.add_argument("--sweep-reps", type=int, default=3)
    p.add_argument("--jobs", type=int, default=None, help="--sweep: vgp sweep -j (default: its own, one per core)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfgs = configs(args)
    net = "MLP" if args.arch == "mlp" else f"{args.arch} on the adding task (T={args.seq_len})"
    print(f"{args.seeds} seeds of a {args.depth}x{args.width} {args.activation} {net}, {args.steps} steps of batch "
          f"{args.batch_size}, log.every {args.every}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs seen")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        together(cfgs[:2], tmp / "warm")  # first calls: imports, allocator, lazy inits
        variants = {"alone, one after another": alone, "batched": together}
        if len({str(c.model.activation) for c in cfgs}) > 1:
            variants["batched, one group per activation"] = by_activation
        results: dict[str, list] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, f in variants.items():
                results[name].append(f(cfgs, tmp / "runs"))
        for what, i in (("whole time", 0), ("training loops", 1)):
            a = [r[i] for r in results["alone, one after another"]]
            print(f"{what}:\n  {show('alone, one after another', a)}")
            for name in list(variants)[1:]:
                b = [r[i] for r in results[name]]
                ratios = [x / y for x, y in zip(a, b)]
                print(f"  {show(name, b)}\n    speed-up: median {statistics.median(ratios):.2f}x "
                      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
        if args.sweep:
            s: dict[str, list] = {"unbatched": [], "batched": []}
            for _ in range(args.sweep_reps):
                s["unbatched"].append(sweep_process(args, tmp, True))
                s["batched"].append(sweep_process(args, tmp, False))
            ratios = [x / y for x, y in zip(s["unbatched"], s["batched"])]
            print(f"whole `vgp sweep` processes (-j {args.jobs or 'default'}):\n"
                  f"  {show('--no-batch', s['unbatched'])}\n"
                  f"  {show('batched', s['batched'])}\n  speed-up: median {statistics.median(ratios):.2f}x "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
