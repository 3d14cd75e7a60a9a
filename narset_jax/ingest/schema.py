"""The event schema and one event's parsing: kinds, reasons, [`narset_jax.ingest.Event`][],
[`narset_jax.ingest.IngestError`][] and [`narset_jax.ingest.IngestReport`][].

The schema itself (fields of each kind, and what they feed) is in ``docs/telemetry.md`` and
the docstring of [`narset_jax.ingest`][].
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from narset_jax.errors import UserError

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

# Reasons a whole file stops being readable (an IngestError with ``on_error`` "stop" or
# "skip" alike: the lines after the fault cannot be read, so they cannot be skipped).
FILE_REASONS = ("truncated_gzip", "corrupt_gzip")

_MAX_ERRORS_KEPT = 20


class IngestError(UserError, ValueError):
    """A malformed input line (or Parquet row): ``"<file>:<line>: <reason>: <detail>"``.

    **Attributes:** ``source`` (file name), ``line`` (1-based line or row number, or
    ``None``), ``reason`` (one of [`narset_jax.ingest.REASONS`][], or of ``FILE_REASONS``
    for a gzip stream that is cut short or corrupt) and ``detail``.
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


class Malformed(Exception):
    """A malformed event (``reason``, ``detail``), turned into an IngestError or counted."""

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


def json_type(v) -> str:
    """A JSON value as an error message shows it (e.g. ``an array``, ``string 'x'``)."""
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
        raise Malformed("missing_field", f"{where} needs '{key}'") from None


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
            raise Malformed("wrong_type", f"'{key}' is too large: {v}") from None
    raise Malformed("wrong_type", f"'{key}' must be a number, got {json_type(v)}")


def _integer(obj: dict, key: str, kind: str) -> int:
    """A JSON integer (an integral float such as ``3.0`` is accepted)."""
    v = _get(obj, key, kind)
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():
        return int(v)
    raise Malformed("wrong_type", f"'{key}' must be an integer, got {json_type(v)}")


def _choice(obj: dict, key: str, kind: str, allowed: tuple[str, ...]) -> str:
    v = _get(obj, key, kind)
    if type(v) is not str or v not in allowed:
        raise Malformed(
            "wrong_type", f"'{key}' must be one of {', '.join(allowed)}; got {json_type(v)}"
        )
    return v


_PANIC_NAN = {r: float(r == "nan") for r in PANIC_REASONS}
_ANOMALY_NONFINITE = {a: float(a == "numerical_instability") for a in ANOMALIES}
_OP_INDEX = {op: float(i) for i, op in enumerate(OPS)}
_SET_ALPHA = OPS.index("set_alpha")


def parse_fields(obj) -> tuple:
    """Type-check one decoded JSON value: ``(region, window, kind, a, b)`` (the fields of
    [`narset_jax.ingest.Event`][]). Well-formed events take a fast path; anything else
    goes through ``_parse_checked``, which names the problem (raising ``Malformed``)."""
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
    """The slow, precise path of ``parse_fields``."""
    if type(obj) is not dict:
        raise Malformed("wrong_type", f"an event must be a JSON object, got {json_type(obj)}")
    kind_name = _get(obj, "kind", "")
    kind = _KIND_ID.get(kind_name) if type(kind_name) is str else None
    if kind is None:
        if type(kind_name) is not str:
            raise Malformed("wrong_type", f"'kind' must be a string, got {json_type(kind_name)}")
        raise Malformed("unknown_kind", f"{kind_name!r} (known: {', '.join(EVENT_KINDS)})")
    region = _integer(obj, "region", kind_name)
    window = _integer(obj, "window", kind_name)
    if window < 0:
        raise Malformed("wrong_type", f"'window' must be a non-negative integer, got {window}")
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
                raise Malformed("wrong_type", f"'{key}' is too large: {v}")
        return region, window, kind, float(active), float(fossilised)
    return region, window, kind, 0.0, 0.0


def decode_line(line):
    """Decode one JSON line: orjson when installed, else (and for the ``NaN``/``Infinity``
    tokens orjson rejects) the standard library. Raises ``Malformed("not_json")``."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(line)
        except ValueError:
            pass
    try:
        return json.loads(line)
    except ValueError as err:
        raise Malformed("not_json", _json_detail(err)) from None
    except RecursionError:  # the standard library recurses once per nesting level
        raise Malformed("not_json", "nested too deeply (an event is a flat object)") from None


try:  # optional speed-up: about 4x faster decoding of well-formed lines
    import orjson

    _orjson_loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_loads = None
# Decode one JSON line on the fast path (orjson, or json.loads without it); raises
# ValueError, TypeError or (json.loads on deep nesting) RecursionError where
# ``decode_line`` gives the precise reason.
fast_decode = _orjson_loads or json.loads


def parse_event(event) -> Event:
    """Parse and type-check one event: a JSON line (``str`` or ``bytes``) or a decoded dict.

    Extra keys are ignored. Non-finite numbers (``NaN``, ``Infinity``) are accepted where a
    measurement is expected: they are observations of numerical trouble.

    **Returns:** an [`narset_jax.ingest.Event`][].

    **Raises:** [`narset_jax.ingest.IngestError`][] (no file or line) with the reason.
    """
    try:
        if isinstance(event, str | bytes | bytearray):
            event = decode_line(event)
        return Event(*parse_fields(event))
    except Malformed as bad:
        raise IngestError("event", None, bad.reason, bad.detail) from None


def _json_detail(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at column {err.colno}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def out_of_range(kind: int, a: float, b: float) -> tuple[str, str] | None:
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


# Kinds whose values ``out_of_range`` can reject.
RANGED_KINDS = frozenset((K_LSTM, K_GROWTH, K_SEED_COUNTS))

_MEASURED = {K_LOSS: "loss", K_LSTM: "h_rms", K_GROWTH: "growth_ratio"}


def overflow(kind: int, a: float, b: float, vmax: float, dtype: str) -> tuple[str, str] | None:
    """``(field, detail)`` when a finite value would overflow ``dtype`` (largest finite
    value ``vmax``), else ``None``. ``delta_alpha`` is checked against ``sqrt(vmax)``: the
    window's ``alpha_shock`` sums its square. Non-finite values are not out of range."""
    if kind in _MEASURED and a - a == 0.0 and abs(a) > vmax:
        return _MEASURED[kind], f"{_MEASURED[kind]} = {a!r} overflows {dtype} (max {vmax:.8g})"
    if kind == K_SEED_OP and b - b == 0.0 and b * b > vmax:
        return "delta_alpha", (
            f"delta_alpha = {b!r}: its square (alpha_shock) overflows {dtype} (max {vmax:.8g})"
        )
    return None
