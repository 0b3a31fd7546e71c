"""Per-run overhead of the local launcher: a sweep of 24 small runs against the same runs one by one.

    python scripts/bench_sweep.py [--jobs 2] [--steps 5000] [--sequential 24]

Prints three figures: the sweep's wall time (``vgp sweep --jobs N``), the sum of the runs' own
``wall_s`` (what the runs cost inside the workers), and the time of the same runs as sequential
``vgp run`` processes (each starting Python and importing torch), measured on ``--sequential`` of
them and scaled to all when fewer.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASE = {"device": "cpu", "model": {"depth": 4, "width": 64, "activation": "tanh"},
        "data": {"name": "teacher", "dim": 32, "classes": 10, "n_train": 1024, "n_test": 256},
        "train": {"batch_size": 64, "eval_every": 100}, "log": {"every": 10}}
GRID = {"model.activation": ["tanh", "relu"], "model.depth": [2, 4, 6]}
SEEDS = [0, 1, 2, 3]


def vgp(*args) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vgp", *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--sequential", type=int, default=24, help="how many of the runs to time as vgp run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vgp-bench-") as tmp:
        tmp = Path(tmp)
        base = {**BASE, "train": {**BASE["train"], "steps": args.steps}}
        spec = {"name": "bench", "base": base, "grid": GRID, "seeds": SEEDS}
        (tmp / "bench.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        sweep_s = vgp("sweep", tmp / "bench.yaml", "--out", tmp / "out", "--jobs", args.jobs, "-q")
        with open(tmp / "out" / "bench" / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        n = len(rows)
        runs_s = sum(float(r["wall_s"]) for r in rows)

        seq = rows[:args.sequential]
        seq_s = 0.0
        for r in seq:
            cfg = {**base, "name": r["name"], "seed": int(r["seed"]),
                   "model": {**base["model"], "activation": r["model.activation.name"], "depth": int(r["model.depth"])}}
            path = tmp / f"{r['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            seq_s += vgp("run", path, "--out", tmp / "seq", "-q")
        seq_all = seq_s * n / len(seq)

    scaled = "" if len(seq) == n else f" (measured on {len(seq)}, scaled)"
    print(f"{n} runs of {args.steps} steps, {os.cpu_count()} cores, --jobs {args.jobs}")
    print(f"| vgp sweep --jobs {args.jobs} (wall) | {sweep_s:.1f} s |")
    print(f"| sum of the runs' own wall_s | {runs_s:.1f} s ({runs_s / n:.2f} s per run) |")
    print(f"| {n} sequential `vgp run` processes | {seq_all:.1f} s{scaled} ({seq_all / n:.2f} s per run) |")
    print(f"| sweep speed-up over sequential vgp run | {seq_all / sweep_s:.1f}x |")
    print(f"| sweep overhead per run: (wall x jobs - sum of runs) / runs | "
          f"{(sweep_s * args.jobs - runs_s) / n:.2f} s |")


if __name__ == "__main__":
    main()
