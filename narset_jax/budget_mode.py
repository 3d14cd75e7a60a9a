"""The budget stage of a decision window: one dispatch on the params' budget mode.

``NarsetParams.budget`` picks how the targets are made feasible:

- ``"region"``: every region has its own pool ``pool`` ([`narset_jax.budget.project_budget`][]);
- ``"global"``: one pool ``pool * N`` shared by the ``N`` regions of the last axis
  ([`narset_jax.global_pool.project_global_pool`][]); its one shadow price is repeated in
  every region;
- ``"fixed_sum"``: the note's original ``x_T + x_E = 1``
  ([`narset_jax.fixed_sum.project_fixed_sum`][]).

The controller's step and the simulator's baselines both call [`project_budget_mode`][].
"""

from __future__ import annotations

import jax.numpy as jnp

from narset_jax.budget import project_budget
from narset_jax.cost import cost_model
from narset_jax.fixed_sum import project_fixed_sum
from narset_jax.global_pool import project_global_pool

__all__ = ["BUDGET_MODES", "project_budget_mode"]


def _region(params, t_T, t_E):
    a = project_budget(t_T, t_E, pool=params.pool, alpha=params.alpha,
                       cost=cost_model(params.cost))
    return a.x_T, a.x_E, a.spent, a.price


def _global(params, t_T, t_E):
    n = t_T.shape[-1]
    g = project_global_pool(
        t_T, t_E, pool_total=params.pool * n, alpha=params.alpha, cost=cost_model(params.cost)
    )
    return g.x_T, g.x_E, g.spent, jnp.broadcast_to(g.price, t_T.shape)


def _fixed_sum(params, t_T, t_E):
    a = project_fixed_sum(t_T, t_E)
    return a.x_T, a.x_E, a.spent, a.price


_MODES = {"region": _region, "global": _global, "fixed_sum": _fixed_sum}
BUDGET_MODES = tuple(_MODES)


def project_budget_mode(params, t_T, t_E):
    """Project the targets with the budget mode, pool, ``alpha`` and cost model of
    ``params``.

    **Arguments:**

    - ``params``: a [`narset_jax.NarsetParams`][] (or anything with ``budget``, ``pool``,
      ``alpha`` and ``cost``), its leaves already in the targets' dtype; ``budget`` and
      ``cost`` are static (Python strings, or a [`narset_jax.cost.CostModel`][] for
      ``cost``).
    - ``t_T``, ``t_E``: the targets, ``[..., N]`` (regions on the last axis).

    **Returns:** ``(x_T, x_E, spent, price)``, each with the targets' shape; ``price`` is per
    region (the global pool's scalar price, repeated).

    **Raises:** ``ValueError`` for an unknown budget mode.
    """
    mode = _MODES.get(params.budget)
    if mode is None:
        raise ValueError(f"budget must be one of {BUDGET_MODES}, got {params.budget!r}")
    return mode(params, t_T, t_E)
