"""Repeated blocks: names split into block and member, the decay per block against exact geometric
profiles, and `vgp diagnose` of a model recorded outside vgp (no config.yaml) judged block to block."""

import math

import pandas as pd
import pytest

from vgp import analysis, blocks

GPT2_MEMBERS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def test_names_split_at_their_first_whole_number():
    assert blocks.split("transformer.h.3.attn.c_proj") == ("transformer.h.3", "attn.c_proj")
    assert blocks.split("layer2.0.downsample.0") == ("layer2.0", "downsample.0")  # not at the last number
    assert blocks.split("blocks.7") == ("blocks.7", "")
    assert blocks.split("transformer.wte") is None and blocks.split("lm_head") is None
    assert blocks.split("4") is None and blocks.split("2.weight_ih") is None  # a plain nn.Sequential's positions
    names = pd.Series(["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer2.0.conv1",
                       "layer2.0.downsample.0", "fc"], index=range(1, 8))
    found = blocks.find(names)
    assert list(found["block"].unique()) == ["layer1.0", "layer1.1", "layer2.0"]
    assert list(found["position"]) == [1, 1, 2, 3, 3] and 1 not in found.index and 7 not in found.index
    assert blocks.find(pd.Series(["h.0.a", "h.1.a", "head"], index=[1, 2, 3])) is None  # two blocks: no profile


def gpt2_like(n_blocks: int, rates: dict, scale: dict | None = None, step: int = 0) -> pd.DataFrame:
    """output_grad rows of a GPT-2-like model in forward order: member m of block p (1 = input side) has
    norm scale[m] * rates[m] ** (n_blocks - p), an exact geometric profile."""
    scale = scale or {}
    rows, layer = [], 1
    for name in ("transformer.wte", "transformer.wpe"):
        rows.append((step, layer, name, "output_grad", 1e-3))
        layer += 1
    for p in range(1, n_blocks + 1):
        for m in GPT2_MEMBERS:
            rows.append((step, layer, f"transformer.h.{p - 1}.{m}", "output_grad",
                         scale.get(m, 1.0) * rates[m] ** (n_blocks - p)))
            layer += 1
    for name in ("transformer.ln_f", "lm_head"):
        rows.append((step, layer, name, "output_grad", 1.0))
        layer += 1
    return pd.DataFrame(rows, columns=["step", "layer", "name", "kind", "value"])


@pytest.mark.parametrize("rate", [1e-3, 0.5, 1.0, 2.0])
def test_decay_per_block_is_the_median_member_rate_and_compounds_over_blocks(rate):
    rates = {m: rate for m in GPT2_MEMBERS}
    rates["ln_1"] = 0.9  # one odd member does not move the median
    g = gpt2_like(10, rates, scale={"attn.c_attn": 1e4, "ln_2": 1e-5})  # kinds differ in size, not in rate
    s = blocks.stats(g, 0, analysis.Thresholds(), analysis.judge, analysis.decay_rate)
    assert s["blocks"] == 10 and s["first_block"] == "transformer.h.0" and s["last_block"] == "transformer.h.9"
    assert s["decay_per_block"] == pytest.approx(rate, rel=1e-9)
    assert s["compounded"] == pytest.approx(rate ** 9, rel=1e-9)
    assert s["verdict"] == {1e-3: "vanishing", 0.5: "vanishing", 1.0: "healthy", 2.0: "exploding"}[rate]
    order = [m["member"] for m in s["members"]]  # furthest from 1 first: where the signal is carried
    assert order.index("ln_1") == (0 if rate == 1.0 else len(order) - 1)
    # blocks 1..k below drop x the last block's: rate ** (10 - p) < 0.01
    expect_drop = max([p for p in range(1, 11) if rate ** (10 - p) < 0.01], default=None)
    assert s["drop_block"] == expect_drop


def test_diagnose_of_a_model_recorded_outside_vgp_judges_block_to_block(tmp_path):
    rates = {m: 0.5 for m in GPT2_MEMBERS}
    g = pd.concat([gpt2_like(8, rates, step=0), gpt2_like(8, {m: 1.0 for m in GPT2_MEMBERS}, step=10)])
    g.to_csv(tmp_path / "grad_norms.csv", index=False)
    pd.DataFrame({"step": [0, 10], "loss": [3.0, 2.0]}).to_csv(tmp_path / "metrics.csv", index=False)
    d = analysis.diagnose(tmp_path)
    assert d["verdict"] == "vanishing" and d["verdict_last"] == "healthy"
    assert d["decay_per_block"] == pytest.approx(0.5, rel=1e-9)
    text = analysis.report(d)
    assert "repeated blocks transformer.h.0 .. transformer.h.7 (8): output_grad x0.5 per block" in text
    cols = analysis.summary_columns(tmp_path)
    assert cols["decay_per_block"] == pytest.approx(0.5, rel=1e-9)


def test_vgp_runs_keep_their_per_layer_verdict(tmp_path):
    """A vgp MLP names its layers blocks.N.linear: with a config, the verdict stays per layer."""
    rows = [(0, i, f"blocks.{i - 1}.linear", "output_grad", 0.5 ** (6 - i)) for i in range(1, 7)]
    pd.DataFrame(rows, columns=["step", "layer", "name", "kind", "value"]).to_csv(tmp_path / "grad_norms.csv",
                                                                               index=False)
    (tmp_path / "config.yaml").write_text("model: {arch: mlp, depth: 5, activation: tanh}\n")
    d = analysis.diagnose(tmp_path)
    assert d["steps"]["first"]["blocks"] is None and math.isnan(d["decay_per_block"])
    assert d["decay_per_layer"] == pytest.approx(0.5, rel=1e-9)
