"""Every unfinished or damaged run folder, and every file-system mistake, is one line naming the file and
what is wrong: a UserError (exit 2) for one folder, a warning and the others go on for several."""

import csv
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import tiny
from vgp import analysis, compare, config, plots, sweep
from vgp.errors import UserError
from vgp.train import run

PNG = b"\x89PNG\r\n\x1a\n"
RANDOM = np.random.default_rng(0).bytes(512)  # binary, NUL bytes and all
LATIN1 = "step,layer,name,kind,value\n0,1,caf\xe9,output_grad,1.0\n".encode("latin-1")  # text, not UTF-8, no NUL


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Two finished tiny runs (depth 3 and 4) to copy and damage."""
    root = tmp_path_factory.mktemp("good")
    for depth in (3, 4):
        cfg = config.from_dict(tiny(name=f"d{depth}", model__depth=depth, train__steps=6, log__every=2))
        run(cfg, out=root, quiet=True)
    return root


def _cut(path, n: int):
    path.write_bytes(path.read_bytes()[:-n])


def _edit_line(path, line: int, column: str, value: str):
    """Put ``value`` as it is (commas and all) into one cell of a CSV."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows[line - 1][rows[0].index(column)] = "\0"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue().replace("\0", value))


def _kill(folder, keep_rows: bool, empty: bool = False):
    """What a SIGKILL leaves: no summary.csv, the CSVs still .partial, meta.json 'running'."""
    (folder / "summary.csv").unlink()
    for name in ("grad_norms.csv", "metrics.csv"):
        text = (folder / name).read_text()
        (folder / name).unlink()
        (folder / (name + ".partial")).write_text("" if empty else text if keep_rows else text.splitlines()[0] + "\n")
    (folder / "meta.json").write_text(json.dumps({"status": "running"}))


def _kill_mid_step(f):
    """Killed while writing the last recorded step: its rows stop halfway, the last line without its end."""
    _kill(f, keep_rows=True)
    p = f / "grad_norms.csv.partial"
    steps = pd.read_csv(p).step.to_numpy()
    rows = p.read_text().splitlines(keepends=True)
    cut = 1 + int(np.flatnonzero(steps == steps[-1])[0]) + 5  # header, the steps before, 5 rows of the last
    p.write_text("".join(rows[:cut]) + rows[cut][:7])


def _failed(f):
    _kill(f, keep_rows=True)
    (f / "meta.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError('boom')"}))
    (f / "error.txt").write_text("Traceback ...\nRuntimeError: boom\n")


def _only_config_and_meta(f):
    for name in ("grad_norms.csv", "metrics.csv", "summary.csv"):
        (f / name).unlink()
    (f / "meta.json").write_text(json.dumps({"status": "running"}))


def _grads_folder(f):
    (f / "grad_norms.csv").unlink()
    (f / "grad_norms.csv").mkdir()


# name: (what is done to a finished run folder, the file named in the message, what the message says)
UNUSABLE = {
    "grads_random_bytes": (lambda f: (f / "grad_norms.csv").write_bytes(RANDOM), "grad_norms.csv", "binary data"),
    "grads_latin1": (lambda f: (f / "grad_norms.csv").write_bytes(LATIN1), "grad_norms.csv", "not UTF-8"),
    "grads_truncated": (lambda f: _cut(f / "grad_norms.csv", 7), "grad_norms.csv", "truncated"),
    "grads_wrong_columns": (lambda f: (f / "grad_norms.csv").write_text("a,b,c\n1,2,3\n"), "grad_norms.csv",
                            "no column step, layer, kind, value"),
    "grads_non_numeric": (lambda f: _edit_line(f / "grad_norms.csv", 6, "value", "abc"), "grad_norms.csv",
                          "line 6: value is 'abc', not a number"),
    "grads_step_not_integer": (lambda f: _edit_line(f / "grad_norms.csv", 3, "step", "0.5"), "grad_norms.csv",
                               "line 3: step is '0.5', not an integer"),
    "grads_extra_field": (lambda f: _edit_line(f / "grad_norms.csv", 4, "value", "1.0,2.0"), "grad_norms.csv",
                          "line 4 has 6 fields, the header 5"),
    "grads_is_a_folder": (_grads_folder, "grad_norms.csv", "a folder where a file belongs"),
    "metrics_random_bytes": (lambda f: (f / "metrics.csv").write_bytes(RANDOM), "metrics.csv", "binary data"),
    "metrics_non_numeric": (lambda f: _edit_line(f / "metrics.csv", 2, "loss", "oops"), "metrics.csv",
                            "line 2: loss is 'oops', not a number"),
    "time_grads_wrong_columns": (lambda f: (f / "time_grads.csv").write_text("step,value\n0,1\n"), "time_grads.csv",
                                 "no column layer, t"),
    "summary_random_bytes": (lambda f: (f / "summary.csv").write_bytes(RANDOM), "summary.csv", "binary data"),
    "summary_truncated": (lambda f: _cut(f / "summary.csv", 20), "summary.csv", "truncated"),
    "summary_empty": (lambda f: (f / "summary.csv").write_text(""), "summary.csv", "no row"),
    "summary_non_numeric": (lambda f: _edit_line(f / "summary.csv", 2, "final_loss", "lots"), "summary.csv",
                            "final_loss is 'lots', not a number"),
    "config_random_bytes": (lambda f: (f / "config.yaml").write_bytes(RANDOM), "config.yaml", "binary data"),
    "config_bad_yaml": (lambda f: (f / "config.yaml").write_text("model: {depth: [1, 2\nname: x\n"), "config.yaml",
                        "not valid YAML"),
    "config_not_a_mapping": (lambda f: (f / "config.yaml").write_text("- 1\n- 2\n"), "config.yaml", "not a mapping"),
    "meta_random_bytes": (lambda f: (f / "meta.json").write_bytes(RANDOM), "meta.json", "binary data"),
    "meta_bad_json": (lambda f: (f / "meta.json").write_text('{"status": "completed",'), "meta.json",
                      "not valid JSON"),
    "meta_not_an_object": (lambda f: (f / "meta.json").write_text("[1, 2]"), "meta.json", "not an object"),
    "killed_header_only": (lambda f: _kill(f, keep_rows=False), "grad_norms.csv.partial",
                           "no recorded step yet (unfinished: no summary.csv; meta.json says 'running')"),
    "killed_empty_files": (lambda f: _kill(f, keep_rows=False, empty=True), "grad_norms.csv.partial",
                           "no recorded step yet"),
    "killed_before_any_csv": (_only_config_and_meta, "", "no grad_norms.csv (unfinished: no summary.csv; "
                                                         "meta.json says 'running')"),
}

# unfinished or partly damaged, but with recorded steps to diagnose and draw
USABLE = {
    "killed_mid_step": (_kill_mid_step, 3),  # steps 0, 2, 4 complete, step 5 cut short: left out
    "failed_with_error_txt": (_failed, 4),
    "renamed_but_no_summary": (lambda f: (f / "summary.csv").unlink(), 4),
    "metrics_empty": (lambda f: (f / "metrics.csv").write_text(""), 4),
}


def damaged(good, root, name: str, base: str = "d3"):
    folder = root / name
    shutil.copytree(good / base, folder)
    (UNUSABLE.get(name) or USABLE[name])[0](folder)
    return folder


def one_line(e) -> str:
    text = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("name", UNUSABLE)
def test_one_damaged_folder_is_one_line_naming_the_file(good, tmp_path, name):
    folder = damaged(good, tmp_path, name)
    _, file, what = UNUSABLE[name]
    for call in (lambda: analysis.read_run(folder), lambda: analysis.diagnose(folder),
                 lambda: plots.plot([folder], "profile", tmp_path / "p.png")):
        with pytest.raises(UserError) as e:
            call()
        text = one_line(e)
        assert str(folder / file).rstrip("/") in text and what in text, text
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("name", USABLE)
def test_unfinished_folders_with_recorded_steps_are_diagnosed_and_drawn(good, tmp_path, name):
    folder = damaged(good, tmp_path, name)
    d = analysis.diagnose(folder)
    assert d["recorded_steps"] == USABLE[name][1]
    assert d["verdict"] != "unknown" and d["advice"]
    if name != "metrics_empty":
        assert (d["status"], d["finished"]) == ("unfinished", False)
        assert "unfinished" in analysis.report(d)
    if name == "failed_with_error_txt":
        assert "meta.json says 'failed'; see error.txt" in d["unfinished"]
    files = plots.plot([folder], out=tmp_path / "plots", fmt="svg")
    assert sorted(p.name for p in files) == ["heatmap.svg", "profile.svg", "training.svg"]
    if name == "metrics_empty":
        assert "no metrics recorded yet" in (tmp_path / "plots" / "training.svg").read_text()
    else:
        assert "(unfinished)" in (tmp_path / "plots" / "profile.svg").read_text()


def test_killed_mid_step_keeps_only_whole_steps(good, tmp_path):
    run_ = analysis.read_run(damaged(good, tmp_path, "killed_mid_step"))
    assert sorted(run_.grads.step.unique()) == [0, 2, 4]
    assert run_.partial == ("grad_norms.csv.partial", "metrics.csv.partial")


@pytest.fixture
def damaged_sweep(good, tmp_path):
    """A sweep folder: two good runs (depth 3 and 4), and a copy of one for every damaged or unfinished case."""
    root = tmp_path / "sw"
    (root / "runs").mkdir(parents=True)
    for depth in (3, 4):
        shutil.copytree(good / f"d{depth}", root / "runs" / f"good_d{depth}")
    for i, name in enumerate(list(UNUSABLE) + list(USABLE)):
        damaged(good, root / "runs", name, base=f"d{3 + i % 2}")
    return root


def test_a_damaged_sweep_is_drawn_diagnosed_and_compared(damaged_sweep, tmp_path, capsys):
    warned = []
    files = plots.plot([damaged_sweep], out=tmp_path / "plots", warn=warned.append)
    assert sorted(p.name for p in files) == ["heatmap.png", "profile.png", "summary.png", "training.png"]
    for p in files:
        assert p.read_bytes().startswith(PNG)
    assert len(warned) == len(UNUSABLE)  # one line per folder that cannot be read, each naming it
    for name, (_, file, what) in UNUSABLE.items():
        line = next(w for w in warned if f"/{name}/" in w or f"/{name}:" in w)
        assert "\n" not in line and what in line and line.endswith("; left out")
    note = capsys.readouterr().err
    assert "vgp: note: 3 of 6 runs unfinished" in note  # killed_mid_step, failed, renamed_but_no_summary
    runs = analysis.find_runs([damaged_sweep], warn=lambda m: None)
    assert sorted(r.folder.name for r in runs) == sorted(["good_d3", "good_d4", *USABLE])
    for r in runs:
        assert analysis.diagnose(r.folder, run=r)["advice"]
    warned = []
    table = compare.compare([damaged_sweep], warn=warned.append)
    summaries_bad = [n for n in UNUSABLE if n.startswith("summary_")]
    assert len(warned) == len(summaries_bad) and all("summary.csv" in w for w in warned)
    finished = 2 + len(UNUSABLE) - len(summaries_bad) - 3 + 1  # the 3 killed have none, metrics_empty has one
    unfinished = 6  # 3 killed, failed, renamed_but_no_summary, and one more without summary.csv
    assert int((table["n"] - table["failed"]).sum()) == finished
    assert int(table["failed"].sum()) == unfinished  # counted, not dropped


def test_nothing_usable_left_is_a_user_error(good, tmp_path):
    root = tmp_path / "bad"
    (root / "runs").mkdir(parents=True)
    for name in ("grads_random_bytes", "killed_header_only"):
        damaged(good, root / "runs", name)
    warned = []
    with pytest.raises(UserError, match="none of the 2 run folders") as e:
        plots.plot([root], warn=warned.append)
    one_line(e)
    assert len(warned) == 2
    (root / "runs" / "killed_header_only").rename(root / "only")
    with pytest.raises(UserError, match="no recorded step yet"):  # a single folder: its own message
        analysis.find_runs([root / "only"])


def test_compare_names_a_damaged_summary_and_goes_on_with_the_others(good, tmp_path):
    bad = damaged(good, tmp_path, "summary_random_bytes")
    with pytest.raises(UserError, match="summary.csv: binary data") as e:
        compare.compare([bad])
    one_line(e)
    warned = []
    table = compare.compare([bad, good / "d3", good / "d4"], warn=warned.append)
    assert int(table["n"].sum()) == 2 and len(warned) == 1 and "binary data" in warned[0]
    killed = damaged(good, tmp_path, "killed_header_only")
    table = compare.compare([killed])  # one unfinished run: shown as failed, with no metrics
    assert list(table[["n", "failed"]].iloc[0]) == [1, 1]
    not_summary = tmp_path / "grads.csv"
    shutil.copy(good / "d3" / "grad_norms.csv", not_summary)
    with pytest.raises(UserError, match="no config column"):
        compare.compare([not_summary])
    # a sweep whose own summary.csv is damaged: its runs' summaries instead
    sw = tmp_path / "sw"
    (sw / "runs").mkdir(parents=True)
    for d in ("d3", "d4"):
        shutil.copytree(good / d, sw / "runs" / d)
    (sw / "summary.csv").write_bytes(RANDOM)
    warned = []
    assert int(compare.compare([sw], warn=warned.append)["n"].sum()) == 2
    assert "reading its runs' own summaries instead" in warned[0]


def test_sweep_collect_leaves_out_damaged_run_summaries(damaged_sweep, capsys):
    rows, columns = sweep.collect(damaged_sweep)
    err = capsys.readouterr().err.strip().splitlines()
    names = [n for n in UNUSABLE if n.startswith("summary_")]
    assert len(err) == len(names) and all(line.startswith("vgp: warning: ") for line in err)
    for n in names:
        assert any(f"/{n}/summary.csv" in line and "left out of the sweep summary" in line for line in err), n
    assert len(rows) == 2 + len(UNUSABLE) - len(names) - 3 + 1
    assert "status" in columns and None not in columns
    assert sweep.write_summary(damaged_sweep) == len(rows)
    assert len(pd.read_csv(damaged_sweep / "summary.csv")) == len(rows)


# -- file-system mistakes ------------------------------------------------------------------------

def test_file_system_mistakes_are_user_errors(good, tmp_path):
    one = good / "d3"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_dir").mkdir()
    mistakes = {
        "plot -o an existing folder for one kind": (lambda: plots.plot([one], "profile", tmp_path / "a_dir"),
                                                     "a folder; one kind is drawn into a file"),
        "plot -o under /dev/null": (lambda: plots.plot([one], "profile", "/dev/null/p.png"),
                                    "cannot be created, /dev/null is a file"),
        "plot -o under a file": (lambda: plots.plot([one], "profile", a_file / "p.png"), "is a file"),
        "plot --kind all -o a file": (lambda: plots.plot([one], out=a_file), "a file; with --kind all"),
        "plot --kind all -o under a file": (lambda: plots.plot([one], out=a_file / "figs"), "is a file"),
        "plot a path that does not exist": (lambda: plots.plot([tmp_path / "nope"]), "no such file or folder"),
        "plot a file": (lambda: plots.plot([a_file]), "a file, not a run folder"),
        "diagnose a path that does not exist": (lambda: analysis.find_runs([tmp_path / "nope"]), "no such file"),
        "diagnose a file": (lambda: analysis.read_run(a_file), "a file, not a run folder"),
        "compare a path that does not exist": (lambda: compare.compare([tmp_path / "nope"]), "no such file"),
        "compare --csv a folder": (lambda: compare.check_csv_path(tmp_path / "a_dir"), "a folder; give a file name"),
        "compare --csv under /dev/null": (lambda: compare.check_csv_path("/dev/null/c.csv"), "/dev/null is a file"),
        "compare --csv into /proc": (lambda: compare.write_csv(pd.DataFrame({"a": [1]}), "/proc/vgp.csv"),
                                     "cannot write it"),
        "plot -o into /proc": (lambda: plots.plot([one], "profile", "/proc/vgp.png"), "cannot write /proc/vgp.png"),
    }
    for what, (call, message) in mistakes.items():
        with pytest.raises(UserError) as e:
            call()
        assert message in one_line(e), (what, str(e.value))


@pytest.mark.slow
def test_cli_damaged_folders_and_file_system_mistakes(damaged_sweep, good, tmp_path, cli):
    r = cli("plot", damaged_sweep, "--kind", "profile", "-o", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("vgp: warning: ")]
    assert len(warnings) == len(UNUSABLE) and "Traceback" not in r.stderr
    r = cli("diagnose", damaged_sweep / "runs" / "grads_random_bytes", good / "d3")
    assert r.returncode == 0 and "advice" in r.stdout and r.stderr.count("vgp: warning: ") == 1
    r = cli("compare", damaged_sweep)
    summaries_bad = sum(n.startswith("summary_") for n in UNUSABLE)
    assert r.returncode == 0 and r.stderr.count("vgp: warning: ") == summaries_bad and "Traceback" not in r.stderr
    assert f"6 of {2 + len(UNUSABLE) + len(USABLE) - summaries_bad} runs not finished (" in r.stderr
    for args, message in [
        (("diagnose", damaged_sweep / "runs" / "meta_bad_json"), "meta.json: not valid JSON"),
        (("diagnose", tmp_path / "nope"), "no such file or folder"),
        (("compare", damaged_sweep, "--csv", tmp_path), "a folder; give a file name"),
        (("compare", damaged_sweep, "--csv", "/dev/null/c.csv"), "/dev/null is a file"),
        (("plot", good / "d3", "-k", "profile", "-o", "/dev/null/p.png"), "/dev/null is a file"),
        (("plot", good / "d3", "-k", "profile", "-o", tmp_path), "a folder; one kind is drawn into a file"),
    ]:
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("vgp: error: ") and message in lines[0], \
            (args, r.stderr)
