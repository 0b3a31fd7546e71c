"""vgp.plots: every kind of figure for one run and for a group of runs, with zeros and NaNs in them."""

import math

import pandas as pd
import pytest

from conftest import tiny
from vgp import config, plots
from vgp.errors import UserError
from vgp.train import run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep-shaped folder <sweep>/runs/<id>/ of real tiny runs: activation x depth x 2 seeds."""
    root = tmp_path_factory.mktemp("sweep")
    for act in ("tanh", "relu"):
        for depth in (3, 6):
            for seed in (0, 1):
                cfg = config.from_dict(tiny(name=f"{act}-d{depth}-s{seed}", seed=seed, model__activation=act,
                                            model__depth=depth, model__init="xavier_normal", train__steps=6,
                                            log__every=2))
                run(cfg, out=root / "runs", quiet=True)
    return root


@pytest.fixture
def broken(tmp_path):
    """A synthetic recurrent run whose norms underflowed (0) and diverged (NaN/inf)."""
    f = tmp_path / "broken"
    f.mkdir()
    rows = [(s, l, f"l{l}", k, v) for s in (0, 10) for l in range(1, 6) for k in ("output_grad", "weight_grad")
            for v in [0.0 if l == 1 else (math.nan if s == 10 and l == 2 else 10.0 ** l)]]
    pd.DataFrame(rows, columns=["step", "layer", "name", "kind", "value"]).to_csv(f / "grad_norms.csv", index=False)
    pd.DataFrame({"step": [0, 10], "loss": [1.0, math.inf], "acc": [0.5, math.nan], "grad_norm": [1.0, math.inf],
                  "grad_norm_clipped": [1.0, 1.0], "test_loss": [1.1, math.nan], "test_acc": [0.4, math.nan]}) \
        .to_csv(f / "metrics.csv", index=False)
    t = [(s, 1, k, 0.0 if k < 3 else 0.9 ** (20 - k)) for s in (0, 10) for k in range(1, 21)]
    pd.DataFrame(t, columns=["step", "layer", "t", "value"]).to_csv(f / "time_grads.csv", index=False)
    return f


def _ok(path, svg=False):
    data = path.read_bytes()
    assert len(data) > 5000, path
    assert data.lstrip().startswith(b"<?xml") if svg else data.startswith(PNG)
    return data.decode() if svg else data


def test_every_kind_for_one_run(sweep, tmp_path):
    one = sweep / "runs" / "tanh-d6-s0"
    files = plots.plot([one], out=tmp_path)
    assert sorted(p.name for p in files) == ["heatmap.png", "profile.png", "training.png"]
    for p in files:
        _ok(p)
    svg = _ok(plots.plot([one], "profile", tmp_path / "p.svg")[0], svg=True)
    assert "mean-field theory" in svg and "output_grad" in svg  # the prediction is drawn beside the data


def test_every_kind_for_a_group(sweep, tmp_path):
    files = plots.plot([sweep], out=tmp_path, fmt="svg")
    assert sorted(p.name for p in files) == ["heatmap.svg", "profile.svg", "summary.svg", "training.svg"]
    texts = {p.stem: _ok(p, svg=True) for p in files}
    assert "activation=relu" in texts["profile"]  # labelled by the keys that differ
    assert "depth" in texts["summary"] and "band: min-max over 2 runs (2 seeds)" in texts["summary"]
    out = plots.plot([sweep], "summary", tmp_path / "s.png", x="depth", y="decay_per_layer", by="activation")
    _ok(out[0])


def test_a_folder_of_runs_is_one_study_split_by_what_differs(sweep):
    s = plots.load([sweep])
    assert len(s.table) == 8 and s.axes == [["model.depth"], ["model.activation.name"]]  # seed is no axis
    named = plots.load(sorted((sweep / "runs").iterdir()))  # run folders one by one: no axis per folder
    assert "source" not in named.table and named.axes == s.axes
    for _, row in s.table.iterrows():
        own = pd.read_csv(f"{row.folder}/summary.csv").iloc[0]
        assert row.decay_per_layer == pytest.approx(float(own.decay_per_layer))


def test_zeros_and_nans_are_masked_and_said(broken, tmp_path):
    files = plots.plot([broken], out=tmp_path, fmt="svg")
    assert sorted(p.name for p in files) == ["heatmap.svg", "profile.svg", "time.svg", "training.svg"]
    texts = {p.stem: _ok(p, svg=True) for p in files}
    assert "not drawn" in texts["profile"] and "zero (underflow)" in texts["profile"] and "NaN/inf" in texts["profile"]
    assert "grey" in texts["heatmap"]
    assert "not drawn" in texts["time"] and "diverged" in texts["training"]


def test_time_overlay_for_several_recurrent_runs(broken, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(broken, other)
    _ok(plots.plot([broken, other], "time", tmp_path / "t.png")[0])


def test_user_errors(sweep, tmp_path):
    one = sweep / "runs" / "relu-d3-s0"
    with pytest.raises(UserError, match="did you mean 'heatmap'"):
        plots.plot([one], "heatmp")
    with pytest.raises(UserError, match="no such file"):
        plots.plot([tmp_path / "missing"])
    with pytest.raises(UserError, match="recurrent"):
        plots.plot([one], "time", tmp_path / "t.png")
    with pytest.raises(UserError, match="compare runs"):
        plots.plot([one], "summary", tmp_path / "s.png")
    with pytest.raises(UserError, match=".png or .svg"):
        plots.plot([one], "profile", tmp_path / "p.pdf")
    with pytest.raises(UserError, match="not recorded"):
        plots.plot([one], "profile", tmp_path / "p.png", steps=[3])


@pytest.mark.slow
def test_cli_plot(sweep, tmp_path, cli):
    r = cli("plot", sweep / "runs" / "tanh-d3-s0", "--kind", "profile", "-o", tmp_path / "p.png", "--steps", "0,4")
    assert r.returncode == 0, r.stderr
    _ok(tmp_path / "p.png")
    r = cli("plot", sweep, "--kind", "summary", "--hue", "activation", "--where", "depth=6", "--x", "seed",
            "-o", tmp_path / "s.svg")
    assert r.returncode == 0, r.stderr
    assert "where depth=6" in (tmp_path / "s.svg").read_text()
    r = cli("plot", sweep, "--kind", "summary", "--y", "nosuch", "-o", tmp_path / "t.svg")
    assert r.returncode == 2 and "unknown --y 'nosuch'" in r.stderr and "Traceback" not in r.stderr
    r = cli("plot", sweep, "--kind", "profle")
    assert r.returncode == 2 and "did you mean 'profile'" in r.stderr and "Traceback" not in r.stderr
