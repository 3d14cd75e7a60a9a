"""An outside solver agrees with the budget projections on the convex cost.

cvxpy (the ``bench`` extra) solves the same convex programs as conic problems; the
library and the reference in ``reference_budget.py`` must agree with it to 1e-5 in ``x``
and, relatively, in the budget's multiplier (cvxpy's dual value of the budget constraint).
"""

from __future__ import annotations

import functools
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import narset_jax as nj
from narset_jax.testing import reference_budget as rb

cp = pytest.importorskip("cvxpy")

pytestmark = pytest.mark.bench
TOL = 1e-5


@functools.cache
def _problem(n):
    """The projection of n regions onto one shared pool as a parametrised (DPP) cvxpy
    problem, canonicalised once and re-solved for every case:

        min 1/2 sum_i ||sqrt(w_i) x_i - sqrt(w_i) t_i||^2
        s.t. sum over regions of c(x_T) + c(x_E) <= pool,  x >= 0,
        c(x) = x + alpha max(x - 1, 0)^2."""
    x = {k: cp.Variable(n, nonneg=True) for k in "TE"}
    sw = {k: cp.Parameter(n, nonneg=True) for k in "TE"}  # sqrt(w)
    swt = {k: cp.Parameter(n) for k in "TE"}  # sqrt(w) * t
    pool, alpha = cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
    spent = sum(cp.sum(x[k]) + alpha * cp.sum_squares(cp.pos(x[k] - 1)) for k in "TE")
    budget = spent <= pool
    obj = 0.5 * sum(cp.sum_squares(cp.multiply(sw[k], x[k]) - swt[k]) for k in "TE")
    prob = cp.Problem(cp.Minimize(obj), [budget])
    assert prob.is_dcp(dpp=True)
    return prob, x, sw, swt, pool, alpha, budget


def _solve(t_T, t_E, pool, alpha, w_T, w_E):
    """cvxpy's (x_T, x_E, budget multiplier) for [n] arrays sharing one pool."""
    prob, x, sw, swt, P, A, budget = _problem(len(t_T))
    for k, t, w in (("T", t_T, w_T), ("E", t_E, w_E)):
        sw[k].value = np.sqrt(np.broadcast_to(w, np.shape(t)))
        swt[k].value = sw[k].value * t
    P.value, A.value = float(pool), float(alpha)
    # Clarabel with tight tolerances: its defaults leave x off by ~1e-5 on some cases. At
    # 1e-9 it sometimes stops as "optimal_inaccurate"; the comparisons below check the
    # accuracy that matters either way.
    opts = {}
    if "CLARABEL" in cp.installed_solvers():
        opts = dict(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(**opts)
    assert prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), prob.status
    return x["T"].value, x["E"].value, float(np.ravel(budget.dual_value)[0])


def _cases(rng, n):
    pools = np.concatenate(
        [
            rng.uniform(0.1, 1.0, n // 3),
            rng.uniform(1.0, 2.0, n // 3),
            rng.uniform(2.0, 5.0, n - 2 * (n // 3)),
        ]
    )
    alpha = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n))
    t_T, t_E = rng.uniform(-0.5, 4.0, (2, n))
    w_T, w_E = np.exp(rng.uniform(np.log(0.2), np.log(5.0), (2, n)))
    w_T[: n // 2] = w_E[: n // 2] = 1.0
    return t_T, t_E, pools, alpha, w_T, w_E


def test_per_region_convex_agrees_with_cvxpy():
    rng = np.random.default_rng(20240611)
    t_T, t_E, pool, alpha, w_T, w_E = _cases(rng, 36)
    for weights in (None, (w_T, w_E)):
        ones = np.ones_like(t_T)
        wT, wE = (ones, ones) if weights is None else weights
        got = nj.project_budget(t_T, t_E, pool=pool, alpha=alpha, cost="convex", weights=weights)
        for k in range(len(t_T)):
            xT, xE, lam = _solve(t_T[k : k + 1], t_E[k : k + 1], pool[k], alpha[k], wT[k], wE[k])
            ref = rb.solve_region(t_T[k], t_E[k], pool[k], alpha[k], "convex", wT[k], wE[k])
            where = f"case {k}: t=({t_T[k]}, {t_E[k]}) pool={pool[k]} alpha={alpha[k]}"
            for x, y in (
                (got.x_T[k], xT[0]),
                (got.x_E[k], xE[0]),
                (ref.x_T, xT[0]),
                (ref.x_E, xE[0]),
            ):
                assert abs(float(x) - y) <= TOL, (where, float(x), y)
            for price in (float(got.price[k]), ref.price):
                assert abs(price - max(lam, 0.0)) <= TOL * max(1.0, lam), (where, price, lam)


def test_global_pool_convex_agrees_with_cvxpy():
    rng = np.random.default_rng(7)
    for trial in range(8):
        n = 6
        t_T, t_E = rng.uniform(-0.5, 3.0, (2, n))
        w_T, w_E = np.exp(rng.uniform(np.log(0.2), np.log(5.0), (2, n)))
        if trial % 2:
            w_T[:] = w_E[:] = 1.0
        alpha = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
        need = float(np.sum(rb.cost_np(np.maximum(np.concatenate([t_T, t_E]), 0), alpha, "convex")))
        pool = need * float(rng.uniform(0.2, 0.9))
        xT, xE, lam = _solve(t_T, t_E, pool, alpha, w_T, w_E)
        got = nj.project_global_pool(
            jnp.asarray(t_T),
            jnp.asarray(t_E),
            pool_total=pool,
            alpha=alpha,
            cost="convex",
            weights=(w_T, w_E),
        )
        ref = rb.solve_global_convex(t_T, t_E, pool, alpha, w_T, w_E)
        for a in (got, ref):
            np.testing.assert_allclose(np.asarray(a.x_T), xT, rtol=0, atol=TOL)
            np.testing.assert_allclose(np.asarray(a.x_E), xE, rtol=0, atol=TOL)
            assert abs(float(a.price) - lam) <= TOL * max(1.0, lam), (float(a.price), lam)
