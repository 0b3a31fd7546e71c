"""Errors meant for people: the CLI prints their message and exits with status 2, no traceback."""

from __future__ import annotations

import math


class UserError(Exception):
    """A mistake the user can fix (a config, a path, a missing data file)."""


class ConfigError(UserError):
    """A config file, key, value or override is invalid."""


class DataError(UserError):
    """A data set cannot be loaded (missing files, no spatial shape, ...)."""


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting a value in a message.

    What people wrote can be huge (a 300-byte YAML alias bomb expands to billions of items, an
    integer can have thousands of digits), so this never builds more than it shows:
    ``shown(list(range(10**9)))`` -> ``'[0, 1, 2, ... (cut)'``, in microseconds.
    """
    out, size = [], 0
    for piece in _pieces(value, 0, limit):
        out.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(out)[:limit] + "... (cut)"
    return "".join(out)


def clipped(text: str, limit: int = 200) -> str:
    """Text (a message from a library, a file's line) cut to ``limit`` characters, unquoted."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "... (cut)"


def _pieces(value, depth: int, limit: int):
    """The parts of a repr, lazily (so that the caller can stop early)."""
    if depth > 20:
        yield "..."
    elif isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _pieces(k, depth + 1, limit)
            yield ": "
            yield from _pieces(v, depth + 1, limit)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "[" if isinstance(value, list) else "("
        for i, v in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(v, depth + 1, limit)
        yield "]" if isinstance(value, list) else ")"
    elif isinstance(value, str):
        yield repr(value[:limit + 1])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() of an integer beyond 4300 digits raises ValueError
        yield f"<an integer of {int(value.bit_length() * math.log10(2)) + 1} digits>"
    elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        yield str(int(value))  # -1, as it was written, not -1.0
    else:
        yield repr(value)


def finite(value: float | None, option: str, low: float | None = None, low_open: bool = False,
           high: float | None = None) -> float | None:
    """A number read from the command line, checked: finite and within bounds (None passes).

    ``finite(x, "--weight-var", 0, low_open=True)`` raises UserError "--weight-var: must be a finite
    number > 0, got nan" for nan, inf or 0."""
    if value is None:
        return None
    bound = ""
    if low is not None:
        bound = f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        bound += f"{' and' if bound else ''} <= {high:g}"
    bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or \
        (high is not None and value > high)
    if bad:
        raise UserError(f"{option}: must be a finite number{bound}, got {value:g}")
    return value
