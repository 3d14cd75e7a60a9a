"""Policy targets from mode and scores, and inertia on those targets.

Inertia acts on the *targets*, before the budget projection, so the emitted allocation is
always the projection of something, hence always feasible (DESIGN.md §2: a convex mix of
two feasible points can be infeasible under the non-convex seed cost).
"""

from __future__ import annotations

import jax.numpy as jnp

from narset_jax.signals import Scores

__all__ = ["inertia", "targets"]


def targets(params, mode, s: Scores):
    """Raw targets ``(t_T, t_E)`` from the mode weight and the scores.

    With ``m`` the mode (1 repair, 0 consolidation; a weight for the soft variant), ``S``
    stability, ``P`` progress and ``F`` efficiency pressure:

        t_T = max(m (gain_T_repair + gain_T_crisis (1 - S))
                  + (1 - m) (gain_T_consol + gain_T_progress P - gain_T_efficiency F), 0)
        t_E = S (m gain_E_repair + (1 - m) (gain_E_consol + gain_E_efficiency F))

    There is no rule that sets ``t_E`` to 0. Emrakul's target is scaled by ``S``, and in a
    crisis Tamiyo's target moves into overdrive and takes the pool, so a near-zero ``x_E``
    *emerges* from the signals and the budget (note §8).

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] with leaves in the state dtype.
    - ``mode``: ``[N]`` mode weight in [0, 1].
    - ``s``: [`narset_jax.signals.Scores`][].

    **Returns:** ``(t_T, t_E)``, each ``[N]`` and ``>= 0``.
    """
    p = params
    t_T_repair = p.gain_T_repair + p.gain_T_crisis * s.need
    t_T_consol = (
        p.gain_T_consol + p.gain_T_progress * s.progress - p.gain_T_efficiency * s.efficiency
    )
    t_E_consol = p.gain_E_consol + p.gain_E_efficiency * s.efficiency
    t_T = jnp.maximum(t_T_consol + mode * (t_T_repair - t_T_consol), 0)
    t_E = s.stability * (t_E_consol + mode * (p.gain_E_repair - t_E_consol))
    return t_T, t_E


def inertia(beta, prev_T, prev_E, t_T, t_E, update):
    """Exponential inertia on targets: ``t <- (1 - beta) t_prev + beta t_new``.

    Targets start at 0, so a new region's intensities (and with them its authority) ramp
    up over about ``1 / beta`` windows instead of starting with full authority on no
    evidence.

    **Arguments:**

    - ``beta``: inertia rate in (0, 1]; 1 means no inertia.
    - ``prev_T``, ``prev_E``: the previous smoothed targets, ``[N]``.
    - ``t_T``, ``t_E``: this window's raw targets.
    - ``update``: ``[N]`` bool; where ``False`` the previous targets are held.

    **Returns:** the smoothed targets ``(T, E)``, which the budget stage projects.
    """
    new_T = prev_T + beta * (t_T - prev_T)
    new_E = prev_E + beta * (t_E - prev_E)
    return jnp.where(update, new_T, prev_T), jnp.where(update, new_E, prev_E)
