"""The normalisation entries of the gallery: each one's quick sweep trained, its claim's direction
asserted on the measured numbers, and its figures drawn."""

import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import gallery_quick as run_quick
from vgp.gallery import normalization


@pytest.mark.slow
def test_batchnorm_sigmoid_quick(tmp_path):
    outcome = run_quick("batchnorm-sigmoid", tmp_path)
    f, n = outcome.finding, outcome.finding.numbers
    chance = math.log(10)
    assert n["none_runs"] >= 2 and n["batchnorm_runs"] >= 2
    # without batch norm: at chance in every seed; the first layer's gradient vanished at init
    assert n["none_train_loss_min"] > 0.9 * chance and n["none_test_acc_max"] < 0.2
    assert n["none_grad_ratio"] < 1e-10
    # with it: trains in every seed, gradients within two orders of magnitude at init
    assert n["batchnorm_train_loss_max"] < 0.6 * chance and n["batchnorm_test_acc_min"] > 0.3
    assert 1e-2 < n["batchnorm_grad_ratio"] < 1e2
    assert f.held and "ln 10" in f.measured and "| none" in f.table
    # the training loss judged: the recorded batch losses of the last 10% of steps, read by hand
    table = outcome.sweep.table
    for name, folder, value in zip(table["name"], table["folder"], normalization.train_loss(outcome.sweep)):
        m = pd.read_csv(Path(folder) / "metrics.csv").dropna(subset=["loss"])
        assert value == pytest.approx(m.loc[m.step >= 0.9 * m.step.max(), "loss"].mean(), rel=1e-12), name
        assert len(m[m.step >= 0.9 * m.step.max()]) >= 2


@pytest.mark.slow
def test_plain_vs_residual_quick(tmp_path):
    f = run_quick("plain-vs-residual", tmp_path).finding
    n = f.numbers
    assert (n["shallow"], n["deep"]) == (20, 56)
    # degradation: the deeper plain net ends clearly above the shallower one, in every seed
    assert n["plain_deep"] > 2 * n["plain_shallow"] and n["plain_deep"] > n["plain_shallow"] + 0.1
    assert n["plain_deep_worse_seeds"] == n["seeds"]
    # with shortcuts the deeper net is as good, and far below the deep plain one
    assert n["residual_deep"] < n["residual_shallow"] + 0.05
    assert n["residual_deep"] < 0.1 * n["plain_deep"]
    assert f.held


@pytest.mark.slow
def test_batchnorm_explosion_quick(tmp_path):
    f = run_quick("batchnorm-explosion", tmp_path).finding
    n = f.numbers
    assert n["batches"] == [4, 16, 1024] and n["widths"] == [64]
    # exploding in every run, and more so for small batches
    assert n["rate_min"] > 1.05
    assert n["rate_w64_smallest_batch"] > n["rate_w64_largest_batch"] + 0.1
    assert n["rate_w64_largest_rise"] < 0.005
    # the large-batch rate near the wide-net estimate sqrt(pi/(pi-1)) = 1.211
    assert abs(n["rate_largest_batch"] - math.sqrt(math.pi / (math.pi - 1))) < 0.03
    assert f.held
