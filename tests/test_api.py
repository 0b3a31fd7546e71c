"""The Python API (vgp.run, vgp.load_run, vgp.load_sweep): what it returns equals what the files and
the command line say, its errors never name a command-line flag, and ``import vgp`` stays light."""

import csv
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

import vgp
from conftest import ROOT, tiny, vgp_cli
from vgp import compare as comparemod
from vgp import config as cfgmod
from vgp import sweep as sweepmod
from vgp.api import VgpWarning
from vgp.errors import ConfigError, UserError

README_HEADING = "## Python API"


FLAG = re.compile(r"(?<![\w/.-])--?[a-zA-Z]")  # --force, -o (not the '-of-' of a pytest path)
COMMAND = re.compile(r"\bvgp (run|sweep|compare|plot|report|diagnose|theory|validate|ls)\b")


def plain(message: str) -> str:
    assert not FLAG.search(message), message
    assert not COMMAND.search(message), message
    return message


def write_config(path: Path, **over) -> Path:
    path.write_text(yaml.safe_dump(tiny(**over), sort_keys=False))
    return path


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_run")
    return vgp.run(tiny(train__steps=4), out=out)


# -- import ------------------------------------------------------------------------------------

def test_import_vgp_loads_neither_torch_nor_pandas_until_a_name_is_used():
    code = ("import sys, vgp\n"
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
            "vgp.load_run, vgp.load_sweep, vgp.RunResult, vgp.run\n"
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    # reading needs pandas; torch is imported only when vgp.run trains
    assert r.stdout.split("\n")[:2] == ["[]", "['pandas']"]


# -- vgp.run -----------------------------------------------------------------------------------

def test_run_returns_the_grads_metrics_and_summary_its_files_hold(one_run):
    r = one_run
    assert isinstance(r, vgp.RunResult) and r.status == "completed" and r.folder.name == "t"
    rows = csv_rows(r.folder / "grad_norms.csv")
    assert list(r.grads.columns) == ["step", "layer", "name", "kind", "value"] and len(r.grads) == len(rows)
    for row, (_, got) in zip(rows, r.grads.iterrows()):
        assert (got.step, got.layer, got["name"], got.kind) == (int(row["step"]), int(row["layer"]), row["name"],
                                                                 row["kind"])
        assert got.value == pytest.approx(float(row["value"]), rel=1e-15, abs=0)
    assert sorted(r.grads.step.unique()) == [0, 1, 2, 3]
    m = csv_rows(r.folder / "metrics.csv")
    assert list(r.metrics.columns) == list(m[0]) and len(r.metrics) == len(m)
    for col in ("loss", "grad_norm", "test_loss"):  # empty in the CSV: NaN (the final evaluation has no batch loss)
        want = [float(x[col]) if x[col] else float("nan") for x in m]
        assert r.metrics[col].tolist() == pytest.approx(want, rel=1e-15, nan_ok=True)
    (s,) = csv_rows(r.folder / "summary.csv")
    assert r.summary["status"] == s["status"] == "completed" and r.summary["steps_done"] == int(s["steps_done"])
    assert r.config == yaml.safe_load((r.folder / "config.yaml").read_text()) and r.time is None
    assert r.meta["status"] == "completed"


def test_grad_table_is_steps_by_layers(one_run):
    table = one_run.grad_table("output_grad")
    assert list(table.index) == [0, 1, 2, 3] and list(table.columns) == [1, 2, 3, 4]  # depth 3 + output layer
    g = one_run.grads
    for (step, layer), v in table.stack().items():
        assert v == g[(g.step == step) & (g.layer == layer) & (g.kind == "output_grad")].value.item()
    with pytest.raises(UserError, match="did you mean 'output_grad'"):
        one_run.grad_table("output_grd")


def test_keyword_overrides_equal_the_command_line_grammar(tmp_path):
    path = write_config(tmp_path / "c.yaml", train__steps=3)
    words = ["model.depth=2", "model.init.name=orthogonal", "model.init.gain=1.2", "train.optimizer.lr=0.05",
             "name=x"]
    r = vgp.run(path, out=tmp_path / "api", model__depth=2, model__init__name="orthogonal",
                overrides={"model.init.gain": 1.2}, train__optimizer__lr=0.05, name="x")
    cli = vgp_cli("run", path, "-o", tmp_path / "cli", "-q", *words)
    assert cli.returncode == 0, cli.stderr
    assert Path(cli.stdout.strip()) == tmp_path / "cli" / "x" and r.folder == tmp_path / "api" / "x"
    for f in ("config.yaml", "grad_norms.csv"):  # same resolved config; same config and seed: same bytes
        assert (r.folder / f).read_bytes() == (tmp_path / "cli" / "x" / f).read_bytes()
    resolved = cfgmod.load(path, words)
    assert sweepmod.config_hash(resolved) == sweepmod.config_hash(cfgmod.from_dict(r.config))
    assert r.config["model"]["init"] == {"name": "orthogonal", "gain": 1.2}


def test_a_mapping_and_a_config_run_like_their_file(tmp_path):
    path = write_config(tmp_path / "c.yaml", train__steps=3)
    a = vgp.run(path, out=tmp_path / "file")
    b = vgp.run(tiny(train__steps=3, name="c"), out=tmp_path / "dict")
    c = vgp.run(cfgmod.from_dict(tiny(train__steps=3)), out=tmp_path / "cfg", name="c")
    for r in (b, c):
        assert r.folder.name == "c" and (r.folder / "grad_norms.csv").read_bytes() == \
            (a.folder / "grad_norms.csv").read_bytes()


# -- vgp.load_run ------------------------------------------------------------------------------

def test_load_run_reads_what_run_returned(one_run):
    run = vgp.load_run(one_run.folder)
    pd.testing.assert_frame_equal(run.grads, one_run.grads)
    pd.testing.assert_frame_equal(run.metrics, one_run.metrics)
    pd.testing.assert_series_equal(pd.Series(run.summary), pd.Series(one_run.summary))  # NaN == NaN here
    assert run.finished and run.status == "completed" and run.name == "t"
    assert run.config["model"]["depth"] == 3 and run.meta["status"] == "completed" and run.partial == ()


def test_load_run_of_an_unfinished_run_reads_its_partial_files(one_run, tmp_path):
    folder = tmp_path / "u"
    folder.mkdir()
    for name in ("config.yaml", "metrics.csv"):
        (folder / name).write_bytes((one_run.folder / name).read_bytes())
    (folder / "grad_norms.csv.partial").write_bytes((one_run.folder / "grad_norms.csv").read_bytes())
    (folder / "meta.json").write_text('{"status": "interrupted"}')
    run = vgp.load_run(folder)
    assert not run.finished and run.summary is None and run.status == "interrupted"
    assert run.partial == ("grad_norms.csv.partial",)
    pd.testing.assert_frame_equal(run.grads, one_run.grads)


def test_recurrent_runs_have_time_grads(tmp_path):
    raw = tiny(train__steps=2, model__arch="rnn", model__depth=1, model__width=8)
    raw["data"] = {"name": "adding", "seq_len": 6, "n_train": 64, "n_test": 32}
    r = vgp.run(raw, out=tmp_path)
    assert list(r.time.columns) == ["step", "layer", "t", "value"]
    table = r.run.time_table()
    assert list(table.columns) == [1, 2, 3, 4, 5, 6] and list(table.index) == sorted(r.time.step.unique())


# -- vgp.load_sweep ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def a_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api_sweep")
    spec = {"name": "s", "base": tiny(train__steps=3), "grid": {"model.depth": [2, 3],
            "model.activation": ["tanh", "relu"]}, "seeds": [0, 1]}
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = vgp_cli("sweep", path, "--out", tmp, "-j", "2", "-q")
    assert r.returncode == 0, r.stderr
    return tmp / "s"


def test_load_sweep_table_axes_and_runs(a_sweep):
    s = vgp.load_sweep(a_sweep)
    ids = {p.name for p in (a_sweep / "runs").iterdir()}
    assert len(s.table) == len(ids) == 8 and set(s.table["name"]) == ids == set(s.runs)
    assert set(s.table["status"]) == {"completed"} and {Path(f).name for f in s.table["folder"]} == ids
    assert s.axes == [["model.depth"], ["model.activation.name"]]
    assert s.axis_columns == ["model.depth", "model.activation.name"]
    some = sorted(ids)[0]
    run = s.runs[some]
    assert run is s.runs[some]  # read once
    pd.testing.assert_frame_equal(run.grads, vgp.load_run(a_sweep / "runs" / some).grads)
    with pytest.raises(KeyError, match="did you mean"):
        s.runs[some[:-1]]


def test_compare_equals_vgp_compare(a_sweep):
    s = vgp.load_sweep(a_sweep)
    ours, theirs = s.compare(), comparemod.compare([a_sweep])
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours.attrs["by"] == theirs.attrs["by"] == ["model.depth", "model.activation.name"] and len(ours) == 4
    ours = s.compare(by="depth", where={"activation": "relu"}, metrics=["final_loss", "grad_ratio"])
    theirs = comparemod.compare([a_sweep], by=["depth"], where=["activation=relu"],
                                metrics=["final_loss", "grad_ratio"])
    pd.testing.assert_frame_equal(ours, theirs)
    assert list(ours["n"]) == [2, 2]


def test_sweep_grads_metrics_are_every_runs_files_with_a_run_column(a_sweep):
    s = vgp.load_sweep(a_sweep)
    g = s.grads()
    assert list(g.columns) == ["run", "step", "layer", "kind", "value"]
    assert set(g["run"]) == set(s.runs) and set(g["kind"]) == {"output_grad", "weight_grad"}
    every = s.grads(kinds=None)
    assert set(every["kind"]) >= {"output_grad", "bias_grad", "act_std"} and "name" in every
    for run_id in s.runs:
        own = s.runs[run_id].grads
        mine = g[g.run == run_id].drop(columns="run").reset_index(drop=True)
        want = own[own.kind.isin(["output_grad", "weight_grad"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine[["step", "layer", "kind", "value"]],
                                      want[["step", "layer", "kind", "value"]], check_dtype=False)
        all_own = every[every.run == run_id].drop(columns="run").reset_index(drop=True)
        pd.testing.assert_frame_equal(all_own[list(own.columns)], own)
    m = s.metrics()
    assert len(m) == sum(len(s.runs[i].metrics) for i in s.runs) and set(m["run"]) == set(s.runs)
    assert s.time().empty


def test_a_damaged_run_is_left_out_of_sweep_grads_with_a_warning(a_sweep, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(a_sweep, copy)
    bad = sorted((copy / "runs").iterdir())[0]
    (bad / "grad_norms.csv").write_text("step,layer,name,kind,value\n0,1,a,output_grad,oops\n")
    s = vgp.load_sweep(copy)
    with pytest.warns(VgpWarning) as seen:
        g = s.grads()
    assert bad.name not in set(g["run"]) and len(set(g["run"])) == 7
    assert "oops" in str(seen[0].message) and "left out" in plain(str(seen[0].message))


# -- errors: exceptions whose messages name no command-line flag ----------------------------------------

def _finished_again(tmp_path, one_run):
    vgp.run(tiny(train__steps=4), out=one_run.folder.parent)


ERRORS = {
    "missing config": (lambda tmp, r: vgp.run(tmp / "nope.yaml"), ConfigError, "no such file"),
    "bad override key": (lambda tmp, r: vgp.run(tiny(), out=tmp, model__depht=3), ConfigError,
                         "did you mean 'model.depth'"),
    "bad override value": (lambda tmp, r: vgp.run(tiny(), out=tmp, overrides={"model.activation": "rleu"}),
                           ConfigError, "did you mean 'relu'"),
    "sweep file as a config": (lambda tmp, r: vgp.run(ROOT / "configs" / "sweeps" / "decay_vs_depth.yaml"),
                               ConfigError, "sweep file"),
    "finished without force": (_finished_again, UserError, "force=True"),
    "load_run of a missing folder": (lambda tmp, r: vgp.load_run(tmp / "nope"), UserError, "no such run folder"),
    "load_run of a damaged folder": (lambda tmp, r: vgp.load_run(_damaged(tmp, r)), UserError, "grad_norms.csv"),
    "load_run of an empty folder": (lambda tmp, r: vgp.load_run(tmp), UserError, "no grad_norms.csv"),
    "load_sweep of a run folder": (lambda tmp, r: vgp.load_sweep(r.folder), UserError, "load_run"),
    "load_sweep of an empty folder": (lambda tmp, r: vgp.load_sweep(tmp), UserError, "not a sweep folder"),
    "load_sweep of a missing folder": (lambda tmp, r: vgp.load_sweep(tmp / "nope"), UserError, "no such"),
    "load_sweep of a file": (lambda tmp, r: vgp.load_sweep(r.folder / "summary.csv"), UserError, "a file"),
}


def _damaged(tmp: Path, r) -> Path:
    folder = tmp / "d"
    folder.mkdir()
    (folder / "grad_norms.csv").write_bytes(b"step,layer\x00\n")
    return folder


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_no_command_line_flag(case, tmp_path, one_run):
    call, kind, text = ERRORS[case]
    with pytest.raises(kind) as e:
        call(tmp_path, one_run)
    assert text in plain(str(e.value))


def test_compare_errors_name_no_command_line_flag(a_sweep):
    s = vgp.load_sweep(a_sweep)
    for kwargs, text in (({"where": {"depth": 7}}, "no run has model.depth = 7"), ({"by": ["dpeth"]}, "did you mean"),
                         ({"where": ["depth"]}, "expected KEY=VALUE"), ({"metrics": ["model.depth"]}, "config keys")):
        with pytest.raises(UserError) as e:
            s.compare(**kwargs)
        assert text in plain(str(e.value))
    with pytest.warns(VgpWarning) as seen:  # each row mixes activations: said without --by
        s.compare(by=["depth"])
    assert "by=" in plain(str(seen[0].message))


def test_messages_are_reworded_for_python_callers():
    from vgp.api import _plain

    assert _plain("x already holds a finished run (status: completed); use --force to overwrite it") == \
        "x already holds a finished run (status: completed); pass force=True to overwrite it"
    assert _plain("--where depth=7: no run has model.depth = 7") == "where depth=7: no run has model.depth = 7"
    assert _plain("f: no grad_norms.csv (is this a vgp run folder?)") == \
        "f: no grad_norms.csv (is this a run folder written by vgp?)"
    for message in ("--csv out: a folder", "-o x: a file; with --kind all, -o names a folder",
                    "try one with vgp run", "c.yaml: a sweep file; run it with: vgp sweep c.yaml"):
        plain(_plain(message))


# -- the README example ------------------------------------------------------------------------

def readme_example() -> str:
    """The first ```python block under README_HEADING: the README's example is what runs."""
    text = (ROOT / "README.md").read_text()
    assert README_HEADING + "\n" in text, f"no {README_HEADING} section in README.md"
    section = text.split(README_HEADING + "\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no ```python block under {README_HEADING} in README.md"
    return match.group(1)


def test_the_readme_example_runs(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):  # twice: it can be run again (force=True)
        r = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    assert "did you mean 'model.depth'" in r.stdout and "relu-he" in r.stdout
    assert {p.name for p in (tmp_path / "results" / "api").iterdir()} == {"quickstart", "relu-he"}
