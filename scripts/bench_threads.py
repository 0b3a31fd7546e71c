"""How OpenMP's waiting policy changes a PyTorch step, alone and beside other PyTorch processes.

A 20-layer width-256 tanh MLP (batch 128, SGD with momentum) steps in a fresh process per setting
of the environment: libgomp's defaults, ``GOMP_SPINCOUNT=30000`` (what `vgp run` sets) and
``OMP_WAIT_POLICY=PASSIVE``; settings interleaved, the median ms per step of each process's
repetitions, then the median over processes. ``--busy N`` keeps N other PyTorch processes
(matrix products in a loop, libgomp's defaults) running meanwhile.

    python scripts/bench_threads.py                 # idle machine
    python scripts/bench_threads.py --busy 1 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, statistics, sys, time
import torch
import torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
layers, fan = [], 64
for _ in range(20):
    layers += [nn.Linear(fan, 256), nn.Tanh()]
    fan = 256
model = nn.Sequential(*layers, nn.Linear(256, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
torch.set_num_threads(int(sys.argv[1]))
steps, reps, times = int(sys.argv[2]), 5, []
for rep in range(reps + 1):
    t = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rep:  # the first round warms up
        times.append((time.perf_counter() - t) / steps * 1e3)
print(json.dumps(statistics.median(times)))
"""
HOG = "import torch\nx, w = torch.randn(128, 256), torch.randn(256, 256)\nwhile True:\n    x @ w"
SETTINGS = {"libgomp's defaults": {}, "GOMP_SPINCOUNT=30000 (vgp run)": {"GOMP_SPINCOUNT": "30000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="steps per repetition (5 repetitions per process)")
    p.add_argument("--rounds", type=int, default=3, help="processes per setting, interleaved")
    p.add_argument("--busy", type=int, default=0, help="other PyTorch processes running meanwhile")
    args = p.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    hogs = [subprocess.Popen([sys.executable, "-c", HOG], env=base) for _ in range(args.busy)]
    ms = {name: [] for name in SETTINGS}
    try:
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                out = subprocess.run([sys.executable, "-c", STEP, str(args.threads), str(args.steps)],
                                     env={**base, **env}, capture_output=True, text=True, check=True).stdout
                ms[name].append(json.loads(out))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"20-layer width-256 tanh MLP, {args.threads} threads, ms per step, median of {args.rounds} processes"
          f"{f', beside {args.busy} PyTorch process(es)' if args.busy else ', idle'}:")
    for name, values in ms.items():
        print(f"  {name:34s} {statistics.median(values):8.2f}  (each: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
