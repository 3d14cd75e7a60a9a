"""Ingest: real training telemetry (JSONL event logs or Parquet tables) -> Telemetry windows.

The event schema, one example per kind and how each event feeds the signals are in
``docs/telemetry.md``. In short, each JSONL line is one event with ``region`` (int),
``window`` (int) and ``kind``:

=====================  =============================================  ===========================
kind                   extra fields                                   feeds
=====================  =============================================  ===========================
``loss``               ``value``                                      ``loss`` (window mean)
``governor_rollback``  ``panic_reason``: nan | lobotomy | divergence  ``rollbacks`` (+ nonfinite)
``ppo_anomaly``        ``anomaly``: ratio_explosion | ratio_collapse  ``anomalies`` (+ nonfinite)
                       | value_collapse | numerical_instability
``lstm_health``        ``h_rms``                                      ``lstm_health`` (window max)
``seed_op``            ``op``: germinate | prune | fossilise |        ``churn``, ``alpha_shock``
                       set_alpha (with ``delta_alpha``)
``seed_counts``        ``active``, ``fossilised``                     the seed counts (last)
``growth_ratio``       ``value``                                      ``growth_ratio`` (last)
``boundary``           none                                           ``boundary``
=====================  =============================================  ===========================

Streaming model: the file is read line by line and aggregated into per-window numpy
accumulators (``[N]`` arrays), so memory is ``O(N * (lag + 1))``, not ``O(events)``. Lines
need not be sorted by window, but each region's windows must not go backwards, and the
file must be roughly in window order: window ``w`` is closed once an event of window
``>= w + lag`` has been read (or the file ends). An event for a closed window is an error
(``late_event``); raise ``lag`` to allow more skew between regions.

Malformed lines (not JSON, unknown kind, missing field, wrong type, window going backwards
for its region, late event) raise [`narset_jax.ingest.IngestError`][] naming the file and
line (``on_error="stop"``), or are skipped and counted (``on_error="skip"``). Events for an
unknown region id and out-of-range values are never silently dropped: they are counted in
the [`narset_jax.ingest.IngestReport`][].
"""

from __future__ import annotations

import array
import dataclasses
import gzip
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from narset_jax.errors import UserError
from narset_jax.telemetry import BOOL_FIELDS, FLOAT_FIELDS, TELEMETRY_FIELDS, Telemetry

__all__ = [
    "ANOMALIES",
    "EVENT_KINDS",
    "MAX_REGIONS",
    "MISSING_FILL",
    "OPS",
    "PANIC_REASONS",
    "REASONS",
    "Event",
    "EventWindows",
    "IngestError",
    "IngestReport",
    "LevelCarry",
    "WindowAccumulator",
    "detect_format",
    "open_windows",
    "parse_event",
    "scan_jsonl_regions",
]

# ---- schema ---------------------------------------------------------------------------

PANIC_REASONS = ("nan", "lobotomy", "divergence")
ANOMALIES = ("ratio_explosion", "ratio_collapse", "value_collapse", "numerical_instability")
OPS = ("germinate", "prune", "fossilise", "set_alpha")

# kind -> its extra fields.
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "loss": ("value",),
    "governor_rollback": ("panic_reason",),
    "ppo_anomaly": ("anomaly",),
    "lstm_health": ("h_rms",),
    "seed_op": ("op",),  # and ``delta_alpha`` when op == "set_alpha"
    "seed_counts": ("active", "fossilised"),
    "growth_ratio": ("value",),
    "boundary": (),
}
_KIND_ID = {k: i for i, k in enumerate(EVENT_KINDS)}
(
    K_LOSS,
    K_ROLLBACK,
    K_ANOMALY,
    K_LSTM,
    K_SEED_OP,
    K_SEED_COUNTS,
    K_GROWTH,
    K_BOUNDARY,
) = range(len(EVENT_KINDS))

# Reasons a line is malformed (keys of ``IngestReport.bad_by_reason``).
REASONS = (
    "not_json",
    "unknown_kind",
    "missing_field",
    "wrong_type",
    "window_backwards",
    "late_event",
)

# Largest number of regions inferred from a file without ``n_regions`` (DESIGN.md §1's top
# of range); a larger region id is almost surely a typo that would allocate gigabytes.
MAX_REGIONS = 10_000_000

# Values of a region-window with no telemetry (``valid`` False: the controller holds its
# state, so these only appear in the decision log's raw columns).
MISSING_FILL = {
    "loss": 0.0,
    "rollbacks": 0.0,
    "anomalies": 0.0,
    "nonfinite": 0.0,
    "lstm_health": 0.0,
    "growth_ratio": 1.0,
    "churn": 0.0,
    "alpha_shock": 0.0,
    "active_seeds": 0.0,
    "fossilised_seeds": 0.0,
    "valid": False,
    "boundary": False,
}

_MAX_ERRORS_KEPT = 20


class IngestError(UserError, ValueError):
    """A malformed input line (or Parquet row): ``"<file>:<line>: <reason>: <detail>"``.

    **Attributes:** ``source`` (file name), ``line`` (1-based line or row number, or
    ``None``), ``reason`` (one of [`narset_jax.ingest.REASONS`][]) and ``detail``.
    """

    def __init__(
        self, source: str, line: int | None, reason: str, detail: str, *, unit: str = "line"
    ):
        self.source, self.line, self.reason, self.detail = source, line, reason, detail
        if line is None:
            where = source
        elif unit == "line":
            where = f"{source}:{line}"
        else:
            where = f"{source}: {unit} {line}"
        super().__init__(f"{where}: {reason.replace('_', ' ')}: {detail}")


class _Malformed(Exception):
    """Internal: a malformed event (reason, detail), turned into an IngestError or counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass
class IngestReport:
    """What ingest saw, for ``summary.json``. Nothing is dropped without a count here.

    **Fields:**

    - ``source``, ``format`` (``"jsonl"`` or ``"parquet"``), ``n_regions``, ``lag``.
    - ``lines``: lines (JSONL, blank ones included) or rows (Parquet) read.
    - ``events``: events (or rows) aggregated into a window.
    - ``bad_lines``, ``bad_by_reason``: malformed lines skipped (``on_error="skip"``).
    - ``unknown_region``: events for a region id outside ``[0, n_regions)``;
      ``unknown_region_ids``: the first few such ids.
    - ``out_of_range``: field -> events (rows) with a value outside its range.
    - ``nonfinite_values``: NaN/Inf measurements (counted in ``nonfinite``).
    - ``windows``, ``first_window``, ``last_window``: windows emitted.
    - ``region_windows_valid``, ``region_windows_missing``: cells with ``valid`` True/False.
    - ``region_windows_without_loss``: cells that had events but no loss reading yet, ever
      (marked missing; see ``docs/telemetry.md``).
    - ``carried``: level field -> valid cells without a reading of it in the window (the
      last reading carried, or the neutral start value before the first).
    - ``errors``: the first messages about bad lines and out-of-range values.
    """

    source: str = ""
    format: str = "jsonl"
    n_regions: int = 0
    lag: int = 0
    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    bad_by_reason: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    unknown_region: int = 0
    unknown_region_ids: list = dataclasses.field(default_factory=list)
    out_of_range: dict = dataclasses.field(default_factory=dict)
    nonfinite_values: int = 0
    windows: int = 0
    first_window: int | None = None
    last_window: int | None = None
    region_windows_valid: int = 0
    region_windows_missing: int = 0
    region_windows_without_loss: int = 0
    carried: dict = dataclasses.field(
        default_factory=lambda: dict.fromkeys(
            ("loss", "lstm_health", "growth_ratio", "active_seeds", "fossilised_seeds"), 0
        )
    )
    errors: list = dataclasses.field(default_factory=list)

    def note(self, message: str) -> None:
        """Keep the first few messages."""
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)

    def count_out_of_range(self, field: str, where: str, detail: str, n: int = 1) -> None:
        self.out_of_range[field] = self.out_of_range.get(field, 0) + n
        self.note(f"{where}: out of range: {detail}")

    def count_unknown_region(self, region, n: int = 1) -> None:
        self.unknown_region += n
        if len(self.unknown_region_ids) < 10 and region not in self.unknown_region_ids:
            self.unknown_region_ids.append(region)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return dataclasses.asdict(self)


# ---- parsing one event ------------------------------------------------------------------


class Event(NamedTuple):
    """One parsed, type-checked event.

    ``kind`` is the kind's index in [`narset_jax.ingest.EVENT_KINDS`][]; ``a`` and ``b``
    carry its payload: ``loss``/``growth_ratio`` value, ``h_rms`` (``a``); 1.0 for a NaN
    panic or a numerical-instability anomaly (``a``); the seed op's index in ``OPS`` (``a``)
    and ``delta_alpha`` (``b``, 0 unless ``set_alpha``); ``active``, ``fossilised``.
    """

    region: int
    window: int
    kind: int
    a: float = 0.0
    b: float = 0.0


def _jtype(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return f"string {v!r}" if len(v) <= 40 else "a string"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _get(obj: dict, key: str, kind: str):
    try:
        return obj[key]
    except KeyError:
        where = f"{kind} event" if kind else "event"
        raise _Malformed("missing_field", f"{where} needs '{key}'") from None


def _number(obj: dict, key: str, kind: str) -> float:
    """A JSON number (NaN and +-Infinity allowed)."""
    v = _get(obj, key, kind)
    t = type(v)
    if t is float:
        return v
    if t is int:
        try:
            return float(v)
        except OverflowError:
            raise _Malformed("wrong_type", f"'{key}' is too large: {v}") from None
    raise _Malformed("wrong_type", f"'{key}' must be a number, got {_jtype(v)}")


def _integer(obj: dict, key: str, kind: str) -> int:
    """A JSON integer (an integral float such as ``3.0`` is accepted)."""
    v = _get(obj, key, kind)
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():
        return int(v)
    raise _Malformed("wrong_type", f"'{key}' must be an integer, got {_jtype(v)}")


def _choice(obj: dict, key: str, kind: str, allowed: tuple[str, ...]) -> str:
    v = _get(obj, key, kind)
    if type(v) is not str or v not in allowed:
        raise _Malformed(
            "wrong_type", f"'{key}' must be one of {', '.join(allowed)}; got {_jtype(v)}"
        )
    return v


_PANIC_NAN = {r: float(r == "nan") for r in PANIC_REASONS}
_ANOMALY_NONFINITE = {a: float(a == "numerical_instability") for a in ANOMALIES}
_OP_INDEX = {op: float(i) for i, op in enumerate(OPS)}
_SET_ALPHA = OPS.index("set_alpha")


def _parse(obj) -> tuple:
    """Type-check one decoded JSON value: ``(region, window, kind, a, b)`` (the fields of
    [`narset_jax.ingest.Event`][]). Well-formed events take a fast path; anything else
    goes through ``_parse_checked``, which names the problem (raising ``_Malformed``)."""
    try:
        kind = _KIND_ID[obj["kind"]]
        region = obj["region"]
        window = obj["window"]
        if type(region) is int and type(window) is int and window >= 0:
            if kind == K_LOSS or kind == K_GROWTH:
                v = obj["value"]
                if type(v) is float:
                    return region, window, kind, v, 0.0
            elif kind == K_SEED_OP:
                op = _OP_INDEX[obj["op"]]
                if op != _SET_ALPHA:
                    return region, window, kind, op, 0.0
                d = obj["delta_alpha"]
                if type(d) is float:
                    return region, window, kind, op, d
            elif kind == K_LSTM:
                v = obj["h_rms"]
                if type(v) is float:
                    return region, window, kind, v, 0.0
            elif kind == K_ROLLBACK:
                return region, window, kind, _PANIC_NAN[obj["panic_reason"]], 0.0
            elif kind == K_ANOMALY:
                return region, window, kind, _ANOMALY_NONFINITE[obj["anomaly"]], 0.0
            elif kind == K_SEED_COUNTS:
                act, fos = obj["active"], obj["fossilised"]
                if type(act) is int and type(fos) is int:
                    return region, window, kind, float(act), float(fos)
            else:
                return region, window, kind, 0.0, 0.0
    except (KeyError, TypeError, OverflowError):
        pass
    return _parse_checked(obj)


def _parse_checked(obj) -> tuple:
    """The slow, precise path of ``_parse``."""
    if type(obj) is not dict:
        raise _Malformed("wrong_type", f"an event must be a JSON object, got {_jtype(obj)}")
    kind_name = _get(obj, "kind", "")
    kind = _KIND_ID.get(kind_name) if type(kind_name) is str else None
    if kind is None:
        if type(kind_name) is not str:
            raise _Malformed("wrong_type", f"'kind' must be a string, got {_jtype(kind_name)}")
        raise _Malformed("unknown_kind", f"{kind_name!r} (known: {', '.join(EVENT_KINDS)})")
    region = _integer(obj, "region", kind_name)
    window = _integer(obj, "window", kind_name)
    if window < 0:
        raise _Malformed("wrong_type", f"'window' must be a non-negative integer, got {window}")
    if kind == K_LOSS or kind == K_GROWTH:
        return region, window, kind, _number(obj, "value", kind_name), 0.0
    if kind == K_LSTM:
        return region, window, kind, _number(obj, "h_rms", kind_name), 0.0
    if kind == K_ROLLBACK:
        r = _choice(obj, "panic_reason", kind_name, PANIC_REASONS)
        return region, window, kind, _PANIC_NAN[r], 0.0
    if kind == K_ANOMALY:
        r = _choice(obj, "anomaly", kind_name, ANOMALIES)
        return region, window, kind, _ANOMALY_NONFINITE[r], 0.0
    if kind == K_SEED_OP:
        op = _OP_INDEX[_choice(obj, "op", kind_name, OPS)]
        if op == _SET_ALPHA:
            return region, window, kind, op, _number(obj, "delta_alpha", kind_name)
        return region, window, kind, op, 0.0
    if kind == K_SEED_COUNTS:
        active = _integer(obj, "active", kind_name)
        fossilised = _integer(obj, "fossilised", kind_name)
        for key, v in (("active", active), ("fossilised", fossilised)):
            if abs(v) > 2**53:
                raise _Malformed("wrong_type", f"'{key}' is too large: {v}")
        return region, window, kind, float(active), float(fossilised)
    return region, window, kind, 0.0, 0.0


def _loads(line):
    """Decode one JSON line: orjson when installed, else (and for the ``NaN``/``Infinity``
    tokens orjson rejects) the standard library. Raises ``_Malformed("not_json")``."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(line)
        except ValueError:
            pass
    try:
        return json.loads(line)
    except ValueError as err:
        raise _Malformed("not_json", _json_detail(err)) from None


try:  # optional speed-up: about 4x faster decoding of well-formed lines
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_loads = None
_fast_loads = _orjson_loads or json.loads


def parse_event(event) -> Event:
    """Parse and type-check one event: a JSON line (``str`` or ``bytes``) or a decoded dict.

    Extra keys are ignored. Non-finite numbers (``NaN``, ``Infinity``) are accepted where a
    measurement is expected: they are observations of numerical trouble.

    **Returns:** an [`narset_jax.ingest.Event`][].

    **Raises:** [`narset_jax.ingest.IngestError`][] (no file or line) with the reason.
    """
    try:
        if isinstance(event, str | bytes | bytearray):
            event = _loads(event)
        return Event(*_parse(event))
    except _Malformed as bad:
        raise IngestError("event", None, bad.reason, bad.detail) from None


def _json_detail(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at column {err.colno}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _out_of_range(kind: int, a: float, b: float) -> tuple[str, str] | None:
    """``(field, detail)`` when a value is outside its physical range, else ``None``.

    Non-finite measurements are not out of range (they count as ``nonfinite``)."""
    if kind == K_LSTM and a < 0:
        return "h_rms", f"h_rms = {a!r} < 0"
    if kind == K_GROWTH and a < 1:
        return "growth_ratio", f"growth_ratio value = {a!r} < 1"
    if kind == K_SEED_COUNTS:
        if a < 0:
            return "active", f"active = {int(a)} < 0"
        if b < 0:
            return "fossilised", f"fossilised = {int(b)} < 0"
    return None


# ---- aggregation ------------------------------------------------------------------------


class LevelCarry:
    """Per-region last reported level values, carried into windows without a reading.

    ``loss`` starts as NaN (never reported): a region's windows are missing until its first
    loss reading. The others start at neutral values: ``lstm_health`` 0, ``growth_ratio`` 1
    (no fossilised seeds), seed counts 0.
    """

    __slots__ = ("loss", "lstm_health", "growth_ratio", "active_seeds", "fossilised_seeds")

    def __init__(self, n_regions: int):
        self.loss = np.full(n_regions, np.nan)
        self.lstm_health = np.zeros(n_regions)
        self.growth_ratio = np.ones(n_regions)
        self.active_seeds = np.zeros(n_regions)
        self.fossilised_seeds = np.zeros(n_regions)


def _zeros(n: int, code: str = "d") -> array.array:
    return array.array(code, bytes(n * array.array(code).itemsize))


class WindowAccumulator:
    """Running aggregates of one window's events for ``N`` regions.

    See ``docs/telemetry.md`` for the rules: loss is the mean of the finite readings,
    rollbacks/anomalies/churn are counts, ``alpha_shock`` is the sum of ``delta_alpha^2``,
    ``lstm_health`` the maximum, growth ratio and seed counts the last reading, ``boundary``
    any boundary event; each non-finite measurement adds 1 to ``nonfinite``.

    The accumulators are flat ``array.array`` buffers (one scalar update per event costs a
    third of a numpy scalar update); [`finish`][narset_jax.ingest.WindowAccumulator.finish]
    views them as numpy arrays without copying.
    """

    __slots__ = (
        "n",
        "seen",
        "loss_sum",
        "loss_n",
        "loss_bad",
        "rollbacks",
        "anomalies",
        "nonfinite",
        "churn",
        "alpha_shock",
        "lstm",
        "lstm_bad",
        "growth",
        "growth_bad",
        "active",
        "fossilised",
        "boundary",
    )

    def __init__(self, n_regions: int):
        n = self.n = n_regions
        self.seen = _zeros(n, "b")
        self.loss_sum = _zeros(n)
        self.loss_n = _zeros(n, "q")
        self.loss_bad = _zeros(n, "b")
        self.rollbacks = _zeros(n)
        self.anomalies = _zeros(n)
        self.nonfinite = _zeros(n)
        self.churn = _zeros(n)
        self.alpha_shock = _zeros(n)
        self.lstm = array.array("d", [-math.inf]) * n
        self.lstm_bad = _zeros(n, "b")
        self.growth = array.array("d", [math.nan]) * n
        self.growth_bad = _zeros(n, "b")
        self.active = array.array("d", [math.nan]) * n
        self.fossilised = array.array("d", [math.nan]) * n
        self.boundary = _zeros(n, "b")

    def add(self, region: int, kind: int, a: float = 0.0, b: float = 0.0) -> bool:
        """Fold one in-range event in (the fields of an [`narset_jax.ingest.Event`][]).

        **Returns:** ``True`` if the event carried a non-finite measurement.
        """
        r = region
        self.seen[r] = 1
        if kind == K_LOSS:
            if a - a == 0.0:  # finite
                self.loss_sum[r] += a
                self.loss_n[r] += 1
                return False
            self.loss_bad[r] = 1
        elif kind == K_SEED_OP:
            self.churn[r] += 1.0
            if b - b == 0.0:
                self.alpha_shock[r] += b * b
                return False
        elif kind == K_LSTM:
            if a - a == 0.0:
                if a > self.lstm[r]:
                    self.lstm[r] = a
                return False
            self.lstm_bad[r] = 1
        elif kind == K_SEED_COUNTS:
            self.active[r] = a
            self.fossilised[r] = b
            return False
        elif kind == K_GROWTH:
            if a - a == 0.0:
                self.growth[r] = a
                return False
            self.growth_bad[r] = 1
        elif kind == K_ROLLBACK:
            self.rollbacks[r] += 1.0
            if a:
                self.nonfinite[r] += 1.0
            return False
        elif kind == K_ANOMALY:
            self.anomalies[r] += 1.0
            if a:
                self.nonfinite[r] += 1.0
            return False
        else:  # boundary
            self.boundary[r] = 1
            return False
        self.nonfinite[r] += 1.0
        return True

    def finish(self, carry: LevelCarry, report: IngestReport | None = None) -> dict:
        """The window's telemetry columns (float64 / bool ``[N]`` numpy arrays).

        Updates ``carry`` with this window's level readings and ``report``'s cell counts.
        """
        self._as_numpy()
        has_loss = self.loss_n > 0
        mean_loss = np.divide(self.loss_sum, self.loss_n, out=np.zeros(self.n), where=has_loss)
        known_loss = ~np.isnan(carry.loss)
        valid = self.seen & (has_loss | self.loss_bad | known_loss)
        has_lstm = np.isfinite(self.lstm)
        has_growth = ~np.isnan(self.growth)
        has_counts = ~np.isnan(self.active)
        nan = np.nan
        out = {
            "loss": np.where(has_loss, mean_loss, np.where(self.loss_bad, nan, carry.loss)),
            "rollbacks": self.rollbacks,
            "anomalies": self.anomalies,
            "nonfinite": self.nonfinite,
            "lstm_health": np.where(
                has_lstm, self.lstm, np.where(self.lstm_bad, nan, carry.lstm_health)
            ),
            "growth_ratio": np.where(
                has_growth, self.growth, np.where(self.growth_bad, nan, carry.growth_ratio)
            ),
            "churn": self.churn,
            "alpha_shock": self.alpha_shock,
            "active_seeds": np.where(has_counts, self.active, carry.active_seeds),
            "fossilised_seeds": np.where(has_counts, self.fossilised, carry.fossilised_seeds),
            "valid": valid,
            "boundary": self.boundary & valid,
        }
        if report is not None:
            nv = int(valid.sum())
            report.region_windows_valid += nv
            report.region_windows_missing += self.n - nv
            report.region_windows_without_loss += int((self.seen & ~valid).sum())
            report.carried["loss"] += int((valid & ~has_loss & ~self.loss_bad).sum())
            report.carried["lstm_health"] += int((valid & ~has_lstm & ~self.lstm_bad).sum())
            report.carried["growth_ratio"] += int((valid & ~has_growth & ~self.growth_bad).sum())
            nc = int((valid & ~has_counts).sum())
            report.carried["active_seeds"] += nc
            report.carried["fossilised_seeds"] += nc
        carry.loss = np.where(has_loss, mean_loss, carry.loss)
        carry.lstm_health = np.where(has_lstm, self.lstm, carry.lstm_health)
        carry.growth_ratio = np.where(has_growth, self.growth, carry.growth_ratio)
        carry.active_seeds = np.where(has_counts, self.active, carry.active_seeds)
        carry.fossilised_seeds = np.where(has_counts, self.fossilised, carry.fossilised_seeds)
        for k in TELEMETRY_FIELDS:  # cells without telemetry take the fixed fill
            if k != "valid":
                out[k] = np.where(valid, out[k], MISSING_FILL[k])
        return out

    def _as_numpy(self) -> None:
        for name in self.__slots__[1:]:
            buf = getattr(self, name)
            if isinstance(buf, array.array):
                arr = np.frombuffer(buf, dtype=buf.typecode)
                setattr(self, name, arr.astype(bool) if buf.typecode == "b" else arr)


def _missing_window(n: int) -> dict:
    return {
        k: np.full(n, MISSING_FILL[k], bool if k in BOOL_FIELDS else np.float64)
        for k in TELEMETRY_FIELDS
    }


# ---- streams of windows -------------------------------------------------------------------


class EventWindows:
    """A stream of telemetry windows from an event log or a Parquet table.

    Iterating yields ``(window, columns)``: the window id and a dict of the twelve
    telemetry fields as ``[N]`` numpy arrays (float64 and bool), in increasing window
    order with no gaps (windows without events come out all-missing). Built by
    [`narset_jax.ingest.open_windows`][]; ``report`` fills in as the stream is read.
    """

    def __init__(self, windows: Iterator[tuple[int, dict]], n_regions: int, report: IngestReport):
        self._windows = windows
        self.n_regions = n_regions
        self.report = report

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return self._windows

    def chunks(self, size: int, dtype=np.float32) -> Iterator[tuple[int, Telemetry]]:
        """Batches of up to ``size`` consecutive windows as ``[T, N]`` telemetry.

        **Returns:** an iterator of ``(first_window, telemetry)`` where ``telemetry`` is a
        [`narset_jax.Telemetry`][] of numpy arrays (numeric fields in ``dtype``; ``valid``
        and ``boundary`` bool).
        """
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        batch: list[dict] = []
        first = None
        for w, cols in self:
            if first is None:
                first = w
            batch.append(cols)
            if len(batch) == size:
                yield first, _stack(batch, dtype)
                batch, first = [], None
        if batch:
            yield first, _stack(batch, dtype)


def _stack(batch: list[dict], dtype) -> Telemetry:
    out = {}
    for k in TELEMETRY_FIELDS:
        kind = bool if k in BOOL_FIELDS else dtype
        out[k] = np.stack([cols[k] for cols in batch]).astype(kind, copy=False)
    return Telemetry(**out)


class _Stream:
    """The open-window buffer shared by the JSONL and Parquet readers."""

    def __init__(self, n, lag, max_gap, first_window, report, source):
        self.n, self.lag, self.max_gap = n, lag, max_gap
        self.report, self.source = report, source
        self.open: dict[int, Any] = {}  # window -> WindowAccumulator or Parquet columns
        self.next_emit: int | None = first_window
        self.newest = -1
        self.last_window = np.full(n, -1, np.int64)
        self.carry = LevelCarry(n)

    def check(self, region: int, window: int) -> None:
        """Raise ``_Malformed`` if ``window`` goes backwards for ``region`` or is late."""
        last = self.last_window[region]
        if window < last:
            raise _Malformed(
                "window_backwards", f"region {region} window {window} after window {last}"
            )
        self.check_late(region, window)

    def check_late(self, region: int, window: int) -> None:
        """Raise ``_Malformed`` if ``window`` was already closed."""
        if self.next_emit is not None and window < self.next_emit:
            raise _Malformed(
                "late_event",
                f"region {region} window {window} arrived after that window was closed "
                f"(lag {self.lag}; a larger lag allows more skew between regions)",
            )

    def too_far(self, window: int) -> bool:
        base = self.newest if self.newest >= 0 else self.next_emit
        return base is not None and window > base + self.max_gap

    def advance(self, window: int) -> Iterator[tuple[int, dict]]:
        """Note that ``window`` was seen; yield the windows it closes."""
        if window > self.newest:
            self.newest = window
            yield from self.flush(window - self.lag)

    def flush(self, upto: int) -> Iterator[tuple[int, dict]]:
        """Close and yield every window ``<= upto``, in order, gaps included."""
        if self.next_emit is None:
            if not self.open:
                return
            self.next_emit = min(self.open)
        while self.next_emit <= upto:
            w = self.next_emit
            acc = self.open.pop(w, None)
            cols = self.close(acc)
            self.next_emit = w + 1
            if self.report.first_window is None:
                self.report.first_window = w
            self.report.windows += 1
            self.report.last_window = w
            yield w, cols

    def close(self, acc) -> dict:
        if acc is None:
            self.report.region_windows_missing += self.n
            return _missing_window(self.n)
        if isinstance(acc, WindowAccumulator):
            return acc.finish(self.carry, self.report)
        nv = int(acc["valid"].sum())  # a Parquet window
        self.report.region_windows_valid += nv
        self.report.region_windows_missing += self.n - nv
        return acc

    def finish(self) -> Iterator[tuple[int, dict]]:
        yield from self.flush(self.newest)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")


def _jsonl_windows(
    fh: BinaryIO,
    stream: _Stream,
    on_error: str,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, dict]]:
    # The hot loop: about 1e6 lines per few seconds. Locals stand in for attribute look-ups.
    report, source, n = stream.report, stream.source, stream.n
    skip = on_error == "skip"
    last_window = [-1] * n  # per region
    open_windows = stream.open
    newest = stream.newest
    events = nonfinite = 0
    lineno = 0
    for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno is read after the loop
        if progress is not None:
            progress(len(raw))
        try:
            try:
                region, window, kind, a, b = _parse(_fast_loads(raw))
            except (ValueError, TypeError):
                if not raw.strip():
                    continue
                region, window, kind, a, b = _parse(_loads(raw))
            if not 0 <= region < n:
                report.count_unknown_region(region)
                report.note(f"{source}:{lineno}: unknown region {region} (n_regions = {n})")
                continue
            if window < last_window[region]:
                raise _Malformed(
                    "window_backwards",
                    f"region {region} window {window} after window {last_window[region]}",
                )
            acc = open_windows.get(window)
            if acc is None:
                stream.check_late(region, window)
                if stream.too_far(window):
                    report.count_out_of_range(
                        "window",
                        f"{source}:{lineno}",
                        f"window {window} is more than {stream.max_gap} windows past window "
                        f"{max(stream.newest, stream.next_emit or 0)}",
                    )
                    continue
            last_window[region] = window
            if kind in _RANGED:
                bad = _out_of_range(kind, a, b)
                if bad is not None:
                    report.count_out_of_range(bad[0], f"{source}:{lineno}", bad[1])
                    continue
        except _Malformed as m:
            if not skip:
                raise IngestError(source, lineno, m.reason, m.detail) from None
            report.bad_lines += 1
            report.bad_by_reason[m.reason] += 1
            report.note(f"{source}:{lineno}: {m.reason.replace('_', ' ')}: {m.detail}")
            continue
        if acc is None:
            acc = open_windows[window] = WindowAccumulator(n)
        if acc.add(region, kind, a, b):
            nonfinite += 1
        events += 1
        if window > newest:
            newest = window
            report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
            yield from stream.advance(window)
    report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
    yield from stream.finish()


_RANGED = frozenset((K_LSTM, K_GROWTH, K_SEED_COUNTS))


# ---- Parquet ------------------------------------------------------------------------------

_PARQUET_INT_COLUMNS = ("region", "window")


def _parquet_n_regions(pf) -> int:
    import pyarrow.compute as pc

    idx = pf.schema_arrow.get_field_index("region")
    best = -1
    stats_ok = True
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(idx).statistics
        if st is None or not st.has_min_max:
            stats_ok = False
            break
        best = max(best, int(st.max))
    if not stats_ok:
        best = -1
        for batch in pf.iter_batches(columns=["region"], batch_size=1 << 20):
            m = pc.max(batch.column(0)).as_py()
            if m is not None:
                best = max(best, int(m))
    return best + 1


def _parquet_columns(pf, source: str) -> None:
    import pyarrow as pa

    schema = pf.schema_arrow
    for name in _PARQUET_INT_COLUMNS + TELEMETRY_FIELDS:
        if schema.get_field_index(name) < 0:
            raise UserError(f"{source}: Parquet table has no column '{name}'")
        t = schema.field(name).type
        if name in _PARQUET_INT_COLUMNS:
            ok = pa.types.is_integer(t)
        else:
            ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        if not ok:
            want = "an integer" if name in _PARQUET_INT_COLUMNS else "a number or boolean"
            raise UserError(f"{source}: Parquet column '{name}' must be {want}, got {t}")


_PARQUET_RANGES = {
    # column -> predicate of out-of-range finite values
    "rollbacks": lambda x: x < 0,
    "anomalies": lambda x: x < 0,
    "nonfinite": lambda x: x < 0,
    "churn": lambda x: x < 0,
    "alpha_shock": lambda x: x < 0,
    "active_seeds": lambda x: x < 0,
    "fossilised_seeds": lambda x: x < 0,
    "lstm_health": lambda x: x < 0,
    "growth_ratio": lambda x: x < 1,
}


def _parquet_windows(pf, stream: _Stream, on_error: str, batch_rows: int, progress):
    report, source = stream.report, stream.source
    skip = on_error == "skip"
    columns = list(_PARQUET_INT_COLUMNS + TELEMETRY_FIELDS)
    row0 = 0
    for batch in pf.iter_batches(columns=columns, batch_size=batch_rows):
        nrows = batch.num_rows
        report.lines += nrows
        cols, null, null_col = _batch_columns(batch, columns)
        region = cols["region"].astype(np.int64)
        window = cols["window"].astype(np.int64)
        for name in BOOL_FIELDS:
            x = cols[name]
            if x.dtype != bool:
                x = x.astype(np.float64)
                rows = np.flatnonzero(~np.isfinite(x) & ~null)
                if rows.size:
                    report.count_out_of_range(
                        name,
                        f"{source}: row {row0 + rows[0] + 1}",
                        f"{name} is not finite ({rows.size} rows in this batch)",
                        int(rows.size),
                    )
                cols[name] = np.nan_to_num(x, nan=0.0) > 0.5
        for name in FLOAT_FIELDS:
            cols[name] = cols[name].astype(np.float64)
        keep = ~(null | (window < 0))
        for i in np.flatnonzero(~keep):
            if null[i]:
                m = _Malformed("missing_field", f"'{columns[null_col[i]]}' is null")
            else:
                m = _Malformed("wrong_type", f"'window' must be non-negative, got {window[i]}")
            _parquet_bad(report, source, row0 + i + 1, m, skip)
        unknown = keep & ((region < 0) | (region >= stream.n))
        if unknown.any():
            rows = np.flatnonzero(unknown)
            for rid in np.unique(region[rows])[:10]:
                report.count_unknown_region(int(rid), 0)
            report.unknown_region += int(rows.size)
            report.note(
                f"{source}: row {row0 + rows[0] + 1}: unknown region {int(region[rows[0]])} "
                f"({rows.size} rows with unknown regions in this batch)"
            )
        idx = np.flatnonzero(keep & ~unknown)
        if idx.size and _rows_in_order(stream, region[idx], window[idx]):
            # The usual case, vectorised: windows strictly increase per region, none late.
            r, w = region[idx], window[idx]
            _scatter_rows(stream, cols, idx, r, w)
            np.maximum.at(stream.last_window, r, w)
            _range_counts(report, source, cols, idx, row0)
            report.events += int(idx.size)
            yield from stream.advance(int(w.max()))
        else:
            # Row by row, so that each problem is named at its row.
            for i in idx:
                ri, wi = int(region[i]), int(window[i])
                try:
                    if wi == stream.last_window[ri]:
                        raise _Malformed(
                            "window_backwards",
                            f"region {ri} window {wi} repeats (one row per region and window)",
                        )
                    stream.check(ri, wi)
                except _Malformed as m:
                    _parquet_bad(report, source, row0 + i + 1, m, skip)
                    continue
                if stream.too_far(wi):
                    report.count_out_of_range(
                        "window",
                        f"{source}: row {row0 + i + 1}",
                        f"window {wi} is more than {stream.max_gap} windows past the newest",
                    )
                    continue
                stream.last_window[ri] = wi
                one = np.array([i])
                _scatter_rows(stream, cols, one, region[one], window[one])
                _range_counts(report, source, cols, one, row0)
                report.events += 1
                yield from stream.advance(wi)
        if progress is not None:
            progress(nrows)
        row0 += nrows
    yield from stream.finish()


def _batch_columns(batch, columns):
    """numpy columns of a record batch, nulls filled with 0, plus the null mask and the
    index of the first null column of each row."""
    nrows = batch.num_rows
    cols = {}
    null = np.zeros(nrows, bool)
    null_col = np.full(nrows, -1)
    for i, name in enumerate(columns):
        arr = batch.column(i)
        if arr.null_count:
            isn = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            null_col = np.where(isn & (null_col < 0), i, null_col)
            null |= isn
            import pyarrow as pa

            arr = arr.fill_null(False if pa.types.is_boolean(arr.type) else 0)
        cols[name] = arr.to_numpy(zero_copy_only=False)
    return cols, null, null_col


def _rows_in_order(stream: _Stream, r, w) -> bool:
    """Vectorised: per region, windows strictly increase (after its last window); none is
    late or too far ahead."""
    order = np.lexsort((np.arange(r.size), r))
    rs, ws = r[order], w[order]
    same = np.r_[False, rs[1:] == rs[:-1]]
    prev = np.where(same, np.r_[-1, ws[:-1]], stream.last_window[rs])
    if not np.all(ws > prev):
        return False
    if stream.next_emit is not None and int(w.min()) < stream.next_emit:
        return False
    base = stream.newest if stream.newest >= 0 else (stream.next_emit or int(w.min()))
    return int(w.max()) <= base + stream.max_gap


def _parquet_bad(report, source, row, m: _Malformed, skip: bool) -> None:
    if not skip:
        raise IngestError(source, row, m.reason, m.detail, unit="row")
    report.bad_lines += 1
    report.bad_by_reason[m.reason] += 1
    report.note(f"{source}: row {row}: {m.reason.replace('_', ' ')}: {m.detail}")


def _scatter_rows(stream: _Stream, cols, idx, r, w) -> None:
    for wi in np.unique(w):
        sel = w == wi
        acc = stream.open.get(int(wi))
        if acc is None:
            acc = stream.open[int(wi)] = _missing_window(stream.n)
        rows, regions = idx[sel], r[sel]
        for k in TELEMETRY_FIELDS:
            acc[k][regions] = cols[k][rows]


def _range_counts(report, source, cols, idx, row0) -> None:
    for name, pred in _PARQUET_RANGES.items():
        x = cols[name][idx]
        with np.errstate(invalid="ignore"):
            bad = pred(x)
        if bad.any():
            first = int(idx[np.flatnonzero(bad)[0]])
            report.count_out_of_range(
                name,
                f"{source}:row {row0 + first + 1}",
                f"{name} = {x[bad][0]!r} ({int(bad.sum())} rows in this batch)",
                int(bad.sum()),
            )
    for name in FLOAT_FIELDS:
        report.nonfinite_values += int((~np.isfinite(cols[name][idx])).sum())


# ---- opening a file ------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """``"parquet"`` (magic bytes ``PAR1``), ``"jsonl.gz"`` (gzip) or ``"jsonl"``."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    return "jsonl"


def _open_binary(path: str, fmt: str) -> tuple[BinaryIO, BinaryIO]:
    """``(lines, raw)``: the decoded line source and the raw file (for byte progress)."""
    if path == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if fmt == "jsonl.gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def scan_jsonl_regions(path: str | os.PathLike) -> tuple[int, int | None]:
    """Largest region id among well-formed events, and its line (a first, cheap pass).

    **Returns:** ``(max_region, line)``, ``(-1, None)`` when there is no valid event.
    """
    path = os.fspath(path)
    fh, raw = _open_binary(path, detect_format(path))
    best, where = -1, None
    try:
        for lineno, line in enumerate(fh, 1):
            try:
                try:
                    region = _parse(_fast_loads(line))[0]
                except ValueError:
                    region = _parse(_loads(line))[0]
            except _Malformed:
                continue
            if region > best:
                best, where = region, lineno
    finally:
        raw.close()
    return best, where


def open_windows(
    path: str | os.PathLike,
    *,
    n_regions: int | None = None,
    lag: int = 2,
    on_error: str = "stop",
    max_gap: int = 100_000,
    first_window: int | None = None,
    progress: bool = False,
    batch_rows: int = 65_536,
) -> EventWindows:
    """Open a JSONL event log (optionally gzipped) or a Parquet table as a window stream.

    **Arguments:**

    - ``path``: the file; ``"-"`` reads JSONL from stdin (then ``n_regions`` is required).
    - ``n_regions``: ``N``. Default: the largest region id plus one. For JSONL that takes a
      first pass over the file; for Parquet it comes from the row-group statistics.
    - ``lag``: windows kept open behind the newest one seen (>= 1); window ``w`` is closed
      when an event of window ``>= w + lag`` arrives. ``lag=1`` needs a file sorted by
      window.
    - ``on_error``: ``"stop"`` raises [`narset_jax.ingest.IngestError`][] at the first
      malformed line; ``"skip"`` skips and counts it in the report.
    - ``max_gap``: an event more than this many windows past the newest one is counted as
      out of range (guards against a stray huge window id creating millions of empty
      windows).
    - ``first_window``: the first window emitted. Default: the smallest window among the
      events read before the first window closes, so the controller's ``step`` ``s`` is
      window ``first_window + s`` (recorded in the report).
    - ``progress``: show a tqdm progress bar (bytes of JSONL, rows of Parquet) on stderr.
    - ``batch_rows``: Parquet rows per record batch.

    **Returns:** an [`narset_jax.ingest.EventWindows`][]; its ``report`` is complete once it
    has been iterated to the end.

    **Raises:** ``UserError`` for an unreadable file or a bad ``n_regions``;
    ``IngestError`` (while iterating) for malformed input with ``on_error="stop"``.
    """
    _check_on_error(on_error)
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
        raise UserError(f"lag must be an integer >= 1, got {lag!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 1:
        raise UserError(f"max_gap must be an integer >= 1, got {max_gap!r}")
    if n_regions is not None and (
        isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1
    ):
        raise UserError(f"n_regions must be a positive integer, got {n_regions!r}")
    if first_window is not None and (not isinstance(first_window, int) or first_window < 0):
        raise UserError(f"first_window must be a non-negative integer, got {first_window!r}")
    source = os.fspath(path)
    if source == "-":
        if n_regions is None:
            raise UserError("reading events from stdin needs the number of regions (--regions)")
        fmt = "jsonl"
    else:
        if not os.path.isfile(source):
            raise UserError(f"{source}: no such file")
        fmt = detect_format(source)
    report = IngestReport(source=source, format="parquet" if fmt == "parquet" else "jsonl")
    report.lag = lag

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(source)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            raise UserError(f"{source}: unreadable Parquet: {err}") from None
        _parquet_columns(pf, source)
        if n_regions is None:
            n_regions = _parquet_n_regions(pf)
            if n_regions < 1:
                raise UserError(f"{source}: no rows with a region id >= 0")
            _check_inferred(n_regions, f"{source}: largest region id {n_regions - 1}")
        report.n_regions = n_regions
        stream = _Stream(n_regions, lag, max_gap, first_window, report, source)
        bar = _bar(progress, pf.metadata.num_rows, "rows", source)
        gen = _parquet_windows(pf, stream, on_error, batch_rows, bar)
        return EventWindows(_closing(gen, bar, None), n_regions, report)

    if n_regions is None:
        top, line = scan_jsonl_regions(source)
        if top < 0:
            raise UserError(f"{source}: no well-formed event with a region id >= 0")
        n_regions = top + 1
        _check_inferred(n_regions, f"{source}:{line}: region id {top}")
    report.n_regions = n_regions
    try:
        fh, raw = _open_binary(source, fmt)
    except OSError as err:
        raise UserError(f"{source}: cannot read: {err.strerror or err}") from None
    total = os.path.getsize(source) if source != "-" else None
    bar = _bar(progress, total, "B", source)
    update = None
    if bar is not None:
        if fmt == "jsonl.gz":
            pos = [0]

            def update(_n, raw=raw, pos=pos, bar=bar):
                now = raw.tell()
                bar.update(now - pos[0])
                pos[0] = now
        else:
            update = bar.update
    stream = _Stream(n_regions, lag, max_gap, first_window, report, source)
    gen = _jsonl_windows(fh, stream, on_error, update)
    return EventWindows(_closing(gen, bar, raw if source != "-" else None), n_regions, report)


def _check_inferred(n: int, what: str) -> None:
    if n > MAX_REGIONS:
        raise UserError(
            f"{what} implies {n} regions (more than {MAX_REGIONS}); pass the number of "
            "regions explicitly (--regions) and the larger ids are counted as unknown"
        )


def _bar(progress: bool, total, unit: str, source: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit == "B",
        desc=os.path.basename(source) or source,
        disable=None,
        mininterval=0.5,
    )


def _closing(gen: Iterator, bar, raw) -> Iterator:
    try:
        yield from gen
    finally:
        if bar is not None:
            bar.close()
        if raw is not None:
            raw.close()
