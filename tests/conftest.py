import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)  # small tests are faster single-threaded, and deterministic


def tiny(**over) -> dict:
    """A small config as a raw mapping; keyword 'a__b' sets key 'a.b'."""
    raw = {
        "name": "t",
        "seed": 0,
        "device": "cpu",
        "model": {"depth": 3, "width": 16, "activation": "tanh"},
        "data": {"name": "teacher", "dim": 8, "classes": 3, "n_train": 64, "n_test": 32},
        "train": {"steps": 5, "batch_size": 64, "eval_every": 100},
        "log": {"every": 1},
    }
    for key, value in over.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def vgp_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run the installed CLI the way a user does (python -m vgp, so the venv's vgp is used)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vgp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env)


@pytest.fixture
def cli():
    return vgp_cli


def pytest_collection_modifyitems(config, items):
    """GPU tests need CUDA: skipped with a reason where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def gallery_quick(name: str, tmp_path: Path):
    """Train gallery entry ``name`` at its --quick size into tmp_path (2 workers), check that every run
    finished and that each figure draws (a PNG over 10 kB with a caption); returns the Outcome."""
    from vgp.gallery import build, entries

    entry = entries([name])[0]
    outcome = build.run_entry(entry, tmp_path / "runs", quick=True, jobs=2)
    assert outcome.finished == outcome.runs > 0 and outcome.finding is not None
    figures = build.draw(outcome, tmp_path / "figures")
    assert len(figures) == len(entry.figures)
    for path, caption in figures:
        assert path.is_file() and path.stat().st_size > 10_000 and caption, path
    return outcome
