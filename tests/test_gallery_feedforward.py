"""The feedforward gallery entries (glorot-init, he-init, orthogonal-isometry): their sweep files
validate, and their quick sizes show the claims' direction in the numbers measured from the runs."""

from __future__ import annotations

import math

import pytest

from conftest import gallery_quick


def _run(name, tmp_path):
    return gallery_quick(name, tmp_path).finding.numbers


@pytest.mark.slow
def test_glorot_init(tmp_path):
    n = _run("glorot-init", tmp_path)
    # at init: the standard init's layer-1/layer-5 ratio is well below 1 for tanh and softsign, and
    # Xavier's is at least halfway (on a log scale) back to 1
    for act in ("tanh", "softsign"):
        std, xav = n[f"grad_ratio_{act}_default"], n[f"grad_ratio_{act}_xavier_uniform"]
        assert std < 0.2
        assert abs(math.log(xav)) < 0.5 * abs(math.log(std))
    # in training (800 steps here, 1500 in the full sweep): the sigmoid net's top layer is driven from
    # 0.5 toward 0, its lower layers hardly move, and the tanh and softsign top layers stay at their
    # centre, unsaturated
    assert n["top_shift_sigmoid_default"] < -1 / 3
    assert -n["top_shift_sigmoid_default"] > 3 * n["lower_shift_sigmoid_default"]
    for act in ("tanh", "softsign"):
        for init in ("default", "xavier_uniform"):
            assert abs(n[f"top_shift_{act}_{init}"]) < 0.1 and n[f"top_saturation_{act}_{init}"] < 0.2


@pytest.mark.slow
def test_he_init(tmp_path):
    n = _run("he-init", tmp_path)
    # 30 layers: He leaves chance level (2.30) early and learns; Xavier stays there at least 4x as long
    assert n["escape_step_kaiming_30"] * 4 <= n["escape_step_xavier_30"]
    assert n["lowest_loss_kaiming_30"] < 1.0 < n["lowest_loss_xavier_30"]
    # 22 layers: every seed of both inits leaves chance level
    assert n["escaped_xavier_22"] == n["seeds_xavier_22"] and n["escaped_kaiming_22"] == n["seeds_kaiming_22"]
    # at init, Xavier's gradient shrinks by about sqrt(1/2) per ReLU layer, He's stays level
    assert 0.6 < n["decay_per_layer_xavier_30"] < 0.8
    assert 0.9 < n["decay_per_layer_kaiming_30"] < 1.1


@pytest.mark.slow
def test_orthogonal_isometry(tmp_path):
    n = _run("orthogonal-isometry", tmp_path)
    # linear nets: orthogonal weights keep every hidden layer's output_grad equal, to float32 rounding
    for d in (10, 100):
        assert n[f"spread_max_identity_orthogonal_{d}"] < 1.001
        assert abs(n[f"ratio_identity_orthogonal_{d}"] - 1) < 1e-3
    # Gaussian weights of the same variance let it wander, more at depth 100 than at 10
    assert n["spread_identity_gaussian_100"] > 1.1
    assert n["spread_identity_gaussian_100"] > n["spread_identity_gaussian_10"]
    # critical tanh, upper half of a 100-layer net: orthogonal nearly level, Gaussian spread wider
    assert n["spread_tanh_orthogonal_100"] < 1.05
    assert math.log(n["spread_tanh_gaussian_100"]) > 2 * math.log(n["spread_tanh_orthogonal_100"])
