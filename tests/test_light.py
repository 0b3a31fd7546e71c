"""Light commands (help, ls, theory, and the readers diagnose and compare) do not import torch.

Each command runs in a fresh interpreter that says at exit whether torch was imported; the
theory's numpy twins of the activations are checked against the torch functions they stand for.
No timings here: ``vgp ls`` and ``vgp theory`` answering in well under a second is what this
buys, measured by hand (README, "Speed").
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny
from vgp import activations, config, theory
from vgp.train import run

# runs vgp's CLI as `python -m vgp` would, then prints whether torch was imported (the last line)
PROBE = """
import sys
sys.argv = ["vgp"] + sys.argv[1:]
from vgp.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("TORCH_IMPORTED" if "torch" in sys.modules else "TORCH_NOT_IMPORTED")
sys.exit(code)
"""


def light(*args) -> str:
    """The command's standard output; fails if it exited non-zero or imported torch."""
    env = {**os.environ, "COLUMNS": "120"}
    p = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    out, marker = p.stdout.rstrip("\n").rsplit("\n", 1)
    assert marker == "TORCH_NOT_IMPORTED", f"vgp {' '.join(map(str, args))} imported torch"
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        run(config.from_dict(tiny(name=f"t{seed}", seed=seed)), out=out, quiet=True)
    return out


@pytest.mark.parametrize("args", [["--help"], ["ls"], ["ls", "inits"], ["ls", "keys"]])
def test_help_and_ls_do_not_import_torch(args):
    out = light(*args)
    assert out.strip()
    if args == ["ls", "inits"]:
        assert "kaiming_normal" in out and "variance_scaling" in out


def _reference(activation, weight_var, bias_var, depth) -> str:
    """What vgp theory prints, computed through the activation's torch functions."""
    act = theory._from_torch(activations.get(activations.ACTIVATIONS.resolve({"name": activation}, "a")))
    return theory.describe(theory.predict(act, weight_var, bias_var, depth))


def test_theory_does_not_import_torch_and_prints_the_same():
    assert light("theory", "--weight-var", "1.5", "--depth", "20") == _reference("tanh", 1.5, 0.0, 20)
    out = light("theory", "--critical")
    assert out.startswith("tanh, sigma_w^2 = 1") and "phase                 critical" in out
    assert light("theory", "--activation", "gelu", "--weight-var", "2", "--bias-var", "0.1", "--depth", "5") == \
        _reference("gelu", 2.0, 0.1, 5)
    assert json.loads(light("theory", "--activation", "elu", "--weight-var", "1.2", "--json"))["phase"] == "chaotic"


def test_diagnose_and_compare_do_not_import_torch(results):
    out = light("diagnose", results)
    assert "t0" in out and "t1" in out
    assert len(light("diagnose", results / "t0", "--json").splitlines()) == 1
    assert "final_loss" in light("compare", results, "--format", "csv")


@pytest.mark.parametrize("spec", [
    {"name": name} for name in activations.ACTIVATIONS.names()
] + [{"name": "leaky_relu", "negative_slope": 0.2}, {"name": "elu", "alpha": 0.5}, {"name": "elu", "alpha": 30.0}])
def test_numpy_twins_equal_the_torch_activations(spec):
    """Every registered activation has a numpy twin for the theory, equal to its torch phi and phi'."""
    spec = activations.ACTIVATIONS.resolve(spec, "activation")
    assert spec["name"] in theory._NUMPY, f"add a numpy twin of {spec['name']} to vgp.theory._NUMPY"
    act = activations.get(spec)
    twin = theory._act(spec)
    x = np.concatenate([np.linspace(-40, 40, 2001), [-1e6, -1e-300, 0.0, 1e-300, 1e6]])
    xt = torch.from_numpy(x)
    # atol: 1 - tanh^2 and s (1 - s) cancel to within a few ulps of 1 in either implementation
    np.testing.assert_allclose(twin.phi(x), act.phi(xt).numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(twin.dphi(x), act.dphi(xt).numpy(), rtol=1e-12, atol=1e-15)
    assert (twin.name, twin.kaiming, twin.kaiming_param) == (act.name, act.kaiming, act.kaiming_param)
    ref = theory._from_torch(act)
    for q in (0.01, 1.0, 30.0):
        assert theory.forward_var(twin, q) == pytest.approx(theory.forward_var(ref, q), rel=1e-12)
        assert theory.slope_var(twin, q) == pytest.approx(theory.slope_var(ref, q), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("nl,param", [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                                      ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None), ("conv2d", None)])
def test_kaiming_gain_equals_torch(nl, param):
    assert theory.kaiming_gain(nl, param) == torch.nn.init.calculate_gain(nl, param)
    assert math.isfinite(theory.kaiming_gain(nl, param))
