"""Every way a run can end leaves a folder that says truthfully how it ended.

Divergence found whatever the logging cadence; a non-finite last evaluation; SIGTERM; a full disk
or a failing write while finishing (injected, and on a real full tmpfs where this machine lets a
test mount one); one completion rule; one writer per run folder; permissions; no temporary files.
"""

import csv
import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, tiny
from vgp import analysis, config, results
from vgp.errors import UserError
from vgp.train import FLOAT32_NORM_MAX, run

# ReLU MLP, depth 40, width 64, weight variance 15/fan_in, lr 1e-17, no clipping: the gradient is
# infinite at step 1 (the first update barely moves the weights) while the loss is still finite.
EXPLODING = tiny(model__depth=40, model__width=64, model__activation="relu", data__dim=64,
                 model__init={"name": "variance_scaling", "scale": 15.0}, model__bias_init="zeros",
                 train__optimizer={"name": "sgd", "lr": 1e-17}, train__steps=30)


def summary(folder: Path) -> dict:
    return pd.read_csv(folder / "summary.csv").iloc[0].to_dict()


def first_nonfinite_step(folder: Path) -> int:
    """The reference: with log.every=1, the first step whose loss is not finite or whose total gradient
    norm (written exactly, in float64) is not finite or above 2**64, where float32 sums of squares overflow."""
    m = pd.read_csv(folder / "metrics.csv").dropna(subset=["loss"])
    bad = m[~(m.loss.map(math.isfinite) & (m.grad_norm <= FLOAT32_NORM_MAX))]
    return int(bad.step.iloc[0])


# -- divergence ----------------------------------------------------------------------------------

def test_diverged_step_does_not_depend_on_log_every(tmp_path):
    steps = {}
    for every in (1, 7, 10, 100):
        cfg = config.from_dict({**EXPLODING, "name": f"every{every}", "log": {"every": every}})
        res = run(cfg, out=tmp_path, quiet=True)
        assert res.status == "diverged"
        steps[every] = summary(res.folder)["diverged_step"]
    reference = first_nonfinite_step(tmp_path / "every1")
    m = pd.read_csv(tmp_path / "every1" / "metrics.csv")
    assert math.isfinite(m.loss[m.step == reference].iloc[0])  # the loss is finite there: only the gradient is not
    assert reference == 1
    assert steps == {1: reference, 7: reference, 10: reference, 100: reference}


def test_a_nonfinite_loss_between_recorded_steps_is_found(tmp_path):
    cfg = config.from_dict(tiny(model__activation="relu", model__init={"name": "normal", "std": 3.0},
                                train__optimizer={"name": "sgd", "lr": 100.0}, train__steps=200, name="every1",
                                log__every=1))
    ref = first_nonfinite_step(run(cfg, out=tmp_path, quiet=True).folder)
    for every in (3, 50):
        cfg = config.from_dict(tiny(model__activation="relu", model__init={"name": "normal", "std": 3.0},
                                    train__optimizer={"name": "sgd", "lr": 100.0}, train__steps=200,
                                    name=f"e{every}", log__every=every))
        s = summary(run(cfg, out=tmp_path, quiet=True).folder)
        assert s["status"] == "diverged" and s["diverged_step"] == ref


def test_a_last_update_that_breaks_the_weights_is_divergence(tmp_path):
    """tanh RNN, recurrent orthogonal gain 1.1, one step, a huge learning rate: the loss and gradient of
    step 0 are finite, the weights after the update are not, so the final evaluation is not finite."""
    cfg = config.from_dict({"name": "rnn", "device": "cpu", "model": {"arch": "rnn", "activation": "tanh",
                            "width": 16, "recurrent_init": {"name": "orthogonal", "gain": 1.1}},
                            "data": {"name": "adding", "seq_len": 10, "n_train": 64, "n_test": 32},
                            "train": {"steps": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 1e30}}})
    res = run(cfg, out=tmp_path, quiet=True)
    s = summary(res.folder)
    m = pd.read_csv(res.folder / "metrics.csv")
    assert math.isfinite(m.loss[m.step == 0].iloc[0])
    assert not math.isfinite(s["final_test_loss"])
    assert res.status == s["status"] == "diverged" and s["diverged_step"] == 1
    assert results.read_status(res.folder) == "diverged"


# -- signals -------------------------------------------------------------------------------------

def _start_long_run(tmp_path, name="long", extra=()):
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(name=name, train__steps=1_000_000, log__every=3)))
    return subprocess.Popen([sys.executable, "-m", "vgp", "run", str(cfg_path), "--out", str(tmp_path), "-q",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal():
    """SIGINT and SIGHUP at their defaults in the child, as a run started from a terminal has them. A
    test suite started under nohup, or as a background job of a script, inherits them ignored, and vgp
    (like Python itself for SIGINT) leaves an ignored signal ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _wait_for_rows(path: Path, size: int, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline and not (path.exists() and path.stat().st_size > size):
        time.sleep(0.1)
    assert path.exists() and path.stat().st_size > size, f"{path} never grew"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_marks_the_run_interrupted_with_every_recorded_row_kept(tmp_path, sig):
    proc = _start_long_run(tmp_path)
    folder = tmp_path / "long"
    _wait_for_rows(folder / "metrics.csv.partial", 5000)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a run that ignored the signal must not outlive the test (it trains 10^6 steps)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert "Traceback" not in err
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["ended"]
    assert results.read_status(folder) == "interrupted"
    # the .partial files hold whole recorded steps, the same ones in both files, up to the last one
    m = pd.read_csv(folder / "metrics.csv.partial")
    g = pd.read_csv(folder / "grad_norms.csv.partial")
    per_step = g.groupby("step").size()
    assert per_step.nunique() == 1 and per_step.iloc[0] > 10  # no step cut in half
    assert list(per_step.index) == list(m.step) and m.step.iloc[-1] >= 3
    assert not (folder / "summary.csv").exists() and not list(folder.glob(".*.tmp"))
    # and an interrupted run is simply run again
    cfg = config.load(tmp_path / "long.yaml", ["train.steps=3"])
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"


@pytest.fixture
def terminal_signals():
    """SIGTERM and SIGINT at their defaults, as from a terminal, whatever pytest was started with;
    restored afterwards."""
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
           signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _signal_after_grad_rows(monkeypatch, sig, step: int = 2) -> None:
    """``sig`` is sent to this process right after ``step``'s grad_norms.csv rows are written."""
    write_values = results.CsvStream.write_values

    def then_signal(self, s, prefixes, values):
        write_values(self, s, prefixes, values)
        if s == step and self.path.name == "grad_norms.csv":
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(results.CsvStream, "write_values", then_signal)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("batched_run", [False, True], ids=["alone", "batched"])
def test_a_signal_between_a_steps_files_leaves_the_step_in_both_or_neither(tmp_path, monkeypatch, terminal_signals,
                                                                              sig, batched_run):
    """The signal arrives right after step 2's grad_norms.csv rows are written, before its
    metrics.csv row: step 2 is written whole to both, and the run ends interrupted after it (in a
    batched group, the signal comes after the first member's grad_norms.csv rows: step 2 reaches
    every member's two files)."""
    from vgp import batched

    _signal_after_grad_rows(monkeypatch, sig)
    cfgs = [config.from_dict(tiny(name=f"m{i}", seed=i, train__steps=50)) for i in range(2 if batched_run else 1)]
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        batched.run_batched(cfgs, out=tmp_path) if batched_run else run(cfgs[0], out=tmp_path, quiet=True)
    for i, cfg in enumerate(cfgs):
        folder = tmp_path / cfg.name
        assert results.read_status(folder) == "interrupted"
        m = pd.read_csv(folder / "metrics.csv.partial")
        g = pd.read_csv(folder / "grad_norms.csv.partial")
        assert list(g.groupby("step").size().index) == list(m.step) == [0, 1, 2]


def test_a_second_signal_while_the_folder_is_marked_does_not_stop_the_marking(tmp_path, monkeypatch,
                                                                              terminal_signals):
    """SIGTERM ends the run; a Ctrl-C arrives just as meta.json is about to be marked. With another
    thread that takes signals (as PyTorch's OpenMP workers do), the kernel hands it to that thread,
    and a blocked signal mask in the main thread alone would not hold it off."""
    import threading

    atomic_write = results.atomic_write

    def ctrl_c_first(path, text, *args, **kwargs):
        if Path(path).name == "meta.json" and '"interrupted"' in text:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the other thread takes it; Python's handler then runs in the main thread
        return atomic_write(path, text, *args, **kwargs)

    _signal_after_grad_rows(monkeypatch, signal.SIGTERM)
    monkeypatch.setattr(results, "atomic_write", ctrl_c_first)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)  # a thread whose signal mask blocks nothing
    other.start()
    try:
        with pytest.raises(SystemExit) as ended:  # the run's own ending: SIGTERM, not the Ctrl-C
            run(config.from_dict(tiny(name="r", train__steps=50)), out=tmp_path, quiet=True)
    finally:
        stop.set()
    assert ended.value.code == 128 + signal.SIGTERM
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["ended"]


# -- one writer per run folder -------------------------------------------------------------------

def test_a_second_run_of_the_same_name_is_refused_while_the_first_runs(tmp_path):
    proc = _start_long_run(tmp_path)
    try:
        _wait_for_rows(tmp_path / "long" / "metrics.csv.partial", 500)
        second = subprocess.run([sys.executable, "-m", "vgp", "run", str(tmp_path / "long.yaml"), "--out",
                                 str(tmp_path), "-q", "--force"], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "being written by another run" in second.stderr and f"pid {proc.pid}" in second.stderr
        assert proc.poll() is None  # the first goes on, its folder untouched
        assert (tmp_path / "long" / "metrics.csv.partial").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert results.read_status(tmp_path / "long") == "interrupted"


def test_a_sweep_cell_and_vgp_run_share_the_lock(tmp_path):
    cfg = config.from_dict(tiny())
    with results.run_lock(tmp_path / "t") as got:  # what a sweep worker holds while it runs the cell
        assert got
        with pytest.raises(UserError, match="being written by another run"):
            run(cfg, out=tmp_path, quiet=True)
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"


# -- one completion rule -------------------------------------------------------------------------

def test_finished_means_summary_csv_exists(tmp_path):
    cfg = config.from_dict(tiny())
    folder = run(cfg, out=tmp_path, quiet=True).folder
    assert json.loads((folder / "meta.json").read_text())["status"] == "completed"
    (folder / "summary.csv").unlink()  # stopped between meta.json and the marker, or deleted
    assert results.read_status(folder) == "interrupted"
    assert analysis.read_run(folder).summary is None  # diagnosis calls it unfinished, as the rule says
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"  # rerun without --force
    (folder / "summary.csv").write_bytes(b"\x00\xff\xfe garbage")
    assert results.read_status(folder) == "damaged"
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"


def test_a_resumed_sweep_reruns_a_run_without_its_marker(tmp_path):
    from vgp import sweep as sweepmod
    from vgp.launch import run_cell

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": tiny(), "seeds": [0]}))
    cell = sweepmod.load(path).cells[0]
    runs = tmp_path / "out" / "s" / "runs"
    assert run_cell(cell.cfg, runs).status == "completed"
    assert run_cell(cell.cfg, runs).status == "done"
    (runs / cell.id / "summary.csv").unlink()
    assert run_cell(cell.cfg, runs).status == "completed"


# -- faults while finishing ----------------------------------------------------------------------

def _full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("phase", ["stream_finish", "summary_columns", "meta", "marker", "everything"])
def test_a_fault_while_finishing_marks_the_run_failed(tmp_path, monkeypatch, phase):
    import vgp.train

    real_atomic = results.atomic_write
    if phase == "stream_finish":
        monkeypatch.setattr(results.CsvStream, "finish", _full_disk)
    elif phase == "summary_columns":
        monkeypatch.setattr(analysis, "summary_columns", lambda folder: 1 / 0)
    else:
        def atomic(path, text):
            if phase == "everything" or (phase == "marker" and Path(path).name == "summary.csv") or \
                    (phase == "meta" and Path(path).name == "meta.json" and '"running"' not in text):
                _full_disk()
            return real_atomic(path, text)

        monkeypatch.setattr(vgp.train.results, "atomic_write", atomic)
        if phase == "everything":  # also the first meta.json: nothing can be written at all
            monkeypatch.setattr(vgp.train.results, "write_yaml", lambda *a: None)
            monkeypatch.setattr(vgp.train.results, "write_json", lambda path, obj: atomic(path, "x"))
    with pytest.raises((OSError, ZeroDivisionError)):
        run(config.from_dict(tiny()), out=tmp_path, quiet=True)
    folder = tmp_path / "t"
    assert not (folder / "summary.csv").exists()
    assert not list(folder.glob(".*.tmp"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "failed" and results.read_status(folder) == "failed"
    if phase != "everything":
        assert ("No space left" in (folder / "error.txt").read_text()) or phase == "summary_columns"
    else:  # meta.json was rewritten in place, since no new file could be made
        assert "No space left" in meta["error"]


def test_a_handler_that_cannot_write_anything_says_so_and_keeps_the_error(tmp_path, monkeypatch, capsys):
    import builtins

    import vgp.train

    cfg = config.from_dict(tiny())
    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):
        if any(c in mode for c in "wa") and str(tmp_path) in str(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(vgp.train, "_train", lambda *a, **k: _full_disk())
    monkeypatch.setattr(vgp.train.results, "atomic_write", _full_disk)
    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(OSError, match="No space left"):  # the run's own error, not the handler's
        run(cfg, out=tmp_path, quiet=True)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "could not be recorded" in err and "Read-only" in err


TMPFS = Path("/tmp") / f"vgp-tmpfs-{os.getpid()}"


@pytest.fixture
def tiny_disk():
    """A real 1 MiB tmpfs (needs root and a kernel that lets this container mount; else skipped)."""
    TMPFS.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(TMPFS)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        TMPFS.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield TMPFS
    subprocess.run(["umount", "-l", str(TMPFS)])
    TMPFS.rmdir()


def _fill(folder: Path) -> None:
    """Write a file until the disk is full (unbuffered: nothing is left to fail at close)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_real_full_disk_while_finishing(tiny_disk, monkeypatch):
    import vgp.train

    real = analysis.summary_columns

    def fill_then(folder):  # the disk fills up just before the summary is written
        out = real(folder)
        _fill(tiny_disk)
        return out

    monkeypatch.setattr(vgp.train.analysis, "summary_columns", fill_then)
    with pytest.raises(OSError) as e:
        run(config.from_dict(tiny()), out=tiny_disk, quiet=True)
    assert e.value.errno == errno.ENOSPC
    folder = tiny_disk / "t"
    assert not (folder / "summary.csv").exists() and not list(folder.glob(".*.tmp"))
    assert results.read_status(folder) == "failed"  # meta.json rewritten in place: no room for a new file
    monkeypatch.undo()
    (tiny_disk / "filler").unlink()
    assert run(config.from_dict(tiny()), out=tiny_disk, quiet=True).status == "completed"


def test_a_folder_made_read_only_mid_run(tiny_disk, monkeypatch, capsys):
    import vgp.train

    def remount_then(folder):
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
        return {}

    monkeypatch.setattr(vgp.train.analysis, "summary_columns", remount_then)
    with pytest.raises(OSError) as e:
        run(config.from_dict(tiny()), out=tiny_disk, quiet=True)
    assert e.value.errno == errno.EROFS
    assert not (tiny_disk / "t" / "summary.csv").exists()
    assert results.read_status(tiny_disk / "t") == "running"  # nothing could be written: said on stderr
    assert "could not be recorded" in capsys.readouterr().err


def test_cli_reports_a_failed_run_in_one_line(tiny_disk, tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny(train__steps=100_000, log__every=1)))
    _fill(tiny_disk)  # no room left for the run's files
    r = cli("run", cfg, "--out", tiny_disk, "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "No space left on device" in r.stderr
    assert results.read_status(tiny_disk / "t") in ("failed", None)


# -- permissions and temporary files -------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_file_respects_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = run(config.from_dict(tiny()), out=tmp_path, quiet=True).folder
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert set(modes) == {"config.yaml", "meta.json", "grad_norms.csv", "metrics.csv", "summary.csv"}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_stale_temporary_files_are_removed(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / ".meta.json.abc123.tmp").write_text("left by a process killed mid-write")
    run(config.from_dict(tiny()), out=tmp_path, quiet=True)
    assert not list(folder.glob(".*.tmp"))
