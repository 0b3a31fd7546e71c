"""vgp plot on sweeps: facets from the declared axes, seeds as a mean line and a band (checked against
the runs' own CSVs), one colour scale for every heatmap panel, integer layer ticks, legends beside the
data, recurrent nets drawn over time steps, the summary of any column against any key, and no run
left out without a word."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import QuadMesh

from conftest import tiny
from vgp import plots, sweep as sweepmod
from vgp.errors import UserError
from vgp.train import run


def make_sweep(root, spec: dict):
    """A real sweep folder (sweep.yaml, runs/, summary.csv) of tiny runs, trained in this process."""
    sw = sweepmod.from_dict(spec, source="test")
    folder = root / sw.name
    for cell in sw.cells:
        run(cell.cfg, out=folder / "runs", quiet=True)
    sweepmod.write_spec(sw, folder)
    sweepmod.write_summary(folder, [c.id for c in sw.cells])
    return folder


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """2 activations x 2 depths x 3 seeds, He init, every step recorded."""
    return make_sweep(tmp_path_factory.mktemp("mlp"), {
        "name": "mlp", "base": tiny(train__steps=4, log__every=1, model__init="kaiming_normal"),
        "grid": {"model.activation": ["tanh", "relu"], "model.depth": [2, 4]}, "seeds": [0, 1, 2]})


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory):
    """rnn and gru x 2 seeds on a short adding task."""
    base = {"name": "r", "device": "cpu", "model": {"arch": "rnn", "depth": 1, "width": 8, "activation": "tanh"},
            "data": {"name": "adding", "seq_len": 6, "n_train": 32, "n_test": 16},
            "train": {"steps": 3, "batch_size": 16, "eval_every": 100}, "log": {"every": 1}}
    return make_sweep(tmp_path_factory.mktemp("rec"), {"name": "rec", "base": base,
                                                        "grid": {"model.arch": ["rnn", "gru"]}, "seeds": [0, 1]})


def runs_of(sweep) -> pd.DataFrame:
    """One row per run, from the run folders themselves: activation, depth, seed, folder."""
    rows = []
    for f in sorted((sweep / "runs").iterdir()):
        cfg = yaml.safe_load((f / "config.yaml").read_text())
        act = cfg["model"].get("activation")
        rows.append({"activation": act.get("name") if isinstance(act, dict) else act, "depth": cfg["model"]["depth"],
                     "arch": cfg["model"]["arch"], "seed": cfg["seed"], "folder": f})
    return pd.DataFrame(rows)


def legend_colours(fig) -> dict:
    """{label: colour} of the figure's legend entries that have a line."""
    leg = fig.legends[0]
    return {t.get_text(): h.get_color() for t, h in zip(leg.get_texts(), leg.legend_handles) if hasattr(h, "get_color")}


def panels(fig) -> dict:
    """{panel title: Axes} of the visible data panels."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def gmean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


# -- profile -----------------------------------------------------------------------------------------

def test_profile_one_colour_per_activation_one_panel_per_depth_mean_of_seeds(mlp):
    fig = plots.figures([mlp], "profile")["profile"]
    found = panels(fig)
    assert sorted(found) == ["depth=2", "depth=4"]
    colours = legend_colours(fig)
    assert {k.split()[0] for k in colours if "(n=" in k} == {"tanh", "relu"}
    assert sum(int(k.split("n=")[1].rstrip(")")) for k in colours if "(n=" in k) == 12  # every run counted
    runs = runs_of(mlp)
    for depth in (2, 4):
        ax = found[f"depth={depth}"]
        for act in ("tanh", "relu"):
            colour = next(c for k, c in colours.items() if k.startswith(act))
            line = next(ln for ln in ax.lines if ln.get_color() == colour and ln.get_marker() == "o")
            norms = []
            for f in runs[(runs.activation == act) & (runs.depth == depth)].folder:
                g = pd.read_csv(f / "grad_norms.csv")
                g = g[(g.kind == "output_grad") & (g.step == 0)].sort_values("layer")
                norms.append(g.value.to_numpy())
            assert len(norms) == 3
            want = np.exp(np.log(np.array(norms)).mean(axis=0))
            np.testing.assert_allclose(line.get_xdata(), np.arange(1, depth + 2))
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    title = fig.texts[0].get_text()
    assert "geometric mean" in title and "min-max over 3 runs (3 seeds)" in title
    plt.close(fig)


def test_layer_ticks_are_integers_and_legends_lie_beside_the_panels(mlp):
    figs = plots.figures([mlp], "all")
    assert sorted(figs) == ["heatmap", "profile", "summary", "training"]
    for kind, fig in figs.items():
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        boxes = [ax.get_window_extent(r) for ax in fig.axes if ax.get_visible()]
        for leg in fig.legends:
            bb = leg.get_window_extent(r)
            assert not any(bb.overlaps(b) for b in boxes), kind
            assert fig.bbox.x0 <= bb.x0 and bb.x1 <= fig.bbox.x1 and bb.y0 >= fig.bbox.y0, kind  # not cut off
        title = fig.texts[0].get_window_extent(r)
        assert not any(title.overlaps(b) for b in boxes) and title.y1 <= fig.bbox.y1 + 1, kind
    for ax in panels(figs["profile"]).values():
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
    for ax in figs["heatmap"].axes:
        if ax.get_title():  # a panel (the colour bar has none)
            lo, hi = sorted(ax.get_ylim())
            assert all(float(t).is_integer() for t in ax.get_yticks() if lo <= t <= hi)
    for fig in figs.values():
        plt.close(fig)


# -- heatmap ---------------------------------------------------------------------------------------

def test_heatmap_panels_share_one_colour_scale_and_one_colour_bar(mlp):
    fig = plots.figures([mlp], "heatmap")["heatmap"]
    meshes = [c for ax in fig.axes if ax.get_title() for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 4  # one per group: 2 activations x 2 depths, seeds averaged
    norms = {(m.norm.vmin, m.norm.vmax) for m in meshes}
    assert len(norms) == 1
    values = np.concatenate([np.ma.compressed(m.get_array()) for m in meshes])
    vmin, vmax = norms.pop()
    assert vmin == pytest.approx(values.min()) and vmax == pytest.approx(values.max())
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("log10")]
    assert len(bars) == 1
    # a cell is the geometric mean over the seeds: log10 of it is the mean of the log10s
    runs = runs_of(mlp)
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("activation=relu\ndepth=4"))
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    logs = []
    for f in runs[(runs.activation == "relu") & (runs.depth == 4)].folder:
        g = pd.read_csv(f / "grad_norms.csv")
        logs.append(np.log10(g[g.kind == "output_grad"].pivot(index="layer", columns="step", values="value").to_numpy()))
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(np.shape(logs[0])), np.mean(logs, axis=0),
                               rtol=1e-9)
    plt.close(fig)


# -- recurrent nets ------------------------------------------------------------------------------------

def test_recurrent_sweep_is_drawn_over_time_steps(recurrent, tmp_path):
    files = plots.plot([recurrent], out=tmp_path, fmt="svg")
    assert sorted(p.name for p in files) == ["heatmap.svg", "profile.svg", "summary.svg", "time.svg", "training.svg"]
    figs = plots.figures([recurrent], "all")
    heat = figs["heatmap"]
    meshes = [(ax, c) for ax in heat.axes if ax.get_title() for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2  # rnn, gru
    steps = pd.read_csv(next((recurrent / "runs").iterdir()) / "time_grads.csv").step.nunique()
    for ax, mesh in meshes:
        assert ax.get_ylabel() in ("time step t", "")
        assert np.shape(mesh.get_array()) == (6, steps)  # t = 1..6 by training step
    assert len({(m.norm.vmin, m.norm.vmax) for _, m in meshes}) == 1
    prof = figs["profile"]
    ax = next(iter(panels(prof).values())) if panels(prof) else prof.axes[0]
    assert ax.get_xlabel() == "time step t"
    assert {k.split()[0] for k in legend_colours(prof) if "(n=" in k} == {"rnn", "gru"}
    # the summary of a recurrent sweep is its decay per time step, and the legend keys apply to every run
    summary = figs["summary"].texts[0].get_text()
    assert "decay per time step" in summary and "activation" not in summary
    for fig in figs.values():
        plt.close(fig)


# -- summary ------------------------------------------------------------------------------------------

def test_summary_points_are_geometric_means_of_the_runs_own_summaries(mlp):
    fig = plots.figures([mlp], "summary", x="depth", hue="activation")["summary"]
    ax = fig.axes[0]
    colours = legend_colours(fig)
    for act in ("tanh", "relu"):
        colour = next(c for k, c in colours.items() if k.startswith(act))
        line = next(ln for ln in ax.lines if ln.get_color() == colour and ln.get_linestyle() == "-")
        want = []
        for depth in (2, 4):
            fs = runs_of(mlp).query("activation == @act and depth == @depth").folder
            want.append(gmean([pd.read_csv(f / "summary.csv").decay_per_layer[0] for f in fs]))
        np.testing.assert_allclose(line.get_xdata(), [2, 4])
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    assert any(ln.get_linestyle() == "--" for ln in ax.lines)  # the mean-field prediction
    plt.close(fig)


def test_steps_to_loss_is_the_first_step_under_the_target_and_misses_are_marked(mlp):
    runs = runs_of(mlp)
    first = {}
    losses = []
    for f in runs.folder:
        m = pd.read_csv(f / "metrics.csv").dropna(subset=["loss"])
        losses.append(m.loss.to_numpy())
    target = float(np.median([l.min() for l in losses]))  # about half the runs get there
    for f, m in zip(runs.folder, losses):
        steps = pd.read_csv(f / "metrics.csv").dropna(subset=["loss"]).step.to_numpy()
        hit = np.flatnonzero(m <= target)
        first[f] = float(steps[hit[0]]) if len(hit) else math.nan
    fig = plots.figures([mlp], "summary", x="depth", hue="activation", y="steps_to_loss",
                        target_loss=target)["summary"]
    ax = fig.axes[0]
    colours = legend_colours(fig)
    for act in ("tanh", "relu"):
        colour = next(c for k, c in colours.items() if k.startswith(act))
        line = next(ln for ln in ax.lines if ln.get_color() == colour and ln.get_linestyle() == "-")
        got = dict(zip(line.get_xdata(), line.get_ydata()))
        for depth in (2, 4):
            vals = [first[f] for f in runs.query("activation == @act and depth == @depth").folder]
            reached = [v for v in vals if not math.isnan(v)]
            if reached:
                assert got[depth] == pytest.approx(np.mean(reached))
            else:
                assert depth not in got
    missed = sum(math.isnan(v) for v in first.values())
    assert missed > 0
    label = next(k for k in colours if k.startswith("never reached it"))
    assert f"{missed} run" in label
    markers = [ln for ln in ax.lines if ln.get_marker() == "^"]
    assert markers  # drawn at the top of the panel, not dropped
    with pytest.raises(UserError, match="--target-loss"):
        plots.figures([mlp], "summary", y="steps_to_loss")
    plt.close(fig)


def test_summary_against_unknown_keys_names_the_valid_ones(mlp):
    with pytest.raises(UserError) as e:
        plots.figures([mlp], "summary", x="detph")
    text = str(e.value)
    assert "did you mean" in text and "depth" in text and "activation" in text and "decay_per_layer" in text
    with pytest.raises(UserError, match="number columns: .*final_loss"):
        plots.figures([mlp], "summary", y="verdict")
    with pytest.raises(UserError, match="config key"):
        plots.figures([mlp], "summary", y="depth")


def test_sigma_w2_on_x_one_line_per_depth(mlp):
    fig = plots.figures([mlp], "summary", x="sigma_w^2", hue="depth")["summary"]
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("sigma_w^2")
    xs = sorted({float(x) for ln in ax.lines if ln.get_linestyle() == "-" for x in ln.get_xdata()})
    np.testing.assert_allclose(xs, [2.0, 25 / 9], rtol=1e-6)  # He init: gain^2 of relu and of tanh
    assert {k.split()[0] for k in legend_colours(fig) if "(n=" in k} == {"2", "4"}
    plt.close(fig)


def test_several_steps_of_several_runs_get_one_line_style_each(mlp):
    fig = plots.figures([mlp], "profile", steps=[0, 3], hue="activation", col="depth")["profile"]
    ax = panels(fig)["depth=2"]
    styles = {ln.get_linestyle() for ln in ax.lines if ln.get_marker() == "o"}
    assert styles == {"-", ":"}
    assert {"step 0", "step 3"} <= set(legend_colours(fig))
    plt.close(fig)
    with pytest.raises(UserError, match="step 7 not recorded by 12 of 12 runs"):
        plots.figures([mlp], "profile", steps=[7])


def test_a_loaded_study_is_drawn_without_reading_the_paths_again(mlp, tmp_path):
    s = plots.load([mlp])
    files = plots.plot([], "summary", tmp_path / "s.svg", study=s, by="depth", x="activation")
    text = files[0].read_text()
    assert "depth" in text and "activation" in text


def test_where_and_the_title_say_what_was_fixed(mlp, tmp_path):
    fig = plots.figures([mlp], "profile", where=["depth=4"])["profile"]
    title = fig.texts[0].get_text()
    assert "where depth=4" in title and "arch=mlp" in title and "width=16" in title
    assert sum(int(k.split("n=")[1].rstrip(")")) for k in legend_colours(fig) if "(n=" in k) == 6
    plt.close(fig)
    out = plots.plot([mlp], "summary", tmp_path / "s.png", by="activation", where=["depth=4"], x="seed")
    assert out[0].read_bytes().startswith(b"\x89PNG")


# -- synthetic studies: many values, zips, mixed keys ------------------------------------------------------

def fake_sweep(root, rows: list[dict], grid: dict, zipped: dict | None = None):
    """A sweep folder of summaries only (what the summary kind reads): sweep.yaml, summary.csv, runs/<name>/."""
    root.mkdir(parents=True)
    for r in rows:
        (root / "runs" / r["name"]).mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "summary.csv", index=False)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"name": root.name, "grid": grid, "zip": zipped or {},
                                                     "runs": []}, sort_keys=False))
    return root


def fake_rows(**axes):
    import itertools

    keys = list(axes)
    rows = []
    for i, combo in enumerate(itertools.product(*axes.values())):
        row = {"name": f"r{i}", "seed": 0, "model.arch": "mlp", "model.width": 16, "status": "completed",
               "final_loss": 1.0 + i, "decay_per_layer": 0.5 + 0.01 * i}
        for k, v in zip(keys, combo):
            if isinstance(v, dict):
                row.update(v)
            else:
                row[k] = v
        rows.append(row)
    return rows


def test_a_zip_is_one_facet_and_mixed_keys_are_said(tmp_path):
    opt = [{"train.optimizer.name": "sgd", "train.optimizer.lr": 0.1},
           {"train.optimizer.name": "adam", "train.optimizer.lr": 0.001}]
    rows = fake_rows(**{"model.depth": [5, 10], "model.activation.name": ["tanh", "relu"], "opt": opt})
    folder = fake_sweep(tmp_path / "z", rows, {"model.depth": [5, 10], "model.activation": ["tanh", "relu"]},
                        {"train.optimizer.name": ["sgd", "adam"], "train.optimizer.lr": [0.1, 0.001]})
    fig = plots.figures([folder], "summary", x="depth", hue="lr")["summary"]  # lr names the whole zip
    leg = fig.legends[0]
    assert leg.get_title().get_text() == "optimizer, lr"
    assert [t.get_text().split("  ")[0] for t in leg.get_texts()][:2] == ["sgd, 0.1", "adam, 0.001"]
    assert {ax.get_title() for ax in fig.axes if ax.get_title()} == {"activation=tanh", "activation=relu"}
    plt.close(fig)
    warned = []  # --col none: the zip is averaged over, which the warning and the title say
    fig = plots.figures([folder], "summary", x="depth", hue="activation", col="none", row="none",
                        warn=warned.append)["summary"]
    title = fig.texts[0].get_text()
    assert len(warned) == 1 and "optimizer (adam, sgd)" in warned[0] and "optimizer (adam, sgd)" in title
    assert "over 2 runs" in title
    plt.close(fig)


def test_too_many_colours_is_refused_with_what_to_do_or_averaged_when_defaulted(tmp_path):
    acts = [f"a{i}" for i in range(13)]
    folder = fake_sweep(tmp_path / "c", fake_rows(**{"model.depth": [5, 10], "model.activation.name": acts}),
                        {"model.depth": [5, 10], "model.activation": acts})
    with pytest.raises(UserError, match="13 values, more than 12 colours.*--where activation="):
        plots.figures([folder], "summary", x="depth", hue="activation")
    fig = plots.figures([folder], "summary", x="depth")["summary"]  # the default hue does not fit: averaged
    assert "activation averaged over to fit one figure" in fig.texts[0].get_text().replace("\n", " ").replace("  ", " ")
    plt.close(fig)


def test_a_numeric_hue_with_many_values_gets_a_colour_bar(tmp_path):
    widths = list(range(8, 8 + 15))
    folder = fake_sweep(tmp_path / "w", fake_rows(**{"model.depth": [5, 10], "model.width": widths}),
                        {"model.depth": [5, 10], "model.width": widths})
    fig = plots.figures([folder], "summary", x="depth", hue="width")["summary"]
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("width")]
    assert len(bars) == 1 and "n = 30 runs" in bars[0].get_ylabel()
    lines = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "-"]
    assert len(lines) == 15
    plt.close(fig)


def test_too_many_panels_asked_for_is_a_user_error(tmp_path):
    rows = fake_rows(**{"model.depth": list(range(1, 8)), "model.width": list(range(8, 14))})
    folder = fake_sweep(tmp_path / "p", rows, {"model.depth": list(range(1, 8)), "model.width": list(range(8, 14))})
    with pytest.raises(UserError, match="42 panels.*more than 36.*--where"):
        plots.figures([folder], "summary", x="final_loss", col="depth", row="width")


def test_a_damaged_run_in_a_sweep_is_left_out_with_a_warning_and_counted(mlp, tmp_path):
    import shutil

    copy = tmp_path / "mlp"
    shutil.copytree(mlp, copy)
    victim = sorted((copy / "runs").iterdir())[0]
    (victim / "grad_norms.csv").write_bytes(b"\0\1\2")
    warned = []
    fig = plots.figures([copy], "profile", warn=warned.append)["profile"]
    assert len(warned) == 1 and "grad_norms.csv: binary data" in warned[0] and warned[0].endswith("; left out")
    assert sum(int(k.split("n=")[1].rstrip(")")) for k in legend_colours(fig) if "(n=" in k) == 11
    assert "2-3 runs" in fig.texts[0].get_text()
    plt.close(fig)


def test_recurrent_and_plain_nets_together_each_drawn_on_their_own_axis(mlp, recurrent):
    figs = plots.figures([mlp, recurrent], "all", warn=lambda m: None)
    assert sorted(figs) == ["heatmap", "profile", "summary", "time", "training"]
    prof = figs["profile"]
    assert sum(int(k.split("n=")[1].rstrip(")")) for k in legend_colours(prof) if "(n=" in k) == 12
    assert "4 recurrent runs: see time.png" in prof.texts[0].get_text()
    time_panels = [ax for ax in figs["time"].axes if ax.get_title()]
    assert sum(int(ax.get_title().split("n=")[1].rstrip(")")) for ax in time_panels) == 4
    for fig in figs.values():
        plt.close(fig)
