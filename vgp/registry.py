"""One small name-to-builder table, used for activations, inits, optimizers and data sets.

A component is registered beside its definition, with the valid range of each argument::

    @ACTIVATIONS.register("leaky_relu", "max(x, slope*x)", ranges={"negative_slope": "[0, 1]"})
    def leaky_relu(negative_slope: float = 0.01): ...

Its keyword arguments *with defaults* are what a config may set (``{name: leaky_relu,
negative_slope: 0.2}``); positional arguments without defaults are supplied by vgp itself.
``resolve`` checks a config's arguments before anything is built: names, types, ``choices``,
``ranges`` (intervals such as ``"(0, inf)"`` or ``"[0, 1)"``, applied to every item of a list
argument) and ``rule`` (a function of all the arguments that returns what is wrong, or None, for
what one argument's range cannot say: SGD's Nesterov momentum needs a momentum). Every number
must be finite.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from vgp.errors import ConfigError, shown


def did_you_mean(word: str, choices) -> str:
    """'; did you mean 'relu'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word)[:100], [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Interval:
    """A range of valid values, written as in mathematics: ``[0, 1)``, ``(0, inf)``, ``[1, 100]``."""
    low: float
    high: float
    low_open: bool
    high_open: bool

    def __contains__(self, x) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf and self.low == -math.inf:
            return "finite"
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"

    def problem(self, value) -> str | None:
        """'must be in [0, 1), got -1', or None when the value is in the interval."""
        return None if value in self else f"must be {self}, got {shown(value)}"


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


def _bound(text: str):
    if text in ("inf", "-inf"):
        return float(text)
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def _num(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


def interval(text: str) -> Interval:
    """``interval("[0, 1)")`` -> the values 0 <= x < 1; ``(0, inf)``: positive numbers."""
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"not an interval: {text!r} (write it like '[0, 1)' or '(0, inf)')")
    return Interval(_bound(m.group(2)), _bound(m.group(3)), m.group(1) == "(", m.group(4) == ")")


@dataclass
class Entry:
    name: str
    fn: Callable
    doc: str
    meta: dict

    def defaults(self) -> dict[str, Any]:
        """The settable arguments with their default values, in signature order."""
        if "_defaults" not in self.meta:
            self.meta["_defaults"] = {
                p.name: p.default
                for p in inspect.signature(self.fn).parameters.values()
                if p.default is not inspect.Parameter.empty
            }
        return dict(self.meta["_defaults"])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, doc: str = "", *, choices: dict | None = None, ranges: dict | None = None,
                 rule: Callable[[dict], str | None] | None = None, **meta):
        """Register a builder under ``name``. ``choices``: valid values of string arguments;
        ``ranges``: an interval per numeric argument (every float must be finite anyway);
        ``rule``: a check of all the resolved arguments together; ``meta``: anything else
        (e.g. a data set's ``shapes``)."""
        def deco(fn):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            entry = Entry(name, fn, doc or (fn.__doc__ or "").strip().split("\n")[0],
                          {**meta, "choices": choices or {}, "rule": rule,
                           "ranges": {k: interval(v) for k, v in (ranges or {}).items()}})
            unknown = (set(entry.meta["choices"]) | set(entry.meta["ranges"])) - set(entry.defaults())
            if unknown:  # a typo in a declaration, caught at import
                raise ValueError(f"{self.kind} '{name}': no argument(s) {sorted(unknown)} to declare")
            self._entries[name] = entry
            return fn

        return deco

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._entries

    def __getitem__(self, name: str) -> Entry:
        if name not in self:
            raise ConfigError(
                f"unknown {self.kind} {shown(name)}{did_you_mean(name, self._entries)} "
                f"(valid: {', '.join(self._entries)})"
            )
        return self._entries[name]

    def resolve(self, spec: dict, where: str) -> dict:
        """Check a spec ``{name: ..., **args}`` and return it with every default filled in.

        ``where`` names the config key for error messages (``model.init``).
        """
        if "name" not in spec:
            raise ConfigError(f"{where}: missing 'name' (valid: {', '.join(self._entries)})")
        try:
            entry = self[spec["name"]]
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        defaults = entry.defaults()
        out = {"name": entry.name}
        for key, value in spec.items():
            if key == "name":
                continue
            if key not in defaults:
                valid = ", ".join(defaults) or "none"
                raise ConfigError(
                    f"{where}: {self.kind} '{entry.name}' has no argument {shown(key)}"
                    f"{did_you_mean(key, defaults)} (valid: {valid})"
                )
            out[key] = coerce(value, defaults[key], f"{where}.{key}")
            choices = entry.meta["choices"].get(key)
            if choices is not None and out[key] not in choices:
                raise ConfigError(
                    f"{where}.{key}: invalid value {shown(out[key])}{did_you_mean(out[key], choices)} "
                    f"(valid: {', '.join(map(str, choices))})"
                )
        for key, default in defaults.items():
            out.setdefault(key, list(default) if isinstance(default, tuple) else default)
        for key, valid in entry.meta["ranges"].items():
            items = out[key] if isinstance(out[key], list) else [out[key]]
            for i, item in enumerate(items):
                problem = valid.problem(item)
                if problem:
                    index = f"[{i}]" if isinstance(out[key], list) else ""
                    raise ConfigError(f"{where}.{key}{index}: {problem}")
        if entry.meta["rule"] is not None:
            problem = entry.meta["rule"](out)
            if problem:
                raise ConfigError(f"{where}: {self.kind} '{entry.name}': {problem}")
        return out

    def build(self, spec: dict, *args):
        """Call the registered builder with vgp's positional arguments and the spec's arguments."""
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "name"}
        return self[spec["name"]].fn(*args, **kwargs)


class LazyModule:
    """A module imported on first attribute use: ``torch = LazyModule("torch")`` at the top of a
    component module lets ``vgp ls``, ``vgp theory`` and the config checks read its registry (names,
    docs, defaults, ranges) without paying for importing torch (about 2 s here). Each attribute is
    looked up once, then kept on the instance, so later uses cost what a plain attribute does."""

    def __init__(self, name: str):
        self._lazy_module_name = name

    def __getattr__(self, attr: str):
        value = getattr(importlib.import_module(self._lazy_module_name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_module_name!r}>"


_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def coerce(value, like, where: str):
    """Check ``value`` against the type of a default ``like`` (int -> float is allowed). Numbers read
    as floats must be finite: a NaN learning rate would otherwise be stored as a diverged run."""
    if like is None:
        return value
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
    if isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
    if isinstance(like, float):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and len(value) < 100 and _SCI.match(value.strip()):
            number = value  # YAML 1.1 reads 1e-3 (no dot) as a string
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        try:
            number = float(number)
        except OverflowError:  # an integer beyond 1.8e308
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
        return number
    if isinstance(like, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {shown(value)}")
    if isinstance(like, (tuple, list)):
        if isinstance(value, (list, tuple)) and len(value) == len(like):
            return [coerce(v, l, f"{where}[{i}]") for i, (v, l) in enumerate(zip(value, like))]
        raise ConfigError(f"{where}: expected a list of {len(like)} values like {list(like)}, got {shown(value)}")
    return value
