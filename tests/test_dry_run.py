"""``vgp sweep --dry-run``: one line per run (never wrapped), the varied keys by their short names, each
run's hash and status, a title and a count line; through the real CLI, piped, at a set terminal width."""

import json
import os
import re
import subprocess
import sys

import yaml

from conftest import ROOT, tiny
from vgp import sweep as sweepmod
from vgp.launch import plan_lines

EXAMPLE = ROOT / "configs" / "sweeps" / "activation_init_depth.yaml"
BOX = set("─│┃━┏┓┗┛┡┩╇┳┻╋")


def dry_run(*args, columns=80, cwd=ROOT) -> list[str]:
    """stdout lines of ``vgp sweep ARGS --dry-run`` piped, on a terminal said to be ``columns`` wide."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": str(columns), "LINES": "25"}
    r = subprocess.run([sys.executable, "-m", "vgp", "sweep", *map(str, args), "--dry-run"], capture_output=True,
                       text=True, cwd=cwd, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def small_sweep(tmp_path):
    spec = {"name": "small", "base": tiny(train__steps=1, log__every=1), "grid": {"model.depth": [2, 3]}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_shipped_sweep_one_line_per_run_within_80_columns(tmp_path):
    lines = dry_run(EXAMPLE, cwd=tmp_path)  # into the default folder, results/, of a fresh directory
    cells = sweepmod.load(EXAMPLE).cells
    assert len(lines) == 1 + 1 + len(cells) + 1 == 219  # title, header, 216 runs, count
    assert lines[0] == "sweep activation-init-depth: 216 runs in results/activation-init-depth"
    assert lines[1].split() == ["hash", "status", "activation", "init", "depth", "optimizer", "lr", "seed"]
    assert lines[-1] == "216 runs: 216 to run, 0 finished, 0 failed"
    assert max(map(len, lines)) <= 80 and not BOX & set("".join(lines))
    for line, cell in zip(lines[2:-1], cells):  # in the sweep's order, each run by its id's hash
        fields = line.split()
        assert re.fullmatch(r"[0-9a-f]{8}", fields[0]) and cell.id.endswith("_" + fields[0])
        assert fields[1] == "-" and fields[2:] == [str(v) for v in cell.values.values()]
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_narrow_terminal_still_one_line_per_run(tmp_path):
    lines = dry_run(EXAMPLE, "model.depth=5,10", "seed=0", "--out", tmp_path, columns=30)
    assert len(lines) == 3 + 3 * 3 * 2 * 2 and lines[-1].startswith("36 runs: ")
    assert all(len(line.split()) == 8 for line in lines[1:-1])  # nothing folded onto a next line


def test_statuses_after_running_part_of_a_sweep(tmp_path, cli):
    path = small_sweep(tmp_path)
    r = cli("sweep", path, "--out", tmp_path, "-q", "-j", "1")
    assert r.returncode == 0, r.stderr
    grown = ["model.depth=2,3,4,5"]
    lines = dry_run(path, *grown, "--out", tmp_path)
    assert len(lines) == 3 + 4 and lines[1].split() == ["hash", "status", "depth"]
    status = {int(line.split()[2]): line.split()[1] for line in lines[2:-1]}
    assert status == {2: "completed", 3: "completed", 4: "-", 5: "-"}
    assert lines[-1] == "4 runs: 2 to run, 2 finished, 0 failed"

    # a failed run is counted apart (the sweep skips it unless --retry-failed), read from its folder alone
    failed = sweepmod.load(path, grown).cells[3]
    folder = tmp_path / "small" / "runs" / failed.id
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    lines = plan_lines(sweepmod.load(path, grown), tmp_path / "small")
    assert lines[-2].split()[1:] == ["failed", "5"]
    assert lines[-1] == "4 runs: 1 to run, 2 finished, 1 failed (--retry-failed runs them again)"


def test_values_are_one_word_and_numbers_line_up(tmp_path):
    raw = {"name": "v", "base": tiny(),
           "grid": {"train.optimizer": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.001}],
                    "model.width": [8, 128]}}
    lines = plan_lines(sweepmod.from_dict(raw), tmp_path)
    assert lines[1].split() == ["hash", "status", "optimizer", "width"]
    assert lines[2].split()[2] == "{name=sgd,lr=0.1}" and lines[-2].split()[2] == "{name=adam,lr=0.001}"
    assert len({len(line) for line in lines[1:-1]}) == 1  # right-aligned numbers: every row ends in one column


def test_a_sweep_that_varies_nothing(tmp_path):
    lines = plan_lines(sweepmod.from_dict({"name": "one", "base": tiny(), "fixed": {"train.steps": 2}}), tmp_path)
    assert lines[1].split() == ["hash", "status"] and re.fullmatch(r"[0-9a-f]{8}  -", lines[2])
    assert lines[-1] == "1 run: 1 to run, 0 finished, 0 failed"
