"""An outside solver agrees with the budget projections on the convex cost.

cvxpy (the ``bench`` extra) solves the same convex programs as conic problems; the
library and the reference in ``reference_budget.py`` must agree with it to 1e-5 in ``x``
and, relatively, in the budget's multiplier (cvxpy's dual value of the budget constraint).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import reference_budget as rb

import narset_jax as nj

cp = pytest.importorskip("cvxpy")

pytestmark = pytest.mark.bench
TOL = 1e-5


def _solve(t_T, t_E, pool, alpha, w_T, w_E):
    """min 1/2 sum w (x - t)^2  s.t.  sum over regions of c(x_T) + c(x_E) <= pool, x >= 0,
    c(x) = x + alpha max(x - 1, 0)^2, for [N] arrays; returns (x_T, x_E, multiplier)."""
    n = len(t_T)
    xT, xE = cp.Variable(n, nonneg=True), cp.Variable(n, nonneg=True)

    def c(x):
        return cp.sum(x) + alpha * cp.sum_squares(cp.pos(x - 1))

    budget = c(xT) + c(xE) <= pool
    obj = 0.5 * (
        cp.sum(cp.multiply(w_T, cp.square(xT - t_T)))
        + cp.sum(cp.multiply(w_E, cp.square(xE - t_E)))
    )
    prob = cp.Problem(cp.Minimize(obj), [budget])
    solver = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver=solver)
    assert prob.status == cp.OPTIMAL, prob.status
    return xT.value, xE.value, float(np.ravel(budget.dual_value)[0])


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
