"""Mode hysteresis: repair (Tamiyo-heavy) vs consolidation (Emrakul-heavy).

Enter repair after ``k_enter`` consecutive windows with need ``>= theta_enter``; leave after
``k_exit`` consecutive windows with need ``<= theta_exit``. One code path, three variants
selected by the static ``NarsetParams.hysteresis`` flag, which only changes
[`narset_jax.hysteresis.gate`][]:

- ``"hard"``: step gates, integer counters, mode exactly 0 or 1.
- ``"soft"``: sigmoid gates with temperature; counters leak (they are multiplied by the
  gate rather than reset), and the mode is a weight in [0, 1]. Differentiable.
- ``"straight_through"``: the hard values forward, the soft derivatives backward.
- ``"saturating"``: the soft gates, but the new mode weight is pushed towards {0, 1} by
  [`narset_jax.hysteresis.saturate`][] every window, so a region cannot rest at a half
  mode (the hard controller's states are its fixed points). Differentiable.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "SATURATION_TEMP",
    "HysteresisState",
    "gate",
    "init_hysteresis",
    "saturate",
    "update_mode",
]

SATURATION_TEMP = 0.05
"""Temperature of [`narset_jax.hysteresis.saturate`][] (mode-weight units)."""


def gate(z, temperature, variant: str):
    """A differentiable-on-demand test of ``z >= 0``.

    **Arguments:**

    - ``z``: the margin (positive means "condition holds").
    - ``temperature``: the sigmoid temperature of the soft gate.
    - ``variant``: ``"hard"`` (``1.0 * (z >= 0)``), ``"soft"`` (``sigmoid(z / T)``) or
      ``"straight_through"`` (hard value, soft gradient); ``"saturating"`` gates as
      ``"soft"`` does (it saturates the mode, not the gates).

    **Returns:** an array of ``z``'s dtype with values in [0, 1].
    """
    hard = (z >= 0).astype(z.dtype)
    if variant == "hard":
        return hard
    soft = jax.nn.sigmoid(z / temperature)
    if variant in ("soft", "saturating"):
        return soft
    if variant == "straight_through":
        # hard + (soft - soft) is exactly ``hard`` forward, whatever the rounding.
        return hard + (soft - jax.lax.stop_gradient(soft))
    raise ValueError(f"unknown hysteresis variant {variant!r}")


def saturate(m, temperature=SATURATION_TEMP):
    """Push a mode weight in [0, 1] towards 0 or 1: the logistic map
    ``sigmoid((m - 1/2) / temperature)``, rescaled so that 0 and 1 are exact fixed points.
    Increasing, with ``saturate(1/2) = 1/2``; its slope is about
    ``exp(-1 / (2 temperature)) / temperature`` (9e-4 at the default) at 0 and 1 and
    ``1 / (4 temperature)`` (5) at 1/2."""
    half = jnp.asarray(0.5, m.dtype)
    lo = jax.nn.sigmoid(-half / temperature)
    hi = jax.nn.sigmoid(half / temperature)
    return (jax.nn.sigmoid((m - half) / temperature) - lo) / (hi - lo)


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

    With hard gates this is exactly "switch at the ``k``-th consecutive window". The
    ``"saturating"`` variant then replaces ``m'`` by ``saturate(m')``.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] (leaves in the state dtype).
    - ``state``: the previous [`narset_jax.hysteresis.HysteresisState`][].
    - ``need``: ``[N]`` repair need in [0, 1] (``1 - S``).
    - ``update``: ``[N]`` bool; where ``False`` (a missing window) the state is held.
    - ``variant``: ``"hard"``, ``"soft"``, ``"straight_through"`` or ``"saturating"``.

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
    if variant == "saturating":
        mode = saturate(mode)
    return HysteresisState(
        mode=jnp.where(update, mode, m),
        enter_count=jnp.where(update, enter, state.enter_count),
        exit_count=jnp.where(update, exit_, state.exit_count),
    )
