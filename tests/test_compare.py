"""vgp compare: groups and statistics against numpy, old summaries missing columns, two sweeps, the CLI."""

import numpy as np
import pandas as pd
import pytest

from vgp import compare
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
    assert list(got.columns) == ["model.activation.name", "n", "diverged", "final_test_acc_mean", "final_test_acc_std"]


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
