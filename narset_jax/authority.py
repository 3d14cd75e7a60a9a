"""Authority: blast-radius tiers and the limits local agents consume.

Tiers (``int32``): 0 probe only, 1 reversible work, 2 irreversible work.

- Emrakul: probe below ``tau_sedate``; sedation from ``tau_sedate``; lysis and compaction
  only when ``x_E >= tau_lysis`` **and** the window is at a safe boundary.
- Tamiyo, the equivalent ladder: probe (observe, plan) below ``tau_germinate``; germinate
  and train seeds (reversible: a seed can still be culled) from ``tau_germinate``;
  fossilise (irreversible: the seed is merged into the host) only when
  ``x_T >= tau_fossilise`` **and** at a boundary.

Limits, each a function of the agent's own intensity ``x``:

- ``max_ops = floor(ops_nominal * x)``: operations allowed in the window.
- ``action_freq = min(x, 1)``: the fraction of the window's decision points at which the
  agent may act; overdrive raises ``max_ops`` but cannot act more than every point.
- ``cost_mult = min(1 / x, cost_mult_max)``: the multiplier the agent applies to its own
  action costs and thresholds; 1 at nominal, higher when starved, below 1 in overdrive.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Authority", "authority", "limits", "tier"]


def tier(x, tau_reversible, tau_irreversible, boundary):
    """The authority tier of an intensity: 0 below ``tau_reversible``, 1 from it, and 2
    only where ``x >= tau_irreversible`` and ``boundary``. Returns ``int32``."""
    lysis = (x >= tau_irreversible) & boundary
    return jnp.where(lysis, 2, (x >= tau_reversible).astype(jnp.int32)).astype(jnp.int32)


def limits(x, ops_nominal, cost_mult_max):
    """``(max_ops int32, action_freq, cost_mult)`` of an intensity ``x``."""
    max_ops = jnp.floor(ops_nominal * x).astype(jnp.int32)
    action_freq = jnp.minimum(x, 1)
    cost_mult = 1 / jnp.maximum(x, 1 / cost_mult_max)
    return max_ops, action_freq, cost_mult


class Authority(NamedTuple):
    """Tiers and limits for both agents (all ``[N]``)."""

    tier_T: jax.Array
    tier_E: jax.Array
    max_ops_T: jax.Array
    max_ops_E: jax.Array
    action_freq_T: jax.Array
    action_freq_E: jax.Array
    cost_mult_T: jax.Array
    cost_mult_E: jax.Array


def authority(params, x_T, x_E, boundary) -> Authority:
    """Tiers and limits from the emitted (feasible) intensities.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] with leaves in the state dtype.
    - ``x_T``, ``x_E``: ``[N]`` emitted intensities.
    - ``boundary``: ``[N]`` bool, a safe boundary (``False`` for a missing window).

    **Returns:** [`narset_jax.authority.Authority`][].
    """
    p = params
    ops_T, freq_T, mult_T = limits(x_T, p.ops_nominal, p.cost_mult_max)
    ops_E, freq_E, mult_E = limits(x_E, p.ops_nominal, p.cost_mult_max)
    return Authority(
        tier_T=tier(x_T, p.tau_germinate, p.tau_fossilise, boundary),
        tier_E=tier(x_E, p.tau_sedate, p.tau_lysis, boundary),
        max_ops_T=ops_T,
        max_ops_E=ops_E,
        action_freq_T=freq_T,
        action_freq_E=freq_E,
        cost_mult_T=mult_T,
        cost_mult_E=mult_E,
    )
