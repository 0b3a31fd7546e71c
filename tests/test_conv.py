"""Residual and plain conv nets: what He et al. 2016 and Yang et al. 2019 report, measured."""

import numpy as np
import pandas as pd
import pytest

from conftest import tiny
from vgp import config
from vgp.errors import ConfigError, UserError
from vgp.train import run


def conv_cfg(**over):
    base = dict(model__arch="resnet", model__depth=56, model__width=16, model__activation="relu",
                model__init="default", data={"name": "digits"}, train__steps=1, train__batch_size=64)
    return config.from_dict(tiny(**{**base, **over}))


def output_grads(tmp_path, **over) -> np.ndarray:
    folder = run(conv_cfg(**over), out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv")
    return g[(g.step == 0) & (g.kind == "output_grad")].sort_values("layer").value.to_numpy()


def test_depth_is_six_n_plus_two_weight_layers(tmp_path):
    folder = run(conv_cfg(model__depth=20, model__width=4, model__norm="batchnorm"), out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv")
    names = g.drop_duplicates("layer").sort_values("layer").name.tolist()
    assert len(names) == 20 and names[0] == "conv" and names[-1] == "out"
    assert names[1:3] == ["stages.0.0.conv1", "stages.0.0.conv2"] and names[-2] == "stages.2.2.conv2"
    assert set(g[g.kind == "bias_grad"].name) == {"out"}  # convs before batch norm have no bias
    with pytest.raises(ConfigError, match=r"6n\+2 weight layers, got 21 \(valid: 20, 32, 44, 56, 110"):
        conv_cfg(model__depth=21)


def test_resnet_needs_images(tmp_path):
    with pytest.raises(UserError, match=r"needs image data of shape \(C, H, W\); data 'teacher'"):
        run(conv_cfg(data={"name": "teacher", "dim": 8}), out=tmp_path, quiet=True)


def test_plain_net_without_batchnorm_vanishes_residual_does_not(tmp_path):
    plain = output_grads(tmp_path / "p", model__norm="none", model__skip=False)
    residual = output_grads(tmp_path / "r", model__norm="none", model__skip=True)
    # first conv vs last hidden conv: many orders below (1e-26: float32 sums of squares would give 0) ...
    assert plain[0] <= 1e-6 * plain[-2]
    # ... while the skips keep every layer within about one order of magnitude of the last
    assert np.all(residual[:-1] > 0.1 * residual[-2]) and np.all(residual[:-1] < 10 * residual[-2])


def test_plain_net_with_batchnorm_explodes_toward_the_input(tmp_path):
    og = output_grads(tmp_path, model__norm="batchnorm", model__skip=False)
    assert og[0] > 100 * og[-2]  # Yang et al. 2019: gradient explosion in deep batch-normalised nets


def test_vanishing_gradients_are_written_and_summarised(tmp_path):
    """The first conv's output gradient, 1e-27, lies below what float32 sums of squares can hold
    (its entries' squares underflow): written and summarised as the float64 norm, not as 0."""
    folder = run(conv_cfg(model__norm="none", model__skip=False), out=tmp_path, quiet=True).folder
    g = pd.read_csv(folder / "grad_norms.csv")
    first = g[(g.kind == "output_grad") & (g.layer == 1)].value.iloc[0]
    assert 0 < first < 1e-20
    s = pd.read_csv(folder / "summary.csv").iloc[0]
    assert s["status"] == "completed" and 0 < s["grad_ratio"] < 1e-20


@pytest.mark.slow
def test_degradation_plain_deeper_trains_worse_residual_does_not(tmp_path):
    """He et al. 2016, figure 1 in miniature: a short CPU training on the digits."""
    def final_train_loss(depth, skip):
        cfg = conv_cfg(name=f"d{depth}-{skip}", model__depth=depth, model__width=8, model__norm="batchnorm",
                       model__skip=skip, train__steps=300, train__batch_size=64, log__every=5,
                       log__kinds=["weight_grad"], train__optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
        folder = run(cfg, out=tmp_path, quiet=True).folder
        m = pd.read_csv(folder / "metrics.csv").dropna(subset=["loss"])
        return m.loss.tail(6).mean()  # the last 30 steps

    plain20, plain56 = final_train_loss(20, False), final_train_loss(56, False)
    res20, res56 = final_train_loss(20, True), final_train_loss(56, True)
    # measured: plain 0.28 (20) vs 1.59 (56); residual 0.001 (20) vs 0.0004 (56)
    assert plain56 > 2 * plain20
    assert res56 < res20 + 0.05 and res56 < 0.1 * plain56
