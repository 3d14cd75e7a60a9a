"""Helpers shared by the validated configuration modules (``NarsetParams`` and
``sims.Scenario``): range formatting, unknown-key checks, plain-value export, TOML reads.
Each takes the caller's error class, so messages keep naming the right type and file."""

from __future__ import annotations

import datetime
import os
import tomllib
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def interval(lo, lo_open, hi, hi_open) -> str:
    """``"(0, 1]"``-style text of a range; ``None`` ends are infinite."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    fmt = lambda v, inf: inf if v is None else f"{v:g}"  # noqa: E731
    return f"{left}{fmt(lo, '-inf')}, {fmt(hi, 'inf')}{right}"


def reject_unknown(keys: Iterable, known: Iterable[str], error: type[Exception], what: str):
    """Raise ``error`` naming every key of ``keys`` not in ``known`` (sorted)."""
    unknown = sorted(str(k) for k in keys if k not in set(known))
    if unknown:
        raise error(f"{what}: {', '.join(unknown)}")


def plain_leaves(obj, names: Iterable[str]) -> dict[str, Any]:
    """Array leaves as plain floats (nested lists for stacked leaves), each the shortest
    text that round-trips in the leaf's own dtype."""
    out: dict[str, Any] = {}
    for name in names:
        arr = np.asarray(getattr(obj, name))
        # ``str`` of a numpy scalar is its shortest round-tripping repr in its own dtype.
        flat = np.array([float(str(v)) for v in arr.reshape(-1)]).reshape(arr.shape)
        out[name] = float(flat) if arr.ndim == 0 else flat.tolist()
    return out


def describe(value) -> str:
    """What a (TOML or JSON) value is, for "must be a number, got ..." messages: ``"a list
    ([2.0])"``, ``"a table"``, ``"a string ('x')"``, ``"a boolean (true)"``, or the number."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list | tuple):
        kind = "a list"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, datetime.date | datetime.time):
        kind = "a date or time"
    elif value is None:
        return "nothing"
    else:
        kind = f"a {type(value).__name__}"
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def is_number(value) -> bool:
    """A TOML number: an int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_toml_types(data, numbers, strings, error: type[Exception], prefix: str) -> None:
    """Raise ``error("<prefix><key> must be a number, got a list ([2.0])")`` for the first
    key of ``data`` in ``numbers`` that is not a number, or in ``strings`` that is not a
    string (keys in neither are left to the caller's unknown-key check). ``prefix`` names
    the file (and owner), e.g. ``"p.toml: NarsetParams."``."""
    numbers, strings = set(numbers), set(strings)
    for key, value in data.items():
        if key in numbers and not is_number(value):
            raise error(f"{prefix}{key} must be a number, got {describe(value)}")
        if key in strings and not isinstance(value, str):
            raise error(f"{prefix}{key} must be a string, got {describe(value)}")


def read_toml(path, error: type[Exception], what: str) -> dict[str, Any]:
    """A TOML file's table; unreadable or malformed files raise ``error`` naming the file
    (and, when malformed, the line and column)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise error(f"{path}: malformed TOML: {err}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise error(f"{path}: malformed TOML: nested too deeply") from None


def check_range(owner: str, name: str, value, bounds, error: type[Exception]) -> np.ndarray:
    """``value`` (a float array or scalar) as float64 after checking that every element is
    finite and inside ``bounds = (lo, lo_open, hi, hi_open)``; else ``error`` names
    ``owner.name``, the range and the first offending value."""
    lo, lo_open, hi, hi_open = bounds
    if not (
        isinstance(value, jax.Array | np.ndarray)
        and np.issubdtype(np.asarray(value).dtype, np.floating)
    ):
        raise error(f"{owner}.{name} must be a number, got {value!r}")
    arr = np.asarray(value, dtype=np.float64)
    ok = np.isfinite(arr)
    if lo is not None:
        ok &= (arr > lo) if lo_open else (arr >= lo)
    if hi is not None:
        ok &= (arr < hi) if hi_open else (arr <= hi)
    if not np.all(ok):
        bad = arr[~ok].ravel()[0] if arr.ndim else arr
        raise error(f"{owner}.{name} must be in {interval(*bounds)}, got {float(bad):g}")
    return arr
