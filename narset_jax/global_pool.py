"""The global pool: one budget shared by all regions, one multiplier.

    sum_r c(x_T,r) + c(x_E,r) <= pool_total

Given the multiplier ``lambda`` the Lagrangian separates by region and coordinate, and the
cost model gives each coordinate's minimiser in closed form
([`narset_jax.cost.CostModel.given_price`][]); ``lambda`` is found by a fixed-count
bisection on the total spend, whose only cross-region operation is one ``sum`` (an
all-reduce when the regions are sharded). See ``docs/budget.md`` section 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from narset_jax.budget_common import GlobalAllocation, check_positive, check_weights, prepare
from narset_jax.cost import cost_model

__all__ = ["lagrangian_parts", "project_global_pool"]


def lagrangian_parts(t_T, t_E, w_T, w_E, lam, alpha, cost):
    """Each coordinate's minimiser given the multiplier ``lam`` (``cost`` a
    [`narset_jax.cost.CostModel`][]), and the spend: ``(x_T, x_E, c(x_T) + c(x_E))``."""
    x_T = cost.given_price(t_T, w_T, lam, alpha)
    x_E = cost.given_price(t_E, w_E, lam, alpha)
    spent = cost.cost(x_T, alpha) + cost.cost(x_E, alpha)
    return x_T, x_E, spent


def project_global_pool(
    target_T, target_E, *, pool_total, alpha=2.0, cost="seed", weights=None, iters=None
):
    """Projection onto one pool shared by all regions: ``sum_r c(x_T,r) + c(x_E,r) <= pool_total``.

    The Lagrangian separates by region given the multiplier ``lambda``; each region's
    minimiser is closed form. ``lambda`` is found by a fixed-iteration bisection on the
    total spend (a cross-device ``sum`` when the regions are sharded), and the returned
    point is the one on the feasible side of the bracket, so it is always feasible.

    The convex cost is solved exactly to the bisection's tolerance. The seed cost is not
    convex (nor is any model with ``convex = False``), so the total spend can jump as
    ``lambda`` varies; the returned point is feasible and ``gap`` reports the remaining
    duality gap.

    **Arguments:**

    - ``target_T``, ``target_E``: ``[N]`` targets (any shape; reductions are over all).
    - ``pool_total``: the shared budget, ``> 0``.
    - ``alpha``, ``cost``, ``weights``: as in :func:`narset_jax.budget.project_budget`.
    - ``iters``: bisection steps (default 60 in float64, 32 in float32).

    **Returns:** a :class:`GlobalAllocation`. Gradients (through the implicit function
    theorem on the spend equation) flow to targets, ``pool_total``, ``alpha`` and weights.
    """
    cost = cost_model(cost)
    check_positive("pool_total", pool_total)
    check_positive("alpha", alpha)
    check_weights(weights)
    t_T, t_E, _, a, w_T, w_E = prepare(target_T, target_E, 1.0, alpha, weights)
    dtype = t_T.dtype
    B = jnp.asarray(pool_total, dtype)
    if iters is None:
        iters = 60 if dtype == jnp.float64 else 32

    def total(lam):
        return jnp.sum(lagrangian_parts(t_T, t_E, w_T, w_E, lam, a, cost)[2])

    sg = jax.lax.stop_gradient
    tT0, tE0, wT0, wE0, a0, B0 = (sg(v) for v in (t_T, t_E, w_T, w_E, a, B))

    def total0(lam):
        return jnp.sum(lagrangian_parts(tT0, tE0, wT0, wE0, lam, a0, cost)[2])

    need = total0(jnp.zeros((), dtype)) > B0
    hi = jnp.max(jnp.maximum(wT0 * tT0, wE0 * tE0)) * (2 + 1 / jnp.min(a0)) + 1
    for _ in range(4):  # make sure the upper end is feasible
        hi = jnp.where(total0(hi) > B0, 2 * hi, hi)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        over = total0(mid) > B0
        return jnp.where(over, mid, lo), jnp.where(over, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros((), dtype), hi))
    lam_star = jnp.where(need, hi, 0)
    # Implicit differentiation: value lam_star, derivative -(dS/dtheta - dB) / (dS/dlam).
    slope = jax.jvp(total0, (lam_star,), (jnp.ones((), dtype),))[1]
    slope = jnp.where(slope < 0, slope, -1)
    corr = -(total(lam_star) - B) / slope
    dlam = corr - sg(corr)
    if not cost.convex:
        # The spend can jump down across the pool inside the final bracket (a coordinate
        # switches piece there): then the multiplier sits at that switch, not where the
        # spend equals the pool, and moves with the switching coordinates' tie
        # ``margin(lam, theta) = 0``: dlam = -(dm/dtheta) / (dm/dlam).
        margin = lambda l, t, w, a: cost.piece_margin(t, w, l, a)  # noqa: E731
        jumps = [
            (margin(lo, t0, w0, a0) < 0) != (margin(hi, t0, w0, a0) < 0)
            for t0, w0 in ((tT0, wT0), (tE0, wE0))
        ]
        jump = need & (jumps[0].any() | jumps[1].any())
        num, den = jnp.zeros((), dtype), jnp.zeros((), dtype)
        for sw, t, w, t0, w0 in zip(jumps, (t_T, t_E), (w_T, w_E), (tT0, tE0), (wT0, wE0)):
            m, dm = jax.jvp(
                lambda l, t0=t0, w0=w0: margin(l, t0, w0, a0), (lam_star,), (jnp.ones((), dtype),)
            )
            num = num + jnp.sum(jnp.where(sw, margin(lam_star, t, w, a) - m, 0))
            den = den + jnp.sum(jnp.where(sw, dm, 0))
        tie = -num / jnp.where(den != 0, den, 1)
        dlam = jnp.where(jump, tie, dlam)
    lam = lam_star + jnp.where(need, dlam, 0)
    x_T, x_E, spent = lagrangian_parts(t_T, t_E, w_T, w_E, lam, a, cost)
    # With lambda = 0 the seed cost's piece comparison is decided by rounding for targets
    # just above 1; the exact answer is the (clipped) target itself.
    x_T = jnp.where(need, x_T, t_T)
    x_E = jnp.where(need, x_E, t_E)
    spent = cost.cost(x_T, a) + cost.cost(x_E, a)

    def dual(l):
        xT, xE, sp = lagrangian_parts(tT0, tE0, wT0, wE0, l, a0, cost)
        f = 0.5 * jnp.sum(wT0 * (xT - tT0) ** 2 + wE0 * (xE - tE0) ** 2)
        return f + l * (jnp.sum(sp) - B0)

    primal = 0.5 * jnp.sum(wT0 * (sg(x_T) - tT0) ** 2 + wE0 * (sg(x_E) - tE0) ** 2)
    gap = jnp.maximum(primal - jnp.maximum(dual(lo), dual(sg(lam_star))), 0)
    return GlobalAllocation(x_T, x_E, spent, lam, gap)
