"""The causal transformer: what is recorded against independent computations, Xiong et al. 2020's
gradients at initialisation (post-LN against pre-LN), ReZero's identity blocks, DeepNorm's constants,
causality, the markov language, the config rules and the per-block diagnosis."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, tiny
from vgp import analysis, config, data as datasets
from vgp.errors import ConfigError
from vgp.models.transformer import deepnorm_constants
from vgp.optim import OPTIMIZERS
from vgp.train import build_model, run


def tcfg(**over) -> dict:
    """A tiny transformer on the markov language (a class per step)."""
    base = dict(model__arch="transformer", model__depth=3, model__width=8, model__heads=2, model__mlp_ratio=2,
                model__norm="layernorm", model__norm_position="pre", model__activation="gelu",
                data={"name": "markov", "seq_len": 6, "vocab": 5, "n_train": 16, "n_test": 8},
                train__batch_size=16, train__steps=3)
    return tiny(**{**base, **over})


def _loss(logits, y, task):
    if task != "classification":
        return F.mse_loss(logits, y)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _reference(cfg, steps):
    """Train the same transformer full-batch by hand; every recorded kind computed independently:
    parameter norms from p.grad in float64, the residual stream's gradient by torch.autograd.grad of
    the loss with respect to each block's output (and the embedding's and the head's outputs)."""
    torch.manual_seed(cfg.seed)
    d = datasets.load(cfg.data, cfg.seed)
    model, act = build_model(cfg.model, d)
    model.train()
    params = list(model.parameters())
    opt = OPTIMIZERS.build(cfg.train.optimizer, params)
    lin = {"embed": model.embed, "head": model.head}
    for i, b in enumerate(model.blocks):
        for n in ("q", "k", "v", "out"):
            lin[f"blocks.{i}.attn.{n}"] = getattr(b.attn, n)
        lin[f"blocks.{i}.mlp.fc1"], lin[f"blocks.{i}.mlp.fc2"] = b.mlp.fc1, b.mlp.fc2
    order = ["embed"] + [f"blocks.{i}.{m}" for i in range(len(model.blocks))
                         for m in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc1", "mlp.fc2", "")] + ["head"]
    order = [n.rstrip(".") for n in order]
    number = {n: k + 1 for k, n in enumerate(order)}
    act_fn = F.gelu if cfg.model.activation["name"] == "gelu" else torch.relu
    out = {}
    for step in range(steps):
        outs, fc1 = {}, {}
        hooks = [model.embed.register_forward_hook(lambda m, i, o: outs.__setitem__("embed", o)),
                 model.head.register_forward_hook(lambda m, i, o: outs.__setitem__("head", o))]
        for i, b in enumerate(model.blocks):
            hooks.append(b.register_forward_hook(lambda m, inp, o, i=i: outs.__setitem__(f"blocks.{i}", o)))
            hooks.append(b.mlp.fc1.register_forward_hook(lambda m, inp, o, i=i: fc1.__setitem__(i, o.detach())))
        loss = _loss(model(d.x_train), d.y_train, d.task)
        for h in hooks:
            h.remove()
        names = list(outs)
        stream = torch.autograd.grad(loss, [outs[n] for n in names], retain_graph=True)
        opt.zero_grad()
        loss.backward()
        for n, g in zip(names, stream):
            out[(step, number[n], "output_grad")] = g.double().norm().item()
        before = {n: m.weight.detach().clone() for n, m in lin.items()}
        for n, m in lin.items():
            out[(step, number[n], "weight_grad")] = m.weight.grad.double().norm().item()
            out[(step, number[n], "underflow")] = (m.weight.grad.abs() < torch.finfo(torch.float32).tiny
                                                   ).double().mean().item()
            out[(step, number[n], "bias_grad")] = m.bias.grad.double().norm().item()
            out[(step, number[n], "weight")] = before[n].double().norm().item()
        for i, z in fc1.items():
            h = act_fn(z.double())
            zz = z.clone().requires_grad_(True)
            (dphi,) = torch.autograd.grad(act_fn(zz).sum(), zz)
            grid = torch.linspace(-20, 20, 400001, requires_grad=True)
            (dgrid,) = torch.autograd.grad(act_fn(grid).sum(), grid)
            k = number[f"blocks.{i}.mlp.fc1"]
            out[(step, k, "act_mean")] = h.mean().item()
            out[(step, k, "act_std")] = h.std(unbiased=False).item()
            out[(step, k, "saturation")] = (dphi.abs() < 0.05 * dgrid.abs().max()).double().mean().item()
            # a unit is a (position, feature) pair, as a conv map's are (channel, position) pairs
            out[(step, k, "dead")] = (h.flatten(1) == 0).all(0).double().mean().item()
        opt.step()
        for n, m in lin.items():
            out[(step, number[n], "update_ratio")] = ((m.weight.detach() - before[n]).double().norm()
                                                      / before[n].double().norm()).item()
    return out, order


CASES = {
    "pre-layernorm-gelu-adam": dict(train__optimizer={"name": "adam", "lr": 0.01}),
    "post-rmsnorm-relu-sgd": dict(model__norm="rmsnorm", model__norm_position="post", model__activation="relu",
                                  model__positions="sinusoidal"),
    "pre-rezero-adam": dict(model__residual_scale="rezero", train__optimizer={"name": "adam", "lr": 0.01}),
    "post-deepnorm-xavier": dict(model__norm_position="post", model__residual_scale="deepnorm",
                                 model__init="xavier_normal"),
    "none-last-position-regression": dict(model__norm="none", model__norm_position="none",
                                          data={"name": "adding", "seq_len": 5, "n_train": 16, "n_test": 8}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_values_equal_independent_computation(tmp_path, case):
    steps = 3
    cfg = config.from_dict(tcfg(train__steps=steps, **CASES[case]))
    result = run(cfg, out=tmp_path, quiet=True)
    assert result.status == "completed"
    g = pd.read_csv(result.folder / "grad_norms.csv")
    ref, order = _reference(cfg, steps)
    names = g.drop_duplicates("layer").set_index("layer")["name"]
    assert list(names.sort_index()) == order  # embed, per block q, k, v, out, fc1, fc2, the stream; head
    recorded = {(r.step, r.layer, r.kind): r.value for r in g.itertuples()}
    assert set(recorded) == set(ref)  # output_grad only where the reference has it: embed, blocks.i, head
    for key, want in ref.items():
        assert recorded[key] == pytest.approx(want, rel=2e-4, abs=1e-7), key


def test_output_is_causal():
    """Position t's output does not change when later inputs do, and does when earlier ones do."""
    cfg = config.from_dict(tcfg())
    torch.manual_seed(0)
    d = datasets.load(cfg.data, 0)
    model, _ = build_model(cfg.model, d)
    x = d.x_train[:4].clone()
    y0 = model(x)
    x2 = x.clone()
    x2[:, 3:] = torch.randn_like(x2[:, 3:])
    y2 = model(x2)
    assert torch.equal(y0[:, :3], y2[:, :3])
    assert not torch.allclose(y0[:, 3:], y2[:, 3:])


def _ffn_grad_norms(pos: str, depth: int, seed: int) -> tuple[float, float]:
    """Norms of the gradient of the first and the last block's MLP weights (fc1 and fc2 together) at
    initialisation, Xiong et al. 2020's Figure 3 quantity: Xavier init, zero biases, one batch."""
    cfg = config.from_dict(tcfg(seed=seed, model__depth=depth, model__width=64, model__heads=4, model__mlp_ratio=4,
                                model__norm_position=pos, model__init="xavier_normal", model__bias_init="zeros",
                                model__activation="relu",
                                data={"name": "markov", "seq_len": 32, "vocab": 16, "n_train": 32, "n_test": 8},
                                train__batch_size=32), preflight=False)
    torch.manual_seed(seed)
    d = datasets.load(cfg.data, seed)
    model, _ = build_model(cfg.model, d)
    _loss(model(d.x_train), d.y_train, d.task).backward()

    def norm(b):
        return math.sqrt(sum(p.grad.double().square().sum().item() for p in (b.mlp.fc1.weight, b.mlp.fc2.weight)))

    return norm(model.blocks[0]), norm(model.blocks[-1])


@pytest.mark.slow
def test_xiong_post_ln_gradients_grow_toward_output_pre_ln_do_not():
    """Xiong et al. 2020 (Theorem 1, Figure 3): at init, post-LN's parameter gradients grow toward the
    output, more so the deeper the net; pre-LN's do not, and its last block's gradient shrinks with
    depth as about 1/sqrt(depth). Geometric means over 6 seeds at depths 6, 12, 24 (width 64)."""
    seeds = range(6)
    ratio, last = {}, {}
    for pos in ("post", "pre"):
        for depth in (6, 12, 24):
            r = [_ffn_grad_norms(pos, depth, s) for s in seeds]
            ratio[pos, depth] = math.exp(sum(math.log(b / a) for a, b in r) / len(r))
            last[pos, depth] = math.exp(sum(math.log(b) for a, b in r) / len(r))
    # post-LN: last block's gradient over the first's well above 1, growing with depth
    assert ratio["post", 6] > 1.1
    assert ratio["post", 24] > 2.0
    assert ratio["post", 6] < ratio["post", 12] < ratio["post", 24]
    # pre-LN: no growth toward the output (it falls), and the last block's gradient shrinks with depth
    assert all(ratio["pre", depth] < 0.8 for depth in (6, 12, 24))
    assert last["pre", 6] > last["pre", 12] > last["pre", 24]
    # 1/sqrt(depth): x0.71 from 6 to 12 blocks, x0.5 from 6 to 24
    assert 0.5 < last["pre", 12] / last["pre", 6] < 0.95
    assert 0.25 < last["pre", 24] / last["pre", 6] < 0.7


def test_rezero_blocks_are_the_identity_at_init(tmp_path):
    """With a zero gain on every branch, the residual stream is x_0 through all 100 blocks and its
    gradient reaches block 1 unchanged: output_grad of every block equal, grad_ratio exactly 1.
    Without rezero (pre-LN, the same net otherwise) the ratio is not 1."""
    over = dict(model__depth=100, model__width=8, train__steps=1, log__kinds=["output_grad"])
    rz = run(config.from_dict(tcfg(name="rz", model__residual_scale="rezero", **over)), out=tmp_path, quiet=True)
    g = pd.read_csv(rz.folder / "grad_norms.csv")
    stream = g[(g.kind == "output_grad") & g.name.str.fullmatch(r"blocks\.\d+")]
    assert len(stream) == 100
    assert stream.value.nunique() == 1 and stream.value.iloc[0] > 0
    assert rz.summary["grad_ratio"] == 1.0
    plain = run(config.from_dict(tcfg(name="plain", **over)), out=tmp_path, quiet=True)
    assert abs(math.log(plain.summary["grad_ratio"])) > 0.01


def test_deepnorm_constants_and_branch_scaling():
    """Wang et al. 2022, decoder-only: alpha = (2N)^(1/4), beta = (8N)^(-1/4); v, out, fc1, fc2 weights
    are scaled by beta (their std against q's, same shape and init, is beta), q and k are not."""
    alpha, beta = deepnorm_constants(12)
    assert alpha == pytest.approx(24 ** 0.25) and beta == pytest.approx(96 ** -0.25)
    cfg = config.from_dict(tcfg(model__depth=12, model__width=64, model__heads=4, model__norm_position="post",
                                model__residual_scale="deepnorm", model__init="xavier_normal"))
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, datasets.load(cfg.data, 0))
    q = torch.cat([b.attn.q.weight.flatten() for b in model.blocks]).std().item()
    k = torch.cat([b.attn.k.weight.flatten() for b in model.blocks]).std().item()
    v = torch.cat([b.attn.v.weight.flatten() for b in model.blocks]).std().item()
    out = torch.cat([b.attn.out.weight.flatten() for b in model.blocks]).std().item()
    assert k / q == pytest.approx(1.0, rel=0.02)
    assert v / q == pytest.approx(beta, rel=0.02) and out / q == pytest.approx(beta, rel=0.02)
    assert model.blocks[0].alpha == pytest.approx(alpha)


def test_markov_language_has_the_entropy_it_claims():
    """Each context of 2 symbols allows exactly `branching` next symbols, equally often; the empirical
    conditional entropy of the generated data is the task_best the data set reports."""
    d = datasets.load({"name": "markov", "seq_len": 64, "vocab": 6, "order": 2, "branching": 3,
                       "n_train": 3000, "n_test": 10}, seed=1)
    tokens = torch.cat([d.x_train[:, :1].argmax(-1), d.y_train], 1)  # (N, T + 1)
    ctx = tokens[:, :-2] * 6 + tokens[:, 1:-1]
    nxt = tokens[:, 2:]
    counts = torch.zeros(36, 6)
    counts.index_put_((ctx.flatten(), nxt.flatten()), torch.ones(ctx.numel()), accumulate=True)
    assert ((counts > 0).sum(1) == 3).all()
    p = counts / counts.sum(1, keepdim=True)
    h = -(counts * torch.where(p > 0, p.log(), torch.zeros(()))).sum() / counts.sum()
    assert h.item() == pytest.approx(math.log(3), rel=0.01)
    assert d.info["task_best"] == pytest.approx((math.log(6) + 63 * math.log(3)) / 64)
    assert d.info["task_baseline"] == pytest.approx(math.log(6), rel=0.01)  # the symbols are near uniform


@pytest.mark.parametrize("over, key, words", [
    (dict(model__width=10, model__heads=4), "model.heads", "not divisible"),
    (dict(model__norm="none"), "model.norm", "layernorm or rmsnorm"),
    (dict(model__norm="batchnorm"), "model.norm", "layernorm or rmsnorm"),
    (dict(model__norm_position="none"), "model.norm", "norm_position=none"),
    (dict(model__residual_scale="deepnorm"), "model.residual_scale", "post"),
    (dict(model__norm_position="post", model__residual_scale="rezero"), "model.residual_scale", "pre or none"),
    (dict(model__skip=True), "model.skip", "always residual"),
    (dict(data={"name": "teacher"}), "model.arch", "sequences of shape (T, F)"),
])
def test_config_rules(over, key, words):
    with pytest.raises(ConfigError) as e:
        config.from_dict(tcfg(**over))
    assert key in str(e.value) and words in str(e.value)


def test_deepnorm_only_for_a_transformer():
    with pytest.raises(ConfigError, match="model.residual_scale: deepnorm"):
        config.from_dict(tiny(model__residual_scale="deepnorm"))


def test_diagnosis_reads_the_residual_stream_block_by_block(tmp_path):
    """The diagnosis's per-block rate is the Theil-Sen rate of the blocks' output_grad rows, and the
    theory says it does not apply."""
    result = run(config.from_dict(tcfg(model__depth=6, train__steps=1)), out=tmp_path, quiet=True)
    d = analysis.diagnose(result.folder)
    bs = d["steps"]["first"]["blocks"]
    assert bs["blocks"] == 6 and bs["first_block"] == "blocks.0" and bs["last_block"] == "blocks.5"
    g = pd.read_csv(result.folder / "grad_norms.csv")
    stream = g[(g.step == 0) & (g.kind == "output_grad") & g.name.str.fullmatch(r"blocks\.\d+")]
    assert bs["decay_per_block"] == pytest.approx(analysis.decay_rate(stream.sort_values("layer").value)[0])
    assert result.summary["decay_per_block"] == pytest.approx(bs["decay_per_block"])
    assert not d["theory"]["applies"] and "transformer" in d["theory"]["reason"]


@pytest.mark.slow
def test_deep_post_ln_needs_warmup_at_a_pre_ln_learning_rate(tmp_path):
    """Xiong et al. 2020, section 3: Adam at an lr a pre-LN transformer trains at (1e-3) leaves a
    12-block post-LN one near the loss of a model that remembers nothing (the symbols' entropy,
    task_baseline), and a linear warm-up over the first 100 steps (train.schedule) lets it train.
    The shipped config, 300 steps (about a minute a run on one core)."""
    def final(name, **over):
        cfg = config.load(ROOT / "configs" / "transformer_preln.yaml",
                          [f"name={name}", "log.every=50", "device=cpu"] + [f"{k}={v}" for k, v in over.items()])
        result = run(cfg, out=tmp_path, quiet=True)
        assert result.status == "completed"
        return result.summary["final_test_loss"], result.summary["task_baseline"]

    pre, baseline = final("pre")
    post, _ = final("post", **{"model.norm_position": "post"})
    post_warm, _ = final("post-warm", **{"model.norm_position": "post",
                                         "train.schedule": "{name: warmup, warmup_steps: 100}"})
    assert pre < 0.7 * baseline  # pre-LN learns the language at this lr
    assert post > 0.95 * baseline  # post-LN without warm-up: no better than remembering nothing
    assert post_warm < 0.9 * baseline  # with warm-up it learns (seed 0: 0.70 x baseline; seed 1: 0.85 x)
    assert post_warm < post - 0.3


@pytest.mark.parametrize("over", [{}, dict(model__positions="sinusoidal", model__mlp_ratio=3),
                                  dict(model__norm_position="post", model__residual_scale="deepnorm",
                                       model__norm="rmsnorm", model__width=12, model__heads=3),
                                  dict(model__residual_scale="rezero", model__depth=5)])
def test_preflight_counts_the_parameters_exactly(over):
    """vgp validate's memory estimate starts from the parameter count its 1-head miniatures fit: equal
    to the real net's, learned positions of the data's length included."""
    from vgp import preflight

    cfg = config.from_dict(tcfg(data={"name": "markov", "seq_len": 20, "vocab": 5, "n_train": 16, "n_test": 8},
                                **over))
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, datasets.load(cfg.data, 0))
    assert preflight.estimate(cfg)["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("over", [dict(model__norm_position="post"),
                                  dict(model__norm_position="post", model__residual_scale="deepnorm"),
                                  dict(), dict(model__residual_scale="rezero"),
                                  dict(model__norm="none", model__norm_position="none"),
                                  dict(train__schedule={"name": "warmup", "warmup_steps": 2})])
@pytest.mark.parametrize("problem", ["vanishing", "exploding"])
def test_advice_for_a_transformer_is_a_change_that_validates(over, problem):
    """What the diagnosis proposes for a transformer is a transformer's remedy (never model.skip or batch
    norm, which it rejects), not what the config does already, and each key=value it names validates."""
    import re

    cfg = config.to_dict(config.from_dict(tcfg(**over)))
    s = analysis.setup(cfg)
    _, fixes = (analysis._fixes_vanishing(s, False, False) if problem == "vanishing"
                else analysis._fixes_exploding(s, False))
    text = " ".join(fixes)
    assert "skip" not in text and "batchnorm" not in text
    changes = [c.split() for c in re.findall(r"\(([a-z_.]+=[^;)]+)[;)]", text)]  # '(a=1 b=2)': one change
    assert changes
    for change in changes:
        assert any(str(config.flatten(cfg).get(k)) != v for k, v in (c.split("=") for c in change))  # not as is
        config.from_dict(cfg, change)  # raises ConfigError if the advice were invalid


def test_rmsnorm_in_an_mlp_and_not_in_a_resnet():
    """model.norm=rmsnorm is PyTorch's nn.RMSNorm in an MLP's blocks (each row of the normalised
    pre-activations has mean square 1); a resnet rejects it like layernorm."""
    cfg = config.from_dict(tiny(model__norm="rmsnorm"))
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, datasets.load(cfg.data, 0))
    block = model.blocks[0]
    assert isinstance(block.norm, torch.nn.RMSNorm)
    z = block.norm(block.linear(torch.randn(5, 8)))
    assert (z.square().mean(1) - 1).abs().max() < 1e-3
    with pytest.raises(ConfigError, match="a resnet takes none or batchnorm"):
        config.from_dict(tiny(model__arch="resnet", model__depth=8, model__norm="rmsnorm",
                              data={"name": "digits"}))


def test_heatmap_rows_are_the_layers_with_output_grad(tmp_path):
    """A transformer's output_grad rows are layers 1, 8, 15, ... (embed, blocks.i, head): the heatmap
    labels each row with its name and layer number, not with consecutive numbers."""
    from vgp import plots

    result = run(config.from_dict(tcfg(model__depth=3, train__steps=2)), out=tmp_path, quiet=True)
    fig = plots.heatmap(analysis.read_run(result.folder))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["embed (1)", "blocks.0 (8)", "blocks.1 (15)", "blocks.2 (22)", "head (23)"]
