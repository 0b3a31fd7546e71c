"""The recurrent entries of the gallery: each one's quick sweep trained, its claim's direction
asserted on the measured numbers, and its figures drawn."""

import math

import pytest

from conftest import gallery_quick


def run_quick(name, tmp_path):
    return gallery_quick(name, tmp_path).finding


@pytest.mark.slow
def test_rnn_clipping_quick(tmp_path):
    f = run_quick("rnn-clipping", tmp_path)
    n = f.numbers
    lo, hi = n["gains"][0], n["gains"][-1]
    assert lo < 1 < hi
    # at init: the gradient shrinks back through time below gain 1 and grows above it (tanh keeps the
    # growth below the gain itself)
    assert 0.8 * lo < n[f"decay_per_step_{lo:g}"] < 1 and n[f"reach_{lo:g}"] < 1e-2
    assert 1.05 < n[f"decay_per_step_{hi:g}"] <= hi and n[f"reach_{hi:g}"] > 1e2
    # ... except in the first step back, where h is near 0 and tanh nearly linear: there it is the gain
    for g in (lo, hi):
        assert abs(n[f"first_step_{g:g}"] / g - 1) < 0.15
    # plain SGD: every run with gain > 1 blows up (with a gradient norm far above its first), none below 1
    assert n[f"diverged_none_{hi:g}"] == n[f"runs_none_{hi:g}"] >= 2
    assert n[f"max_grad_norm_none_{hi:g}"] > 1e3 * n[f"max_grad_norm_none_{lo:g}"]
    assert n[f"diverged_none_{lo:g}"] == 0
    # clipped: no run diverges, no batch loss above twice the first; below gain 1 each ends below where
    # it began (above it, where a chaotic trajectory ends is decided by rounding: see measure_rnn_clipping)
    for g in (lo, hi):
        assert n[f"diverged_norm_{g:g}"] == 0
        assert n[f"spike_norm_{g:g}"] < 2
        assert math.isfinite(n[f"final_test_loss_norm_{g:g}"])
    assert n[f"end_norm_{lo:g}"] < 1
    assert f.held and "| 0.9" in f.table


@pytest.mark.slow
def test_adding_problem_quick(tmp_path):
    f = run_quick("adding-problem", tmp_path)
    n = f.numbers
    base = n["baseline"]
    assert abs(base - 1 / 6) < 0.01
    T = n["lengths"][0]
    # the tanh RNN stays at the baseline; the IRNN, LSTM and GRU end far below it
    assert n[f"mse_min_tanh_RNN_{T}"] > 0.8 * base
    for v in ("IRNN", "LSTM", "GRU"):
        assert n[f"mse_max_{v}_{T}"] < 0.1 * base, v
    # at init dLoss/dh_1 vanished for the tanh RNN, not for the IRNN and the LSTM
    assert n[f"reach_tanh_RNN_{T}"] < 1e-6
    assert n[f"reach_IRNN_{T}"] > 0.1 and n[f"reach_LSTM_{T}"] > 1e-3
    assert f.held and "tanh RNN" in f.measured


def test_training_plot_baseline_only_where_the_runs_share_one():
    import pandas as pd

    from vgp.plots_group import task_baseline

    assert task_baseline(pd.DataFrame({"task_baseline": [1 / 6, 1 / 6, float("nan")]})) == pytest.approx(1 / 6)
    assert task_baseline(pd.DataFrame({"task_baseline": [1 / 6, 0.5]})) is None  # two tasks: no one line
    assert task_baseline(pd.DataFrame({"task_baseline": ["", ""]})) is None
    assert task_baseline(pd.DataFrame({"final_loss": [0.1]})) is None
