"""One small name-to-builder table, used for activations, inits, optimizers and data sets.

A component is registered beside its definition::

    @ACTIVATIONS.register("leaky_relu", "max(x, slope*x)")
    def leaky_relu(negative_slope: float = 0.01): ...

Its keyword arguments *with defaults* are what a config may set (``{name: leaky_relu,
negative_slope: 0.2}``); positional arguments without defaults are supplied by vgp itself.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

from vgp.errors import ConfigError


def did_you_mean(word: str, choices) -> str:
    """'; did you mean 'relu'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class Entry:
    name: str
    fn: Callable
    doc: str
    meta: dict

    def defaults(self) -> dict[str, Any]:
        """The settable arguments with their default values, in signature order."""
        return {
            p.name: p.default
            for p in inspect.signature(self.fn).parameters.values()
            if p.default is not inspect.Parameter.empty
        }


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, doc: str = "", **meta):
        def deco(fn):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = Entry(name, fn, doc or (fn.__doc__ or "").strip().split("\n")[0], meta)
            return fn

        return deco

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)} "
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
                    f"{where}: {self.kind} '{entry.name}' has no argument '{key}'"
                    f"{did_you_mean(key, defaults)} (valid: {valid})"
                )
            out[key] = coerce(value, defaults[key], f"{where}.{key}")
            choices = entry.meta.get("choices", {}).get(key)
            if choices is not None and out[key] not in choices:
                raise ConfigError(
                    f"{where}.{key}: invalid value {out[key]!r}{did_you_mean(out[key], choices)} "
                    f"(valid: {', '.join(map(str, choices))})"
                )
        for key, default in defaults.items():
            out.setdefault(key, list(default) if isinstance(default, tuple) else default)
        return out

    def build(self, spec: dict, *args):
        """Call the registered builder with vgp's positional arguments and the spec's arguments."""
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "name"}
        return self[spec["name"]].fn(*args, **kwargs)


_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def coerce(value, like, where: str):
    """Check ``value`` against the type of a default ``like`` (int -> float is allowed)."""
    if like is None:
        return value
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(like, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCI.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(like, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(like, (tuple, list)):
        if isinstance(value, (list, tuple)) and len(value) == len(like):
            return [coerce(v, l, f"{where}[{i}]") for i, (v, l) in enumerate(zip(value, like))]
        raise ConfigError(f"{where}: expected a list of {len(like)} values like {list(like)}, got {value!r}")
    return value
