"""vgp compare: groups from the sweep's declared axes, statistics against numpy (geometric ones across
magnitudes 1e-30..1e3), keys an architecture does not use, old summaries missing columns, two sweeps,
the output formats and the CLI."""

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from conftest import tiny
from vgp import compare, study
from vgp.errors import UserError


def summary(folder, rows):
    """A sweep folder with a summary.csv of these rows (what vgp sweep writes)."""
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    return folder


def sweep_rows(accs, activations=("relu", "tanh"), depths=(5, 40), seeds=(0, 1, 2)):
    rows, it = [], iter(accs)
    for a in activations:
        for d in depths:
            for s in seeds:
                rows.append({"name": f"{a}{d}s{s}", "seed": s, "model.activation.name": a, "model.depth": d,
                             "model.width": 16, "status": "completed", "final_test_acc": next(it),
                             "final_loss": 1.0, "wall_s": 0.1})
    return rows


def test_groups_by_varying_keys_with_mean_std_over_seeds(tmp_path):
    accs = np.random.default_rng(0).uniform(size=12)
    folder = summary(tmp_path / "sw", sweep_rows(accs))
    table = compare.compare([folder])
    assert table.attrs["by"] == ["model.activation.name", "model.depth"]  # not seed, not name, not width
    assert list(table["model.depth"]) == [5, 40, 5, 40]  # numbers sorted as numbers
    first = table.iloc[0]
    assert first["n"] == 3
    assert first["final_test_acc_mean"] == pytest.approx(accs[:3].mean())
    assert first["final_test_acc_std"] == pytest.approx(accs[:3].std(ddof=1))


def test_by_accepts_spec_keys_where_filters_and_csv(tmp_path, cli):
    folder = summary(tmp_path / "sw", sweep_rows(np.arange(12) / 12))
    table = compare.compare([folder], by=["model.activation"], where=["model.depth=40"])
    assert list(table["n"]) == [3, 3]
    assert table.iloc[0]["final_test_acc_mean"] == pytest.approx(np.mean([3, 4, 5]) / 12)
    with pytest.raises(UserError, match="did you mean 'model.activation.name'"):
        compare.compare([folder], by=["model.activaton"])
    r = cli("compare", folder, "--by", "model.activation", "--metrics", "final_test_acc", "--csv", tmp_path / "c.csv")
    assert r.returncode == 0, r.stderr
    assert "relu" in r.stdout and "±" in r.stdout
    got = pd.read_csv(tmp_path / "c.csv")
    assert list(got.columns) == ["model.activation.name", "n", "diverged", "failed", "final_test_acc_mean",
                                 "final_test_acc_std"]


def test_old_summaries_missing_a_column_show_it_empty(tmp_path):
    old = summary(tmp_path / "old", [{k: v for k, v in r.items() if k != "final_test_acc"}
                                     for r in sweep_rows(np.zeros(12))])
    new = summary(tmp_path / "new", sweep_rows(np.ones(12)))
    table = compare.compare([old, new], by=["model.depth"])
    assert list(table.columns[:2]) == ["source", "model.depth"]  # two sweeps side by side
    by_source = table.groupby("source")["final_test_acc_mean"].apply(list).to_dict()
    assert all(np.isnan(v) for v in by_source["old"]) and by_source["new"] == [1.0, 1.0]
    compare.show(table)  # prints, does not crash on the empty cells


def test_reads_run_folders_and_sweeps_without_a_summary_yet(tmp_path):
    for i in range(2):
        summary(tmp_path / "sw" / "runs" / f"r{i}", [sweep_rows([0.5] * 12)[i]])
    table = compare.compare([tmp_path / "sw"])
    assert int(table["n"].sum()) == 2
    assert int(compare.compare([tmp_path / "sw" / "runs" / "r0"])["n"].sum()) == 1
    with pytest.raises(UserError, match="no such file or folder"):
        compare.compare([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a sweep folder"):
        compare.compare([tmp_path / "empty"])


# -- a real sweep: grid, zip and seeds --------------------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, request):
    """2 activations x 2 depths (grid) x 2 (init, lr) pairs (zip) x 2 seeds = 16 two-step runs."""
    from conftest import vgp_cli

    tmp = tmp_path_factory.mktemp("cmp")
    spec = {"name": "s", "base": tiny(train__steps=2),
            "grid": {"model.activation": ["tanh", "relu"], "model.depth": [2, 3]},
            "zip": {"model.init": ["xavier_normal", "kaiming_normal"], "train.optimizer.lr": [0.1, 0.05]},
            "seeds": [0, 1]}
    (tmp / "s.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    r = vgp_cli("sweep", tmp / "s.yaml", "--out", tmp / "out", "-j", "2", "-q")
    assert r.returncode == 0, r.stderr
    return tmp / "out" / "s"


def own_summaries(sweep_dir) -> list[dict]:
    """Each run's own summary.csv, read with the csv module (not vgp's readers)."""
    out = []
    for p in sorted((sweep_dir / "runs").glob("*/summary.csv")):
        with open(p, newline="") as f:
            out += list(csv.DictReader(f))
    return out


def test_rows_are_the_declared_axes_and_each_row_is_its_seeds(real_sweep):
    warned = []
    table = compare.compare([real_sweep], warn=warned.append)
    # grid keys, then the zip keys as one axis; not init.mode (it follows init.name), not seed
    assert table.attrs["by"] == ["model.activation.name", "model.depth", "model.init.name", "train.optimizer.lr"]
    assert len(table) == 8 and set(table["n"]) == {2} and not warned and table.attrs["mixed"] == {}
    runs = own_summaries(real_sweep)
    for _, row in table.iterrows():
        mine = [r for r in runs if r["model.activation.name"] == row["model.activation.name"]
                and int(r["model.depth"]) == row["model.depth"] and r["model.init.name"] == row["model.init.name"]]
        assert sorted(int(r["seed"]) for r in mine) == [0, 1]
        ratios = np.array([float(r["grad_ratio"]) for r in mine])
        assert row["grad_ratio_gmean"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]), rel=1e-12)
        assert row["grad_ratio_gsd"] == pytest.approx(math.exp(abs(math.log(ratios[0] / ratios[1])) / math.sqrt(2)),
                                                      rel=1e-12)
        losses = np.array([float(r["final_loss"]) for r in mine])
        assert row["final_loss_mean"] == pytest.approx(losses.mean(), rel=1e-12)
        assert row["final_loss_std"] == pytest.approx(losses.std(ddof=1), rel=1e-9)


def test_grouping_by_fewer_keys_names_what_else_a_row_mixes(real_sweep):
    warned = []
    table = compare.compare([real_sweep], by=["activation"], warn=warned.append)
    assert list(table["n"]) == [8, 8]
    assert set(table.attrs["mixed"]) == {"model.depth", "model.init.name", "train.optimizer.lr"}
    assert len(warned) == 1 and "depth (2, 3)" in warned[0] and "init (kaiming_normal, xavier_normal)" in warned[0]
    assert "mode" not in warned[0]  # init.mode follows init.name: not named on its own
    assert "each row mixes depth, init, optimizer.lr and seeds" in compare.title(table)


def test_a_folder_of_runs_is_compared_like_its_sweep(real_sweep):
    table = compare.compare([real_sweep / "runs"])
    assert len(table) == 8 and set(table["n"]) == {2}
    # without sweep.yaml the axes are what differs; init and lr move one to one and stay together
    assert set(table.attrs["by"]) >= {"model.activation.name", "model.depth", "model.init.name"}
    assert table.attrs["mixed"] == {}


def test_where_matches_numbers_by_value(real_sweep):
    table = compare.compare([real_sweep], where=["lr=5e-2", "depth=3"])
    assert len(table) == 2 and table.attrs["by"] == ["model.activation.name"]  # fixed axes are no longer rows
    with pytest.raises(UserError, match=r"no run has train.optimizer.lr = 0.3 \(its values: 0.05, 0.1\)"):
        compare.compare([real_sweep], where=["lr=0.3"])


def test_output_formats_hold_every_number(real_sweep, cli):
    table = compare.compare([real_sweep])
    r = cli("compare", real_sweep)  # piped: markdown
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("16 runs in 8 rows by activation, depth, init, lr; each row: its seeds")
    assert lines[2].startswith("| activation | depth | init") and set(lines[3]) <= set("|-: ")
    assert len(lines) == 4 + 8
    got = pd.read_csv(io.StringIO(cli("compare", real_sweep, "--format", "csv").stdout))
    assert list(got.columns) == list(table.columns)
    np.testing.assert_allclose(got["grad_ratio_gmean"], table["grad_ratio_gmean"], rtol=1e-15)
    data = json.loads(cli("compare", real_sweep, "--format", "json").stdout)
    assert len(data["rows"]) == 8 and data["by"] == table.attrs["by"]
    r = cli("compare", real_sweep, "--format", "html")
    assert r.returncode == 2 and "--format: one of table, markdown, csv, json" in r.stderr


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_the_terminal_table_fits_its_width(real_sweep, width, capsys):
    table = compare.compare([real_sweep])
    console = Console(width=width, record=True, file=io.StringIO())
    rich_table, dropped = compare.fitted(table, width)
    console.print(rich_table)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= width
    shown = [m for m in table.attrs["metrics"] if m not in dropped]
    assert shown == table.attrs["metrics"][:len(shown)] and len(shown) >= 1
    assert ("activation" in text) and all(m in text for m in shown)
    if width >= 200:
        assert not dropped


# -- statistics at the extremes ----------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-8, 1.0, 1e3])
def test_geometric_mean_and_std_at_every_magnitude(tmp_path, scale):
    rng = np.random.default_rng(1)
    ratios = scale * np.exp(rng.normal(0, 2, size=5))
    rows = [{"name": f"r{i}", "seed": i, "model.depth": 5, "status": "completed", "grad_ratio": v,
             "decay_per_layer": v ** 0.1, "final_loss": v} for i, v in enumerate(ratios)]
    table = compare.compare([summary(tmp_path / "sw", rows)])
    logs = np.log(ratios.astype(np.float64))
    assert table.iloc[0]["grad_ratio_gmean"] == pytest.approx(math.exp(math.fsum(logs) / 5), rel=1e-12)
    assert table.iloc[0]["grad_ratio_gsd"] == pytest.approx(math.exp(np.std(logs, ddof=1)), rel=1e-12)
    assert table.iloc[0]["final_loss_mean"] == pytest.approx(ratios.mean(), rel=1e-12)  # not a ratio: arithmetic


def test_geometric_mean_of_an_underflowed_ratio_is_zero_and_nonfinite_values_are_left_out():
    assert study.gmean_gsd([1e-3, 0.0, 1e-5]) == (0.0, pytest.approx(float("nan"), nan_ok=True))
    g, s = study.gmean_gsd([1e-300, float("inf"), float("nan"), 1e-310])
    assert g == pytest.approx(math.sqrt(1e-300) * math.sqrt(1e-310), rel=1e-9)  # subnormal, in log space
    assert all(math.isnan(v) for v in study.gmean_gsd([]))
    assert math.isnan(study.gmean_gsd([1.0, -2.0])[0])


def test_keys_an_architecture_does_not_use_are_not_axes(tmp_path):
    rows = []
    for arch, act, fb in (("lstm", "tanh", 1.0), ("lstm", "relu", 1.0), ("gru", "relu", 3.0), ("gru", "tanh", 1.0)):
        for seed in (0, 1):
            rows.append({"name": f"{arch}{act}{seed}", "seed": seed, "model.arch": arch, "model.activation.name": act,
                         "model.forget_bias": fb, "model.depth": 1, "model.skip": False, "model.norm": "none",
                         "status": "completed", "final_loss": 1.0})
    s = study.load([summary(tmp_path / "sw", rows)])
    assert s.axes == [["model.arch"]]  # lstm/gru gates ignore model.activation; only lstm has a forget bias
    table = compare.compare([tmp_path / "sw"])
    assert list(table["model.arch"]) == ["gru", "lstm"] and list(table["n"]) == [4, 4]
    assert table.attrs["mixed"] == {}


def declared_sweep(folder, rows, grid=(), zipped=()):
    """A sweep folder as vgp writes it: sweep.yaml declaring the axes, summary.csv, a folder per run."""
    summary(folder, rows)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": folder.name, "grid": {k: [] for k in grid},
                                                       "zip": {k: [] for k in zipped}, "runs": []}))
    for r in rows:
        (folder / "runs" / r["name"]).mkdir(parents=True)
    return folder


def test_two_sweeps_that_declare_a_key_differently_are_compared_side_by_side(tmp_path):
    rows = sweep_rows(np.arange(12) / 12)
    a = declared_sweep(tmp_path / "a", rows, grid=["model.depth"], zipped=["model.activation"])
    b = declared_sweep(tmp_path / "b", rows, grid=["model.activation", "model.depth"])
    table = compare.compare([a, b])
    assert table.attrs["by"] == ["source", "model.depth", "model.activation.name"]  # each column once
    assert len(table) == 8 and set(table["n"]) == {3}
    assert compare.title(compare.compare([a], where=["depth=5", "activation=relu"])).startswith("3 runs in 1 row;")
