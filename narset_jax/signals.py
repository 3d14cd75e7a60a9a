"""Signals: smoothing, the persistence filter, the loss trend and plateau, and the scores.

All of it is elementwise over ``[N]`` arrays. The formulas are derived and justified in
``docs/controller.md`` ("Signals" and "Scores").
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from narset_jax.hysteresis import gate
from narset_jax.telemetry import Sanitised

__all__ = [
    "EFFICIENCY_FIELDS",
    "STABILITY_FIELDS",
    "Scores",
    "SignalState",
    "init_signals",
    "scores",
    "smooth",
]

STABILITY_FIELDS = ("rollbacks", "anomalies", "nonfinite", "lstm_health")
EFFICIENCY_FIELDS = (
    "growth_ratio",
    "churn",
    "alpha_shock",
    "active_seeds",
    "fossilised_seeds",
)

# Esper's rent: min(0.5 ln(1 + g), 1.5).
RENT_SCALE = 0.5
RENT_CAP = 1.5
# Relative loss changes are measured against max(|loss|, LOSS_FLOOR) and clipped to [-1, 1].
LOSS_FLOOR = 1e-6


class SignalState(eqx.Module):
    """Smoothed signals of every region (all ``[N]``).

    **Fields:**

    - ``ewma_<field>``: EWMA of each numeric telemetry field (stability fields after the
      persistence filter).
    - ``mem_<field>``: the persistence filter's decaying memory of each stability field.
    - ``trend``: EWMA of the relative loss improvement per window (positive = improving).
    - ``plateau``: windows without improvement (leaky for the soft variant), capped at
      ``plateau_window``.
    - ``n_valid``: valid windows absorbed (float; efficiency EWMAs start at the first one).
    - ``n_loss``: finite loss readings absorbed (float; the loss EWMA starts at the first).
    """

    ewma_loss: jax.Array
    ewma_rollbacks: jax.Array
    ewma_anomalies: jax.Array
    ewma_nonfinite: jax.Array
    ewma_lstm_health: jax.Array
    ewma_growth_ratio: jax.Array
    ewma_churn: jax.Array
    ewma_alpha_shock: jax.Array
    ewma_active_seeds: jax.Array
    ewma_fossilised_seeds: jax.Array
    mem_rollbacks: jax.Array
    mem_anomalies: jax.Array
    mem_nonfinite: jax.Array
    mem_lstm_health: jax.Array
    trend: jax.Array
    plateau: jax.Array
    n_valid: jax.Array
    n_loss: jax.Array


def init_signals(n_regions: int, dtype) -> SignalState:
    """All signals at zero: no instability, no trend, nothing seen yet."""
    z = jnp.zeros((n_regions,), dtype)
    return SignalState(**{name: z for name in SignalState.__dataclass_fields__})


def _ewma(old, x, rate):
    return old + rate * (x - old)


def smooth(params, state: SignalState, clean: Sanitised, variant: str) -> SignalState:
    """Absorb one window of sanitised telemetry into the smoothed state.

    - Each numeric signal has its own EWMA rate ``rate_<field>``.
    - Stability fields first pass the persistence filter: ``f = min(x, mem)`` and
      ``mem' = max(x, persist_decay * mem)``. A spike preceded by a calm history is
      replaced by that history's level, so a single-window spike changes nothing, while a
      spike that recurs within the memory is admitted (scaled by ``persist_decay``).
    - ``trend`` is the EWMA of ``(L_prev - L) / max(|L_prev|, 1e-6)`` (clipped to
      [-1, 1]) on the smoothed loss ``L``; ``plateau`` counts windows whose trend is below
      ``plateau_eps``.
    - Invalid windows hold everything; a non-finite reading holds its own signal.
    - Hardening (``corroborate``, ``persistence``, ``rise_cap``; off at 0, where the
      result is exactly the unhardened one): the filtered stability value is scaled by
      ``1 - corroborate (1 - clip(1 - trend / corroborate_ref, 0, 1))`` (this window's
      trend);
      a stability EWMA rises at ``rate (1 - persistence)``; and it may add at most
      ``rise_cap`` to the instability index per window.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] with leaves in the state dtype.
    - ``state``: the previous [`narset_jax.signals.SignalState`][].
    - ``clean``: the window, from [`narset_jax.telemetry.sanitise`][].
    - ``variant``: the hysteresis variant, which also selects the plateau gate.

    **Returns:** the new state.
    """
    valid = clean.valid
    v, fin = clean.values, clean.finite
    new = {}
    # Progress (first: corroboration reads this window's trend): loss EWMA, relative
    # trend, plateau counter.
    ok = valid & fin["loss"]
    first_loss = state.n_loss == 0
    old = state.ewma_loss
    loss = jnp.where(first_loss, v["loss"], _ewma(old, v["loss"], params.rate_loss))
    rel = (old - loss) / jnp.maximum(jnp.abs(old), LOSS_FLOOR)
    rel = jnp.where(first_loss, 0, jnp.clip(rel, -1, 1))
    trend = _ewma(state.trend, rel, params.rate_trend)
    stalled = gate(params.plateau_eps - trend, params.temp_plateau, variant)
    plateau = jnp.minimum(stalled * (state.plateau + 1), params.plateau_window)
    new["ewma_loss"] = jnp.where(ok, loss, old)
    new["trend"] = jnp.where(ok, trend, state.trend)
    new["plateau"] = jnp.where(ok, plateau, state.plateau)
    new["n_loss"] = state.n_loss + ok.astype(state.n_loss.dtype)
    # Hardening (docs/gaslighting.md; exactly the identity at the defaults, all 0):
    # corroboration by the region's own loss trend, a slower rise, a cap on the rise.
    weight = 1 - params.corroborate * (
        1 - jnp.clip(1 - new["trend"] * (1 / params.corroborate_ref), 0, 1)
    )
    # Stability: persistence filter, then EWMA.
    for k in STABILITY_FIELDS:
        ok = valid if k == "anomalies" else valid & fin[k]
        x, mem = v[k], getattr(state, "mem_" + k)
        filtered = jnp.minimum(x, mem) * weight
        new["mem_" + k] = jnp.where(ok, jnp.maximum(x, params.persist_decay * mem), mem)
        old = getattr(state, "ewma_" + k)
        rate = getattr(params, "rate_" + k) * (1 - params.persistence * (filtered > old))
        upd = _ewma(old, filtered, rate)
        upd = jnp.where(params.rise_cap > 0, jnp.minimum(upd, old + params.rise_cap
                                                         * _index_unit(params, k)), upd)
        new["ewma_" + k] = jnp.where(ok, upd, old)
    # Efficiency: EWMA started at the first valid window.
    first = state.n_valid == 0
    for k in EFFICIENCY_FIELDS:
        ok = valid & fin[k]
        old = getattr(state, "ewma_" + k)
        upd = jnp.where(first, v[k], _ewma(old, v[k], getattr(params, "rate_" + k)))
        new["ewma_" + k] = jnp.where(ok, upd, old)
    new["n_valid"] = state.n_valid + valid.astype(state.n_valid.dtype)
    return SignalState(**new)


def _index_unit(params, k: str):
    """What one unit of the instability index is in stability field ``k``'s EWMA."""
    if k == "lstm_health":
        return params.lstm_critical - params.lstm_warn
    return getattr(params, "scale_" + k)


class Scores(NamedTuple):
    """The three scores (all ``[N]``, in [0, 1]) and the repair need.

    **Fields:**

    - ``progress``: 1 = improving fast, 0 = stalled for ``plateau_window`` windows.
    - ``stability``: ``S = 1 / (1 + I)``, ``I`` the instability index.
    - ``efficiency``: efficiency pressure; 1 = bloated or thrashing.
    - ``need``: repair need, ``1 - S = I / (1 + I)``.
    """

    progress: jax.Array
    stability: jax.Array
    efficiency: jax.Array
    need: jax.Array


def _rent(g):
    return jnp.minimum(RENT_SCALE * jnp.log1p(g), RENT_CAP)


def scores(params, state: SignalState) -> Scores:
    """Progress, stability and efficiency pressure from the smoothed signals.

    - Instability ``I = rollbacks / scale_rollbacks + anomalies / scale_anomalies
      + nonfinite / scale_nonfinite + max(lstm - lstm_warn, 0) / (lstm_critical - lstm_warn)``
      (all EWMAs); ``S = 1 / (1 + I)``.
    - ``progress = (clip(trend / trend_ref, 0, 1) + 1 - plateau / plateau_window) / 2``.
    - ``efficiency`` is the weighted mean of: rent (Esper's ``min(0.5 ln(1+g), 1.5)``)
      placed between its green and red values, ``churn / (churn + churn_ref)``,
      ``shock / (shock + shock_ref)`` and the active share ``active / (active + fossilised)``.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] with leaves in the state dtype.
    - ``state``: a [`narset_jax.signals.SignalState`][].

    **Returns:** [`narset_jax.signals.Scores`][].
    """
    p = params
    # Divisions by scalar params are hoisted into reciprocals (one scalar op each).
    inst = (
        state.ewma_rollbacks * (1 / p.scale_rollbacks)
        + state.ewma_anomalies * (1 / p.scale_anomalies)
        + state.ewma_nonfinite * (1 / p.scale_nonfinite)
        + jnp.maximum(state.ewma_lstm_health - p.lstm_warn, 0)
        * (1 / (p.lstm_critical - p.lstm_warn))
    )
    stability = 1 / (1 + inst)
    need = inst * stability
    improving = jnp.clip(state.trend * (1 / p.trend_ref), 0, 1)
    progress = 0.5 * (improving + 1 - state.plateau * (1 / p.plateau_window))
    rent_green, rent_red = _rent(p.growth_green), _rent(p.growth_red)
    f_rent = jnp.clip(
        (_rent(state.ewma_growth_ratio) - rent_green) * (1 / (rent_red - rent_green)), 0, 1
    )
    f_churn = state.ewma_churn / (state.ewma_churn + p.churn_ref)
    f_shock = state.ewma_alpha_shock / (state.ewma_alpha_shock + p.shock_ref)
    seeds = state.ewma_active_seeds + state.ewma_fossilised_seeds
    f_active = state.ewma_active_seeds / jnp.maximum(seeds, 1)
    w = 1 / (p.weight_rent + p.weight_churn + p.weight_shock + p.weight_active)
    efficiency = (
        (p.weight_rent * w) * f_rent
        + (p.weight_churn * w) * f_churn
        + (p.weight_shock * w) * f_shock
        + (p.weight_active * w) * f_active
    )
    return Scores(progress=progress, stability=stability, efficiency=efficiency, need=need)
