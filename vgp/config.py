"""Typed config sections with defaults and one-line docs; YAML loading; ``key=value`` overrides.

A config is YAML with the sections below. Every field is declared once here, with its type,
default and doc; ``vgp ls keys`` and the error messages reuse them. Fields marked as *specs*
take a short name or a mapping ``{name: ..., <arguments>}`` checked against a registry::

    model:
      init: {name: variance_scaling, scale: 2.0}   # or just: init: kaiming_normal

Overrides use one grammar everywhere: ``model.depth=40 model.init.name=orthogonal seed=3``,
each value parsed as a YAML scalar.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgp.errors import ConfigError
from vgp.registry import Registry, coerce, did_you_mean

# what the recorder can record per layer (vgp.record.KINDS; kept here so that validating a
# config does not import torch)
KINDS = ("weight_grad", "bias_grad", "output_grad", "weight", "update_ratio",
         "act_mean", "act_std", "saturation", "dead")


def _f(default, doc: str, choices=None, spec: str | None = None, like=None):
    """A config field: default, one-line doc, optional choices, optional registry name for specs.

    ``like``: a value of the field's type, for fields whose default is None (= decided later)."""
    meta = {"doc": doc, "choices": choices, "spec": spec, "like": like}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls, doc: str):
    """A nested section, defaulting to its own defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None, "spec": None, "like": None})


@dataclass
class ModelConfig:
    arch: str = _f("mlp", "network family", choices=["mlp", "resnet", "rnn", "lstm", "gru"])
    depth: int = _f(None, "mlp: hidden layers (2 -> Linear, act, Linear, act, Linear); resnet: weight layers, 6n+2; "
                          "rnn/lstm/gru: stacked recurrent layers (default 10, 20, 1)", like=0)
    width: int = _f(None, "mlp: units per hidden layer; resnet: channels of the first stage; rnn/lstm/gru: hidden "
                          "size (default 256, 16, 128)", like=0)
    activation: Any = _f("relu", "activation function (vgp ls activations); lstm/gru gates keep their own", spec="activations")
    init: Any = _f("default", "weight init of every layer, output layer included (vgp ls inits)", spec="inits")
    bias_init: Any = _f("default", "bias init of every layer (vgp ls inits)", spec="bias_inits")
    norm: str = _f("none", "normalisation between the linear map and the activation", choices=["none", "batchnorm", "layernorm"])
    skip: bool = _f(False, "residual connection around every hidden block whose input and output widths match "
                           "(resnet: the ResNet; false: the plain net)")
    recurrent_init: Any = _f("default", "rnn/lstm/gru: init of the hidden-to-hidden weights, per gate "
                                        "(e.g. orthogonal, identity for the IRNN)", spec="inits")
    forget_bias: float = _f(1.0, "lstm: forget-gate bias (b_ih; b_hh is 0)")


@dataclass
class ClipConfig:
    mode: str = _f("none", "gradient clipping before the optimizer step", choices=["none", "norm", "value"])
    max_norm: float = _f(1.0, "mode=norm: rescale all gradients so their total norm is at most this")
    value: float = _f(1.0, "mode=value: clamp every gradient entry to [-value, value]")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(128, "examples per step (the training set is reshuffled every epoch)")
    optimizer: Any = _f({"name": "sgd", "lr": 0.1}, "optimizer and its arguments (vgp ls optimizers)", spec="optimizers")
    clip: ClipConfig = _section(ClipConfig, "gradient clipping")
    eval_every: int = _f(100, "evaluate on the test set every N steps (and after the last step)")


@dataclass
class LogConfig:
    every: int = _f(10, "record gradients every N steps; step 0 (before any update) and the last step always")
    kinds: list = _f(list(KINDS), "what to record per layer (fewer kinds cost less when recording every step)",
                     choices=list(KINDS))


@dataclass
class Config:
    name: str = _f("run", "run name: letters, digits, '.', '_', '-' (default: the config file's name)")
    seed: int = _f(0, "seed of the data, the init and the batch order")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    model: ModelConfig = _section(ModelConfig, "the network")
    data: Any = _f({"name": "teacher"}, "data set and its arguments (vgp ls datasets)", spec="datasets")
    train: TrainConfig = _section(TrainConfig, "training")
    log: LogConfig = _section(LogConfig, "what is recorded")
    out: str = _f("results", "folder that run folders are written into")


def _registry(name: str) -> Registry:
    # Imported here: the registries import torch, which validation of plain fields does not need.
    if name == "activations":
        from vgp.activations import ACTIVATIONS as r
    elif name == "inits":
        from vgp.inits import INITS as r
    elif name == "bias_inits":
        from vgp.inits import BIAS_INITS as r
    elif name == "optimizers":
        from vgp.optim import OPTIMIZERS as r
    else:
        from vgp.data import DATASETS as r
    return r


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def _spec(value, where: str) -> dict:
    """Normalise a spec value (a name or a mapping) to a mapping with 'name'."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{where}: expected a name or a mapping {{name: ..., <arguments>}}, got {value!r}")


def _normalise(raw: dict, cls, prefix: str, source: str) -> dict:
    """Turn specs into mappings and check that every key exists, recursively (no type checks yet)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    known = fields_of(cls)
    out = {}
    for key, value in raw.items():
        if key not in known:
            full = [prefix + k for k in known]
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{did_you_mean(prefix + str(key), full)} "
                f"(valid in {prefix.rstrip('.') or 'the top level'}: {', '.join(known)})"
            )
        f = known[key]
        if _is_section(f):
            out[key] = _normalise(value if value is not None else {}, f.default_factory, f"{prefix}{key}.", source)
        elif f.metadata["spec"]:
            out[key] = _spec(value, f"{source}: {prefix}{key}")
        else:
            out[key] = value
    return out


def _build(raw: dict, cls, prefix: str, source: str):
    """Build a dataclass from a normalised mapping: type checks, choices, spec resolution."""
    kwargs = {}
    for name, f in fields_of(cls).items():
        where = f"{prefix}{name}"
        if _is_section(f):
            kwargs[name] = _build(raw.get(name, {}), f.default_factory, where + ".", source)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata["spec"]:
            spec = _spec(default, where) if name not in raw else raw[name]
            if name in raw and "name" not in spec and isinstance(default, dict):
                spec = {**default, **spec}  # e.g. train.optimizer.lr=0.01 alone keeps the default sgd
            try:
                kwargs[name] = _registry(f.metadata["spec"]).resolve(spec, where)
            except ConfigError as e:
                hint = ""
                if "has no argument" in str(e):  # typically: the name was switched, old arguments kept
                    hint = (f"; to switch to another one with its own arguments, replace the whole mapping, "
                            f"e.g. {where}=NAME or {where}='{{name: NAME, ...}}'")
                raise ConfigError(f"{source}: {e}{hint}") from None
            continue
        value = raw.get(name, default)
        choices = f.metadata["choices"]
        if isinstance(default, list):  # a list of choices, e.g. log.kinds
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{source}: {where}: expected a non-empty list, got {value!r}")
            for v in value:
                if v not in choices:
                    raise ConfigError(f"{source}: {where}: invalid value {v!r}{did_you_mean(v, choices)} "
                                      f"(valid: {', '.join(choices)})")
            kwargs[name] = [c for c in choices if c in value]  # canonical order, no repeats
            continue
        try:
            if value is not None or f.metadata["like"] is None:
                value = coerce(value, default if default is not None else f.metadata["like"], where)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        if choices and value not in choices:
            raise ConfigError(
                f"{source}: {where}: invalid value {value!r}{did_you_mean(value, choices)} "
                f"(valid: {', '.join(choices)})"
            )
        kwargs[name] = value
    return cls(**kwargs)


ARCH_DEFAULTS = {"mlp": (10, 256), "resnet": (20, 16), "rnn": (1, 128), "lstm": (1, 128), "gru": (1, 128)}
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _check(cfg: Config, source: str) -> None:
    """Checks that involve values, not just types."""

    def bad(msg):
        raise ConfigError(f"{source}: {msg}")

    if not _NAME.match(cfg.name) or cfg.name in {".", ".."}:
        bad(f"name: {cfg.name!r} may only use letters, digits, '.', '_' and '-' (and is not '.' or '..')")
    if not _DEVICE.match(cfg.device):
        bad(f"device: invalid value {cfg.device!r} (valid: auto, cpu, cuda, cuda:N)")
    m = cfg.model
    depth, width = ARCH_DEFAULTS[m.arch]
    m.depth = depth if m.depth is None else m.depth
    m.width = width if m.width is None else m.width
    if m.arch == "resnet":
        from vgp.models.resnet import blocks_per_stage

        try:
            blocks_per_stage(m.depth)
        except ConfigError as e:
            bad(str(e))
        if m.norm == "layernorm":
            bad("model.norm: a resnet takes none or batchnorm")
    if m.arch in ("rnn", "lstm", "gru"):
        if m.norm != "none" or m.skip:
            bad(f"model.norm/model.skip: {m.arch} takes neither (norm: none, skip: false)")
        if m.depth < 1:
            bad(f"model.depth: {m.arch} needs at least 1 layer, got {m.depth}")
    for key, value, low in [
        ("model.depth", cfg.model.depth, 0), ("model.width", cfg.model.width, 1),
        ("train.steps", cfg.train.steps, 1), ("train.batch_size", cfg.train.batch_size, 1),
        ("train.eval_every", cfg.train.eval_every, 1), ("log.every", cfg.log.every, 1),
    ]:
        if value < low:
            bad(f"{key}: must be at least {low}, got {value}")
    if cfg.train.clip.max_norm <= 0 or cfg.train.clip.value <= 0:
        bad("train.clip: max_norm and value must be positive")
    if cfg.train.optimizer.get("lr", 1.0) <= 0:
        bad(f"train.optimizer.lr: must be positive, got {cfg.train.optimizer['lr']}")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``['model.depth=40', 'seed=3']`` -> ``[('model.depth', 40), ('seed', 3)]`` (YAML scalars)."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key):
            raise ConfigError(f"override {item!r}: expected key=value, for example model.depth=40")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out.append((key, value))
    return out


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]], source: str = "override") -> dict:
    """Set dotted keys in a (normalised) raw mapping; a spec given by name becomes a mapping."""
    raw = copy.deepcopy(raw)
    for key, value in overrides:
        node, parts = raw, key.split(".")
        cls = Config
        for i, part in enumerate(parts[:-1]):
            f = fields_of(cls).get(part) if cls else None
            if f is not None and _is_section(f):
                cls = f.default_factory
            else:
                cls = None
            child = node.get(part)
            if child is None:
                child = {}
            elif isinstance(child, str):
                child = {"name": child}  # model.init.gain=2 on top of `init: orthogonal`
            elif not isinstance(child, dict):
                raise ConfigError(f"{source} {key}={value!r}: '{'.'.join(parts[:i + 1])}' is not a mapping")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping; syntax errors name the file, line and column."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def from_dict(raw: dict, overrides: list[str] | list[tuple[str, Any]] = (), source: str = "config") -> Config:
    """Validate a raw mapping plus overrides into a :class:`Config` (defaults filled in)."""
    raw = _normalise(raw, Config, "", source)
    pairs = parse_overrides(overrides) if overrides and isinstance(overrides[0], str) else list(overrides)
    if pairs:
        raw = apply_overrides(raw, pairs)
        raw = _normalise(raw, Config, "", "override")
    cfg = _build(raw, Config, "", source)
    _check(cfg, source)
    return cfg


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override and validate a config file. Raises ConfigError with a message for people."""
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    return from_dict(raw, overrides, source=str(path))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{'model': {'depth': 3}}`` -> ``{'model.depth': 3}`` (lists become YAML-ish strings)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, (list, tuple)) else str(list(v))
    return out


def describe(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every setting, for ``vgp ls keys`` and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        if _is_section(f):
            rows += describe(f.default_factory, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata["doc"]
            if f.metadata["choices"] and not isinstance(default, list):
                doc += f" ({' | '.join(f.metadata['choices'])})"
            rows.append((prefix + f.name, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("..."), doc))
    return rows
