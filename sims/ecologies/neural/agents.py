"""The local agents' rules (simple and documented; not learned, and not Narset).

Both run once per window per region, after the window's training and evaluation, on that
region's ``[K]`` slot arrays. Their limits come from Narset's decision exactly as
``narset_jax.authority`` derives them (the ecology receives only ``x`` and the tier):
``max_ops = floor(ops_nominal * x)``, ``action_freq = min(x, 1)`` (the agent acts in a
window when a per-region uniform draw is below it), ``cost_mult = min(1 / x,
cost_mult_max)`` (multiplies the agent's evidence margins: a starved agent needs clearer
evidence, an overdriven one acts on thinner evidence). ``ops_nominal`` and
``cost_mult_max`` are scenario fields with ``NarsetParams``'s defaults (4, 10).

**Tamiyo** (``x_T``, ``tier_T``): timers move seeds along the lifecycle while she holds
reversible authority (``tier_T >= 1``): GERMINATED -> TRAINING after one window;
TRAINING -> BLENDING after ``train_windows``; in BLENDING alpha rises by
``blend_rate * x_T`` per window, and at 1 the seed is HOLDING. When she acts, in this order
and within ``max_ops_T`` operations: fossilise each HOLDING seed held ``hold_windows`` whose
measured gain (validation loss without it minus with it) is at least
``gain_min * cost_mult_T`` (irreversible: needs ``tier_T >= 2``); prune each HOLDING seed
whose gain is negative; germinate up to ``floor(germ_nominal * x_T)`` seeds into the
lowest dormant slots (conv slots first) when the region has plateaued (accuracy improved by
less than 0.5 points for ``plateau_windows`` windows) or was damaged (a panic or rollback in
the last window). The failure path is timed: PRUNED -> EMBARGOED after one window,
EMBARGOED -> RESETTING after ``embargo_windows``, RESETTING -> DORMANT after one window.

**Emrakul** (``x_E``, ``tier_E``): when she acts, she probes up to ``max_ops_E`` blended
seeds (round-robin from slot ``t mod K``): the ablation gain of each (validation loss with
its alpha at 0 minus with it on). Within ``max_ops_E`` operations: lyse each probed
FOSSILIZED or sedated seed whose gain is below ``lysis_margin * cost_mult_E`` (only with
``tier_E >= 2`` and at the safe boundary the region last reported; the seed is PRUNED and
its parameters are zeroed); sedate each probed blended seed whose gain is below
``-sedate_margin * cost_mult_E`` (alpha to 0, reversible; ``tier_E >= 1``); wake each probed
sedated seed whose gain is above ``wake_margin * cost_mult_E``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from narset_jax.authority import limits
from sims.ecologies.neural import lifecycle as lc

__all__ = ["Slots", "emrakul", "tamiyo", "take_first"]


class Slots(NamedTuple):
    """One region's slots: ``stage`` (int32), ``age`` (windows in the stage, int32),
    ``alpha`` (nominal blend weight), ``sedated`` (bool); each ``[K]``."""

    stage: jnp.ndarray
    age: jnp.ndarray
    alpha: jnp.ndarray
    sedated: jnp.ndarray


def take_first(mask, budget, order=None):
    """``mask`` restricted to its first ``budget`` entries (in ``order``, a permutation of
    slot indices; default ascending)."""
    m = mask if order is None else mask[order]
    rank = jnp.cumsum(m.astype(jnp.int32))
    keep = m & (rank <= budget)
    if order is None:
        return keep
    return jnp.zeros_like(keep).at[order].set(keep)


def _move(slots: Slots, target, want) -> Slots:
    stage = lc.apply(slots.stage, target, want)
    moved = stage != slots.stage
    return slots._replace(stage=stage, age=jnp.where(moved, 0, slots.age))


class TamiyoOut(NamedTuple):
    slots: Slots
    germinate: jnp.ndarray  # [K] bool: fresh seeds go into these slots
    fossilise: jnp.ndarray  # [K] bool
    prune: jnp.ndarray  # [K] bool
    ops: jnp.ndarray  # scalar


def tamiyo(sc, slots: Slots, x_T, tier_T, u_act, plateaued, damaged, gain) -> TamiyoOut:
    """Tamiyo's window (see the module docstring). ``gain`` ``[K]``: measured gain."""
    dtype = slots.alpha.dtype
    max_ops, freq, mult = limits(x_T, sc.ops_nominal, sc.cost_mult_max)
    acts = u_act < freq
    rev = tier_T >= 1
    irr = tier_T >= 2
    s = slots._replace(age=slots.age + 1)
    st = s.stage
    # Timers.
    s = _move(s, lc.TRAINING, (st == lc.GERMINATED) & rev)
    s = _move(s, lc.BLENDING, (st == lc.TRAINING) & (s.age >= sc.train_windows) & rev)
    blending = (s.stage == lc.BLENDING) & ~s.sedated & rev
    alpha = jnp.where(blending, jnp.minimum(s.alpha + sc.blend_rate * x_T, 1), s.alpha)
    s = s._replace(alpha=alpha.astype(dtype))
    s = _move(s, lc.HOLDING, (s.stage == lc.BLENDING) & (s.alpha >= 1))
    s = _move(s, lc.EMBARGOED, st == lc.PRUNED)
    s = _move(s, lc.RESETTING, (st == lc.EMBARGOED) & (s.age >= sc.embargo_windows))
    s = _move(s, lc.DORMANT, st == lc.RESETTING)
    # Operations, within max_ops.
    held = (s.stage == lc.HOLDING) & (s.age >= sc.hold_windows) & acts
    foss = take_first(held & irr & (gain >= sc.gain_min * mult), max_ops)
    left = max_ops - jnp.sum(foss)
    prune = take_first(held & rev & ~foss & (gain < 0), left)
    left = left - jnp.sum(prune)
    want = acts & rev & (plateaued | damaged)
    n_germ = jnp.minimum(jnp.floor(sc.germ_nominal * x_T).astype(jnp.int32), left)
    germ = take_first((s.stage == lc.DORMANT) & want, n_germ)
    s = _move(s, lc.FOSSILIZED, foss)
    s = _move(s, lc.PRUNED, prune)
    s = _move(s, lc.GERMINATED, germ)
    s = s._replace(alpha=jnp.where(germ | prune, 0, s.alpha).astype(dtype))
    ops = (jnp.sum(foss) + jnp.sum(prune) + jnp.sum(germ)).astype(dtype)
    return TamiyoOut(s, germ, foss, prune, ops)


class EmrakulOut(NamedTuple):
    slots: Slots
    probed: jnp.ndarray  # [K] bool
    sedate: jnp.ndarray  # [K] bool
    wake: jnp.ndarray  # [K] bool
    lyse: jnp.ndarray  # [K] bool
    ops: jnp.ndarray  # scalar (sedations, wakes, lyses; probes are not edits)


def emrakul(sc, slots: Slots, x_E, tier_E, u_act, boundary, gain, t) -> EmrakulOut:
    """Emrakul's window (see the module docstring). ``gain`` ``[K]``: her probe's ablation
    gain (on her probe batch); ``boundary``: the region's last reported safe boundary."""
    dtype = slots.alpha.dtype
    k = slots.stage.shape[0]
    max_ops, freq, mult = limits(x_E, sc.ops_nominal, sc.cost_mult_max)
    acts = u_act < freq
    blended = lc.in_stages(slots.stage, lc.BLENDED)
    order = (jnp.arange(k) + t) % k
    probed = take_first(blended & acts, max_ops, order)
    lysable = probed & ((slots.stage == lc.FOSSILIZED) | slots.sedated)
    lyse = take_first(lysable & (tier_E >= 2) & boundary & (gain < sc.lysis_margin * mult),
                      max_ops)
    left = max_ops - jnp.sum(lyse)
    rev = tier_E >= 1
    sedate = take_first(probed & rev & ~lyse & ~slots.sedated & (gain < -sc.sedate_margin * mult),
                        left)
    left = left - jnp.sum(sedate)
    wake = take_first(probed & rev & slots.sedated & ~lyse & (gain > sc.wake_margin * mult), left)
    s = _move(slots, lc.PRUNED, lyse)
    s = s._replace(
        sedated=(s.sedated | sedate) & ~wake & ~lyse,
        alpha=jnp.where(lyse, 0, s.alpha).astype(dtype),
    )
    ops = (jnp.sum(lyse) + jnp.sum(sedate) + jnp.sum(wake)).astype(dtype)
    return EmrakulOut(s, probed, sedate, wake, lyse, ops)
