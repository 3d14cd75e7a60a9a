"""What the budget modules share: the result types and the eager input checks.

Used by [`narset_jax.budget`][] (per-region projection), [`narset_jax.global_pool`][],
[`narset_jax.fixed_sum`][] and [`narset_jax.cost`][]; users import the result types from
``narset_jax`` or ``narset_jax.budget``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Allocation",
    "GlobalAllocation",
    "check_positive",
    "check_weights",
    "float_dtype",
    "prepare",
]


class Allocation(NamedTuple):
    """Result of a per-region projection. All fields have the broadcast shape of the inputs.

    **Fields:**

    - ``x_T``, ``x_E``: the feasible intensities for Tamiyo and Emrakul.
    - ``spent``: ``c(x_T) + c(x_E)``.
    - ``price``: the budget's KKT multiplier (shadow price), ``>= 0``; exactly 0 when the
      (clipped) target was already feasible. For :func:`project_fixed_sum` it is the
      multiplier of the equality ``x_T + x_E = 1`` and may be negative.
    """

    x_T: jax.Array
    x_E: jax.Array
    spent: jax.Array
    price: jax.Array


class GlobalAllocation(NamedTuple):
    """Result of :func:`project_global_pool`.

    **Fields:**

    - ``x_T``, ``x_E``, ``spent``: per region, shape ``[N]``.
    - ``price``: the one multiplier shared by all regions (a scalar).
    - ``gap``: primal objective minus the best dual lower bound found (a scalar). It is
      zero up to solver tolerance for the convex cost; for the non-convex seed cost it
      bounds how far the returned feasible point can be from the true optimum.
    """

    x_T: jax.Array
    x_E: jax.Array
    spent: jax.Array
    price: jax.Array
    gap: jax.Array


# ---------------------------------------------------------------------------------------
# Validation (eager only: traced values are checked by the caller's own construction).


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless a concrete ``value`` is finite and
    ``> 0`` everywhere (``None`` and traced values pass)."""
    if value is None or not _is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
        raise ValueError(f"{name} must be finite and > 0, got {bad!r}")


def check_weights(weights) -> None:
    """``weights`` is ``None`` or a pair ``(w_T, w_E)`` of positive values."""
    if weights is not None:
        if len(weights) != 2:
            raise ValueError("weights must be a pair (w_T, w_E)")
        check_positive("weights[0] (w_T)", weights[0])
        check_positive("weights[1] (w_E)", weights[1])


def float_dtype(*xs):
    """The floating dtype the inputs promote to (the default float for integer inputs)."""
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def prepare(target_T, target_E, pool, alpha, weights):
    """Cast the inputs to one float dtype; broadcast the targets; sanitise them
    (non-finite -> 0, clip at 0). ``pool``, ``alpha`` and the weights keep their own
    (broadcastable) shapes, so scalar hyperparameters are not expanded to ``[N]``."""
    dtype = float_dtype(target_T, target_E)
    w_T, w_E = (1.0, 1.0) if weights is None else weights
    t_T, t_E = jnp.broadcast_arrays(jnp.asarray(target_T, dtype), jnp.asarray(target_E, dtype))
    shape = jnp.broadcast_shapes(
        t_T.shape, *(jnp.shape(v) for v in (pool, alpha, w_T, w_E))
    )
    t_T, t_E = jnp.broadcast_to(t_T, shape), jnp.broadcast_to(t_E, shape)
    t_T = jnp.maximum(jnp.where(jnp.isfinite(t_T), t_T, 0), 0)
    t_E = jnp.maximum(jnp.where(jnp.isfinite(t_E), t_E, 0), 0)
    B, a, wt, we = (jnp.asarray(v).astype(dtype) for v in (pool, alpha, w_T, w_E))
    return t_T, t_E, B, a, wt, we
