"""Telemetry: Narset's per-region inputs for one window, and their sanitisation.

Units (grounded in DESIGN.md §4; see ``docs/controller.md``):

- ``loss``: the region's validation loss for the window (any finite real).
- ``rollbacks``: governor rollbacks in the window (count).
- ``anomalies``: PPO anomalies in the window (ratio explosion/collapse, value collapse;
  count).
- ``nonfinite``: NaN/Inf events the region itself reported (governor panics; count).
- ``lstm_health``: LSTM hidden RMS (healthy <= 5, warning > 5, critical > 10).
- ``growth_ratio``: ``(host + fossilised) / host`` (green < 2, red > 5).
- ``churn``: edits (germinate, prune, ...) in the window (count).
- ``alpha_shock``: ``sum (delta alpha)^2`` over the window.
- ``active_seeds``, ``fossilised_seeds``: seed counts at the end of the window.
- ``valid``: the window's telemetry arrived; ``False`` holds the region's state.
- ``boundary``: the window ends at a safe boundary, where irreversible work is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "BOOL_FIELDS",
    "FLOAT_FIELDS",
    "TELEMETRY_FIELDS",
    "Sanitised",
    "Telemetry",
    "sanitise",
]

FLOAT_FIELDS = (
    "loss",
    "rollbacks",
    "anomalies",
    "nonfinite",
    "lstm_health",
    "growth_ratio",
    "churn",
    "alpha_shock",
    "active_seeds",
    "fossilised_seeds",
)
BOOL_FIELDS = ("valid", "boundary")
TELEMETRY_FIELDS = FLOAT_FIELDS + BOOL_FIELDS

# Sanitised inputs are clipped to these bounds so that no finite extreme can overflow the
# smoothed state in float32.
COUNT_MAX = 1e9
VALUE_MAX = 1e12

# Values of a calm, healthy region (used by ``Telemetry.calm``).
_CALM = {
    "loss": 1.0,
    "rollbacks": 0.0,
    "anomalies": 0.0,
    "nonfinite": 0.0,
    "lstm_health": 1.0,
    "growth_ratio": 1.5,
    "churn": 1.0,
    "alpha_shock": 0.0,
    "active_seeds": 2.0,
    "fossilised_seeds": 4.0,
    "valid": True,
    "boundary": True,
}

# A sustained crisis: a rollback and several anomalies every window, LSTM past critical.
_CRISIS = dict(
    _CALM,
    loss=2.0,
    rollbacks=1.0,
    anomalies=4.0,
    nonfinite=1.0,
    lstm_health=12.0,
    churn=6.0,
    alpha_shock=0.2,
    boundary=False,
)


class Telemetry(eqx.Module):
    """One window of telemetry for ``N`` regions: a pytree of ``[N]`` arrays.

    Fields are listed in the module docstring (and by [`narset_jax.Telemetry.field_names`][]).
    Numeric fields are floats (counts included); ``valid`` and ``boundary`` are booleans.
    Arrays may carry extra leading axes (e.g. ``[T, N]`` for a rollout).
    """

    loss: Any
    rollbacks: Any
    anomalies: Any
    nonfinite: Any
    lstm_health: Any
    growth_ratio: Any
    churn: Any
    alpha_shock: Any
    active_seeds: Any
    fossilised_seeds: Any
    valid: Any
    boundary: Any

    @staticmethod
    def field_names() -> tuple[str, ...]:
        """The twelve input names, in order (numeric first, then ``valid``, ``boundary``)."""
        return TELEMETRY_FIELDS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Telemetry:
        """Build from a mapping with exactly the telemetry field names.

        **Raises:** ``ValueError`` naming missing or unknown keys.
        """
        missing = [k for k in TELEMETRY_FIELDS if k not in data]
        unknown = sorted(str(k) for k in data if k not in TELEMETRY_FIELDS)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing field(s): {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown field(s): {', '.join(unknown)}")
            raise ValueError("Telemetry: " + "; ".join(parts))
        return cls(**{k: data[k] for k in TELEMETRY_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """Field name -> array."""
        return {k: getattr(self, k) for k in TELEMETRY_FIELDS}

    def replace(self, **changes) -> Telemetry:
        """A copy with some fields replaced (values broadcast to the existing shape)."""
        data = self.to_dict()
        unknown = sorted(set(changes) - set(TELEMETRY_FIELDS))
        if unknown:
            raise ValueError(f"Telemetry: unknown field(s): {', '.join(unknown)}")
        for k, v in changes.items():
            old = jnp.asarray(data[k])
            data[k] = jnp.broadcast_to(jnp.asarray(v, old.dtype), old.shape)
        return Telemetry(**data)

    @classmethod
    def filled(cls, n: int, dtype=jnp.float32, **values) -> Telemetry:
        """Telemetry for ``n`` regions from per-field scalars or ``[n]`` arrays.

        Fields not given take the calm values of [`narset_jax.Telemetry.calm`][].
        """
        unknown = sorted(set(values) - set(TELEMETRY_FIELDS))
        if unknown:
            raise ValueError(f"Telemetry: unknown field(s): {', '.join(unknown)}")
        data = {}
        for k in TELEMETRY_FIELDS:
            v = values.get(k, _CALM[k])
            kind = bool if k in BOOL_FIELDS else dtype
            data[k] = jnp.broadcast_to(jnp.asarray(v, kind), (n,))
        return cls(**data)

    @classmethod
    def calm(cls, n: int, dtype=jnp.float32, **overrides) -> Telemetry:
        """A calm, healthy window for ``n`` regions: loss 1, no rollbacks or anomalies,
        LSTM RMS 1, growth ratio 1.5, churn 1, no alpha shock, 2 active and 4 fossilised
        seeds, valid, at a boundary. ``overrides`` replace single fields."""
        return cls.filled(n, dtype, **overrides)

    @classmethod
    def crisis(cls, n: int, dtype=jnp.float32, **overrides) -> Telemetry:
        """A crisis window: one rollback, four anomalies and one NaN event per window, LSTM
        RMS 12 (past critical), loss 2, churn 6, alpha shock 0.2, not at a boundary."""
        return cls.filled(n, dtype, **{**_CRISIS, **overrides})

    @staticmethod
    def stack(windows) -> Telemetry:
        """Stack a sequence of windows along a new leading (time) axis: ``[T, N]``."""
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *windows)


class Sanitised(NamedTuple):
    """Telemetry after sanitisation (all ``[N]``).

    **Fields:**

    - ``values``: field name -> clean float value for each numeric field. Non-finite
      readings are replaced by 0 and negative counts clipped to 0; ``anomalies`` already
      includes one anomaly per non-finite field.
    - ``finite``: field name -> ``True`` where the reading was finite (and so may update
      that signal's smoothed state).
    - ``n_nonfinite``: number of non-finite fields in the window (int32).
    - ``valid``, ``boundary``: booleans; ``boundary`` is ``False`` when ``valid`` is.
    - ``raw``: the telemetry as given, cast to the state dtype (bools for the flags).
    """

    values: dict
    finite: dict
    n_nonfinite: jax.Array
    valid: jax.Array
    boundary: jax.Array
    raw: Telemetry


def _as_flag(x):
    """Booleans pass through; numbers are ``x > 0.5`` (so NaN reads as ``False``)."""
    x = jnp.asarray(x)
    return x if x.dtype == jnp.bool_ else x > 0.5


def sanitise(telemetry: Telemetry, dtype) -> Sanitised:
    """Cast to ``dtype``, detect and count non-finite values, and clip to physical ranges.

    A NaN or Inf in any numeric field counts as one anomaly and is never passed on: the
    signal stage holds that signal's smoothed state instead. ``valid`` and ``boundary``
    given as numbers read as ``x > 0.5``; a non-finite number there also counts.

    **Arguments:**

    - ``telemetry``: [`narset_jax.Telemetry`][] of ``[N]`` arrays.
    - ``dtype``: the state's float dtype.

    **Returns:** a [`narset_jax.telemetry.Sanitised`][].
    """
    raw_vals = {k: jnp.asarray(getattr(telemetry, k)).astype(dtype) for k in FLOAT_FIELDS}
    flags = {}
    n_bad_flags = []
    for k in BOOL_FIELDS:
        x = jnp.asarray(getattr(telemetry, k))
        flags[k] = _as_flag(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            n_bad_flags.append(~jnp.isfinite(x))
    finite = {k: jnp.isfinite(v) for k, v in raw_vals.items()}
    n_bad = sum((~f).astype(jnp.int32) for f in finite.values())
    for b in n_bad_flags:
        n_bad = n_bad + b.astype(jnp.int32)
    values = {}
    for k, v in raw_vals.items():
        v = jnp.where(finite[k], v, 0)
        if k == "loss":
            v = jnp.clip(v, -VALUE_MAX, VALUE_MAX)
        elif k in ("lstm_health", "growth_ratio", "alpha_shock"):
            v = jnp.clip(v, 0, VALUE_MAX)
        else:
            v = jnp.clip(v, 0, COUNT_MAX)
        values[k] = v
    values["anomalies"] = values["anomalies"] + n_bad.astype(dtype)
    valid = flags["valid"]
    raw = Telemetry(**raw_vals, valid=valid, boundary=flags["boundary"])
    return Sanitised(
        values=values,
        finite=finite,
        n_nonfinite=n_bad,
        valid=valid,
        boundary=flags["boundary"] & valid,
        raw=raw,
    )

