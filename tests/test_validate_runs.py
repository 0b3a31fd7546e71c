"""`vgp validate` accepts only configs that run: random configs drawn near the edges of what is valid.

Each config is drawn from values that are each plausible on their own, so that their combinations
hit what PyTorch rejects at run time (batch norm with one example per batch, a resnet on vectors, a
recurrent net on images, an identity init on a non-square layer, a batch larger than the training
set, one class, ...). Whatever validation accepts must then train without an exception (completed
or diverged: a result); whatever it rejects must be one line naming the key, and leave no folder.
"""

import random

import pytest

from vgp import config
from vgp.errors import ConfigError
from vgp.train import run

ARCHS = ["mlp", "mlp", "mlp", "resnet", "rnn", "lstm", "gru"]
ACTIVATIONS = ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softsign",
               "softplus"]
INITS = ["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal",
         {"name": "orthogonal", "gain": 1.2}, {"name": "identity", "scale": 1.0}, {"name": "normal", "std": 0.5},
         {"name": "uniform", "a": 0.1}, {"name": "variance_scaling", "scale": 2.0}]
BIAS_INITS = ["zeros", "default", {"name": "normal", "std": 0.1}, {"name": "constant", "value": 0.5}]
OPTIMIZERS = [{"name": "sgd", "lr": 0.05}, {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
              {"name": "sgd", "lr": 0.05, "nesterov": True}, {"name": "adam", "betas": [0.5, 0.9]},
              {"name": "adam", "betas": [0.0, 0.0]}, {"name": "adamw"}, {"name": "rmsprop", "momentum": 0.5},
              {"name": "adagrad"}]


def _data(rng: random.Random) -> dict:
    n_train, n_test = rng.choice([1, 2, 5, 40]), rng.choice([1, 3, 16])
    return rng.choice([
        {"name": "teacher", "dim": rng.choice([1, 2, 8]), "classes": rng.choice([1, 2, 3]), "hidden": 4,
         "n_train": n_train, "n_test": n_test},
        {"name": "spirals", "classes": rng.choice([1, 2, 3]), "n_train": n_train, "n_test": n_test},
        {"name": "digits", "n_test": rng.choice([1, 50])},
        {"name": "adding", "seq_len": rng.choice([1, 2, 6]), "n_train": n_train, "n_test": n_test},
        {"name": "copy", "seq_len": rng.choice([1, 3]), "length": rng.choice([1, 2]), "symbols": rng.choice([1, 3]),
         "n_train": n_train, "n_test": n_test},
        {"name": "seq_digits", "order": rng.choice(["pixel", "row"]), "n_test": 20},
    ])


def draw(rng: random.Random, i: int) -> dict:
    arch = rng.choice(ARCHS)
    depth = rng.choice([0, 1, 2, 3]) if arch != "resnet" else rng.choice([8, 9, 14])
    return {
        "name": f"c{i}", "seed": i, "device": "cpu",
        "model": {"arch": arch, "depth": depth, "width": rng.choice([1, 2, 5]), "activation": rng.choice(ACTIVATIONS),
                  "init": rng.choice(INITS), "bias_init": rng.choice(BIAS_INITS),
                  "norm": rng.choice(["none", "none", "batchnorm", "layernorm"]), "skip": rng.random() < 0.3,
                  "recurrent_init": rng.choice(["default", "orthogonal", {"name": "identity", "scale": 1.0}])},
        "data": _data(rng),
        "train": {"steps": rng.choice([1, 2, 3]), "batch_size": rng.choice([1, 2, 8, 64]),
                  "optimizer": rng.choice(OPTIMIZERS), "eval_every": rng.choice([1, 2, 100]),
                  "clip": rng.choice([{"mode": "none"}, {"mode": "norm", "max_norm": 0.5},
                                      {"mode": "value", "value": 0.1}])},
        "log": {"every": rng.choice([1, 2]),
                "kinds": rng.choice([["weight_grad"], ["output_grad", "act_std", "dead"], list(config.KINDS)])},
    }


@pytest.mark.parametrize("block", range(4))
def test_what_validates_runs_and_what_does_not_leaves_nothing(tmp_path, block):
    rng = random.Random(1000 + block)
    accepted = rejected = 0
    for i in range(block * 25, block * 25 + 25):
        raw = draw(rng, i)
        try:
            cfg = config.from_dict(raw, source="fuzz.yaml")
        except ConfigError as e:
            msg = str(e)
            assert msg.startswith("fuzz.yaml") and "\n" not in msg and len(msg) < 600, msg
            rejected += 1
            continue
        accepted += 1
        try:
            res = run(cfg, out=tmp_path, quiet=True)
        except Exception as e:  # a config that validated must run
            pytest.fail(f"validated but failed to run: {raw}\n{type(e).__name__}: {e}")
        assert res.status in ("completed", "diverged"), raw
        # the inits drawn are moderate: a first loss that is not finite would be a config mistake (NaN
        # data, say) recorded as if it were an exploding net
        first = (res.folder / "metrics.csv").read_text().splitlines()[1].split(",")[1]
        assert first not in ("", "nan", "inf", "-inf"), (raw, first)
    assert accepted >= 3 and rejected >= 3, (accepted, rejected)  # the draws reach both sides
    folders = {p.name for p in tmp_path.iterdir()}
    assert len(folders) == accepted  # a rejected config left no folder
