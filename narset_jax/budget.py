"""The budget: exact projection of one region's targets onto its feasible set.

Per region Narset picks intensities ``(x_T, x_E)`` subject to

    c(x_T) + c(x_E) <= pool,   x >= 0

with a cost model ``c`` (a [`narset_jax.cost.CostModel`][], selected by name: ``"seed"``,
the design note's non-convex formula and the default, or ``"convex"``).

The projection is solved exactly in closed form by enumerating the smooth pieces of the
budget curve and comparing objectives; see ``docs/budget.md`` for the derivation of every
case. The code here is generic: everything that depends on the cost comes from the model's
methods. Gradients come from the KKT conditions (a ``custom_jvp``), so they are exact away
from the measure-zero set where the argmin jumps between pieces.

This module also re-exports the rest of the budget's public surface: the cost models
([`narset_jax.cost`][]), the global pool ([`narset_jax.global_pool`][]) and the fixed sum
([`narset_jax.fixed_sum`][]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.budget_common import (
    Allocation,
    GlobalAllocation,
    check_positive,
    check_weights,
    prepare,
)
from narset_jax.cost import (
    COST_MODELS,
    COSTS,
    ConvexCost,
    CostModel,
    QuadraticOverdriveCost,
    SeedCost,
    cost_model,
    overdrive_cost,
)
from narset_jax.fixed_sum import project_fixed_sum
from narset_jax.global_pool import lagrangian_parts, project_global_pool

__all__ = [
    "COSTS",
    "COST_MODELS",
    "Allocation",
    "ConvexCost",
    "CostModel",
    "GlobalAllocation",
    "QuadraticOverdriveCost",
    "SeedCost",
    "cost_model",
    "overdrive_cost",
    "project_budget",
    "project_global_pool",
    "project_fixed_sum",
    "map_blocks",
    "project_sparse",
]


# ---------------------------------------------------------------------------------------
# Candidates on the budget curve. ``cost`` is a CostModel throughout; ``u = x - 1 >= 0`` is
# the overdrive amount and ``g(u) = c(1 + u) - 1`` the overdrive part of the cost.


def _over_lin(t_o, t_l, w_o, w_l, B, alpha, cost):
    """Candidates on the piece where one agent is in overdrive and the other linear.

    With ``x_o = 1 + u`` and ``x_l = B - 1 - g(u)``, the piece's minimum is at one of the
    model's two stationary points clipped to the piece (docs/budget.md, case OL).
    """
    a = t_o - 1
    C = B - 1 - t_l
    lo_root, hi_root = cost.over_linear_roots(a, C, w_o, w_l, alpha)
    u_lo = cost.overdrive_inverse(jnp.maximum(B - 2, 0), alpha)
    u_hi = cost.overdrive_inverse(jnp.maximum(B - 1, 0), alpha)
    valid = B > 1
    out = []
    for r in (lo_root, hi_root):
        u = jnp.clip(r, u_lo, u_hi)
        # At the upper end the linear agent is exactly at 0 (not at rounding noise,
        # which would make it look active to the KKT price).
        x_l = jnp.where(r >= u_hi, 0, jnp.maximum(B - 1 - cost.overdrive(u, alpha), 0))
        out.append((1 + u, x_l, valid))
    return out


def _boundary_candidates(t_T, t_E, w_T, w_E, B, alpha, cost, weighted):
    """Every candidate minimiser on the budget curve ``c(x_T) + c(x_E) = B``."""
    X = cost.inverse(B, alpha)
    J = cost.inverse(B - 1, alpha)
    zero = jnp.zeros_like(B)
    one = jnp.ones_like(B)
    always = jnp.ones_like(B, dtype=bool)
    # Axis endpoints and the junctions where one agent sits exactly at x = 1.
    cands = [(X, zero, always), (zero, X, always), (one, J, B >= 1), (J, one, B >= 1)]
    # Both linear: the line x_T + x_E = B, clipped to the piece.
    x_lin = (w_T * t_T + w_E * (B - t_E)) / (w_T + w_E)
    x_lin = jnp.clip(x_lin, jnp.maximum(B - 1, 0), jnp.minimum(B, 1))
    cands.append((x_lin, B - x_lin, B <= 2))
    # One in overdrive, the other linear (both ways round).
    cands += _over_lin(t_T, t_E, w_T, w_E, B, alpha, cost)
    swapped = _over_lin(t_E, t_T, w_E, w_T, B, alpha, cost)
    cands += [(xT, xE, ok) for xE, xT, ok in swapped]
    # Both in overdrive.
    cands += cost.both_overdrive_candidates(t_T, t_E, w_T, w_E, B, alpha, weighted)
    return cands


# Beyond this target magnitude the cubic's coefficients would overflow when cubed; the
# target is shrunk radially to it (the projection of a far target converges to the support
# point in its direction at rate O(1/|t|), far below the working precision here).
_TARGET_CAP = {np.dtype(np.float32): 1e8, np.dtype(np.float64): 1e30, np.dtype(np.float16): 1e3}


def _solve_region(cost, weighted, t_T, t_E, B, alpha, w_T, w_E):
    """Forward solve. Inputs are broadcast, finite-sanitised and clipped at 0."""
    feasible = cost.cost(t_T, alpha) + cost.cost(t_E, alpha) <= B
    cap = _TARGET_CAP.get(np.dtype(t_T.dtype), 1e8)
    big = jnp.maximum(t_T, t_E)
    shrink = jnp.where(big > cap, cap / jnp.where(big > cap, big, 1), 1)
    s_T, s_E = t_T * shrink, t_E * shrink
    xs_T, xs_E, fs = [], [], []
    shape = s_T.shape
    for xT, xE, ok in _boundary_candidates(s_T, s_E, w_T, w_E, B, alpha, cost, weighted):
        # Objective minus the constant 1/2 sum w t^2: no overflow for huge targets.
        f = w_T * xT * (0.5 * xT - s_T) + w_E * xE * (0.5 * xE - s_E)
        fs.append(jnp.broadcast_to(jnp.where(ok, f, jnp.inf), shape))
        xs_T.append(jnp.broadcast_to(xT, shape))
        xs_E.append(jnp.broadcast_to(xE, shape))
    # One argmin, then both coordinates from the same candidate. (A separate `where`
    # chain per coordinate let XLA evaluate the objective in two fusions whose rounding
    # differed at near-ties, pairing x_T of one candidate with x_E of another.)
    k = jnp.argmin(jnp.stack(fs), axis=0)[None]
    best_T = jnp.take_along_axis(jnp.stack(xs_T), k, axis=0)[0]
    best_E = jnp.take_along_axis(jnp.stack(xs_E), k, axis=0)[0]
    # The feasible set is downward closed, so the projection never exceeds the target. At
    # near-ties (objectives equal to working precision) the argmin could pick a candidate
    # a rounding error above it, e.g. the kink (1, 1) for t = (1 - 6e-12, 1 + 1e-10); the
    # clip is exact and keeps the point feasible.
    best_T = jnp.minimum(best_T, t_T)
    best_E = jnp.minimum(best_E, t_E)
    x_T = jnp.where(feasible, t_T, best_T)
    x_E = jnp.where(feasible, t_E, best_E)
    price = jnp.where(feasible, 0, _price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost))
    return x_T, x_E, price


def _price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost):
    """Least-squares KKT multiplier over the coordinates with ``x > 0``."""
    cT = jnp.where(x_T > 0, cost.dcost(x_T, alpha), 0)
    cE = jnp.where(x_E > 0, cost.dcost(x_E, alpha), 0)
    num = w_T * (t_T - x_T) * cT + w_E * (t_E - x_E) * cE
    den = cT * cT + cE * cE
    return jnp.maximum(num / jnp.where(den > 0, den, 1), 0)


@jax.custom_jvp
def _project_core(cost, weighted, t_T, t_E, B, alpha, w_T, w_E):
    return _solve_region(cost, weighted, t_T, t_E, B, alpha, w_T, w_E)


_project_core = jax.custom_jvp(_project_core.fun, nondiff_argnums=(0, 1))


@_project_core.defjvp
def _project_core_jvp(cost, weighted, primals, tangents):
    """Tangents from the KKT system on the active set (docs/budget.md, "Gradients")."""
    t_T, t_E, B, alpha, w_T, w_E = primals
    dt_T, dt_E, dB, dalpha, dw_T, dw_E = tangents
    x_T, x_E, lam = _solve_region(cost, weighted, t_T, t_E, B, alpha, w_T, w_E)
    active = lam > 0
    aT, aE = x_T > 0, x_E > 0
    oT, oE = jnp.maximum(x_T - 1, 0), jnp.maximum(x_E - 1, 0)
    cT = jnp.where(aT, cost.dcost(x_T, alpha), 0)
    cE = jnp.where(aE, cost.dcost(x_E, alpha), 0)
    hT = w_T + cost.curvature_term(lam, x_T, alpha)
    hE = w_E + cost.curvature_term(lam, x_E, alpha)
    rT = w_T * dt_T + dw_T * (t_T - x_T) - cost.alpha_slope_term(lam, oT, alpha) * dalpha
    rE = w_E * dt_E + dw_E * (t_E - x_E) - cost.alpha_slope_term(lam, oE, alpha) * dalpha
    s = dB - (cost.overdrive_dalpha(oT, alpha) + cost.overdrive_dalpha(oE, alpha)) * dalpha
    den = cT * cT / hT + cE * cE / hE
    dlam = (cT * rT / hT + cE * rE / hE - s) / jnp.where(den > 0, den, 1)
    dx_T_act = jnp.where(aT, (rT - cT * dlam) / hT, 0)
    dx_E_act = jnp.where(aE, (rE - cE * dlam) / hE, 0)
    dx_T = jnp.where(active, dx_T_act, jnp.where(t_T > 0, dt_T, 0))
    dx_E = jnp.where(active, dx_E_act, jnp.where(t_E > 0, dt_E, 0))
    dlam = jnp.where(active, dlam, 0)
    return (x_T, x_E, lam), (dx_T, dx_E, dlam)


def project_budget(
    target_T, target_E, *, pool=1.5, alpha=2.0, cost="seed", weights=None, block_size="auto",
    sparse="auto",
):
    """Exact weighted Euclidean projection onto ``{c(x_T) + c(x_E) <= pool, x >= 0}``.

    Solves ``min 1/2 sum_i w_i (x_i - t_i)^2`` over the feasible set in closed form (no
    iterative solver, except a fixed-count safeguarded Newton on the both-in-overdrive
    piece when the weights differ). Feasible targets are returned unchanged (after
    clipping at 0). A non-finite target component is treated as 0.

    **Arguments:**

    - ``target_T``, ``target_E``: desired intensities; arrays of any broadcastable shape.
    - ``pool``: the budget ``B > 0`` (default 1.5, the note's pool).
    - ``alpha``: overdrive curvature ``> 0`` (default 2, which reproduces the note's
      numbers under the seed cost).
    - ``cost``: ``"seed"``, ``"convex"`` or a [`narset_jax.cost.CostModel`][].
    - ``weights``: ``(w_T, w_E)``, each ``> 0``, or ``None`` for equal weights.
    - ``block_size``: see :func:`map_blocks` (``"auto"``: cache-sized blocks for large
      inputs; ``None``: one fused computation).
    - ``sparse``: project only the regions whose target is infeasible, gathered into a
      buffer of this many (an int), with the dense projection as the fallback when more
      bind; ``"auto"``: a buffer of an eighth of the regions for a 1-D input of at least
      ``2**10`` regions with scalar ``pool``, ``alpha`` and weights, else dense; ``None``:
      always dense. Every region's result is the dense path's, bit for bit (see
      :func:`project_sparse`). Under ``jit`` with regions sharded across devices, call
      this inside ``shard_map`` (as ``sims.sharding`` does), or pass ``sparse=None``: the
      gather's index search would otherwise span devices.

    **Returns:** an :class:`Allocation` with ``x_T``, ``x_E``, ``spent`` and ``price``.

    ```python
    >>> a = project_budget(1.5, 0.5)
    >>> float(a.x_T), float(a.x_E)  # doctest: +SKIP
    ```
    """
    cost = cost_model(cost)
    check_positive("pool", pool)
    check_positive("alpha", alpha)
    check_weights(weights)
    t_T, t_E, B, a, w_T, w_E = prepare(target_T, target_E, pool, alpha, weights)
    weighted = weights is not None

    def solve(t_T, t_E, B, a, w_T, w_E):
        x_T, x_E, price = _project_core(cost, weighted, t_T, t_E, B, a, w_T, w_E)
        return Allocation(x_T, x_E, cost.cost(x_T, a) + cost.cost(x_E, a), price)

    capacity = _sparse_capacity(sparse, t_T, B, a, w_T, w_E)
    if capacity is None:
        return map_blocks(solve, t_T, t_E, B, a, w_T, w_E, block_size=block_size)
    return project_sparse(solve, cost, capacity, t_T, t_E, B, a, w_T, w_E,
                          block_size=block_size)


# ``sparse="auto"``: inputs of at least this many regions use a gathered buffer of
# 1 / _SPARSE_SHARE of them. In steady state a few per cent of regions bind (4 % in
# ``steady`` and ``crisis``); docs/scaling.md section 4 measures the trade.
_SPARSE_MIN = 1 << 10
_SPARSE_SHARE = 8
# How the sparse path finds the binding regions: "scan" (below) or "nonzero"
# (``jnp.nonzero(size=...)``, the same indices; benchmarks/step/changes.py compares them).
_INDEX_SEARCH = "scan"


def _first_indices(mask, size):
    """The indices of the first ``size`` true entries of a 1-D ``mask``, in order, padded
    with ``len(mask)``: ``jnp.nonzero(mask, size=size, fill_value=len(mask))``, computed
    by a log-depth prefix sum and one scatter (XLA's CPU ``cumsum``, which ``nonzero``
    uses, took 2 to 4 times as long here)."""
    n = mask.shape[0]
    if _INDEX_SEARCH == "nonzero":
        return jnp.nonzero(mask, size=size, fill_value=n)[0]
    rank = jax.lax.associative_scan(jnp.add, mask.astype(jnp.int32)) - 1
    slot = jnp.where(mask, rank, size)  # ranks are distinct; ``size`` and beyond drop
    out = jnp.full((size,), n, jnp.int32)
    return out.at[slot].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


def _sparse_capacity(sparse, t_T, B, a, w_T, w_E):
    """The buffer size of the sparse path, or ``None`` for the dense one."""
    if sparse is None:
        return None
    if t_T.ndim != 1 or any(jnp.size(v) != 1 for v in (B, a, w_T, w_E)):
        return None
    n = t_T.shape[0]
    if sparse == "auto":
        return max(n // _SPARSE_SHARE, 1) if n >= _SPARSE_MIN else None
    if isinstance(sparse, bool) or not isinstance(sparse, int | np.integer) or sparse < 1:
        raise ValueError(f"sparse must be 'auto', None or a positive int, got {sparse!r}")
    return min(int(sparse), n)


def project_sparse(solve, cost, capacity, t_T, t_E, B, a, w_T, w_E, *, block_size="auto"):
    """``solve`` (the dense per-region projection, returning an :class:`Allocation`) on
    only the regions whose target is infeasible.

    The infeasible regions (at most ``capacity``; the first ``capacity`` of them, as
    ``jnp.nonzero(size=capacity)`` would find them) are
    gathered into a fixed-size buffer, projected there and scattered back; a feasible
    target is its own projection (price 0, spent its cost). When more than ``capacity``
    regions bind, a ``lax.cond`` runs the dense projection instead. A region's result is
    the same arithmetic on the same inputs either way, so it does not depend on the path,
    the capacity, or which other regions share its batch or device (tested bit for bit in
    ``tests/test_budget_sparse.py``). Under ``vmap`` (where the cond would become a
    select running both paths) the dense path runs alone; tangents are the dense path's.

    ``t_T``, ``t_E``: ``[N]``, sanitised; ``B``, ``a``, ``w_T``, ``w_E``: scalars.
    """

    def dense(t_T, t_E, B, a, w_T, w_E):
        return map_blocks(solve, t_T, t_E, B, a, w_T, w_E, block_size=block_size)

    def sparse(t_T, t_E, B, a, w_T, w_E):
        bind = ~(cost.cost(t_T, a) + cost.cost(t_E, a) <= B)

        def few(t_T, t_E, B, a, w_T, w_E):
            idx = _first_indices(bind, capacity)
            part = map_blocks(solve, t_T.at[idx].get(mode="fill", fill_value=0),
                              t_E.at[idx].get(mode="fill", fill_value=0), B, a, w_T, w_E,
                              block_size=block_size)
            full = Allocation(t_T, t_E, cost.cost(t_T, a) + cost.cost(t_E, a),
                              jnp.zeros_like(t_T))
            return jax.tree.map(lambda f, p: f.at[idx].set(p, mode="drop"), full, part)

        over = jnp.sum(bind, dtype=jnp.int32) > capacity
        return jax.lax.cond(over, dense, few, t_T, t_E, B, a, w_T, w_E)

    # Under ``vmap`` (a grid over params) the cond's predicate is batched and would become
    # a select running both paths, so a batched call runs the dense path alone. Gradients
    # differentiate the dense path (custom_vmap has no reverse mode of its own); its
    # primal values are the sparse path's, which are the same.
    @jax.custom_batching.custom_vmap
    def forward(*args):
        return sparse(*args)

    @forward.def_vmap
    def _forward_batched(axis_size, in_batched, *args):
        axes = [0 if b else None for b in in_batched]
        out = jax.vmap(dense, in_axes=axes, axis_size=axis_size)(*args)
        return out, jax.tree.map(lambda _: True, out)

    @jax.custom_jvp
    def project(*args):
        return forward(*args)

    @project.defjvp
    def _project_jvp(primals, tangents):
        return forward(*primals), jax.jvp(dense, primals, tangents)[1]

    return project(t_T, t_E, B, a, w_T, w_E)


def map_blocks(fn, *args, block_size="auto"):
    """Apply an elementwise ``fn`` in cache-sized blocks (a ``lax.map`` over blocks).

    XLA's CPU backend does not fuse the projection into one loop: an expensive value
    (a division or square root) with several consumers is materialised, so a large input
    makes ~30 passes over main memory. Processing ``block_size`` elements at a time keeps
    those intermediates in cache (about 1.7x faster at N = 1e6 on the 2-core CPU; see
    ``benchmarks/projection.py``). Inside a closed-loop scan the blocks' stacking and
    slicing cost more than they save below a few 1e5 elements (docs/scaling.md, section
    4), so ``"auto"`` blocks only inputs of more than ``2**18`` elements. Inputs with at
    most ``2 * block_size`` elements, or ``block_size=None``, run unblocked. Under ``jit``
    with regions sharded across devices, call this inside ``shard_map`` (it scans over the
    leading block axis) or pass ``block_size=None``.

    **Arguments:**

    - ``fn``: elementwise function of the ``args`` returning a pytree of arrays with the
      broadcast shape.
    - ``args``: arrays, broadcastable to one shape (scalars are passed through whole).
    - ``block_size``: elements per block, ``"auto"`` (32768 above ``2**18`` elements,
      else unblocked) or ``None`` (no blocking).
    """
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in args))
    n = int(np.prod(shape, dtype=np.int64))
    if block_size == "auto":
        block_size = _BLOCK if n > _UNBLOCKED_MAX else None
    if block_size is None or n <= 2 * block_size:
        return fn(*args)
    nb = -(-n // block_size)
    pad = nb * block_size - n
    blocked = [i for i, x in enumerate(args) if jnp.size(x) > 1]
    stacked = tuple(
        jnp.pad(jnp.broadcast_to(args[i], shape).reshape(-1), (0, pad), mode="edge").reshape(
            nb, block_size
        )
        for i in blocked
    )

    def body(xs):
        full = list(args)
        for i, x in zip(blocked, xs):
            full[i] = x
        return fn(*full)

    out = jax.lax.map(body, stacked)
    return jax.tree.map(lambda o: o.reshape(-1)[:n].reshape(shape), out)


_BLOCK = 32768
_UNBLOCKED_MAX = 1 << 18


# ---------------------------------------------------------------------------------------
# The private entry points that benchmarks/projection.py and sims/numpy_twin.py call by name
# (with the cost as a string or a model): thin wrappers over the code above.


def _solve(cost, weighted, t_T, t_E, B, alpha, w_T, w_E):
    return _solve_region(cost_model(cost), weighted, t_T, t_E, B, alpha, w_T, w_E)


def _cost(x, alpha, cost):
    return cost_model(cost).cost(x, alpha)


def _over_lin_candidates(t_o, t_l, w_o, w_l, B, alpha, cost):
    return _over_lin(t_o, t_l, w_o, w_l, B, alpha, cost_model(cost))


def _radial_candidate(t_T, t_E, B, alpha, cost):
    return cost_model(cost).both_overdrive_candidates(t_T, t_E, None, None, B, alpha, False)


def _kkt_price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost):
    return _price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost_model(cost))


def _lagrangian_parts(t_T, t_E, w_T, w_E, lam, alpha, cost):
    return lagrangian_parts(t_T, t_E, w_T, w_E, lam, alpha, cost_model(cost))
