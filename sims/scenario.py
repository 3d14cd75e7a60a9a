"""Scenarios: the parameters of a simulated ecology, and their TOML files.

A [`sims.Scenario`][] is an equinox Module. Every numeric parameter (noise, shock rate,
spoofer fraction, dropout rate, heterogeneity spreads, the dynamics' constants) is a
floating JAX array leaf, so ``jax.vmap`` runs a grid of scenarios in one call (a phase
diagram). ``name``, ``description`` and ``budget`` (the recommended budget mode) are static
metadata; they never change the simulation itself.

Shipped scenarios live in ``sims/scenarios/<name>.toml``; [`sims.load_scenario`][] also reads
a user's file. A file is flat ``key = value`` pairs; ``base = "crisis"`` starts from a
shipped scenario. Unknown keys are rejected by name. The model and every parameter are
described in ``docs/simulator.md``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from narset_jax._config import check_range, describe, plain_leaves, read_toml, reject_unknown
from narset_jax.errors import UserError

__all__ = [
    "SCENARIOS",
    "SCENARIO_DIR",
    "Scenario",
    "ScenarioError",
    "load_scenario",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
SCENARIOS = ("steady", "crisis", "heterogeneous", "spoofing", "dropout")
_BUDGETS = ("region", "global", "fixed_sum")
_META = ("name", "description", "budget")


class ScenarioError(UserError, ValueError):
    """A bad scenario name, file or value (one line, naming the file, key or position)."""


def _as_float(value):
    if isinstance(value, jax.core.Tracer):
        return value if jnp.issubdtype(value.dtype, jnp.inexact) else value.astype(float)
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, int | float):
        return jnp.asarray(float(value))  # weakly typed: never promotes float32 maths
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        return value
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - reported by __check_init__
        return value
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        return value
    return jnp.asarray(arr.astype(np.float64) if not np.issubdtype(arr.dtype, np.floating) else arr)


def _f(default: float):
    return eqx.field(default=default, converter=_as_float)


# (low, low_open, high, high_open); None is unbounded.
_UNIT = (0.0, False, 1.0, False)
_UNIT_OPEN = (0.0, False, 1.0, True)
_NONNEG = (0.0, False, None, True)
_POS = (0.0, True, None, True)
_SPREAD = (0.0, False, 3.0, False)

_RANGES: dict[str, tuple] = {
    "noise": (0.0, False, 2.0, False),
    "process_noise": (0.0, False, 1.0, False),
    "spread_lr": _SPREAD,
    "spread_fragility": _SPREAD,
    "spread_noise": _SPREAD,
    "spread_health": (0.0, False, 1.0, False),
    "spread_bloat": _SPREAD,
    "spread_scale": _SPREAD,
    "shock_rate": _UNIT,
    "shock_corr": _UNIT,
    "wave_width": (0.0, True, 1.0, False),
    "shock_size": _NONNEG,
    "stress_decay": _UNIT_OPEN,
    "spoofer_fraction": _UNIT,
    "spoof_rate": _UNIT,
    "spoof_size": _NONNEG,
    "dropout_rate": _UNIT,
    "dropout_persist": _UNIT_OPEN,
    "nan_rate": _UNIT,
    "nan_persist": _UNIT_OPEN,
    "boundary_rate": _UNIT,
    "health0": _UNIT,
    "health_eq": (0.0, True, 1.0, False),
    "recover_rate": _UNIT,
    "gap0": _POS,
    "lr": _UNIT,
    "gap_sat": _POS,
    "rent_drag": _UNIT,
    "bloat_drag": _UNIT,
    "diverge": _NONNEG,
    "health_diverge": _UNIT,
    "germ_rate": _NONNEG,
    "foss_rate": _UNIT,
    "cull_gain": _NONNEG,
    "seed_cap": _NONNEG,
    "seed_bloat": _NONNEG,
    "lysis_rate": (0.0, False, 0.5, False),
    "repair_gain": (0.0, False, 2.0, False),
    "sedate_gain": (0.0, False, 0.5, False),
    "fragility": _NONNEG,
    "stress_damage": _NONNEG,
    "alpha_damage": _NONNEG,
    "alpha_per_op": _NONNEG,
    "alpha_per_cull": _NONNEG,
    "thrash_damage": _NONNEG,
    "overdrive_damage": _NONNEG,
    "lysis_damage": _NONNEG,
    "health_safe": (0.0, True, 1.0, True),
    "panic_base": _UNIT,
    "panic_gain": _NONNEG,
    "overdrive_panic": _NONNEG,
    "unsafe_panic": _NONNEG,
    "anomaly_base": _UNIT,
    "anomaly_gain": _NONNEG,
    "anomaly_stress": _NONNEG,
    "overdrive_anomaly": _NONNEG,
    "nan_share": _UNIT,
    "lstm_base": _NONNEG,
    "lstm_gain": _NONNEG,
    "rollback_cost": _NONNEG,
    "rollback_restore": _UNIT,
}


class Scenario(eqx.Module):
    """A simulated ecology's parameters (float leaves) and metadata (static).

    Defaults describe a calm, mildly heterogeneous mesh. Each field's meaning, unit and role
    in the equations is in ``docs/simulator.md``; groups:

    - **Noise and heterogeneity:** ``noise`` (relative s.d. of loss, LSTM-health and churn
      readings), ``process_noise`` (s.d. of the health random walk), ``spread_*`` (log-normal
      spreads of each region's learning rate, fragility, noise, loss scale and bloat, and the
      s.d. of initial health).
    - **Shocks:** ``shock_rate`` (probability a region is hit in a window), ``shock_corr``
      (share of hits arriving as correlated waves over a ``wave_width`` arc of the region
      ring), ``shock_size`` (stress per hit), ``stress_decay``.
    - **Spoofing:** ``spoofer_fraction``, ``spoof_rate`` (chance of a fake spike per window),
      ``spoof_size``.
    - **Dropout:** ``dropout_rate``, ``dropout_persist`` (missing windows),
      ``nan_rate``, ``nan_persist`` (NaN/Inf bursts), ``boundary_rate`` (safe boundaries).
    - **Dynamics:** the remaining fields (health, learning, growth, bloat, lysis, panics,
      anomalies, rollbacks).

    **Static:** ``name``; ``description``; ``budget``, the recommended budget mode
    (``"global"`` for ``spoofing``) or ``None``.
    """

    # Noise and heterogeneity.
    noise: jax.Array = _f(0.05)
    process_noise: jax.Array = _f(0.01)
    spread_lr: jax.Array = _f(0.2)
    spread_fragility: jax.Array = _f(0.2)
    spread_noise: jax.Array = _f(0.2)
    spread_health: jax.Array = _f(0.05)
    spread_bloat: jax.Array = _f(0.2)
    spread_scale: jax.Array = _f(0.3)
    # Shocks.
    shock_rate: jax.Array = _f(0.005)
    shock_corr: jax.Array = _f(0.0)
    wave_width: jax.Array = _f(0.2)
    shock_size: jax.Array = _f(0.8)
    stress_decay: jax.Array = _f(0.85)
    # Spoofing.
    spoofer_fraction: jax.Array = _f(0.0)
    spoof_rate: jax.Array = _f(0.3)
    spoof_size: jax.Array = _f(1.0)
    # Dropout and boundaries.
    dropout_rate: jax.Array = _f(0.0)
    dropout_persist: jax.Array = _f(0.0)
    nan_rate: jax.Array = _f(0.0)
    nan_persist: jax.Array = _f(0.0)
    boundary_rate: jax.Array = _f(0.8)
    # Health.
    health0: jax.Array = _f(0.85)
    health_eq: jax.Array = _f(0.95)
    recover_rate: jax.Array = _f(0.08)
    # Learning.
    gap0: jax.Array = _f(1.0)
    lr: jax.Array = _f(0.06)
    gap_sat: jax.Array = _f(0.3)
    rent_drag: jax.Array = _f(0.3)
    bloat_drag: jax.Array = _f(1.0)
    diverge: jax.Array = _f(0.02)
    health_diverge: jax.Array = _f(0.3)
    # Tamiyo: growth.
    germ_rate: jax.Array = _f(1.0)
    foss_rate: jax.Array = _f(0.1)
    cull_gain: jax.Array = _f(1.0)
    seed_cap: jax.Array = _f(0.05)
    seed_bloat: jax.Array = _f(0.08)
    repair_gain: jax.Array = _f(0.5)
    # Emrakul: probing, sedation, lysis.
    lysis_rate: jax.Array = _f(0.1)
    sedate_gain: jax.Array = _f(0.02)
    # Damage.
    fragility: jax.Array = _f(1.0)
    stress_damage: jax.Array = _f(0.15)
    alpha_damage: jax.Array = _f(0.5)
    alpha_per_op: jax.Array = _f(0.01)
    alpha_per_cull: jax.Array = _f(0.05)
    thrash_damage: jax.Array = _f(0.03)
    overdrive_damage: jax.Array = _f(0.05)
    lysis_damage: jax.Array = _f(0.1)
    health_safe: jax.Array = _f(0.5)
    # Panics, anomalies, LSTM health, rollbacks.
    panic_base: jax.Array = _f(0.01)
    panic_gain: jax.Array = _f(0.8)
    overdrive_panic: jax.Array = _f(0.05)
    unsafe_panic: jax.Array = _f(0.3)
    anomaly_base: jax.Array = _f(0.02)
    anomaly_gain: jax.Array = _f(2.5)
    anomaly_stress: jax.Array = _f(0.5)
    overdrive_anomaly: jax.Array = _f(0.2)
    nan_share: jax.Array = _f(0.3)
    lstm_base: jax.Array = _f(1.0)
    lstm_gain: jax.Array = _f(16.0)
    rollback_cost: jax.Array = _f(0.05)
    rollback_restore: jax.Array = _f(0.3)
    # Metadata (static).
    name: str = eqx.field(static=True, default="custom")
    description: str = eqx.field(static=True, default="")
    budget: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.name, str) or not isinstance(self.description, str):
            raise ScenarioError("Scenario.name and Scenario.description must be strings")
        if self.budget is not None and self.budget not in _BUDGETS:
            choices = " | ".join(repr(b) for b in _BUDGETS)
            raise ScenarioError(f"Scenario.budget must be one of {choices}, got {self.budget!r}")
        for name, bounds in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, jax.core.Tracer):
                continue
            check_range("Scenario", name, value, bounds, ScenarioError)

    @classmethod
    def float_names(cls) -> tuple[str, ...]:
        """Names of the float (array-leaf) fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _META)

    def replace(self, **changes) -> Scenario:
        """A copy with some fields changed (validated again when concrete)."""
        known = (*self.float_names(), *_META)
        reject_unknown(changes, known, ScenarioError, "unknown Scenario field(s)")
        return dataclasses.replace(self, **changes)

    def astype(self, dtype) -> Scenario:
        """Cast every float leaf to ``dtype``."""
        return jax.tree.map(lambda v: jnp.asarray(v, dtype), self)

    def to_dict(self) -> dict[str, Any]:
        """Plain values: floats (nested lists for stacked scenarios) and the metadata."""
        out = plain_leaves(self, self.float_names())
        for name in _META:
            out[name] = getattr(self, name)
        return out

    def without_metadata(self) -> Scenario:
        """The same ecology with blank metadata, so jitted code compiles once for all
        scenarios (metadata never changes the simulation)."""
        return dataclasses.replace(self, name="custom", description="", budget=None)

    def recommended_params(self, params=None):
        """``params`` (default ``NarsetParams()``) with this scenario's recommended budget
        mode, if it has one."""
        from narset_jax.params import NarsetParams

        params = NarsetParams() if params is None else params
        return params if self.budget is None else params.replace(budget=self.budget)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Scenario:
        """Build from ``key -> value``, rejecting unknown keys by name.

        ``base = "<shipped name>"`` starts from that scenario; other keys override it.
        """
        where = f"{source}: " if source else ""
        data = dict(data)
        known = (*cls.float_names(), *_META, "base")
        reject_unknown(data, known, ScenarioError, f"{where}unknown scenario key(s)")
        kwargs: dict[str, Any] = {}
        base = data.pop("base", None)
        if base is not None:
            if base not in SCENARIOS:
                raise ScenarioError(
                    f"{where}base must name a shipped scenario ({', '.join(SCENARIOS)}), "
                    f"got {describe(base)}"
                )
            kwargs = _read_toml(SCENARIO_DIR / f"{base}.toml")
            kwargs.pop("base", None)
        kwargs.update(data)
        for key, value in kwargs.items():
            if key in _META:
                if value is not None and not isinstance(value, str):
                    raise ScenarioError(f"{where}{key} must be a string, got {describe(value)}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"{where}{key} must be a number, got {describe(value)}")
        try:
            return cls(**kwargs)
        except ScenarioError as err:
            raise ScenarioError(f"{where}{err}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, ScenarioError, "scenario")


def load_scenario(name_or_path) -> Scenario:
    """A shipped scenario by name, or a user's TOML file by path.

    **Arguments:**

    - ``name_or_path``: one of [`sims.SCENARIOS`][], a path to a ``.toml`` file, or a
      [`sims.Scenario`][] (returned unchanged).

    **Returns:** the [`sims.Scenario`][].

    **Raises:** [`sims.scenario.ScenarioError`][] (a ``ValueError``): an unknown name lists
    the valid ones; malformed TOML names the file, line and column; unknown keys are named.
    """
    if isinstance(name_or_path, Scenario):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text)
    if text in SCENARIOS:
        path = SCENARIO_DIR / f"{text}.toml"
        data = _read_toml(path)
        data.setdefault("name", text)
        return Scenario.from_dict(data, source=str(path))
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"{path}: no such scenario file")
        data = _read_toml(path)
        data.setdefault("name", path.stem)
        return Scenario.from_dict(data, source=str(path))
    raise ScenarioError(
        f"unknown scenario {text!r}; valid: {', '.join(SCENARIOS)} (or a path to a .toml file)"
    )
