"""vgp plot --kind phase: a summary column over sigma_w^2 x depth as a heatmap, each cell the mean of its
runs (checked against the runs' own summary.csv), the mean-field 6 xi_c over it (checked against
vgp.theory), clear errors where a sweep has no such grid, and --kind all drawing it only where it does."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh

from conftest import tiny, vgp_cli
from vgp import plots, plots_phase, theory
from vgp.errors import UserError
from test_plot_facets import make_sweep

STD = 0.2236068  # sigma_b^2 = 0.05
SB2 = STD ** 2


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """tanh nets: sigma_w^2 in {1, 2, 3} x depth in {2, 4} x 2 seeds."""
    base = tiny(train__steps=2, model__init={"name": "variance_scaling", "scale": 1.0},
                model__bias_init={"name": "normal", "std": STD})
    return make_sweep(tmp_path_factory.mktemp("phase"), {
        "name": "grid", "base": base, "grid": {"model.init.scale": [1.0, 2.0, 3.0], "model.depth": [2, 4]},
        "seeds": [0, 1]})


def runs_of(sweep) -> pd.DataFrame:
    rows = [pd.read_csv(f / "summary.csv").iloc[0] for f in sorted((sweep / "runs").iterdir())]
    return pd.DataFrame(rows)


def test_each_cell_is_the_mean_of_its_runs_and_says_so(grid):
    fig = plots.figures([grid], "phase", y="final_loss")["phase"]
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    values = np.asarray(mesh.get_array()).reshape(2, 3)  # rows: depths 2, 4; columns: sigma_w^2 1, 2, 3
    runs = runs_of(grid)
    want = runs.groupby(["model.depth", "model.init.scale"])["final_loss"].mean().unstack().to_numpy()
    np.testing.assert_allclose(values, want, rtol=1e-12)
    texts = [t.get_text() for t in ax.texts]
    assert f"{want[0, 0]:.2g}".rstrip("0").rstrip(".") in texts
    assert "mean over 2 runs (2 seeds), per cell" in fig.texts[0].get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4"]
    plt.close(fig)


def test_the_curve_is_six_times_the_correlation_depth_and_the_dotted_line_the_critical_weight_variance(grid):
    fig = plots.figures([grid], "phase", y="final_loss")["phase"]
    ax = fig.axes[0]
    curve = next(line for line in ax.lines if line.get_label().startswith("6 xi_c"))
    xs, ys = curve.get_xdata(), curve.get_ydata()
    assert xs.min() < 1.0 and xs.max() > 3.0  # over the whole x axis, cell edges included
    for i in np.linspace(0, len(xs) - 1, 7).astype(int):
        assert ys[i] == pytest.approx(6 * theory.correlation_depth("tanh", float(xs[i]), SB2), rel=1e-9)
    assert ys[np.argmin(abs(xs - 1.0))] == pytest.approx(6 * theory.depth_scale(theory.chi1("tanh", 1.0, SB2)),
                                                         rel=0.05)  # ordered: xi_c = 1/|ln chi_1|
    assert np.nanmax(ys) > 1000  # it diverges at the transition
    crit = next(line for line in ax.lines if line.get_label().startswith("critical"))
    assert crit.get_xdata()[0] == pytest.approx(theory.critical_weight_var("tanh", SB2), rel=1e-9)
    assert ax.get_ylim()[1] < 10  # the curve's peak does not stretch the depth axis
    plt.close(fig)


def test_another_x_key_draws_without_the_curve_and_says_why(grid):
    fig = plots.figures([grid], "phase", x="model.init.scale", y="final_loss")["phase"]
    assert not [line for line in fig.axes[0].lines if line.get_label().startswith("6 xi_c")]
    assert "6 xi_c not drawn: x is not sigma_w^2" in fig.texts[0].get_text()
    plt.close(fig)


@pytest.mark.parametrize("options,message", [
    ({"where": ["depth=2"]}, "needs runs of at least two depths; these have depth 2"),
    ({"where": ["init.scale=2"]}, "--x sigma_w^2 must take at least two numeric values across the runs; it takes 1"),
    ({"hue": "seed"}, "there is no --hue"),
    ({"y": "model.width"}, "a config key"),
    ({"x": "depth"}, "the depth is the vertical axis"),
])
def test_a_sweep_without_the_grid_is_a_clear_error(grid, options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("^", r"\^")):
        plots.figures([grid], "phase", **{"y": "final_loss", **options})


def test_sigma_w2_the_theory_cannot_give_is_named(tmp_path):
    sweep = make_sweep(tmp_path, {"name": "bn", "base": tiny(train__steps=1, model__norm="layernorm"),
                                  "grid": {"model.init": ["xavier_uniform", "kaiming_normal"], "model.depth": [2, 3]}})
    with pytest.raises(UserError, match="the mean-field theory gives none"):
        plots.figures([sweep], "phase", y="final_loss")


def test_all_draws_the_phase_diagram_only_for_sweeps_over_the_init_and_the_depth(grid, tmp_path):
    assert "phase" in plots.figures([grid], "all", warn=lambda m: None)
    depth_only = make_sweep(tmp_path, {"name": "d", "base": tiny(train__steps=1), "grid": {"model.depth": [2, 3]}})
    figs = plots.figures([depth_only], "all", warn=lambda m: None)
    assert "phase" not in figs and "summary" in figs
    assert not plots_phase.applies(plots.load([depth_only]))


def test_curve_is_cached_and_spans_both_phases():
    xs, ys, crit = plots_phase.curve("tanh", 0.05, 1.0, 4.0)
    assert crit == pytest.approx(1.76, abs=0.01) and xs[0] == 1.0 and xs[-1] == 4.0
    assert plots_phase.curve({"name": "tanh"}, 0.05, 1.0, 4.0)[0] is xs  # one computation per setting
    left, right = ys[xs < crit], ys[xs > crit]
    assert (np.diff(left) > 0).all() and (np.diff(right) < 0).all()  # rises to the transition, falls after
    assert math.isfinite(ys[0]) and ys[0] == pytest.approx(6 * 3.627, rel=1e-3)


def test_cli_draws_it(grid, tmp_path):
    out = tmp_path / "phase.png"
    r = vgp_cli("plot", grid, "--kind", "phase", "--y", "final_test_acc", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000
