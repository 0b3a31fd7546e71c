"""Typed config sections with defaults and one-line docs; YAML loading; ``key=value`` overrides.

A config is YAML with the sections below. Every field is declared once here, with its type,
default and doc; ``vgp ls keys`` and the error messages reuse them. Fields marked as *specs*
take a short name or a mapping ``{name: ..., <arguments>}`` checked against a registry::

    model:
      init: {name: variance_scaling, scale: 2.0}   # or just: init: kaiming_normal

Overrides use one grammar everywhere: ``model.depth=40 model.init.name=orthogonal seed=3``,
each value parsed as a YAML scalar.

A config that validates runs: besides keys, types, names and ranges (every number finite),
:func:`from_dict` asks :mod:`vgp.preflight` whether the model can be built on the data, take its
first step and fit in memory. Mistakes are ConfigErrors that name the file, or the override
(``override model.depth=abc: ...``), the key and what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgp.errors import ConfigError, clipped, shown
from vgp.registry import Registry, coerce, did_you_mean, interval

# what the recorder can record per layer (vgp.record.KINDS; kept here so that validating a
# config does not import torch)
KINDS = ("weight_grad", "bias_grad", "output_grad", "weight", "update_ratio",
         "act_mean", "act_std", "saturation", "dead", "underflow")


def _f(default, doc: str, choices=None, spec: str | None = None, like=None, valid: str | None = None,
       archs: tuple | None = None):
    """A config field: default, one-line doc, optional choices, optional registry name for specs.

    ``like``: a value of the field's type, for fields whose default is None (= decided later);
    ``valid``: the interval a number must be in, e.g. ``"[1, inf)"``; ``archs``: the model.arch values
    that use the field (None: all), so that comparisons and legends leave it out where it does nothing."""
    meta = {"doc": doc, "choices": choices, "spec": spec, "like": like, "valid": valid and interval(valid),
            "archs": archs}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls, doc: str):
    """A nested section, defaulting to its own defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None, "spec": None, "like": None,
                                                "valid": None})


@dataclass
class ModelConfig:
    arch: str = _f("mlp", "network family", choices=["mlp", "resnet", "rnn", "lstm", "gru", "transformer"])
    depth: int = _f(None, "mlp: hidden layers (2 -> Linear, act, Linear, act, Linear); resnet: weight layers, 6n+2; "
                          "rnn/lstm/gru: stacked recurrent layers; transformer: blocks (default 10, 20, 1, 6)",
                    like=0, valid="[0, inf)")
    width: int = _f(None, "mlp: units per hidden layer; resnet: channels of the first stage; rnn/lstm/gru: hidden "
                          "size; transformer: d_model (default 256, 16, 128, 64)", like=0, valid="[1, inf)")
    activation: Any = _f("relu", "activation function (vgp ls activations); lstm/gru gates keep their own; "
                                 "transformer: its MLP's", spec="activations",
                         archs=("mlp", "resnet", "rnn", "transformer"))
    init: Any = _f("default", "weight init of every layer, output layer included (vgp ls inits)", spec="inits")
    bias_init: Any = _f("default", "bias init of every layer (vgp ls inits)", spec="bias_inits")
    norm: str = _f("none", "normalisation between the linear map and the activation; transformer: the norm that "
                           "norm_position places (layernorm or rmsnorm)",
                   choices=["none", "batchnorm", "layernorm", "rmsnorm"], archs=("mlp", "resnet", "transformer"))
    skip: bool = _f(False, "residual connection around every hidden block whose input and output widths match "
                           "(resnet: the ResNet; false: the plain net)", archs=("mlp", "resnet"))
    residual_scale: str = _f("none", "scaling of each residual branch: none; rezero: x + a*F(x), a learnable scalar a "
                                     "initialised to 0 (ReZero, Bachlechner et al. 2021; SkipInit, De & Smith 2020); "
                                     "deepnorm: post-LN x*alpha + F(x) with branch weights scaled by beta (Wang et al. "
                                     "2022, transformer only)", choices=["none", "rezero", "deepnorm"],
                             archs=("mlp", "resnet", "transformer"))
    recurrent_init: Any = _f("default", "rnn/lstm/gru: init of the hidden-to-hidden weights, per gate "
                                        "(e.g. orthogonal, identity for the IRNN)", spec="inits",
                         archs=("rnn", "lstm", "gru"))
    forget_bias: float = _f(1.0, "lstm: forget-gate bias (b_ih; b_hh is 0)", archs=("lstm",))
    heads: int = _f(4, "transformer: attention heads (width must be divisible by it)", valid="[1, inf)",
                    archs=("transformer",))
    mlp_ratio: int = _f(4, "transformer: the MLP's hidden width over width", valid="[1, inf)", archs=("transformer",))
    norm_position: str = _f("pre", "transformer: where model.norm sits: pre (x + F(N(x)), a final N before the "
                                   "head; Xiong et al. 2020), post (N(x + F(x)); Vaswani et al. 2017) or none",
                            choices=["pre", "post", "none"], archs=("transformer",))
    positions: str = _f("learned", "transformer: position embedding added to the embedded inputs: learned "
                                   "(N(0, 0.02^2) at init), sinusoidal (fixed) or none",
                        choices=["learned", "sinusoidal", "none"], archs=("transformer",))


@dataclass
class ClipConfig:
    mode: str = _f("none", "gradient clipping before the optimizer step", choices=["none", "norm", "value"])
    max_norm: float = _f(1.0, "mode=norm: rescale all gradients so their total norm is at most this", valid="(0, inf)")
    value: float = _f(1.0, "mode=value: clamp every gradient entry to [-value, value]", valid="(0, inf)")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "optimizer steps", valid="[1, inf)")
    batch_size: int = _f(128, "examples per step, at most the training set's size (reshuffled every epoch)",
                         valid="[1, inf)")
    optimizer: Any = _f({"name": "sgd", "lr": 0.1}, "optimizer and its arguments (vgp ls optimizers)", spec="optimizers")
    schedule: Any = _f("constant", "learning-rate schedule over train.steps, stepped after every update: constant, "
                                   "warmup, warmup_cosine, step (vgp ls schedules)", spec="schedules")
    clip: ClipConfig = _section(ClipConfig, "gradient clipping")
    precision: str = _f("fp32", "autocast dtype of the forward pass, the loss and evaluation (weights, gradients and "
                                "optimizer state stay float32); on a CPU bf16 is about 3x and fp16 15-25x slower "
                                "than fp32, and fp16 has no LSTM", choices=["fp32", "bf16", "fp16"])
    loss_scale: str = _f("dynamic", "fp16: dynamic loss scaling (torch.amp.GradScaler; a step whose scaled gradient "
                                    "overflows is skipped and the scale halved) or none; fp32 and bf16 never scale",
                         choices=["dynamic", "none"])
    eval_every: int = _f(100, "evaluate on the test set every N steps (and after the last step)", valid="[1, inf)")


@dataclass
class LogConfig:
    every: int = _f(10, "record gradients every N steps; step 0 (before any update) and the last step always",
                    valid="[1, inf)")
    kinds: list = _f(list(KINDS), "what to record per layer (fewer kinds cost less when recording every step)",
                     choices=list(KINDS))


@dataclass
class Config:
    name: str = _f("run", "run name: letters, digits, '.', '_', '-' (default: the config file's name)")
    seed: int = _f(0, "seed of the data, the init and the batch order (what torch.manual_seed takes, less one)",
                   valid=f"[0, {2**64 - 2}]")
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
    elif name == "schedules":
        from vgp.optim import SCHEDULES as r
    else:
        from vgp.data import DATASETS as r
    return r


@functools.cache
def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return dict(_fields(cls))


@functools.cache
def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@functools.cache
def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def _spec(value, where: str) -> dict:
    """Normalise a spec value (a name or a mapping) to a mapping with 'name'."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{where}: expected a name or a mapping {{name: ..., <arguments>}}, got {shown(value)}")


def _normalise(raw: dict, cls, prefix: str, label) -> dict:
    """Turn specs into mappings and check that every key exists, recursively (no type checks yet).
    ``label(key)``: who set a key, for messages (the file, or an override)."""
    if not isinstance(raw, dict):
        key = prefix.rstrip(".") or "config"
        raise ConfigError(f"{label(key)}: '{key}' must be a mapping, got {shown(raw)}")
    known = _fields(cls)
    out = {}
    for key, value in raw.items():
        if key not in known:
            full = [prefix + k for k in known]
            raise ConfigError(
                f"{label(prefix + str(key))}: unknown key {shown(prefix + str(key))}"
                f"{did_you_mean(prefix + str(key), full)} (valid in {prefix.rstrip('.') or 'the top level'}: "
                f"{', '.join(known)})"
            )
        f = known[key]
        if _is_section(f):
            out[key] = _normalise(value if value is not None else {}, f.default_factory, f"{prefix}{key}.", label)
        elif f.metadata["spec"]:
            out[key] = _spec(value, f"{label(prefix + key)}: {prefix}{key}")
        else:
            out[key] = value
    return out


def _build(raw: dict, cls, prefix: str, label):
    """Build a dataclass from a normalised mapping: type checks, choices, ranges, spec resolution."""
    kwargs = {}
    for name, f in _fields(cls).items():
        where = f"{prefix}{name}"
        if _is_section(f):
            kwargs[name] = _build(raw.get(name, {}), f.default_factory, where + ".", label)
            continue
        default = _default(f)  # shared: read here, never changed
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
                raise ConfigError(f"{label(where)}: {e}{hint}") from None
            continue
        value = raw.get(name, default)
        choices = f.metadata["choices"]
        if isinstance(default, list):  # a list of choices, e.g. log.kinds
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{label(where)}: {where}: expected a non-empty list, got {shown(value)}")
            for v in value:
                if v not in choices:
                    raise ConfigError(f"{label(where)}: {where}: invalid value {shown(v)}{did_you_mean(v, choices)} "
                                      f"(valid: {', '.join(choices)})")
            kwargs[name] = [c for c in choices if c in value]  # canonical order, no repeats
            continue
        try:
            if value is not None or f.metadata["like"] is None:
                value = coerce(value, default if default is not None else f.metadata["like"], where)
        except ConfigError as e:
            raise ConfigError(f"{label(where)}: {e}") from None
        if choices and value not in choices:
            raise ConfigError(
                f"{label(where)}: {where}: invalid value {shown(value)}{did_you_mean(value, choices)} "
                f"(valid: {', '.join(choices)})"
            )
        valid = f.metadata["valid"]
        if valid is not None and value is not None and value not in valid:
            raise ConfigError(f"{label(where)}: {where}: {valid.problem(value)}")
        kwargs[name] = value
    return cls(**kwargs)


ARCH_DEFAULTS = {"mlp": (10, 256), "resnet": (20, 16), "rnn": (1, 128), "lstm": (1, 128), "gru": (1, 128),
                 "transformer": (6, 64)}
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,4})$")
MAX_NAME = 200  # characters: a run name is a folder name (most file systems allow 255 bytes)


def _check(cfg: Config, label) -> None:
    """Checks that involve values, not just types."""

    def bad(key, msg):
        raise ConfigError(f"{label(key)}: {key}: {msg}")

    if not _NAME.match(cfg.name) or cfg.name in {".", ".."}:
        bad("name", f"{shown(cfg.name)} may only use letters, digits, '.', '_' and '-' (and is not '.' or '..')")
    if len(cfg.name) > MAX_NAME:
        bad("name", f"{len(cfg.name)} characters; at most {MAX_NAME} (it names a folder)")
    if not _DEVICE.match(cfg.device):
        bad("device", f"invalid value {shown(cfg.device)} (valid: auto, cpu, cuda, cuda:N)")
    from vgp.optim import schedule_problem  # torch is imported lazily there

    problem = schedule_problem(cfg.train.schedule, cfg.train.steps, cfg.train.optimizer.get("lr"))
    if problem:
        bad(f"train.schedule.{problem[0]}", problem[1])
    m = cfg.model
    depth, width = ARCH_DEFAULTS[m.arch]
    m.depth = depth if m.depth is None else m.depth
    m.width = width if m.width is None else m.width
    if m.arch == "resnet":
        from vgp.models.resnet import blocks_per_stage

        try:
            blocks_per_stage(m.depth)
        except ConfigError as e:
            raise ConfigError(f"{label('model.depth')}: {e}") from None
        if m.norm in ("layernorm", "rmsnorm"):
            bad("model.norm", "a resnet takes none or batchnorm")
    if m.arch in ("rnn", "lstm", "gru"):
        if m.norm != "none" or m.skip:
            bad("model.norm" if m.norm != "none" else "model.skip",
                f"{m.arch} takes neither a norm nor skips (norm: none, skip: false)")
        if m.depth < 1:
            bad("model.depth", f"{m.arch} needs at least 1 layer, got {m.depth}")
    if m.arch == "transformer":
        _check_transformer(m, bad)
    _check_fixes(m, bad)


def _check_transformer(m: ModelConfig, bad) -> None:
    if m.skip:
        bad("model.skip", "a transformer's blocks are always residual; leave model.skip false")
    if m.depth < 1:
        bad("model.depth", f"a transformer needs at least 1 block, got {m.depth}")
    if m.width % m.heads:
        bad("model.heads", f"model.width {m.width} is not divisible by {m.heads} heads; use a width that is a "
                           f"multiple of model.heads (e.g. model.width={max(m.heads, m.width // m.heads * m.heads)})")
    if m.norm_position != "none" and m.norm not in ("layernorm", "rmsnorm"):
        bad("model.norm", f"{shown(m.norm)} with model.norm_position={m.norm_position}: a transformer takes "
                          f"layernorm or rmsnorm (set model.norm=layernorm, or model.norm_position=none for no norm)")
    if m.norm_position == "none" and m.norm != "none":
        bad("model.norm", f"{m.norm} with model.norm_position=none: say where it goes (model.norm_position=pre or "
                          f"post), or set model.norm=none")
    if m.residual_scale == "deepnorm" and m.norm_position != "post":
        bad("model.residual_scale", f"deepnorm scales a post-LN transformer (model.norm_position=post); got "
                                    f"norm_position={m.norm_position}")
    if m.residual_scale == "rezero" and m.norm_position == "post":
        bad("model.residual_scale", "rezero makes each block the identity at init only where no norm acts on the "
                                    "residual stream: use model.norm_position=pre or none")


def _check_fixes(m: ModelConfig, bad) -> None:
    """The research fixes each need the net they were designed for (``bad(key, message)`` raises)."""
    if m.residual_scale != "none" and m.arch in ("rnn", "lstm", "gru"):
        bad("model.residual_scale", f"{m.arch} has no residual branches (valid: none)")
    if m.residual_scale == "deepnorm" and m.arch != "transformer":
        bad("model.residual_scale", f"deepnorm is for the transformer only (post-LN); a{'n' if m.arch == 'mlp' else ''} "
                                    f"{m.arch} takes none or rezero (rezero needs model.skip=true)")
    if m.residual_scale == "rezero" and m.arch in ("mlp", "resnet") and not m.skip:
        bad("model.residual_scale", f"rezero scales residual branches, and a{'n' if m.arch == 'mlp' else ''} "
                                    f"{m.arch} with model.skip=false has none: set model.skip=true (or "
                                    f"model.residual_scale=none)")
    init = m.init["name"]
    if init == "fixup":
        where = ("a resnet" if m.arch != "resnet" else "skip: true" if not m.skip else
                 "norm: none" if m.norm != "none" else None)
        if where:
            bad("model.init", f"fixup (Zhang et al. 2019) replaces normalisation in a residual net: it needs "
                              f"model.arch=resnet, model.skip=true and model.norm=none (this config lacks {where})")
        if m.residual_scale != "none":
            bad("model.residual_scale", "fixup already has a scalar multiplier per branch (initialised to 1, its "
                                        "branch's last conv to 0): use model.residual_scale=none with model.init=fixup")
        if m.bias_init["name"] != "default":
            bad("model.bias_init", "fixup sets every bias itself (scalar biases 0, the classifier's bias 0): leave "
                                   "model.bias_init at default with model.init=fixup")
    if init == "lsuv" and m.arch not in ("mlp", "resnet"):
        bad("model.init", f"lsuv (Mishkin & Matas 2016) scales feed-forward layers one after another; "
                          f"model.arch={m.arch} is not supported (valid archs: mlp, resnet)")
    if m.recurrent_init["name"] in ("fixup", "lsuv"):
        bad("model.recurrent_init", f"{m.recurrent_init['name']} is a whole-net init of model.init, not one for "
                                    f"recurrent weights (e.g. orthogonal, identity)")


def _labeller(source: str, pairs: list[tuple[str, Any]], texts: list[str] | None):
    """``label(key)``: what a message about ``key`` should blame: the command-line override that set
    it (or a key above or below it), else the file."""
    if not texts:
        return lambda key: source

    def label(key: str) -> str:
        for (k, _), text in zip(reversed(pairs), reversed(texts)):  # the last override of a key wins
            if k == key or key.startswith(k + ".") or k.startswith(key + "."):
                return f"override {clipped(text, 80)}"
        return source

    return label


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def key_problem(key) -> str | None:
    """Why ``key`` is not a dotted key like ``model.depth`` (None if it is one)."""
    if isinstance(key, str) and _KEY.match(key):
        return None
    why = ("an empty part between dots" if isinstance(key, str) and any(not p for p in key.split(".")) else
           "keys are dotted names of letters, digits and '_'")
    return f"{shown(key)} is not a key ({why}), for example model.depth"


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``['model.depth=40', 'seed=3']`` -> ``[('model.depth', 40), ('seed', 3)]`` (YAML scalars)."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {clipped(item, 80)}: expected key=value, for example model.depth=40")
        if key_problem(key):
            raise ConfigError(f"override {clipped(item, 80)}: {key_problem(key)}=40")
        try:
            value = load_yaml_text(text) if text.strip() else ""
        except DuplicateKeyError as e:
            raise ConfigError(f"override {clipped(item, 80)}: {e.problem}") from None
        except yaml.YAMLError:
            value = text
        except RecursionError:
            raise ConfigError(f"override {clipped(item, 80)}: nested too deeply") from None
        try:
            check_size(value)
        except ValueError as e:
            raise ConfigError(f"override {clipped(item, 80)}: {e}") from None
        out.append((key, value))
    return out


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]], source: str = "override") -> dict:
    """Set dotted keys in a (normalised) raw mapping; a spec given by name becomes a mapping."""
    raw = dict(raw)  # copied along each override's path only: the rest is shared, and never changed
    copied = {id(raw)}
    for key, value in overrides:
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif isinstance(child, str):
                child = {"name": child}  # model.init.gain=2 on top of `init: orthogonal`
            elif not isinstance(child, dict):
                raise ConfigError(f"{source} {key}={shown(value)}: '{'.'.join(parts[:i + 1])}' is not a mapping")
            elif id(child) not in copied:
                child = dict(child)
            copied.add(id(child))
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


# -- YAML --------------------------------------------------------------------------------------------

MAX_FILE_BYTES = 10 * 2**20  # a config is a few KiB; a sweep file with long lists, a few hundred
MAX_VALUES = 100_000  # values after expanding YAML aliases (a 300-byte "billion laughs" file has 10^9)
MAX_NESTING = 32


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping has the same key twice (plain YAML keeps the last one, silently)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key given twice is an error (naming both lines), and an
    integer too long for Python's int() (4300 digits) is a YAML error, not a ValueError."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` may be overridden by the keys beside it
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: SafeLoader says so itself
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {shown(key)} (first at line {first.line + 1}); "
                        f"YAML would keep only the last", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, "an integer with too many digits",
                                                    node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml_text(text: str):
    """Parse YAML text with :class:`_Loader` (safe: no Python tags; duplicate keys are errors)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def check_size(data) -> None:
    """ValueError if ``data``, its YAML aliases expanded, holds more than MAX_VALUES values or is nested
    deeper than MAX_NESTING: a few hundred bytes of aliases can stand for billions of values, which
    any later walk over them (copying, hashing, printing) would take hours to go through."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(f"more than {MAX_VALUES:,} values once its YAML aliases are expanded "
                             f"(an alias bomb?); a config has a few dozen")
        if depth > MAX_NESTING:
            raise ValueError(f"nested more than {MAX_NESTING} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def read_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping; every problem is a ConfigError naming the file (and, for syntax
    errors and duplicate keys, the line and column)."""
    path = Path(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path}: is a folder, not a config file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file (a config is a YAML text file)")
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {info.st_size:,} bytes; a config or sweep file is text of a few KiB "
                              f"(at most {MAX_FILE_BYTES // 2**20} MiB)")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); a config is YAML text") from None
    try:
        data = load_yaml_text(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {clipped(e.problem or e.context)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {clipped(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        check_size(data)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return data


def from_dict(raw: dict, overrides: list[str] | list[tuple[str, Any]] = (), source: str = "config",
              preflight: bool = True) -> Config:
    """Validate a raw mapping plus overrides into a :class:`Config` (defaults filled in).

    ``overrides``: ``key=value`` strings (blamed as ``override key=value`` in messages) or
    ``(key, value)`` pairs (blamed on ``source``). ``preflight``: also check that the model builds
    on the data, takes a step and fits in memory (:mod:`vgp.preflight`; imports torch)."""
    texts = list(overrides) if overrides and isinstance(overrides[0], str) else None
    pairs = parse_overrides(overrides) if texts else list(overrides)
    label = _labeller(source, pairs, texts)
    raw = _normalise(raw, Config, "", label)
    if pairs:
        raw = apply_overrides(raw, pairs, "override")
        raw = _normalise(raw, Config, "", label)
    cfg = _build(raw, Config, "", label)
    _check(cfg, label)
    if preflight:
        from vgp import preflight as pre

        pre.check(cfg, source, label)
    return cfg


SWEEP_ONLY_KEYS = ("base", "fixed", "grid", "zip", "seeds", "launcher")


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override and validate a config file. Raises ConfigError with a message for people."""
    path = Path(path)
    raw = read_yaml(path)
    sweep_keys = [k for k in raw if k in SWEEP_ONLY_KEYS]
    if sweep_keys:
        raise ConfigError(f"{path}: a run config was expected, but this is a sweep file (it has "
                          f"{', '.join(sweep_keys)}); run it with: vgp sweep {path}")
    raw.setdefault("name", path.stem)
    return from_dict(raw, overrides, source=str(path))


def to_dict(cfg: Config) -> dict:
    """The config as plain dicts and lists (a new copy: changing it does not change ``cfg``)."""
    return _plain(cfg)


def _plain(value):
    # dataclasses.asdict, several times faster (a sweep hashes every run's config)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in _fields(type(value))}
    return value


def flatten(d: dict, prefix: str = "") -> dict:
    """``{'model': {'depth': 3}}`` -> ``{'model.depth': 3}`` (lists become YAML-ish strings)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, (list, tuple)) else str(list(v))
    return out


def applies(key: str, arch: str | None) -> bool:
    """Whether the flattened config key ``key`` ('model.forget_bias', 'model.activation.name') takes
    effect in a net of ``model.arch`` ``arch``: False for the forget bias of a GRU or the activation of
    an LSTM (its gates keep their own). Keys of other sections, and unknown archs, always apply."""
    parts = key.split(".")
    if parts[0] != "model" or len(parts) < 2 or not arch:
        return True
    f = _fields(ModelConfig).get(parts[1])
    archs = f.metadata.get("archs") if f is not None else None
    return not archs or arch in archs


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
