"""The command line as a user meets it: output, exit codes, messages without tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, tiny

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_run_prints_the_folder_last_and_writes_files(tmp_path, cli):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tiny(name="cli")))
    r = cli("run", p, "model.depth=2", "train.steps=4", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "cli"
    assert pd.read_csv(folder / "summary.csv")["model.depth"][0] == 2
    assert "completed" in r.stderr  # messages and progress go to stderr
    again = cli("run", p, "--out", tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_user_mistakes_exit_2_with_one_clear_line(tmp_path, cli):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  activation: rleu\n")
    r = cli("run", p, "--out", tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "bad.yaml" in r.stderr and "unknown activation 'rleu'; did you mean 'relu'?" in r.stderr
    r = cli("run", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli("run", p, "model.activation=relu", "device=cuda:7", "--out", tmp_path)
    assert r.returncode == 2 and "cuda:7" in r.stderr and "Traceback" not in r.stderr


def test_validate_every_shipped_config(cli):
    assert CONFIGS, "configs/ has no YAML files"
    r = cli("validate", *CONFIGS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok:") == len(CONFIGS)


def test_every_shipped_config_says_how_to_run_it():
    for path in CONFIGS:
        head = path.read_text().split("\n\n")[0]
        assert head.startswith("#") and "vgp " in head, f"{path}: header comment lacks its command"


def test_validate_reports_bad_files(tmp_path, cli):
    p = tmp_path / "b.yaml"
    p.write_text("train: {stepz: 3}\n")
    r = cli("validate", p)
    assert r.returncode == 2 and "did you mean 'train.steps'" in r.stderr


def test_ls_lists_registered_names(cli):
    r = cli("ls", "activations")
    assert r.returncode == 0
    for name in ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softsign", "softplus"]:
        assert name in r.stdout
    r = cli("ls", "optimizers")  # each argument with the values its component declares valid
    assert "momentum=0.0" in r.stdout and "(in [0, 1))" in r.stdout and "(> 0)" in r.stdout
    r = cli("ls", "inits")
    assert "variance_scaling" in r.stdout and "kaiming_normal" in r.stdout
    r = cli("ls", "activatons")
    assert r.returncode == 2 and "did you mean 'activations'" in r.stderr


def test_help_on_every_command(cli):
    for cmd in ["run", "validate", "ls"]:
        r = cli(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_unusable_output_folder_is_a_user_error(tmp_path, cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = cli("run", ROOT / "configs" / "quickstart.yaml", "train.steps=1", "--out", blocker)
    assert r.returncode == 2 and "cannot create the run folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("given, expected", [({}, (None, "30000")), ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None)),
                                             ({"GOMP_SPINCOUNT": "5"}, (None, "5"))])
def test_run_bounds_openmp_spinning_unless_told_otherwise(tmp_path, given, expected):
    """`vgp run` sets GOMP_SPINCOUNT=30000 before torch loads (libgomp's 300,000 made a step beside
    another PyTorch process 80x slower), leaves the waiting policy to a user who set one, and meta.json
    says what held."""
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    probe = "import sys; sys.argv = ['vgp', 'run', sys.argv[1], '--out', sys.argv[2], '--quiet']; " \
            "import vgp.cli; assert 'torch' not in sys.modules; vgp.cli.main()"
    p = subprocess.run([sys.executable, "-c", probe, str(path), str(tmp_path / "runs")], env={**env, **given},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "runs" / "t" / "meta.json").read_text())
    assert (meta["omp_wait_policy"], meta["gomp_spincount"]) == expected and meta["threads"] >= 1
