"""Sweeps at scale: what expanding a sweep and keeping its summary cost.

    python scripts/bench_sweep_scale.py                 # 10^3 and 10^4 cells; 3,000 tiny runs
    python scripts/bench_sweep_scale.py --runs 1000     # fewer runs (the run part takes minutes)
    python scripts/bench_sweep_scale.py --skip-expansion --no-batch   # every run alone: the overhead per run

(1) expanding + validating 10^3 and 10^4 cells: in process (`sweep.load`, torch already imported) and
    as a whole process (`vgp sweep FILE --dry-run`);
(2) a sweep of tiny runs (train.steps 1-2, width 8, n_train 64) with `vgp sweep --jobs 2`: wall time,
    the overhead per run ((wall x jobs - sum of the runs' wall_s) / runs), and the time one
    `add_to_summary` takes at 100, 1,000, 3,000 finished runs (it should not grow).
"""

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = {"seed": 0, "device": "cpu", "model": {"depth": 2, "width": 8, "activation": "tanh"},
        "data": {"name": "teacher", "dim": 8, "classes": 3, "n_train": 64, "n_test": 32},
        "train": {"steps": 1, "batch_size": 32, "eval_every": 100}, "log": {"every": 1}}


def sweep_file(folder: Path, cells: int) -> Path:
    """cells = depths x lrs x seeds, seeds 20 (or fewer for small sweeps)."""
    seeds = 20 if cells >= 1000 else 1
    lrs = [round(0.1 / (i + 1), 6) for i in range(10)]
    depths = list(range(1, cells // (seeds * len(lrs)) + 1))
    spec = {"name": f"scale{cells}", "base": BASE, "grid": {"model.depth": depths, "train.optimizer.lr": lrs},
            "seeds": seeds}
    path = folder / f"scale{cells}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def expansion(folder: Path) -> None:
    import torch  # noqa: F401  (in process: the import is not the sweep's cost)

    from vgp import sweep

    for n in (1_000, 10_000):
        path = sweep_file(folder, n)
        t = time.perf_counter()
        cells = len(sweep.load(path).cells)
        t_in = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vgp", "sweep", str(path), "--dry-run", "--out", str(folder / "out")],
                       check=True, capture_output=True, cwd=ROOT)
        t_proc = time.perf_counter() - t
        print(f"expand+validate {cells:>6,} cells: {t_in:6.2f} s in process, {t_proc:6.2f} s as `vgp sweep --dry-run`")


def runs(folder: Path, n: int, jobs: int, batch: bool = True) -> None:
    from vgp import sweep

    spec = {"name": "tiny", "base": BASE, "grid": {"train.steps": [1, 2], "model.depth": list(range(1, n // 20 + 1))},
            "seeds": 10}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vgp", "sweep", str(path), "--out", str(folder), "-j", str(jobs), "-q"]
                   + ([] if batch else ["--no-batch"]), check=True, cwd=ROOT)
    wall = time.perf_counter() - t
    with open(folder / "tiny" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    busy = sum(float(r["wall_s"]) for r in rows)
    if batch:  # a batched member's wall_s is its group's: they overlap, and only the total says anything
        print(f"{len(rows):,} tiny runs, --jobs {jobs}, seeds batched: {wall:.1f} s wall, "
              f"{wall * jobs / len(rows) * 1000:.0f} ms of a core per run")
    else:
        print(f"{len(rows):,} tiny runs, --jobs {jobs}, --no-batch: {wall:.1f} s wall, {wall * jobs / len(rows) * 1000:.0f} "
              f"ms of a core per run, runs' own wall_s {busy:.1f} s in all: overhead per run "
              f"{(wall * jobs - busy) / len(rows) * 1000:.0f} ms")

    # one summary update with k runs already in the summary
    sweep_dir = folder / "tiny"
    ids = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    for k in (100, 1_000, 3_000):
        if k > len(ids):
            break
        part = folder / f"part{k}"
        (part / "runs").mkdir(parents=True)
        for i in ids[:k]:
            (part / "runs" / i).symlink_to(sweep_dir / "runs" / i)
        sweep.write_summary(part)
        last = ids[k - 1]
        times = []
        for _ in range(20):  # the same run added again, its row replaced each time: the worst case
            (part / sweep.INDEX / last).write_text("")
            t = time.perf_counter()
            sweep.add_to_summary(part, [last])
            times.append(time.perf_counter() - t)
        (part / sweep.INDEX / last).unlink()
        lines = (part / "summary.csv").read_text().splitlines()
        (part / "summary.csv").write_text("\n".join(l for l in lines if not l.startswith(last + ",")) + "\n")
        t = time.perf_counter()
        sweep.add_to_summary(part, [last])  # appended: the case of every run finishing
        append = time.perf_counter() - t
        t = time.perf_counter()
        sweep.write_summary(part)
        rebuild = time.perf_counter() - t
        print(f"summary update at {k:>5,} runs: append {append * 1000:6.2f} ms, replace a row "
              f"{sorted(times)[10] * 1000:6.1f} ms, full rebuild (the old cost of every update) {rebuild * 1000:7.1f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-expansion", action="store_true")
    ap.add_argument("--no-batch", action="store_true", help="run every cell alone (vgp sweep --no-batch)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_sweep_scale_"))
    try:
        if not args.skip_expansion:
            expansion(folder)
        if args.runs:
            runs(folder, args.runs, args.jobs, batch=not args.no_batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
