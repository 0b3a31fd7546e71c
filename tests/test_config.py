"""Config loading, defaults, overrides and the error messages people see."""

import pytest
import yaml

from conftest import tiny
from vgp import config
from vgp.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_filled_in_and_specs_resolved(tmp_path):
    cfg = config.load(write(tmp_path, "model: {init: orthogonal}\n", "mine.yaml"))
    assert cfg.name == "mine"  # the file's name
    assert cfg.model.init == {"name": "orthogonal", "gain": 1.0}
    assert cfg.train.optimizer == {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
    assert cfg.train.clip.mode == "none"
    assert cfg.data["name"] == "teacher" and cfg.data["dim"] == 64


def test_overrides_one_grammar(tmp_path):
    p = write(tmp_path, "model: {init: xavier_uniform, depth: 20}\ntrain: {optimizer: {name: adam, lr: 0.001}}\n")
    cfg = config.load(p, ["model.depth=40", "seed=3", "model.init.name=orthogonal", "model.init.gain=2",
                          "train.optimizer.lr=1e-2", "model.skip=true", "data.dim=8"])
    assert cfg.model.depth == 40 and cfg.seed == 3 and cfg.model.skip is True
    assert cfg.model.init == {"name": "orthogonal", "gain": 2.0}
    assert cfg.train.optimizer["name"] == "adam" and cfg.train.optimizer["lr"] == 0.01
    assert cfg.data["dim"] == 8


def test_optimizer_argument_alone_keeps_default_optimizer():
    cfg = config.from_dict({}, ["train.optimizer.momentum=0.9"])
    assert cfg.train.optimizer["name"] == "sgd" and cfg.train.optimizer["momentum"] == 0.9


@pytest.mark.parametrize("text,overrides,needles", [
    ("model: {dept: 3}\n", [], ["unknown key 'model.dept'", "did you mean 'model.depth'", "c.yaml"]),
    ("modle: {depth: 3}\n", [], ["unknown key 'modle'", "did you mean 'model'"]),
    ("model: {activation: rleu}\n", [], ["unknown activation 'rleu'", "did you mean 'relu'", "model.activation"]),
    ("model: {init: {name: orthogonal, gian: 2}}\n", [], ["init 'orthogonal' has no argument 'gian'", "did you mean 'gain'"]),
    ("model: {init: kaiming_normal}\n", ["model.init.mode=fan_avg"], ["invalid value 'fan_avg'", "fan_in, fan_out"]),
    ("model: {depth: three}\n", [], ["model.depth: expected an integer, got 'three'"]),
    ("model: {norm: batch}\n", [], ["model.norm: invalid value 'batch'", "did you mean 'batchnorm'"]),
    ("train: {optimizer: {name: adamm}}\n", [], ["unknown optimizer 'adamm'", "did you mean 'adam'"]),
    ("train: {clip: {mode: global}}\n", [], ["train.clip.mode: invalid value 'global'", "none, norm, value"]),
    ("data: {name: mnist, roots: x}\n", [], ["dataset 'mnist' has no argument 'roots'", "did you mean 'root'"]),
    ("name: ../../etc\n", [], ["name: '../../etc' may only use"]),
    ("name: ..\n", [], ["may only use"]),
    ("device: gpu\n", [], ["device: invalid value 'gpu'"]),
    ("model: {depth: -1}\n", [], ["model.depth: must be >= 0, got -1"]),
    ("{}\n", ["model.depht=3"], ["unknown key 'model.depht'", "did you mean 'model.depth'"]),
    ("{}\n", ["depth"], ["expected key=value"]),
])
def test_errors_name_the_key_and_what_is_valid(tmp_path, text, overrides, needles):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), overrides)
    for needle in needles:
        assert needle in str(e.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    p = write(tmp_path, "model:\n  depth: 3\n  width: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+:\d+: invalid YAML"):
        config.load(p)


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    p = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(p)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.yaml")


def test_resolved_config_round_trips():
    cfg = config.from_dict(tiny(model__init={"name": "variance_scaling", "scale": 2}))
    again = config.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict(cfg))))
    assert again == cfg


def test_every_key_is_documented():
    rows = config.describe()
    keys = [r[0] for r in rows]
    assert {"model.depth", "train.clip.max_norm", "log.every", "data"} <= set(keys)
    assert all(doc for _, _, doc in rows)
