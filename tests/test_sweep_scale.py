"""Sweeps at scale: the sweep summary kept up to date at a cost per finished run that does not grow
with the sweep, and 10^4 cells expanded with every cell validated. Timings are in
scripts/bench_sweep_scale.py, not here."""

import csv
import multiprocessing as mp
import random
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, tiny
from vgp import config, results, sweep as sweepmod
from vgp.errors import ConfigError
from test_sweep import env, sweep_cmd, write_sweep

COLUMNS = ["name", "seed", "model.depth", "status", "final_loss"]


def fake_run(sweep_dir, run, loss=0.5, extra=None):
    """A finished run's folder as far as the summary cares: its summary.csv (one row)."""
    row = {"name": run, "seed": 0, "model.depth": 3, "status": "completed", "final_loss": loss, **(extra or {})}
    folder = sweep_dir / "runs" / run
    folder.mkdir(parents=True, exist_ok=True)
    results.atomic_write(folder / "summary.csv", results.csv_text([row], list(row)))


def read(path):
    """The sweep summary as (header, rows), checking the invariants readers rely on."""
    text = path.read_text()
    assert text.endswith("\n")
    lines = list(csv.reader(text.splitlines()))
    assert all(len(r) == len(lines[0]) for r in lines), "a row not as long as the header"
    return lines[0], [dict(zip(lines[0], r)) for r in lines[1:]]


def same_as_rebuild(sweep_dir):
    """The summary holds the rows and columns the ground truth (collect) gives, in any order."""
    header, got = read(sweep_dir / "summary.csv")
    rows, columns = sweepmod.collect(sweep_dir)
    assert set(header) == set(columns)
    key = lambda r: tuple(r.get(c) or "" for c in columns)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, rows))
    assert len({r["name"] for r in got}) == len(got)  # no run twice


def test_rows_added_as_runs_finish_equal_the_rebuild(tmp_path):
    ids = [f"r{i:03d}" for i in range(30)]
    for i in random.Random(0).sample(range(30), 30):  # finishing in any order
        fake_run(tmp_path, ids[i], loss=i / 10)
        sweepmod.add_to_summary(tmp_path, [ids[i]], ids)
        same_as_rebuild(tmp_path)
    assert sweepmod.write_summary(tmp_path, ids) == 30
    header, got = read(tmp_path / "summary.csv")
    assert [r["name"] for r in got] == ids  # the rebuild puts them in the sweep's order


def test_a_run_with_new_columns_rewrites_the_header(tmp_path):
    fake_run(tmp_path, "a")
    sweepmod.add_to_summary(tmp_path, ["a"])
    fake_run(tmp_path, "b", extra={"model.forget_bias": 1.0, "task_metric": "mse"})  # a recurrent run's
    sweepmod.add_to_summary(tmp_path, ["b"])
    header, got = read(tmp_path / "summary.csv")
    assert header == COLUMNS + ["model.forget_bias", "task_metric"]
    assert got[0]["task_metric"] == "" and got[1]["task_metric"] == "mse"
    fake_run(tmp_path, "c")  # fewer columns than the header: appended, its missing fields empty
    sweepmod.add_to_summary(tmp_path, ["c"])
    header, got = read(tmp_path / "summary.csv")
    assert [r["name"] for r in got] == ["a", "b", "c"] and got[2]["model.forget_bias"] == ""
    same_as_rebuild(tmp_path)


def test_a_run_finished_again_replaces_its_row(tmp_path):
    for run in "abc":
        fake_run(tmp_path, run)
        sweepmod.add_to_summary(tmp_path, [run])
    before = (tmp_path / "summary.csv").stat()
    sweepmod.add_to_summary(tmp_path, ["b"])  # a requeued SLURM task adds it again, unchanged
    assert (tmp_path / "summary.csv").stat().st_ino == before.st_ino  # not even rewritten
    fake_run(tmp_path, "b", loss=0.25)  # run again: another result
    sweepmod.add_to_summary(tmp_path, ["b"])
    header, got = read(tmp_path / "summary.csv")
    assert sorted((r["name"], r["final_loss"]) for r in got) == [("a", "0.5"), ("b", "0.25"), ("c", "0.5")]
    (tmp_path / "runs" / "c" / "summary.csv").unlink()  # no longer finished: its row goes
    sweepmod.add_to_summary(tmp_path, ["c"])
    assert sorted(r["name"] for r in read(tmp_path / "summary.csv")[1]) == ["a", "b"]
    same_as_rebuild(tmp_path)


def test_a_damaged_summary_or_none_is_rebuilt_from_the_runs(tmp_path):
    for run in "abcd":
        fake_run(tmp_path, run)
    sweepmod.add_to_summary(tmp_path, ["a"])  # no summary yet: built from every finished run
    same_as_rebuild(tmp_path)
    path = tmp_path / "summary.csv"
    path.write_text(path.read_text()[:-7])  # a write cut short
    sweepmod.add_to_summary(tmp_path, ["b"])
    same_as_rebuild(tmp_path)
    path.write_text("name,status\n")  # a summary written before the index: rebuilt, not appended to
    shutil.rmtree(tmp_path / sweepmod.INDEX)
    sweepmod.add_to_summary(tmp_path, ["c"])
    same_as_rebuild(tmp_path)


def test_reads_per_finished_run_do_not_grow_with_the_sweep(tmp_path, monkeypatch):
    reads = []
    real = sweepmod.read_run_summary
    monkeypatch.setattr(sweepmod, "read_run_summary", lambda path: reads.append(path) or real(path))
    n = 200
    for i in range(n):
        fake_run(tmp_path, f"r{i:03d}", extra={"task_metric": "mse"} if i == 100 else None)
        sweepmod.add_to_summary(tmp_path, [f"r{i:03d}"])
    assert len(reads) <= n + 1  # each finished run's own summary once (the first builds the file); not n(n+1)/2
    same_as_rebuild(tmp_path)


def _finish(sweep_dir, ids):
    for run in ids:
        fake_run(sweep_dir, run)
        sweepmod.add_to_summary(sweep_dir, [run])


def test_two_processes_adding_runs_at_once_leave_a_complete_file(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_finish, args=(tmp_path, [f"{who}{i:03d}" for i in range(60)])) for who in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    header, got = read(tmp_path / "summary.csv")
    assert len(got) == 120
    same_as_rebuild(tmp_path)


def test_a_sweep_ends_with_the_summary_the_rebuild_gives(tmp_path):
    path = write_sweep(tmp_path, base=tiny(train__steps=2), grid={"model.depth": [1, 2]}, seeds=[0, 1, 2])
    done = subprocess.run(sweep_cmd(path, "--out", tmp_path, "-j", "2", "-q"), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sweep = sweepmod.load(path)
    sweep_dir = tmp_path / "s"
    rows, columns = sweepmod.collect(sweep_dir, [c.id for c in sweep.cells])
    assert (sweep_dir / "summary.csv").read_text() == results.csv_text(rows, columns)
    assert [r["name"] for r in rows] == [c.id for c in sweep.cells]


# -- expanding many cells ------------------------------------------------------------------------

def test_ten_thousand_cells_each_validated(tmp_path):
    # 500 configs x 20 seeds; the cells from 9,501 on are bad in a way only the preflight sees
    grid = {"data.n_train": list(range(64, 83)) + [16], "model.depth": list(range(1, 26))}
    base = tiny(train__batch_size=32)
    with pytest.raises(ConfigError, match=r"run data.n_train=16, model.depth=1, seed=0\).*batch_size"):
        sweepmod.from_dict({"name": "s", "base": base, "grid": grid, "seeds": 20})
    grid["data.n_train"][-1] = 83  # all good: every cell expanded
    sweep = sweepmod.from_dict({"name": "s", "base": base, "grid": grid, "seeds": 20})
    assert len(sweep.cells) == 10_000 and len({c.id for c in sweep.cells}) == 10_000
    assert [c.cfg.seed for c in sweep.cells[:21]] == list(range(20)) + [0]


def test_cells_are_the_configs_from_dict_gives(tmp_path):
    """The shortcuts (a seed set on the cell before, one preflight per config up to the seed) give
    exactly what validating each cell through config.from_dict gives."""
    raw = {"name": "s", "base": tiny(), "grid": {"model.depth": [2, 3], "model.activation": ["tanh", "relu"]},
           "zip": {"train.optimizer.name": ["sgd", "adam"], "train.optimizer.lr": [0.1, 0.01]}, "seeds": [0, 5, 7]}
    sweep = sweepmod.from_dict(raw)
    assert len(sweep.cells) == 24
    for c in sweep.cells:
        want = config.from_dict({**raw["base"], "name": "s"}, list(c.values.items()))
        want.name = c.id
        assert config.to_dict(c.cfg) == config.to_dict(want)
        assert c.cfg.model is not sweep.cells[0].cfg.model or c is sweep.cells[0]  # no shared sections


@pytest.mark.parametrize("seeds", [[0, 1, -1], [0, 2 ** 64]])
def test_a_bad_seed_is_named(seeds):
    raw = {"name": "s", "base": tiny(), "grid": {"model.depth": [2, 3]}, "seeds": seeds}
    with pytest.raises(ConfigError, match=rf"run model.depth=2, seed={seeds[-1]}\).*seed"):
        sweepmod.from_dict(raw)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
