"""Mode hysteresis: repair (Tamiyo-heavy) vs consolidation (Emrakul-heavy).

Enter repair after ``k_enter`` consecutive windows with need ``>= theta_enter``; leave after
``k_exit`` consecutive windows with need ``<= theta_exit``. One code path, three variants
selected by the static ``NarsetParams.hysteresis`` flag, which only changes
[`narset_jax.hysteresis.gate`][]:

- ``"hard"``: step gates, integer counters, mode exactly 0 or 1.
- ``"soft"``: sigmoid gates with temperature; counters leak (they are multiplied by the
  gate rather than reset), and the mode is a weight in [0, 1]. Differentiable.
- ``"straight_through"``: the hard values forward, the soft derivatives backward.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["HysteresisState", "gate", "init_hysteresis", "update_mode"]


def gate(z, temperature, variant: str):
    """A differentiable-on-demand test of ``z >= 0``.

    **Arguments:**

    - ``z``: the margin (positive means "condition holds").
    - ``temperature``: the sigmoid temperature of the soft gate.
    - ``variant``: ``"hard"`` (``1.0 * (z >= 0)``), ``"soft"`` (``sigmoid(z / T)``) or
      ``"straight_through"`` (hard value, soft gradient).

    **Returns:** an array of ``z``'s dtype with values in [0, 1].
    """
    hard = (z >= 0).astype(z.dtype)
    if variant == "hard":
        return hard
    soft = jax.nn.sigmoid(z / temperature)
    if variant == "soft":
        return soft
    if variant == "straight_through":
        # hard + (soft - soft) is exactly ``hard`` forward, whatever the rounding.
        return hard + (soft - jax.lax.stop_gradient(soft))
    raise ValueError(f"unknown hysteresis variant {variant!r}")


class HysteresisState(eqx.Module):
    """Per-region mode state (all ``[N]`` floats).

    **Fields:**

    - ``mode``: 1 = repair, 0 = consolidation (a weight in [0, 1] for ``"soft"``).
    - ``enter_count``: consecutive windows (while consolidating) with need ``>= theta_enter``.
    - ``exit_count``: consecutive windows (while repairing) with need ``<= theta_exit``.
    """

    mode: jax.Array
    enter_count: jax.Array
    exit_count: jax.Array


def init_hysteresis(n_regions: int, dtype) -> HysteresisState:
    """All regions start in consolidation with zero counters."""
    z = jnp.zeros((n_regions,), dtype)
    return HysteresisState(mode=z, enter_count=z, exit_count=z)


def update_mode(params, state: HysteresisState, need, update, variant: str) -> HysteresisState:
    """One window of the hysteresis.

    Counters only run towards the switch that is possible from the current mode, so they
    stay bounded by ``k``:

        enter' = g(need - theta_enter) * (1 - m) * (enter + 1)
        exit'  = g(theta_exit - need)  * m       * (exit + 1)
        m'     = m * (1 - g(exit' - k_exit + 1/2)) + (1 - m) * g(enter' - k_enter + 1/2)

    With hard gates this is exactly "switch at the ``k``-th consecutive window".

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] (leaves in the state dtype).
    - ``state``: the previous [`narset_jax.hysteresis.HysteresisState`][].
    - ``need``: ``[N]`` repair need in [0, 1] (``1 - S``).
    - ``update``: ``[N]`` bool; where ``False`` (a missing window) the state is held.
    - ``variant``: ``"hard"``, ``"soft"`` or ``"straight_through"``.

    **Returns:** the new state.
    """
    m = state.mode
    g_in = gate(need - params.theta_enter, params.temp_need, variant)
    g_out = gate(params.theta_exit - need, params.temp_need, variant)
    enter = g_in * (1 - m) * (state.enter_count + 1)
    exit_ = g_out * m * (state.exit_count + 1)
    s_in = gate(enter - params.k_enter + 0.5, params.temp_dwell, variant)
    s_out = gate(exit_ - params.k_exit + 0.5, params.temp_dwell, variant)
    mode = m * (1 - s_out) + (1 - m) * s_in
    return HysteresisState(
        mode=jnp.where(update, mode, m),
        enter_count=jnp.where(update, enter, state.enter_count),
        exit_count=jnp.where(update, exit_, state.exit_count),
    )
