"""Fixed sum: the design note's original budget (its §5.1), ``x_T + x_E = 1``."""

from __future__ import annotations

import jax.numpy as jnp

from narset_jax.budget_common import Allocation, float_dtype

__all__ = ["project_fixed_sum"]


def project_fixed_sum(target_T, target_E):
    """Exact Euclidean projection onto ``{x_T + x_E = 1, x >= 0}`` (the note's §5.1).

    A non-finite target component is treated as 0.

    **Returns:** an :class:`Allocation`; ``spent`` is ``x_T + x_E`` (= 1) and ``price`` is
    the multiplier of the equality constraint (negative when the targets sum below 1).
    """
    dtype = float_dtype(target_T, target_E)
    t_T, t_E = jnp.broadcast_arrays(jnp.asarray(target_T, dtype), jnp.asarray(target_E, dtype))
    t_T = jnp.where(jnp.isfinite(t_T), t_T, 0)
    t_E = jnp.where(jnp.isfinite(t_E), t_E, 0)
    x_T = jnp.clip(0.5 * (1 + t_T - t_E), 0, 1)
    x_E = 1 - x_T
    price = jnp.where(x_T > 0, t_T - x_T, t_E - x_E)
    return Allocation(x_T, x_E, x_T + x_E, price)
