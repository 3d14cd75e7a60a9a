"""Narset's hyperparameters: one validated, immutable pytree.

Tunable values (the budget's ``alpha`` and ``pool``, inertia ``beta``, thresholds, dwell
counts, EWMA rates, score scales and policy gains) are floating-point JAX array leaves, so
``jax.grad`` sees them and ``jax.vmap`` can run many configurations at once. The discrete
choices (cost model, budget mode, hysteresis variant) are static fields: changing one
changes the compiled program. Every default and where it comes from is listed in
``docs/controller.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from narset_jax._config import (
    check_range,
    check_toml_types,
    describe,
    plain_leaves,
    read_toml,
    reject_unknown,
)
from narset_jax._config import interval as _interval
from narset_jax.cost import COSTS
from narset_jax.errors import UserError

BUDGETS = ("region", "global", "fixed_sum")
HYSTERESES = ("hard", "soft", "straight_through", "saturating")

__all__ = [
    "BUDGETS",
    "COSTS",
    "HARDENING_OFF",
    "HYSTERESES",
    "NarsetParams",
    "ParamsError",
    "stack_params",
]


class ParamsError(UserError, ValueError):
    """Invalid hyperparameters or an unreadable params file. A ``ValueError`` whose one-line
    message names the field (and file and position, where there is one)."""


def _as_float(value):
    """Converter for tunable fields: numbers and numeric arrays become floating JAX arrays.

    Anything else (a string, a bool, ``None``) is passed through unchanged so that
    ``__check_init__`` can reject it with a message naming the field.
    """
    if isinstance(value, jax.core.Tracer):
        return value if jnp.issubdtype(value.dtype, jnp.inexact) else value.astype(float)
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, int | float):
        return jnp.asarray(float(value))  # weakly typed: never promotes float32 maths
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - reported by __check_init__
        return value
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        return value
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        return value
    if np.issubdtype(arr.dtype, np.floating):
        return jnp.asarray(arr)
    return jnp.asarray(arr.astype(np.float64)).astype(jnp.result_type(float))


def _f(default: float):
    return eqx.field(default=default, converter=_as_float)


# Allowed range of every tunable field: (low, low_open, high, high_open). ``None`` is
# unbounded on that side. Cross-field rules are in ``NarsetParams.__check_init__``.
_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "pool": (0.0, True, None, True),
    "alpha": (0.0, True, None, True),
    "beta": (0.0, True, 1.0, False),
    "theta_enter": (0.0, True, 1.0, False),
    "theta_exit": (0.0, False, 1.0, True),
    "k_enter": (1.0, False, 1e6, False),
    "k_exit": (1.0, False, 1e6, False),
    "temp_need": (0.0, True, None, True),
    "temp_dwell": (0.0, True, None, True),
    "tau_sedate": (0.0, False, None, True),
    "tau_lysis": (0.0, True, None, True),
    "tau_germinate": (0.0, False, None, True),
    "tau_fossilise": (0.0, True, None, True),
    "ops_nominal": (0.0, False, 1e6, False),
    "cost_mult_max": (1.0, False, 1e6, False),
    "rate_loss": (0.0, True, 1.0, False),
    "rate_trend": (0.0, True, 1.0, False),
    "rate_rollbacks": (0.0, True, 1.0, False),
    "rate_anomalies": (0.0, True, 1.0, False),
    "rate_nonfinite": (0.0, True, 1.0, False),
    "rate_lstm_health": (0.0, True, 1.0, False),
    "rate_growth_ratio": (0.0, True, 1.0, False),
    "rate_churn": (0.0, True, 1.0, False),
    "rate_alpha_shock": (0.0, True, 1.0, False),
    "rate_active_seeds": (0.0, True, 1.0, False),
    "rate_fossilised_seeds": (0.0, True, 1.0, False),
    "persist_decay": (0.0, False, 1.0, True),
    "scale_rollbacks": (0.0, True, None, True),
    "scale_anomalies": (0.0, True, None, True),
    "scale_nonfinite": (0.0, True, None, True),
    "lstm_warn": (0.0, False, None, True),
    "lstm_critical": (0.0, True, None, True),
    "plateau_eps": (-1.0, False, 1.0, False),
    "plateau_window": (1.0, False, 1e6, False),
    "trend_ref": (0.0, True, 1.0, False),
    "temp_plateau": (0.0, True, None, True),
    "growth_green": (0.0, False, None, True),
    "growth_red": (0.0, True, None, True),
    "churn_ref": (0.0, True, None, True),
    "shock_ref": (0.0, True, None, True),
    "weight_rent": (0.0, False, None, True),
    "weight_churn": (0.0, False, None, True),
    "weight_shock": (0.0, False, None, True),
    "weight_active": (0.0, False, None, True),
    "gain_T_repair": (0.0, False, None, True),
    "gain_T_crisis": (0.0, False, None, True),
    "gain_E_repair": (0.0, False, None, True),
    "gain_T_consol": (0.0, False, None, True),
    "gain_T_progress": (0.0, False, None, True),
    "gain_T_efficiency": (0.0, False, None, True),
    "gain_E_consol": (0.0, False, None, True),
    "gain_E_efficiency": (0.0, False, None, True),
    "corroborate": (0.0, False, 1.0, False),
    "corroborate_ref": (0.0, True, 1.0, False),
    "persistence": (0.0, False, 1.0, True),
    "rise_cap": (0.0, False, None, True),
}

# Hardening against spoofed telemetry (docs/gaslighting.md): off at these values, where the
# controller computes exactly what it computes without them; ``to_dict`` leaves a field out
# while it is off, so params files, logs and manifests of existing runs are unchanged.
# (``corroborate_ref`` only scales ``corroborate``; it is left out while at its default.)
HARDENING_OFF: dict[str, float] = {"corroborate": 0.0, "corroborate_ref": 0.005,
                                   "persistence": 0.0, "rise_cap": 0.0}

# Pairs (low, high) that must satisfy low < high.
_ORDERED = (
    ("theta_exit", "theta_enter"),
    ("tau_sedate", "tau_lysis"),
    ("tau_germinate", "tau_fossilise"),
    ("lstm_warn", "lstm_critical"),
    ("growth_green", "growth_red"),
)

_STATIC = {"cost": COSTS, "budget": BUDGETS, "hysteresis": HYSTERESES}


def _fmt(v) -> str:
    arr = np.asarray(v)
    if arr.ndim == 0:
        return f"{float(arr):g}"
    return np.array2string(arr, precision=6, separator=", ")


def _concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


class NarsetParams(eqx.Module):
    """Narset's hyperparameters, validated when built.

    Every tunable field is a floating JAX array leaf (a scalar, or ``[K]`` after
    [`narset_jax.params.stack_params`][] for ``vmap`` over ``K`` configurations). The three
    static fields select code paths. Values are checked on construction (only when they are
    concrete, not inside ``jit``), raising [`narset_jax.params.ParamsError`][] (a
    ``ValueError``) that names the field and its allowed range. Each default and its origin
    is documented in ``docs/controller.md``.

    **Budget:**

    - ``pool``: per-region budget ``B`` (1.5, the note's pool); the global pool is
      ``pool * n_regions``.
    - ``alpha``: overdrive curvature (2, the note's numbers under the seed cost).
    - ``beta``: inertia on targets, in (0, 1] (0.3).
    - ``cost``: ``"seed"`` or ``"convex"`` (static).
    - ``budget``: ``"region"``, ``"global"`` or ``"fixed_sum"`` (static).

    **Hysteresis:**

    - ``hysteresis``: ``"hard"``, ``"soft"``, ``"straight_through"`` or ``"saturating"``
      (static; see [`narset_jax.hysteresis`][]).
    - ``theta_enter``, ``theta_exit``: need thresholds, ``theta_exit < theta_enter``.
      Need is ``1 - S``; 0.4 and 0.15 are the Emrakul sketch's turbulent (``S < 0.6``) and
      stagnant (``S >= 0.85``) boundaries.
    - ``k_enter``, ``k_exit``: dwell, in windows (3 and 5). Float leaves used as thresholds
      on the counters: the hard switch fires when a counter reaches ``k - 1/2``, i.e. at
      ``k`` windows for integer ``k``.
    - ``temp_need``, ``temp_dwell``: sigmoid temperatures of the soft gates on need and on
      the dwell counters ("dwell softness"); unused by ``"hard"``.

    **Authority and limits:**

    - ``tau_sedate``, ``tau_lysis``: Emrakul's ladder on ``x_E``.
    - ``tau_germinate``, ``tau_fossilise``: Tamiyo's ladder on ``x_T``.
    - ``ops_nominal``: max operations per window at ``x = 1``.
    - ``cost_mult_max``: ceiling of the cost multiplier ``1 / x``.

    **Signals:**

    - ``rate_<field>``: EWMA rate of each telemetry signal, in (0, 1]; ``rate_trend`` for
      the loss trend.
    - ``persist_decay``: memory of the persistence filter, in [0, 1).
    - ``scale_rollbacks``, ``scale_anomalies``, ``scale_nonfinite``: rates per window
      that each add 1 to the instability index.
    - ``lstm_warn``, ``lstm_critical``: LSTM hidden-RMS levels (Esper: 5 and 10).
    - ``plateau_eps``, ``plateau_window``, ``trend_ref``, ``temp_plateau``: progress.
    - ``growth_green``, ``growth_red``: growth-ratio bands (Esper: 2 and 5).
    - ``churn_ref``, ``shock_ref``, ``weight_*``: efficiency pressure.

    **Policy gains:** ``gain_T_repair``, ``gain_T_crisis``, ``gain_E_repair``,
    ``gain_T_consol``, ``gain_T_progress``, ``gain_T_efficiency``, ``gain_E_consol``,
    ``gain_E_efficiency`` (see [`narset_jax.policy.targets`][]).

    **Hardening against spoofing** (all off by default; see
    [`narset_jax.signals.smooth`][] and ``docs/gaslighting.md``):

    - ``corroborate``: in [0, 1]; the weight of corroboration by the loss. A region's
      filtered instability is scaled by ``1 - corroborate (1 - q)``, ``q =
      clip(1 - trend / corroborate_ref, 0, 1)``: instability counts in full only while
      the region's own loss is not improving. ``corroborate_ref`` in (0, 1] (0.005, the
      plateau's ``plateau_eps``) is the trend at which it no longer counts at all.
    - ``persistence``: in [0, 1); the stability EWMAs rise at ``(1 - persistence)`` times
      their rate (and fall at the full rate), so a spike must last to count.
    - ``rise_cap``: ``>= 0``, 0 is off; the most each stability EWMA may add to the
      instability index in one window, a per-region cap on how fast its claim can grow.
    """

    # Budget.
    pool: jax.Array = _f(1.5)
    alpha: jax.Array = _f(2.0)
    beta: jax.Array = _f(0.3)
    # Hysteresis.
    theta_enter: jax.Array = _f(0.4)
    theta_exit: jax.Array = _f(0.15)
    k_enter: jax.Array = _f(3.0)
    k_exit: jax.Array = _f(5.0)
    temp_need: jax.Array = _f(0.05)
    temp_dwell: jax.Array = _f(0.25)
    # Authority and limits.
    tau_sedate: jax.Array = _f(0.2)
    tau_lysis: jax.Array = _f(0.5)
    tau_germinate: jax.Array = _f(0.2)
    tau_fossilise: jax.Array = _f(0.5)
    ops_nominal: jax.Array = _f(4.0)
    cost_mult_max: jax.Array = _f(10.0)
    # EWMA rates (span n <-> rate 2 / (n + 1)).
    rate_loss: jax.Array = _f(0.2)
    rate_trend: jax.Array = _f(0.2)
    rate_rollbacks: jax.Array = _f(0.5)
    rate_anomalies: jax.Array = _f(0.5)
    rate_nonfinite: jax.Array = _f(0.5)
    rate_lstm_health: jax.Array = _f(0.5)
    rate_growth_ratio: jax.Array = _f(0.1)
    rate_churn: jax.Array = _f(0.2)
    rate_alpha_shock: jax.Array = _f(0.2)
    rate_active_seeds: jax.Array = _f(0.1)
    rate_fossilised_seeds: jax.Array = _f(0.1)
    # Stability.
    persist_decay: jax.Array = _f(0.5)
    scale_rollbacks: jax.Array = _f(0.25)
    scale_anomalies: jax.Array = _f(1.0)
    scale_nonfinite: jax.Array = _f(0.25)
    lstm_warn: jax.Array = _f(5.0)
    lstm_critical: jax.Array = _f(10.0)
    # Progress.
    plateau_eps: jax.Array = _f(0.005)
    plateau_window: jax.Array = _f(10.0)
    trend_ref: jax.Array = _f(0.02)
    temp_plateau: jax.Array = _f(0.002)
    # Efficiency pressure.
    growth_green: jax.Array = _f(2.0)
    growth_red: jax.Array = _f(5.0)
    churn_ref: jax.Array = _f(4.0)
    shock_ref: jax.Array = _f(0.1)
    weight_rent: jax.Array = _f(0.4)
    weight_churn: jax.Array = _f(0.2)
    weight_shock: jax.Array = _f(0.2)
    weight_active: jax.Array = _f(0.2)
    # Policy gains.
    gain_T_repair: jax.Array = _f(1.0)
    gain_T_crisis: jax.Array = _f(1.0)
    gain_E_repair: jax.Array = _f(0.3)
    gain_T_consol: jax.Array = _f(0.5)
    gain_T_progress: jax.Array = _f(0.3)
    gain_T_efficiency: jax.Array = _f(0.3)
    gain_E_consol: jax.Array = _f(0.6)
    gain_E_efficiency: jax.Array = _f(0.6)
    # Hardening against spoofing (off).
    corroborate: jax.Array = _f(0.0)
    corroborate_ref: jax.Array = _f(0.005)
    persistence: jax.Array = _f(0.0)
    rise_cap: jax.Array = _f(0.0)
    # Static choices.
    cost: str = eqx.field(static=True, default="seed")
    budget: str = eqx.field(static=True, default="region")
    hysteresis: str = eqx.field(static=True, default="hard")

    def __check_init__(self):
        for name, allowed in _STATIC.items():
            value = getattr(self, name)
            if value not in allowed:
                choices = " | ".join(repr(a) for a in allowed)
                raise ParamsError(f"NarsetParams.{name} must be one of {choices}, got {value!r}")
        values = {}
        for name, bounds in _RANGES.items():
            value = getattr(self, name)
            if not _concrete(value):
                continue
            arr = check_range("NarsetParams", name, value, bounds, ParamsError)
            values[name] = arr
        for low, high in _ORDERED:
            if low in values and high in values and not np.all(values[low] < values[high]):
                raise ParamsError(
                    f"NarsetParams.{low} must be < {high}, got {low}={_fmt(values[low])} "
                    f"and {high}={_fmt(values[high])}"
                )
        weights = ("weight_rent", "weight_churn", "weight_shock", "weight_active")
        if all(w in values for w in weights):
            total = sum(values[w] for w in weights)
            if not np.all(total > 0):
                raise ParamsError(
                    "NarsetParams.weight_rent + weight_churn + weight_shock + weight_active "
                    f"must be > 0, got {_fmt(total)}"
                )
        if "growth_green" in values and not np.all(0.5 * np.log1p(values["growth_green"]) < 1.5):
            raise ParamsError(
                "NarsetParams.growth_green must be < e^3 - 1 (where Esper's rent saturates), "
                f"got {_fmt(values['growth_green'])}"
            )

    # ---- introspection and conversion ------------------------------------------------

    @classmethod
    def tunable_names(cls) -> tuple[str, ...]:
        """Names of the tunable (array-leaf) fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _STATIC)

    @classmethod
    def static_names(cls) -> tuple[str, ...]:
        """Names of the static fields: ``("cost", "budget", "hysteresis")``."""
        return tuple(_STATIC)

    @classmethod
    def field_range(cls, name: str) -> str:
        """The allowed range of a tunable field, e.g. ``"(0, 1]"`` for ``beta``."""
        return _interval(*_RANGES[name])

    def replace(self, **changes) -> NarsetParams:
        """A copy with some fields changed, validated again."""
        known = (*self.tunable_names(), *_STATIC)
        reject_unknown(changes, known, ParamsError, "unknown NarsetParams field(s)")
        return dataclasses.replace(self, **changes)

    def astype(self, dtype) -> NarsetParams:
        """Cast every tunable leaf to ``dtype`` (used by the step to avoid promotion)."""
        return jax.tree.map(lambda v: jnp.asarray(v, dtype), self)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: floats (or nested lists for stacked params) and strings.
        Hardening fields at their off values are left out (they read back as off)."""
        names = tuple(n for n in self.tunable_names() if not self._off(n))
        out = plain_leaves(self, names)
        for name in _STATIC:
            out[name] = getattr(self, name)
        return out

    def _off(self, name: str) -> bool:
        """A hardening field at its off value (concrete), which ``to_dict`` leaves out."""
        value = getattr(self, name)
        return (name in HARDENING_OFF and _concrete(value)
                and bool(np.all(np.asarray(value) == HARDENING_OFF[name])))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> NarsetParams:
        """Build from a mapping of field names to values, rejecting unknown keys.

        **Arguments:**

        - ``data``: field name -> value; missing fields take their defaults.
        - ``source``: a file name to prefix error messages with.

        **Raises:** [`narset_jax.params.ParamsError`][] naming unknown keys or a bad value.
        """
        where = f"{source}: " if source else ""
        known = (*cls.tunable_names(), *_STATIC)
        reject_unknown(data, known, ParamsError, f"{where}unknown NarsetParams key(s)")
        kwargs = {}
        for key, value in data.items():
            if key in _STATIC:
                if not isinstance(value, str):
                    raise ParamsError(
                        f"{where}NarsetParams.{key} must be a string, got {describe(value)}"
                    )
            elif not _is_number_like(value):
                raise ParamsError(
                    f"{where}NarsetParams.{key} must be a number, got {describe(value)}"
                )
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ParamsError as err:
            raise ParamsError(f"{where}{err}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> NarsetParams:
        """Read params from a TOML file of top-level ``key = value`` pairs: one
        configuration, so every tunable value is a number (not a list or a table) and
        ``cost``, ``budget`` and ``hysteresis`` are strings.

        **Raises:** [`narset_jax.params.ParamsError`][] with the file name and, for
        malformed TOML, the line and column; unknown keys and values of the wrong type
        (e.g. ``p.toml: NarsetParams.alpha must be a number, got a list ([2.0])``) are
        named.
        """
        path = os.fspath(path)
        data = read_toml(path, ParamsError, "params")
        check_toml_types(
            data, cls.tunable_names(), _STATIC, ParamsError, f"{path}: NarsetParams."
        )
        return cls.from_dict(data, source=path)

    def to_toml(self) -> str:
        """TOML text that [`narset_jax.NarsetParams.from_toml`][] reads back to equal params."""
        lines = []
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _is_number_like(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return all(_is_number_like(v) for v in value)
    if isinstance(value, np.ndarray | jax.Array):
        return value.dtype != bool and np.issubdtype(np.asarray(value).dtype, np.number)
    return False


def _toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    v = float(value)
    if math.isnan(v) or math.isinf(v):  # pragma: no cover - validation forbids these
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return repr(v)


def stack_params(params: Sequence[NarsetParams]) -> NarsetParams:
    """Stack configurations along a new leading axis, for ``jax.vmap`` over params.

    **Arguments:**

    - ``params``: a non-empty sequence of [`narset_jax.NarsetParams`][] that share the same
      static fields (cost, budget, hysteresis).

    **Returns:** one ``NarsetParams`` whose tunable leaves have shape ``[K]``.

    **Raises:** ``ValueError`` if the sequence is empty or the static fields differ.
    """
    params = list(params)
    if not params:
        raise ParamsError("stack_params needs at least one NarsetParams")
    for name in _STATIC:
        values = {getattr(p, name) for p in params}
        if len(values) > 1:
            raise ParamsError(
                f"stack_params: NarsetParams.{name} differs between configs "
                f"({', '.join(sorted(values))}); static fields cannot be vmapped"
            )
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *params)
