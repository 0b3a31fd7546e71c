"""Bad inputs, by kind: each gives one line naming the file (or override), the key or value and what
is valid; exit status 2 without a traceback; and no run folder. A config that validates runs.

Most cases go through the library (config.load / config.from_dict / sweep.load), a few through the
command line as a user meets them."""

import os
import pickle
import struct
import time

import numpy as np
import pytest
import yaml

from conftest import tiny
from vgp import config, data, preflight, sweep as sweepmod, theory
from vgp.data import DATASETS
from vgp.errors import ConfigError, DataError, UserError, shown
from vgp.train import run


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
    return p


def error(tmp_path, raw, overrides=(), name="c.yaml") -> str:
    """The message config.load gives for a file holding ``raw`` (a mapping or YAML text)."""
    path = write(tmp_path, raw, name)
    with pytest.raises(ConfigError) as e:
        config.load(path, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg  # one line, of a readable length
    return msg


def assert_cli_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vgp: error: ")]
    assert lines, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


# -- 1. combinations that PyTorch rejects at run time ------------------------------------------------

@pytest.mark.parametrize("over, needles", [
    (dict(model__norm="batchnorm", train__batch_size=1),
     ["train.batch_size: 1 with model.norm=batchnorm", "more than one value per channel", ">= 2"]),
    (dict(model__arch="resnet", model__depth=8), ["model.arch: a resnet needs image data", "data 'teacher'",
                                                  "digits, mnist"]),
    (dict(model__arch="rnn", model__depth=1), ["model.arch: rnn needs sequences of shape (T, F)", "adding, copy"]),
    (dict(model__arch="lstm", model__depth=1), ["model.arch: lstm needs sequences"]),
    (dict(model__arch="gru", model__depth=1), ["model.arch: gru needs sequences"]),
    (dict(train__batch_size=65), ["train.batch_size: 65 is more than the 64 training examples", "at most 64"]),
    (dict(data={"name": "digits", "n_test": 1790}, train__batch_size=8),
     ["train.batch_size: 8 is more than the 7 training examples of data 'digits'"]),
    (dict(model__arch="lstm", model__depth=1, data={"name": "seq_digits", "n_test": 1700}, train__batch_size=128),
     ["train.batch_size: 128 is more than the 97"]),
])
def test_what_pytorch_would_reject_fails_validation_naming_the_file(tmp_path, over, needles):
    msg = error(tmp_path, tiny(**over))
    assert msg.startswith(str(tmp_path / "c.yaml") + ": ")
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("over", [
    dict(train__batch_size=64),  # the whole training set
    dict(model__norm="batchnorm", train__batch_size=2),  # two values per channel
    # a resnet's smallest batch-norm map is 2x2: four values per channel even for one example
    dict(model__arch="resnet", model__depth=8, model__width=2, model__norm="batchnorm", train__batch_size=1,
         data={"name": "digits", "n_test": 1733}),
    dict(model__arch="lstm", model__depth=1, model__width=4, train__batch_size=1,
         data={"name": "copy", "seq_len": 3, "length": 2, "n_train": 8, "n_test": 4}),
])
def test_a_config_that_validates_runs(tmp_path, over):
    cfg = config.from_dict(tiny(train__steps=2, **over))
    assert run(cfg, out=tmp_path, quiet=True).status == "completed"


def test_run_checks_before_any_folder_exists(tmp_path):
    # a config built without the checks (a library user): train.run makes them itself
    cfg = config.from_dict(tiny(model__norm="batchnorm", train__batch_size=1), preflight=False)
    with pytest.raises(ConfigError, match="more than one value per channel"):
        run(cfg, out=tmp_path / "out", quiet=True)
    cfg = config.from_dict(tiny(train__batch_size=1000), preflight=False)
    with pytest.raises(ConfigError, match="train.batch_size: 1000 is more than the 64"):
        run(cfg, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_cli_validate_and_run_refuse_what_would_crash(tmp_path, cli):
    bn = write(tmp_path, tiny(model__norm="batchnorm", train__batch_size=1), "bn.yaml")
    r = cli("validate", bn)
    assert_cli_error(r, "bn.yaml: train.batch_size: 1 with model.norm=batchnorm")
    r = cli("run", bn, "model.arch=resnet", "model.depth=8", "--out", tmp_path / "out")
    assert_cli_error(r, "override model.arch=resnet: model.arch: a resnet needs image data")
    assert not (tmp_path / "out").exists()


# -- 2. ranges of component arguments and plain fields -----------------------------------------------

@pytest.mark.parametrize("over, key, valid, got", [
    (dict(data={"name": "teacher", "classes": 0}), "data.classes", ">= 2", "0"),
    (dict(data={"name": "teacher", "n_train": 0}), "data.n_train", ">= 1", "0"),
    (dict(data={"name": "teacher", "dim": -3}), "data.dim", ">= 1", "-3"),
    (dict(data={"name": "spirals", "noise": -0.5}), "data.noise", ">= 0", "-0.5"),
    (dict(data={"name": "adding", "seq_len": 0}), "data.seq_len", ">= 2", "0"),
    (dict(data={"name": "copy", "length": 0}), "data.length", ">= 1", "0"),
    (dict(data={"name": "digits", "n_test": 1797}), "data.n_test", "in [1, 1796]", "1797"),
    (dict(data={"name": "seq_digits", "n_test": 0}), "data.n_test", "in [1, 1796]", "0"),
    (dict(data={"name": "mnist", "n_train": -1}), "data.n_train", ">= 0", "-1"),
    (dict(model__init={"name": "normal", "std": -1}), "model.init.std", ">= 0", "-1"),
    (dict(model__init={"name": "uniform", "a": -0.1}), "model.init.a", ">= 0", "-0.1"),
    (dict(model__init={"name": "xavier_uniform", "gain": -1}), "model.init.gain", ">= 0", "-1"),
    (dict(model__init={"name": "variance_scaling", "scale": 0}), "model.init.scale", "> 0", "0"),
    (dict(model__bias_init={"name": "normal", "std": -0.1}), "model.bias_init.std", ">= 0", "-0.1"),
    (dict(model__activation={"name": "leaky_relu", "negative_slope": 2}), "model.activation.negative_slope",
     "in [0, 1]", "2"),
    (dict(model__activation={"name": "elu", "alpha": -1}), "model.activation.alpha", ">= 0", "-1"),
    (dict(train__optimizer={"name": "sgd", "momentum": -1}), "train.optimizer.momentum", "in [0, 1)", "-1"),
    (dict(train__optimizer={"name": "sgd", "momentum": 1}), "train.optimizer.momentum", "in [0, 1)", "1"),
    (dict(train__optimizer={"name": "sgd", "lr": 0}), "train.optimizer.lr", "> 0", "0"),
    (dict(train__optimizer={"name": "sgd", "weight_decay": -1e-4}), "train.optimizer.weight_decay", ">= 0",
     "-0.0001"),
    (dict(train__optimizer={"name": "adam", "betas": [1.5, 0.9]}), "train.optimizer.betas[0]", "in [0, 1)", "1.5"),
    (dict(train__optimizer={"name": "adamw", "betas": [0.9, 1.0]}), "train.optimizer.betas[1]", "in [0, 1)", "1"),
    (dict(train__optimizer={"name": "adam", "eps": -1e-8}), "train.optimizer.eps", ">= 0", "-1e-08"),
    (dict(train__optimizer={"name": "rmsprop", "alpha": 1.5}), "train.optimizer.alpha", "in [0, 1)", "1.5"),
    (dict(train__optimizer={"name": "adagrad", "lr": -0.01}), "train.optimizer.lr", "> 0", "-0.01"),
    (dict(seed=2 ** 70), "seed", f"in [0, {2 ** 64 - 2}]", str(2 ** 70)),
    (dict(seed=-1), "seed", "in [0,", "-1"),
    (dict(model__width=0), "model.width", ">= 1", "0"),
    (dict(train__steps=0), "train.steps", ">= 1", "0"),
    (dict(train__batch_size=0), "train.batch_size", ">= 1", "0"),
    (dict(train__eval_every=0), "train.eval_every", ">= 1", "0"),
    (dict(log__every=-5), "log.every", ">= 1", "-5"),
    (dict(train__clip={"mode": "norm", "max_norm": 0}), "train.clip.max_norm", "> 0", "0"),
    (dict(train__clip={"mode": "value", "value": -1}), "train.clip.value", "> 0", "-1"),
])
def test_out_of_range_values_name_the_key_the_range_and_the_value(tmp_path, over, key, valid, got):
    msg = error(tmp_path, tiny(**over))
    assert f"{key}: must be {valid}" in msg and f"got {got}" in msg, msg
    assert "c.yaml" in msg


def test_rules_across_arguments(tmp_path):
    msg = error(tmp_path, tiny(train__optimizer={"name": "sgd", "nesterov": True}))
    assert "train.optimizer: optimizer 'sgd': nesterov: true needs a momentum > 0" in msg
    config.from_dict(tiny(train__optimizer={"name": "sgd", "nesterov": True, "momentum": 0.9}))  # fine with one


def test_every_registered_range_names_a_real_argument():
    from vgp.activations import ACTIVATIONS
    from vgp.inits import BIAS_INITS, INITS
    from vgp.optim import OPTIMIZERS, SCHEDULES

    for registry in (ACTIVATIONS, INITS, BIAS_INITS, OPTIMIZERS, SCHEDULES, DATASETS):
        for name in registry.names():
            entry = registry[name]
            assert set(entry.meta["ranges"]) <= set(entry.defaults()), (registry.kind, name)
            # every numeric argument is declared, and its default is in its range
            numeric = {k for k, v in entry.defaults().items() if isinstance(v, (int, float, tuple))
                       and not isinstance(v, bool)}
            assert numeric <= set(entry.meta["ranges"]), (registry.kind, name, numeric - set(entry.meta["ranges"]))
            registry.resolve({"name": name}, "x")  # the defaults are in range


# -- 3. NaN and infinity -------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("train: {optimizer: {name: sgd, lr: .nan}}", "train.optimizer.lr"),
    ("train: {optimizer: {name: sgd, lr: .inf}}", "train.optimizer.lr"),
    ("train: {optimizer: {name: sgd, lr: 1e999}}", "train.optimizer.lr"),  # YAML 1.1: a string, then inf
    (f"train: {{optimizer: {{name: sgd, lr: {10 ** 400}}}}}", "train.optimizer.lr"),  # an int beyond float
    ("train: {clip: {mode: norm, max_norm: .inf}}", "train.clip.max_norm"),
    ("train: {clip: {mode: value, value: .nan}}", "train.clip.value"),
    ("model: {bias_init: {name: constant, value: .inf}}", "model.bias_init.value"),
    ("model: {init: {name: orthogonal, gain: -.inf}}", "model.init.gain"),
    ("model: {forget_bias: .nan}", "model.forget_bias"),
    ("data: {name: spirals, turns: .inf}", "data.turns"),
])
def test_non_finite_numbers_are_rejected(tmp_path, text, key):
    msg = error(tmp_path, text + "\n")
    assert f"{key}: expected a finite number, got" in msg, msg


def test_non_finite_override(tmp_path):
    msg = error(tmp_path, "{}\n", ["train.optimizer.lr=.nan"])
    assert msg.startswith("override train.optimizer.lr=.nan: train.optimizer.lr: expected a finite number, got nan")


@pytest.mark.parametrize("args, needle", [
    (["--weight-var", "nan"], "--weight-var: must be a finite number > 0"),
    (["--weight-var", "inf"], "--weight-var: must be a finite number > 0"),
    (["--weight-var", "0"], "--weight-var: must be a finite number > 0"),
    (["--weight-var", "1e100"], "<= 1e+12"),
    (["--weight-var", "1", "--bias-var", "inf"], "--bias-var: must be a finite number >= 0"),
    (["--weight-var", "1", "--bias-var", "-1"], "--bias-var: must be a finite number >= 0"),
    (["--weight-var", "1", "--depth", "100000000"], "--depth: 100000000 layers; the profile is computed for 0 to"),
    (["--weight-var", "1", "--depth", "-1"], "--depth: -1 layers"),
])
def test_theory_numbers_are_checked(args, needle):
    weight_var = float(args[1])
    bias_var = float(args[args.index("--bias-var") + 1]) if "--bias-var" in args else 0.0
    depth = int(args[args.index("--depth") + 1]) if "--depth" in args else None
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        theory.check_inputs(weight_var, bias_var, depth)
    assert needle in str(e.value) and time.perf_counter() - t0 < 1


def test_theory_cli_refuses_nan_and_huge_depth(cli):
    assert_cli_error(cli("theory", "--weight-var", "nan"), "vgp: error: --weight-var: must be a finite number")
    assert_cli_error(cli("theory", "--weight-var", "1", "--depth", "100000000"), "--depth: 100000000 layers")


# -- 4. silent changes -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, key", [
    ("seed: 1\nseed: 2\n", 2, "seed"),
    ("model:\n  depth: 3\n  width: 8\n  depth: 4\n", 4, "depth"),
    ("train: {optimizer: {name: sgd, lr: 0.1, lr: 0.2}}\n", 1, "lr"),
])
def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path, text, line, key):
    msg = error(tmp_path, text)
    assert f"c.yaml:{line}:" in msg and f"duplicate key '{key}'" in msg, msg


def test_yaml_merge_keys_may_still_be_overridden():
    assert config.load_yaml_text("a: &m {depth: 3, width: 8}\nb: {<<: *m, depth: 4}\n")["b"] == {"depth": 4, "width": 8}


def test_duplicate_keys_in_sweep_files_and_override_values(tmp_path):
    path = write(tmp_path, "name: s\nbase: {}\ngrid: {model.depth: [1, 2]}\ngrid: {model.depth: [3]}\n", "s.yaml")
    with pytest.raises(ConfigError, match=r"s\.yaml:4:1: invalid YAML: duplicate key 'grid' \(first at line 3\)"):
        sweepmod.load(path)
    msg = error(tmp_path, "{}\n", ["model.init={name: normal, std: 0.1, std: 0.2}"])
    assert msg.startswith("override model.init=") and "duplicate key 'std'" in msg


def test_batch_size_is_never_clamped(tmp_path):
    msg = error(tmp_path, tiny(train__batch_size=128))  # 64 training examples
    assert "train.batch_size: 128 is more than the 64 training examples" in msg


def write_sweep(tmp_path, **spec):
    spec.setdefault("name", "s")
    spec.setdefault("base", tiny(train__steps=2))
    return write(tmp_path, spec, "s.yaml")


@pytest.mark.parametrize("spec, overrides, needle", [
    (dict(fixed={"out": "elsewhere"}, seeds=[0]), [], "fixed: out cannot be set for the runs of a sweep"),
    (dict(fixed={"name": "x"}, seeds=[0]), [], "fixed: name cannot be set for the runs of a sweep"),
    (dict(seeds=[0]), ["out=elsewhere"], "out cannot be set for the runs of a sweep: a sweep writes into"),
    (dict(fixed={"seed": 3}, seeds=[0, 1]), [], "fixed: seed and seeds: both set the runs' seeds"),
    (dict(fixed={"model.depth": 3}, grid={"model.depth": [1, 2]}), [], "model.depth is both in fixed and in grid"),
    (dict(fixed={"model.width": 3}, zip={"model.width": [1, 2]}), [], "model.width is both in fixed and in zip"),
    (dict(grid={"out": ["a", "b"]}), [], "grid: out cannot be swept"),
    (dict(grid={"model..depth": [1, 2]}), [], "grid: 'model..depth' is not a key (an empty part between dots)"),
    (dict(fixed={3: 1}, seeds=[0]), [], "fixed: 3 is not a key (keys are dotted names"),
])
def test_sweep_settings_that_would_be_ignored_are_errors(tmp_path, spec, overrides, needle):
    with pytest.raises(ConfigError) as e:
        sweepmod.load(write_sweep(tmp_path, **spec), overrides)
    assert needle in str(e.value) and "s.yaml" in str(e.value)


# -- 5. sizes ----------------------------------------------------------------------------------------

def test_too_deep_for_the_stack_is_refused_with_the_reason(tmp_path):
    msg = error(tmp_path, tiny(model__depth=30000, model__width=4))
    assert "model.depth: 30000 layers is too deep" in msg and "segmentation fault" in msg
    assert f"at most {preflight.max_depth():,} layers" in msg and "ulimit -s" in msg
    config.from_dict(tiny(model__depth=300, model__width=4))  # deep, and fine


@pytest.mark.parametrize("over, needle", [
    (dict(model__width=10 ** 9), "parameters, gradients and optimizer state"),
    (dict(model__width=100_000, model__depth=50), "parameters, gradients and optimizer state"),
    (dict(data={"name": "teacher", "dim": 8, "n_train": 10 ** 12}, train__batch_size=8), "data (while it is built)"),
    (dict(data={"name": "teacher", "dim": 8, "hidden": 10 ** 9}), "data (while it is built)"),  # the teacher's net
    (dict(data={"name": "teacher", "dim": 10 ** 5, "n_train": 10 ** 6}, train__batch_size=8),
     "data (while it is built)"),
    (dict(model__width=4096, train__batch_size=2 * 10 ** 7, data={"name": "spirals", "n_train": 2 * 10 ** 7}),
     "activations of a batch of 20000000"),
])
def test_what_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, over, needle):
    t0 = time.perf_counter()
    msg = error(tmp_path, tiny(**over))
    assert "this run needs about" in msg and "is available" in msg and needle in msg, msg
    assert "make model.width, model.depth, train.batch_size or the data set smaller" in msg
    assert time.perf_counter() - t0 < 30  # nothing was allocated


@pytest.mark.parametrize("over, needle", [
    (dict(data={"name": "copy", "symbols": 10 ** 7, "n_train": 64}, model__arch="lstm", model__depth=1),
     "data: one example of data 'copy' has 1,200,000,240 values (shape (120, 10000002)); at most 1,000,000"),
    (dict(data={"name": "teacher", "dim": 10 ** 9, "n_train": 64, "n_test": 1}),
     "data: one example of data 'teacher' has 1,000,000,000 values"),
    (dict(data={"name": "spirals", "classes": 10 ** 7}), "data: data 'spirals' asks for 10,000,000 outputs"),
])
def test_examples_and_outputs_too_large_to_hold(tmp_path, over, needle):
    t0 = time.perf_counter()
    assert needle in error(tmp_path, tiny(**over))
    assert time.perf_counter() - t0 < 5  # refused from the arguments: nothing built


def test_memory_estimate_counts_parameters_exactly():
    cfg = config.from_dict(tiny(model__depth=3, model__width=16))  # dim 8, 3 classes
    assert preflight.estimate(cfg)["parameters"] == (8 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 3 + 3)
    cfg = config.from_dict(tiny(model__arch="lstm", model__depth=2, model__width=8,
                                data={"name": "adding", "seq_len": 50, "n_train": 64, "n_test": 16}))
    from vgp.models import recurrent
    from vgp.activations import get

    net = recurrent("lstm", (50, 2), 1, 8, 2, get({"name": "tanh"}), {"name": "default"}, {"name": "default"},
                    {"name": "default"})
    assert preflight.estimate(cfg)["parameters"] == sum(p.numel() for p in net.parameters())


def test_absurd_sweeps_are_refused_before_expanding(tmp_path, cli):
    path = write_sweep(tmp_path, grid={"model.depth": list(range(1, 101)), "model.width": list(range(1, 101))},
                       seeds=100)
    t0 = time.perf_counter()  # refused from the counts alone: nothing is expanded
    with pytest.raises(ConfigError, match=r"1,000,000 runs \(model.depth: 100 x model.width: 100 x seeds: 100\); "
                                          r"a sweep has at most 100,000"):
        sweepmod.load(path)
    assert time.perf_counter() - t0 < 5
    assert_cli_error(cli("validate", path), "s.yaml: 1,000,000 runs")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="seeds: expected a non-empty list of integers or a count from 1 to"):
        sweepmod.load(write_sweep(tmp_path, seeds=10 ** 9))
    assert time.perf_counter() - t0 < 5


def test_a_large_sweep_checks_each_architecture_once(tmp_path):
    lrs = [round(0.001 * (i + 1), 4) for i in range(50)]
    path = write_sweep(tmp_path, grid={"train.optimizer.lr": lrs, "model.width": [8, 16]}, seeds=10)
    preflight._probe.cache_clear()
    assert len(sweepmod.load(path).cells) == 1000
    assert preflight._probe.cache_info().misses == 1  # the miniature does not depend on lr, width or seed


# -- 6. unreadable files -----------------------------------------------------------------------------

@pytest.mark.parametrize("content, needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file (byte 0 is not UTF-8)"),
    ("model: {activation: tanh}\n# caf\xe9\n".encode("latin-1"), "not a text file (byte 31 is not UTF-8)"),
    ("[" * 5000 + "]" * 5000, "invalid YAML: nested too deeply"),
    ("a: " + "[" * 40 + "]" * 40, "nested more than 32 levels deep"),
    (f"seed: {'9' * 5000}\n", "c.yaml:1:7: invalid YAML: an integer with too many digits"),
    ("model: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "expected a mapping of config keys, got list"),
])
def test_unreadable_config_files_name_the_file(tmp_path, content, needle):
    assert needle in error(tmp_path, content)


def test_folders_fifos_and_huge_files_are_not_read(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"d\.yaml: is a folder, not a config file"):
        config.load(tmp_path / "d.yaml")
    os.mkfifo(tmp_path / "f.yaml")  # reading it would wait forever
    with pytest.raises(ConfigError, match=r"f\.yaml: not a regular file"):
        config.load(tmp_path / "f.yaml")
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(config.MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigError, match=r"big\.yaml: 10,485,761 bytes; a config or sweep file is text"):
        config.load(big)


def test_validate_reports_every_file_even_after_a_binary_one(tmp_path, cli):
    good = write(tmp_path, tiny(), "good.yaml")
    binary = write(tmp_path, bytes(range(256)), "binary.yaml")
    dup = write(tmp_path, "seed: 1\nseed: 2\n", "dup.yaml")
    r = cli("validate", good, binary, dup, tmp_path / "missing.yaml", good)
    assert_cli_error(r, "binary.yaml: not a text file", "dup.yaml:2:1: invalid YAML: duplicate key 'seed'",
                     "missing.yaml: no such file")
    assert r.stdout.count("ok: ") == 2 and r.stderr.count("vgp: error: ") == 3


def _cifar(folder, batches: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in batches.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            with open(folder / name, "wb") as f:
                pickle.dump(content, f)


def _batch(n, labels=None):
    rng = np.random.default_rng(0)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": labels if labels is not None else rng.integers(0, 10, n).tolist()}


CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.mark.parametrize("bad, needle", [
    (b"", "not a CIFAR-10 batch (EOFError"),
    (b"\x80\x04garbage that is not a pickle", "not a CIFAR-10 batch ("),
    (pickle.dumps(_batch(4))[:-100], "not a CIFAR-10 batch ("),  # cut short
    (pickle.dumps({"labels": [1]}), "not a CIFAR-10 batch (KeyError"),
    (pickle.dumps({"data": np.zeros((4, 100), dtype=np.uint8), "labels": [0] * 4}), "not a CIFAR-10 batch (ValueError"),
    (pickle.dumps(_batch(4, labels=[0, 1, 2])), "4 images but 3 labels"),
    (pickle.dumps(_batch(4, labels=[0, 1, 2, 12])), "a label is not one of the 10 classes"),
])
def test_corrupt_cifar_batches_name_the_file(tmp_path, bad, needle):
    _cifar(tmp_path / "cifar-10-batches-py", {**{n: _batch(4) for n in CIFAR_NAMES}, "data_batch_3": bad})
    where = str(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError) as e:
        data.load(DATASETS.resolve({"name": "cifar10", "root": str(tmp_path)}, "data"), 0)
    assert where in str(e.value) and needle in str(e.value), str(e.value)
    # and validation finds it first, naming the config too
    msg = error(tmp_path, tiny(data={"name": "cifar10", "root": str(tmp_path)}, model__arch="resnet",
                               model__depth=8, train__batch_size=4))
    assert msg.startswith(str(tmp_path / "c.yaml") + ": data: ") and where in msg and needle in msg


def test_file_sets_validate_their_sizes_without_loading(tmp_path):
    _cifar(tmp_path / "cifar-10-batches-py", {n: _batch(4) for n in CIFAR_NAMES})
    base = dict(model__arch="resnet", model__depth=8, model__width=2)
    cfg = config.from_dict(tiny(data={"name": "cifar10", "root": str(tmp_path)}, train__batch_size=20, **base))
    assert cfg.data["name"] == "cifar10"
    msg = error(tmp_path, tiny(data={"name": "cifar10", "root": str(tmp_path)}, train__batch_size=21, **base))
    assert "train.batch_size: 21 is more than the 20 training examples" in msg
    msg = error(tmp_path, tiny(data={"name": "cifar10", "root": str(tmp_path), "n_train": 30}, **base))
    assert "data.n_train: 30 examples asked for, but" in msg and "holds 20" in msg
    msg = error(tmp_path, tiny(data={"name": "mnist", "root": str(tmp_path)}, **base))
    assert "data: MNIST not found under" in msg and "data.download=true" in msg


def _idx(path, array, header=None):
    header = header or struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("case, needle", [
    ("magic", "not a valid IDX file (expected unsigned bytes of shape (N, 28, 28))"),
    ("short", "not a valid IDX file ("),
    ("labels", "not a valid IDX file (a label is not one of the 10 classes)"),
    ("count", "not as many labels as"),
])
def test_corrupt_mnist_files_name_the_file(tmp_path, case, needle):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = np.zeros((6, 28, 28)), np.arange(6) % 10
    _idx(raw / "train-images-idx3-ubyte", x)
    _idx(raw / "train-labels-idx1-ubyte", y)
    _idx(raw / "t10k-images-idx3-ubyte", x[:2])
    _idx(raw / "t10k-labels-idx1-ubyte", y[:2])
    if case == "magic":
        _idx(raw / "train-images-idx3-ubyte", x, header=struct.pack(">HBB3I", 0, 0x08, 3, 6, 28, 27))
    elif case == "short":
        (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-10])
    elif case == "labels":
        _idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 11]))
    else:
        _idx(raw / "train-labels-idx1-ubyte", y[:5])
    msg = error(tmp_path, tiny(data={"name": "mnist", "root": str(tmp_path)}, train__batch_size=2))
    assert str(raw) in msg and needle in msg, msg


# -- 7. values in messages are shown cut -------------------------------------------------------------

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_alias_bomb_is_rejected_fast(tmp_path):
    t0 = time.perf_counter()
    msg = error(tmp_path, BOMB)
    assert "more than 100,000 values once its YAML aliases are expanded" in msg
    bomb_in_key = BOMB.replace("i: &i", "name: &i")
    assert "more than 100,000 values" in error(tmp_path, bomb_in_key)
    assert time.perf_counter() - t0 < 5


def test_shown_never_builds_more_than_it_shows():
    huge = [list(range(10 ** 6))] * 10 ** 3  # 10^9 items, shared
    t0 = time.perf_counter()
    text = shown(huge)
    assert len(text) < 100 and text.endswith("... (cut)") and time.perf_counter() - t0 < 0.1
    assert shown(10 ** 5000) == "<an integer of 5001 digits>"
    assert len(shown("x" * 10 ** 6)) < 100 and shown(-1.0) == "-1" and shown({"a": [1, 2]}) == "{'a': [1, 2]}"


@pytest.mark.parametrize("over", [
    dict(name="x" * 100_000),
    dict(model__activation="r" * 100_000),
    dict(log__kinds=["weight_grad", "y" * 100_000]),
    dict(model__init={"name": "normal", "z" * 100_000: 1}),
    dict(model__depth=list(range(50_000))),
    dict(model__width="9" * 100_000),
])
def test_long_values_are_cut_in_messages(tmp_path, over):
    msg = error(tmp_path, tiny(**over))  # error() asserts it is shorter than 600 characters
    assert "... (cut)" in msg or "characters; at most 200" in msg, msg


# -- 8. wording ------------------------------------------------------------------------------------

def test_run_config_given_to_sweep_and_sweep_file_given_to_run(tmp_path, cli):
    cfg, sw = write(tmp_path, tiny(), "c.yaml"), write_sweep(tmp_path, seeds=[0, 1])
    with pytest.raises(ConfigError, match=r"c\.yaml: a sweep file was expected, but this looks like a run config"):
        sweepmod.load(cfg)
    with pytest.raises(ConfigError, match=r"s\.yaml: a run config was expected, but this is a sweep file \(it has "
                                          r"base, seeds\); run it with: vgp sweep"):
        config.load(sw)
    assert_cli_error(cli("sweep", cfg, "--out", tmp_path / "out"), "a sweep file was expected", "vgp run")
    assert_cli_error(cli("run", sw, "--out", tmp_path / "out"), "a run config was expected", "vgp sweep")
    assert not (tmp_path / "out").exists()


def test_run_and_sweep_agree_on_what_a_sweep_file_is(tmp_path):
    path = write(tmp_path, {"name": "one", "fixed": {"model.depth": 2}}, "one.yaml")  # no base, grid or seeds
    with pytest.raises(ConfigError, match="this is a sweep file"):
        config.load(path)
    assert [c.cfg.model.depth for c in sweepmod.load(path).cells] == [2]  # a sweep of one run


def test_config_keys_at_the_top_of_a_sweep_file_say_where_they_go(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown sweep key 'model'.*\(config keys go into base: or fixed:\)"):
        sweepmod.load(write_sweep(tmp_path, seeds=[0], model={"depth": 3}))


@pytest.mark.parametrize("overrides, needle", [
    (["model.depth=abc"], "override model.depth=abc: model.depth: expected an integer, got 'abc'"),
    (["model.init=orthogonal", "model.init.gain=x"], "override model.init.gain=x: model.init.gain: expected a "
                                                      "number, got 'x'"),  # the last override of the key
    (["model.init={name: orthogonal, gian: 2}"], "override model.init={name: orthogonal, gian: 2}: model.init: "
                                                 "init 'orthogonal' has no argument 'gian'"),
    (["model.depht=3"], "override model.depht=3: unknown key 'model.depht'; did you mean 'model.depth'?"),
    (["model..depth=3"], "override model..depth=3: 'model..depth' is not a key (an empty part between dots)"),
    ([".depth=3"], "'.depth' is not a key (an empty part between dots)"),
    (["model.=3"], "'model.' is not a key (an empty part between dots)"),
    (["model.depth-x=3"], "keys are dotted names of letters, digits and '_'"),
    (["=3"], "override =3: expected key=value"),
])
def test_overrides_are_blamed_for_their_own_mistakes(tmp_path, overrides, needle):
    msg = error(tmp_path, "model: {depth: 3}\n", overrides)
    assert needle in msg, msg
    assert "did you mean 'model.skip'" not in msg


def test_file_mistakes_are_not_blamed_on_unrelated_overrides(tmp_path):
    msg = error(tmp_path, "model: {depth: abc}\n", ["seed=3"])
    assert msg.startswith(str(tmp_path / "c.yaml") + ": model.depth: expected an integer")


def test_version(cli):
    import vgp

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vgp {vgp.__version__}"
