"""The cost-model interface (``narset_jax.cost``): both built-in models against their
formulas and c' against finite differences, the name registry, the budget-mode dispatch,
and a third model written as one new class that the projections accept, checked against a
dense search on its budget curve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest

import narset_jax as nj
from narset_jax.budget_mode import BUDGET_MODES, project_budget_mode
from narset_jax.budget_pieces import circle_candidates, cubic_extreme_roots
from narset_jax.cost import COST_MODELS, CostModel, cost_model

ALPHAS = [0.5, 2.0, 7.0]
SLOPE = 0.5  # the third model's overdrive slope at x = 1+


class HalfSlopeCost(CostModel):
    """c(x) = x on [0, 1]; 1 + u/2 + alpha u^2 above (u = x - 1). Its slope drops from 1 to
    1/2 at x = 1, so it is not convex, like the seed cost, but differently."""

    name = "half_slope"
    convex = False

    def cost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return jnp.minimum(x, 1) + SLOPE * over + alpha * over * over

    def dcost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return jnp.where(x > 1, SLOPE + 2 * alpha * over, jnp.ones_like(x))

    def overdrive(self, u, alpha):
        return SLOPE * u + alpha * u * u

    def overdrive_inverse(self, y, alpha):
        return 2 * y / (SLOPE + jnp.sqrt(SLOPE * SLOPE + 4 * alpha * y))

    def over_linear_roots(self, a, C, w_o, w_l, alpha):
        # f'(u) = w_o (u - a) - w_l g'(u) (C - g(u)) with g = s u + alpha u^2:
        # 2 alpha^2 w_l u^3 + 3 alpha s w_l u^2 + (w_o - w_l (2 alpha C - s^2)) u
        #   - (w_o a + w_l s C)
        k3 = 2 * alpha * alpha * w_l
        b = 3 * alpha * SLOPE * w_l / k3
        c = (w_o - w_l * (2 * alpha * C - SLOPE * SLOPE)) / k3
        d = -(w_o * a + w_l * SLOPE * C) / k3
        return cubic_extreme_roots(b, c, d)

    def circle(self, B, alpha):
        h = SLOPE / (2 * alpha)
        return h, jnp.sqrt(jnp.maximum((B - 2) / alpha + 2 * h * h, 0))

    def both_overdrive_candidates(self, t_T, t_E, w_T, w_E, B, alpha, weighted):
        return circle_candidates(self, t_T, t_E, w_T, w_E, B, alpha, weighted)

    def curvature_term(self, lam, x, alpha):
        return lam * 2 * alpha * (x > 1)

    def overdrive_dalpha(self, u, alpha):
        return u * u

    def alpha_slope_term(self, lam, u, alpha):
        return lam * 2 * u

    def overdrive_given_price(self, t, w, lam, alpha):
        return 1 + jnp.maximum(w * (t - 1) - lam * SLOPE, 0) / (w + 2 * alpha * lam)


# Reference formulas in NumPy, written from the definitions (not from the classes).
def _c_ref(name, x, alpha):
    u = np.maximum(x - 1, 0)
    if name == "seed":
        return np.where(x <= 1, x, 1 + alpha * u * u)
    if name == "convex":
        return x + alpha * u * u
    return np.where(x <= 1, x, 1 + SLOPE * u + alpha * u * u)


def _cinv_ref(name, y, alpha):
    """x >= 0 with c(x) = y (y >= 0)."""
    s = {"seed": 0.0, "convex": 1.0, "half_slope": SLOPE}[name]
    z = np.maximum(y - 1, 0)
    u = (-s + np.sqrt(s * s + 4 * alpha * z)) / (2 * alpha)
    return np.where(y <= 1, np.maximum(y, 0), 1 + u)


MODELS = {"seed": nj.SeedCost(), "convex": nj.ConvexCost(), "half_slope": HalfSlopeCost()}
GRID = np.concatenate([np.linspace(0, 4, 801), [1 - 1e-9, 1 + 1e-9, 1e-12]])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("alpha", ALPHAS)
def test_cost_matches_its_formula(name, alpha):
    model = MODELS[name]
    got = np.asarray(model.cost(jnp.asarray(GRID), alpha))
    np.testing.assert_allclose(got, _c_ref(name, GRID, alpha), rtol=1e-15, atol=1e-15)
    if name in COST_MODELS:
        by_name = np.asarray(nj.overdrive_cost(GRID, alpha, name))
        np.testing.assert_array_equal(by_name, got)
    for dtype in (np.float32, np.float64):
        assert nj.overdrive_cost(GRID.astype(dtype), alpha, model).dtype == dtype


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("alpha", ALPHAS)
def test_dcost_matches_finite_differences(name, alpha):
    model = MODELS[name]
    x = GRID[np.abs(GRID - 1) > 1e-3]
    h = 1e-6
    fd = (_c_ref(name, x + h, alpha) - _c_ref(name, x - h, alpha)) / (2 * h)
    got = np.asarray(model.dcost(jnp.asarray(x), alpha))
    np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-7)
    # At the kink c' is the left derivative, 1.
    assert float(model.dcost(jnp.asarray(1.0), alpha)) == 1.0


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("alpha", ALPHAS)
def test_pieces_agree_with_the_cost(name, alpha):
    """g, its inverse, c^{-1}, the gradient terms and the price-given minimiser are
    consistent with c (checked with JAX autodiff of ``cost`` and a dense grid)."""
    model = MODELS[name]
    u = jnp.asarray(np.linspace(0, 3, 301))
    g = model.overdrive(u, alpha)
    np.testing.assert_allclose(g, model.cost(1 + u, alpha) - 1, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(model.overdrive_inverse(g, alpha), u, rtol=1e-12, atol=1e-12)
    y = jnp.asarray(np.linspace(0, 6, 601))
    np.testing.assert_allclose(model.inverse(y, alpha), _cinv_ref(name, np.asarray(y), alpha),
                               rtol=1e-12, atol=1e-12)
    x = 1 + u[1:]
    d2 = jax.vmap(jax.grad(jax.grad(model.cost)), (0, None))(x, alpha)
    np.testing.assert_allclose(model.curvature_term(3.0, x, alpha), 3.0 * d2, rtol=1e-12)
    dca = jax.vmap(jax.grad(model.cost, argnums=1), (0, None))(x, alpha)
    np.testing.assert_allclose(model.overdrive_dalpha(x - 1, alpha), dca, rtol=1e-12)
    dsa = jax.vmap(jax.grad(model.dcost, argnums=1), (0, None))(x, alpha)
    np.testing.assert_allclose(model.alpha_slope_term(3.0, x - 1, alpha), 3.0 * dsa,
                               rtol=1e-12)
    # The price-given minimiser over x >= 0 against a dense grid.
    xs = np.linspace(0, 5, 50001)
    for t, w, lam in [(0.4, 1.0, 0.1), (1.8, 2.0, 0.3), (3.0, 0.5, 0.05), (1.1, 1.0, 0.5)]:
        f = 0.5 * w * (xs - t) ** 2 + lam * _c_ref(name, xs, alpha)
        got = float(model.given_price(jnp.asarray(t), w, lam, alpha))
        f_got = 0.5 * w * (got - t) ** 2 + lam * _c_ref(name, got, alpha)
        assert f_got <= f.min() + 1e-12


@pytest.mark.parametrize("name", list(MODELS))
def test_over_linear_roots_are_stationary(name):
    model = MODELS[name]
    rng = np.random.default_rng(0)
    a, C = rng.uniform(-1, 2, 200), rng.uniform(-1, 2, 200)
    w_o, w_l, alpha = rng.uniform(0.2, 4, 200), rng.uniform(0.2, 4, 200), 2.0
    lo, hi = model.over_linear_roots(*(jnp.asarray(v) for v in (a, C, w_o, w_l)), alpha)

    gprime = jax.vmap(jax.grad(model.overdrive), (0, None))
    for r in (lo, hi):
        g, gp = model.overdrive(r, alpha), gprime(r, alpha)
        fprime = w_o * (r - a) - w_l * gp * (C - g)
        scale = w_o * (np.abs(r) + np.abs(a)) + w_l * np.abs(gp) * (np.abs(C) + np.abs(g))
        assert np.all(np.abs(fprime) <= 1e-12 * scale)
    assert np.all(np.asarray(lo) <= np.asarray(hi))


# ---------------------------------------------------------------------------------------
# The registry.


def test_registry_names_and_objects():
    assert nj.COSTS == ("seed", "convex") == tuple(COST_MODELS)
    assert cost_model("seed") == nj.SeedCost() and isinstance(cost_model("seed"), nj.SeedCost)
    assert isinstance(cost_model("convex"), nj.ConvexCost)
    model = HalfSlopeCost()
    assert cost_model(model) is model
    for name, cls in COST_MODELS.items():
        assert cls.name == name
    assert not nj.SeedCost.convex and nj.ConvexCost.convex
    # Models are static configuration: hashable, equal by type.
    assert hash(nj.SeedCost()) == hash(nj.SeedCost()) and nj.SeedCost() != nj.ConvexCost()


@pytest.mark.parametrize("bad", ["cubic", "Seed", None, 3, nj.SeedCost])
def test_registry_rejects_unknown(bad):
    with pytest.raises(ValueError, match="cost must be one of"):
        cost_model(bad)
    with pytest.raises(ValueError, match="cost"):
        nj.project_budget(1.0, 1.0, cost=bad)
    with pytest.raises(ValueError, match="cost"):
        nj.overdrive_cost(1.0, 2.0, bad)


def test_the_interface_is_abstract():
    with pytest.raises(TypeError):
        CostModel()

    class Incomplete(CostModel):
        name = "incomplete"
        convex = True

        def cost(self, x, alpha):
            return x

    with pytest.raises(TypeError):
        Incomplete()


@pytest.mark.parametrize("cost", ["seed", "convex"])
def test_name_and_object_give_identical_results(cost):
    rng = np.random.default_rng(1)
    tT, tE = rng.uniform(-0.2, 3, 257), rng.uniform(-0.2, 3, 257)
    for weights in (None, (1.0, 2.5)):
        a = nj.project_budget(tT, tE, pool=2.4, cost=cost, weights=weights)
        b = nj.project_budget(tT, tE, pool=2.4, cost=cost_model(cost), weights=weights)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------
# The budget-mode dispatch.


@pytest.mark.parametrize("budget", BUDGET_MODES)
def test_budget_mode_dispatch(budget):
    p = nj.NarsetParams(budget=budget, pool=0.9, cost="convex")
    rng = np.random.default_rng(2)
    tT, tE = (jnp.asarray(rng.uniform(0, 2, 16)) for _ in range(2))
    got = project_budget_mode(p, tT, tE)
    if budget == "region":
        a = nj.project_budget(tT, tE, pool=p.pool, alpha=p.alpha, cost="convex")
        want = (a.x_T, a.x_E, a.spent, a.price)
    elif budget == "global":
        g = nj.project_global_pool(tT, tE, pool_total=p.pool * 16, alpha=p.alpha, cost="convex")
        want = (g.x_T, g.x_E, g.spent, jnp.broadcast_to(g.price, (16,)))
    else:
        a = nj.project_fixed_sum(tT, tE)
        want = (a.x_T, a.x_E, a.spent, a.price)
    for x, y in zip(got, want):
        assert x.shape == (16,)
        np.testing.assert_array_equal(x, y)


def test_budget_mode_dispatch_rejects_unknown_mode():
    class P:
        budget, pool, alpha, cost = "pooled", 1.5, 2.0, "seed"

    with pytest.raises(ValueError, match="budget must be one of"):
        project_budget_mode(P(), jnp.ones(3), jnp.ones(3))


# ---------------------------------------------------------------------------------------
# A third model, as one new class, through the exact projection.


def _dense_projection(name, t_T, t_E, B, alpha, w_T, w_E, n=100001):
    """Brute force: the clipped target if feasible, else the best of a dense sampling of
    the budget curve parametrised by x_T and by x_E (plus its endpoints and junctions)."""
    t_T, t_E = max(t_T, 0.0), max(t_E, 0.0)
    if _c_ref(name, t_T, alpha) + _c_ref(name, t_E, alpha) <= B:
        return t_T, t_E
    X = float(_cinv_ref(name, B, alpha))
    s = np.concatenate([np.linspace(0, X, n), [0.0, 1.0, X, float(_cinv_ref(name, B - 1, alpha))]])
    s = s[s <= X]
    other = _cinv_ref(name, B - _c_ref(name, s, alpha), alpha)
    xT = np.concatenate([s, other])
    xE = np.concatenate([other, s])
    f = 0.5 * (w_T * (xT - t_T) ** 2 + w_E * (xE - t_E) ** 2)
    k = int(np.argmin(f))
    return xT[k], xE[k]


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)], ids=["equal", "weighted"])
@pytest.mark.parametrize("pool", [0.6, 1.5, 2.5, 3.5])
def test_third_model_projection_against_dense_search(pool, weights):
    model = HalfSlopeCost()
    alpha = 2.0
    rng = np.random.default_rng(int(pool * 10))
    n = 40
    tT, tE = rng.uniform(-0.2, 3.2, n), rng.uniform(-0.2, 3.2, n)
    tT[:4], tE[:4] = [1.0, 2.5, 0.0, 3.0], [1.0, 2.5, 3.0, 1.0]
    a = nj.project_budget(tT, tE, pool=pool, alpha=alpha, cost=model, weights=weights)
    w_T, w_E = (1.0, 1.0) if weights is None else weights
    x_T, x_E = np.asarray(a.x_T), np.asarray(a.x_E)
    spent = _c_ref("half_slope", x_T, alpha) + _c_ref("half_slope", x_E, alpha)
    assert np.all(spent <= pool * (1 + 1e-12) + 1e-12), "infeasible under the third model"
    np.testing.assert_allclose(np.asarray(a.spent), spent, rtol=1e-13)
    for i in range(n):
        bT, bE = _dense_projection("half_slope", tT[i], tE[i], pool, alpha, w_T, w_E)
        ct, ce = max(tT[i], 0), max(tE[i], 0)
        f_got = 0.5 * (w_T * (x_T[i] - ct) ** 2 + w_E * (x_E[i] - ce) ** 2)
        f_ref = 0.5 * (w_T * (bT - ct) ** 2 + w_E * (bE - ce) ** 2)
        # Never worse than any sampled point; no better than the samples' resolution allows.
        assert f_got <= f_ref + 1e-12 * (1 + f_ref), (i, tT[i], tE[i], x_T[i], x_E[i], bT, bE)
        assert f_got >= f_ref - 1e-7, (i, tT[i], tE[i], x_T[i], x_E[i], bT, bE)
        if f_ref > 0:
            assert a.price[i] > 0
        else:
            assert a.price[i] == 0


def test_third_model_differs_from_the_built_ins():
    t = (jnp.asarray([2.0, 1.3]), jnp.asarray([0.2, 1.3]))
    third = nj.project_budget(*t, pool=1.5, cost=HalfSlopeCost())
    for name in ("seed", "convex"):
        other = nj.project_budget(*t, pool=1.5, cost=name)
        assert not np.allclose(third.x_T, other.x_T)


def test_third_model_gradients_and_global_pool():
    model = HalfSlopeCost()

    def f(tT, tE, pool, alpha):
        a = nj.project_budget(tT, tE, pool=pool, alpha=alpha, cost=model)
        return a.x_T, a.x_E, a.price

    # One point on each kind of piece: one in overdrive, both linear, both in overdrive.
    for args in [(2.2, 0.4, 1.5, 2.0), (0.9, 0.8, 1.2, 2.0), (2.4, 2.1, 3.0, 1.5)]:
        jtu.check_grads(f, tuple(map(jnp.asarray, args)), order=1, modes=("fwd", "rev"),
                        eps=1e-6)
    rng = np.random.default_rng(3)
    tT, tE = rng.uniform(0, 2.5, 32), rng.uniform(0, 2.5, 32)
    g = nj.project_global_pool(tT, tE, pool_total=32 * 1.2, cost=model)
    x_T, x_E = np.asarray(g.x_T), np.asarray(g.x_E)
    spent = _c_ref("half_slope", x_T, 2.0) + _c_ref("half_slope", x_E, 2.0)
    assert spent.sum() <= 32 * 1.2 * (1 + 1e-12)
    np.testing.assert_allclose(np.asarray(g.spent), spent, rtol=1e-13)
    assert float(g.price) > 0 and float(g.gap) >= 0
