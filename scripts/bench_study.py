"""How long do compare, plot and report take on a sweep of 1,000 runs, and do they grow linearly?

    python scripts/bench_study.py [--dir results/bench-study] [--repeat 3] [--jobs 2]

The first call makes a real sweep of 1,000 runs with vgp itself (5 activations x 5 inits x 5 depths
x 2 optimizers x 4 seeds; a width-32 MLP on a tiny teacher data set, 3 steps, every step recorded):
``vgp sweep DIR/bench-study.yaml --out DIR/n1000 -q --jobs 2``, about a minute on 2 cores. Later calls
reuse it (a sweep resumes: finished runs are skipped). The 250- and 500-run sweeps are the same file
with seeds 0 and 0,1: their folders ``DIR/n250``, ``DIR/n500`` hold symlinks to those runs of the
1,000, and ``vgp sweep ... seed=0,1 --out DIR/n500`` (every run already finished, so nothing trains)
writes their ``sweep.yaml`` and ``summary.csv`` as for any sweep.

Each command is timed as a whole process (``python -m vgp ...``, wall clock, the median of
``--repeat``), sizes interleaved so that drift of the machine hits all alike, beside
``python -c "import vgp.cli"``, the floor of any command; then the growth from 250 to 500 and from
500 to 1,000 runs in seconds per 1,000 more runs, which stays the same when the cost grows linearly.
A command that does not exist yet (a usage error "No such command") reads "not available". Exits 1
when a command takes 10 s or more at 1,000 runs, or fails.

Symlinked subsets rather than three sweeps: the same runs, read through the same files, without
training 750 more; they keep every config and drop seeds, so a figure has as many lines at 250 runs
as at 1,000 (a sweep with fewer grid values would draw fewer).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

NAME = "bench-study"
SPEC = {
    "name": NAME,
    "base": {"device": "cpu", "model": {"width": 32},
             "data": {"name": "teacher", "dim": 16, "classes": 4, "hidden": 32, "n_train": 64, "n_test": 32},
             "train": {"steps": 3, "batch_size": 32, "eval_every": 100}, "log": {"every": 1}},
    "grid": {"model.activation": ["sigmoid", "tanh", "relu", "gelu", "selu"],
             "model.init": ["default", "xavier_uniform", "kaiming_normal", "orthogonal", "lecun_normal"],
             "model.depth": [2, 4, 6, 8, 12]},
    "zip": {"train.optimizer.name": ["sgd", "adam"], "train.optimizer.lr": [0.1, 0.001]},
    "seeds": [0, 1, 2, 3],
}
SIZES = {250: [0], 500: [0, 1], 1000: [0, 1, 2, 3]}  # runs -> the seeds that make them
LIMIT_S = 10.0  # the claim checked: each command under 10 s at 1,000 runs
COMMANDS = {  # name -> arguments after `python -m vgp SUBCOMMAND SWEEP_FOLDER`, of a scratch folder
    "compare": [],
    "plot": ["-o", lambda tmp: tmp / "plots"],  # every kind, into a folder
    "report": ["-o", lambda tmp: tmp / "report.html"],
}


def vgp(*args, quiet: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgp", *map(str, args)], text=True,
                          stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE)


def sweep_dir(root: Path, n: int) -> Path:
    return root / f"n{n}" / NAME


def generate(root: Path, jobs: int) -> str:
    """The 1,000-run sweep, made (or finished) by vgp sweep; the 250 and 500 subsets as symlinks.
    Returns a line saying how long the generation took (now, or when it was made)."""
    spec_file, record = root / f"{NAME}.yaml", root / "generation.json"
    text = "# made by scripts/bench_study.py\n" + yaml.safe_dump(SPEC, sort_keys=False)
    if spec_file.exists() and spec_file.read_text() != text:
        sys.exit(f"{spec_file} is another sweep than this script makes; use another --dir or delete {root}")
    root.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(text)
    full = sweep_dir(root, 1000)
    if rows(full) == 1000 and record.exists():
        made = json.loads(record.read_text())
        line = f"reused {full} (made in {made['wall_s']:.0f} s with --jobs {made['jobs']} on {made['date']})"
    else:
        print(f"making {full}: 1,000 runs with --jobs {jobs} ...", flush=True)
        t = time.perf_counter()
        r = vgp("sweep", spec_file, "--out", root / "n1000", "-q", "--jobs", jobs)
        wall = time.perf_counter() - t
        if r.returncode != 0 or rows(full) != 1000:
            sys.exit(f"vgp sweep failed (exit {r.returncode}, {rows(full)} of 1,000 runs finished):\n{r.stderr}")
        record.write_text(json.dumps({"wall_s": wall, "jobs": jobs, "date": time.strftime("%Y-%m-%d")}))
        line = f"made {full} in {wall:.0f} s with --jobs {jobs} ({wall / 1000 * jobs:.2f} s per run per job)"
    runs = yaml.safe_load((full / "sweep.yaml").read_text())["runs"]
    for n, seeds in SIZES.items():
        if n == 1000 or rows(sweep_dir(root, n)) == n:
            continue
        (sweep_dir(root, n) / "runs").mkdir(parents=True, exist_ok=True)
        for run in runs:
            link = sweep_dir(root, n) / "runs" / run["id"]
            if run["seed"] in seeds and not link.exists():
                link.symlink_to((full / "runs" / run["id"]).resolve(), target_is_directory=True)
        r = vgp("sweep", spec_file, "seed=" + ",".join(map(str, seeds)), "--out", root / f"n{n}", "-q", "--jobs", 1)
        if r.returncode != 0 or rows(sweep_dir(root, n)) != n:
            sys.exit(f"the {n}-run subset is not complete (exit {r.returncode}):\n{r.stderr}")
    return line


def rows(folder: Path) -> int:
    """Rows of a sweep's summary.csv (0 when there is none)."""
    try:
        with open(folder / "summary.csv", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except FileNotFoundError:
        return 0


def timed(*argv) -> tuple[float | None, str]:
    """Wall seconds of one ``python ARGV`` process, given a fresh scratch folder to write into (a
    function of it in ``argv``); None and why when it failed ('not available': no such command)."""
    with tempfile.TemporaryDirectory(prefix="vgp-bench-study-") as tmp:
        argv = [str(a(Path(tmp)) if callable(a) else a) for a in argv]
        t = time.perf_counter()
        r = subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t
    if r.returncode == 0:
        return wall, ""
    if r.returncode == 2 and "No such command" in r.stderr:
        return None, "not available"
    return None, f"failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"


def version() -> str:
    """The commit measured, '-dirty' when the working tree differs from it (figures depend on the code)."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                           cwd=Path(__file__).parent)
    except OSError:
        return "(no git)"
    return r.stdout.strip() or "(not a git checkout)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("results") / NAME, help="where the sweeps are made and kept")
    ap.add_argument("--repeat", type=int, default=3, help="timings per command and size (the median is shown)")
    ap.add_argument("--jobs", type=int, default=2, help="vgp sweep --jobs when making the 1,000 runs")
    args = ap.parse_args()
    made = generate(args.dir, args.jobs)

    floor: list[float] = []
    times: dict[tuple[str, int], list[float]] = {}
    why: dict[tuple[str, int], str] = {}
    for _ in range(args.repeat):
        floor.append(timed("-c", "import vgp.cli")[0])
        for n in SIZES:
            for name, options in COMMANDS.items():
                if (name, n) in why:
                    continue
                s, problem = timed("-m", "vgp", name, sweep_dir(args.dir, n), *options)
                if s is None:
                    why[name, n] = problem
                else:
                    times.setdefault((name, n), []).append(s)
    base = statistics.median(floor)
    median = {k: statistics.median(v) for k, v in times.items()}

    def cell(name, n):
        return why[name, n].split(":")[0] if (name, n) in why else f"{median[name, n]:.2f}"

    def slope(name, a, b):  # seconds per 1,000 more runs, from a runs to b
        if (name, a) in why or (name, b) in why:
            return "-"
        return f"{(median[name, b] - median[name, a]) / (b - a) * 1000:.2f}"

    print(f"{made}\nvgp {version()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"median of {args.repeat}; `python -c \"import vgp.cli\"` (the floor of any command): {base:.2f} s\n")
    print("| runs | " + " | ".join(f"{c} s" for c in COMMANDS) + " |")
    print("|---:|" + "---:|" * len(COMMANDS))
    for n in SIZES:
        print(f"| {n:,} | " + " | ".join(cell(c, n) for c in COMMANDS) + " |")
    print("\nGrowth, s per 1,000 more runs (linear: the same on both lines; quadratic: doubled on the second):\n")
    print("| runs | " + " | ".join(COMMANDS) + " |")
    print("|---:|" + "---:|" * len(COMMANDS))
    sizes = list(SIZES)
    for a, b in zip(sizes, sizes[1:]):
        print(f"| {a:,} -> {b:,} | " + " | ".join(slope(c, a, b) for c in COMMANDS) + " |")

    bad = [f"{c} at {n:,} runs: {why[c, n]}" for (c, n) in why if why[c, n] != "not available"]
    bad += [f"{c} at 1,000 runs took {median[c, 1000]:.1f} s (the limit is {LIMIT_S:.0f} s)"
            for c in COMMANDS if (c, 1000) in median and median[c, 1000] >= LIMIT_S]
    for line in bad:
        print(f"FAIL: {line}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
