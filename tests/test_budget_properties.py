"""Invariants of the budget projections (DESIGN.md sections 2, 6 and 7), as property tests.

Per region: feasibility, feasible targets unchanged, idempotence, monotonicity
(``x_i <= max(t_i, 0)``), the sign and zero set of the price, dtypes, broadcasting, jit /
vmap / grad, gradients against finite differences, bad input and non-finite targets.
Global pool: feasibility, the convex cost against a dual bisection, the seed cost's
duality gap against weak duality, the price, and agreement with the per-region projection.
Fixed sum: the constraint, the reference and the multiplier.

Each hypothesis example is a batch. Jitted calls have one fixed shape per test, so they
compile once; the weighted per-region path is run eagerly, because it takes seconds to
compile.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import narset_jax as nj
from narset_jax.testing import reference_budget as rb

N = 64
SETTINGS = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # failures list their cases
)
HUGE = {np.float64: 1e12, np.float32: 1e6}
COSTS = ["seed", "convex"]
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]
# relative margin around the budget beyond which the float64 check of "is the clipped
# target feasible" cannot disagree with the library's own check in its dtype
MARGIN = {np.float64: 1e-12, np.float32: 1e-5}
# finite-difference step for check_grads: its default 1e-4 leaves a truncation error of
# ~1e-4 relative where the price ~ 1/c'(x) is large (seed cost just above x = 1)
EPS = 1e-6


def _floats(lo, hi):
    return st.floats(lo, hi, allow_subnormal=False)


def _cast(dtype, v):
    v = float(dtype(v))
    return 0.0 if abs(v) < np.finfo(dtype).tiny else v  # XLA flushes subnormals


def _flush(v, dtype):
    """float64 array of the dtype-rounded values, subnormals flushed to 0."""
    v = np.asarray(v, np.float64).astype(dtype).astype(np.float64)
    return np.where(np.abs(v) < np.finfo(dtype).tiny, 0.0, v)


@st.composite
def _target(draw, dtype, X):
    kinds = ["generic"] * 5 + ["zero", "neg", "huge", "kink", "near", "nearer"]
    kind = draw(st.sampled_from(kinds))
    if kind == "generic":
        return draw(_floats(-2.0, 2.0 * X + 1.0))
    if kind == "zero":
        return 0.0
    if kind == "neg":
        return -(10.0 ** draw(_floats(-3.0, math.log10(HUGE[dtype]))))
    if kind == "huge":
        return 10.0 ** draw(_floats(1.0, math.log10(HUGE[dtype])))
    if kind == "kink":
        return 1.0
    if kind == "nearer":  # within 1e-6 of the kink, either side
        return 1.0 + draw(st.sampled_from([-1.0, 1.0])) * 10.0 ** -draw(_floats(6.0, 15.0))
    return 1.0 + draw(_floats(-1e-3, 1e-3))


@st.composite
def _case(draw, dtype, cost, weighted):
    pool = draw(st.one_of(_floats(0.05, 6.0), st.sampled_from([1.0, 1.5, 2.0])))
    alpha = 10.0 ** draw(_floats(-1.0, 1.0))
    w = [10.0 ** draw(_floats(-1.0, 1.0)) if weighted else 1.0 for _ in range(2)]
    pool, alpha = _cast(dtype, pool), _cast(dtype, alpha)
    X = float(rb.cost_inv_np(pool, alpha, cost))
    t = [_cast(dtype, draw(_target(dtype, X))) for _ in range(2)]
    return (t[0], t[1], pool, alpha, _cast(dtype, w[0]), _cast(dtype, w[1]))


def _batch(dtype, cost, weighted, n=N):
    """Strategy: a dict of [n] float64 arrays holding dtype-representable values."""
    names = ("t_T", "t_E", "pool", "alpha", "w_T", "w_E")
    return st.lists(_case(dtype, cost, weighted), min_size=n, max_size=n).map(
        lambda rows: {k: np.array(col, np.float64) for k, col in zip(names, zip(*rows))}
    )


def _project(b, dtype, cost, weighted, fn=None):
    """project_budget on a batch (fn: a jitted wrapper, or None for an eager call)."""
    args = [jnp.asarray(b[k], dtype) for k in ("t_T", "t_E", "pool", "alpha", "w_T", "w_E")]
    return (fn or _call(cost, weighted))(*args)


def _call(cost, weighted):
    def call(t_T, t_E, pool, alpha, w_T, w_E):
        weights = (w_T, w_E) if weighted else None
        return nj.project_budget(t_T, t_E, pool=pool, alpha=alpha, cost=cost, weights=weights)

    return call


@functools.cache
def _jitted(cost, weighted):
    return jax.jit(_call(cost, weighted))


def _runner(cost, weighted):
    # The weighted path unrolls fixed-count Newton loops and takes ~10 s to compile here;
    # eager calls are much cheaper for a few batches. The reference tests jit it.
    return None if weighted else _jitted(cost, weighted)


def _spent64(x_T, x_E, alpha, cost):
    return rb.cost_np(x_T, alpha, cost) + rb.cost_np(x_E, alpha, cost)


def _report(mask, b, what):
    """Assert mask is all True; otherwise list the first failing cases."""
    mask = np.asarray(mask)
    if mask.all():
        return
    rows = ["  " + ", ".join(f"{k}={b[k][i]!r}" for k in b) for i in np.flatnonzero(~mask)[:8]]
    raise AssertionError(f"{what}: {int((~mask).sum())} cases, e.g.\n" + "\n".join(rows))


# --------------------------------------------------------------------------------------
# Per-region invariants.


# Unequal weights run eagerly (see _runner) and only in float64 here; weighted float32 is
# jitted and checked against the reference in test_budget_reference.py.
@pytest.mark.parametrize(
    ("dtype", "weighted"),
    [(np.float64, False), (np.float32, False), (np.float64, True)],
    ids=["f64-equal", "f32-equal", "f64-weighted"],
)
@pytest.mark.parametrize("cost", COSTS)
def test_region_invariants(cost, dtype, weighted):
    fn = _runner(cost, weighted)

    @settings(SETTINGS, max_examples=4 if weighted else 8)
    @given(_batch(dtype, cost, weighted))
    def run(b):
        out = _project(b, dtype, cost, weighted, fn)
        for name in out._fields:
            assert getattr(out, name).dtype == dtype
            assert getattr(out, name).shape == (N,)
        x_T, x_E, spent, price = (np.asarray(v, np.float64) for v in out)
        _report(np.isfinite(x_T) & np.isfinite(x_E) & np.isfinite(price), b, "non-finite")
        _report((x_T >= 0) & (x_E >= 0), b, "negative x")
        mine = _spent64(x_T, x_E, b["alpha"], cost)
        _report(mine <= b["pool"] * (1 + 1e-6), b, "infeasible")
        _report(np.abs(spent - mine) <= 1e-6 * np.maximum(1, mine), b, "spent != c(x_T)+c(x_E)")
        cT, cE = np.maximum(b["t_T"], 0), np.maximum(b["t_E"], 0)
        _report((x_T <= cT) & (x_E <= cE), b, "x above max(t, 0)")
        _report(price >= 0, b, "negative price")
        need = _spent64(cT, cE, b["alpha"], cost)
        inside = need <= b["pool"] * (1 - MARGIN[dtype])
        outside = need >= b["pool"] * (1 + MARGIN[dtype])
        same = (x_T == cT) & (x_E == cE) & (price == 0)
        _report(~inside | same, b, "feasible target changed, or price != 0")
        _report(~outside | (price > 0), b, "infeasible target but price == 0")
        # Projecting the answer again changes nothing (beyond rounding of the boundary).
        again = _project(dict(b, t_T=x_T, t_E=x_E), dtype, cost, weighted, fn)
        tol = 1e-12 if dtype == np.float64 else 1e-6
        for x, y in ((x_T, again.x_T), (x_E, again.x_E)):
            y = np.asarray(y, np.float64)
            _report(np.abs(x - y) <= tol * np.maximum(1, np.abs(x)), b, "not idempotent")

    run()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cost", COSTS)
def test_feasible_targets_come_back_unchanged(cost, dtype):
    fn = _runner(cost, False)

    @SETTINGS
    @given(
        _batch(dtype, cost, False),
        st.lists(
            st.tuples(_floats(0.0, 1.0), _floats(0.0, 1.0), st.booleans()), min_size=N, max_size=N
        ),
    )
    def run(b, shrink):
        # A point inside the set: x_T anywhere in [0, X), x_E below the budget curve above
        # it, both shrunk by s < 1; x_T is optionally replaced by a negative target.
        X = rb.cost_inv_np(b["pool"], b["alpha"], cost)
        th, s, neg = (np.array(v, np.float64) for v in zip(*shrink))
        xT = X * s * (1 - MARGIN[dtype] * 100) * th
        xE = (
            rb.cost_inv_np(
                np.maximum(b["pool"] - rb.cost_np(xT, b["alpha"], cost), 0), b["alpha"], cost
            )
            * s
            * (1 - MARGIN[dtype] * 100)
        )
        tT, tE = (_flush(v, dtype) for v in (np.where(neg, -xT - 1.0, xT), xE))
        ok = _spent64(np.maximum(tT, 0), tE, b["alpha"], cost) <= b["pool"] * (1 - MARGIN[dtype])
        b = dict(b, t_T=tT, t_E=tE)
        out = _project(b, dtype, cost, False, fn)
        same = (
            (np.asarray(out.x_T, np.float64) == np.maximum(tT, 0))
            & (np.asarray(out.x_E, np.float64) == tE)
            & (np.asarray(out.price) == 0)
        )
        _report(~ok | same, b, "feasible target changed")

    run()


def _grid_inputs(dtype=np.float64):
    """A fixed [N] batch spanning the regimes (pools below 1 to above 2, all pieces)."""
    lin = functools.partial(np.linspace, num=N)
    cols = (
        lin(-0.5, 4.0),
        lin(3.0, -0.2),
        lin(0.3, 4.0),
        lin(0.2, 8.0),
        lin(0.2, 5.0),
        lin(3.0, 0.4),
    )
    return [jnp.asarray(c, dtype) for c in cols]


def test_jit_vmap_and_grad():
    # Seed cost and equal weights only (each variant costs compiles): the weighted path is
    # jitted (and batched) in test_budget_reference.py and differentiated eagerly below;
    # both costs are jitted throughout this file.
    cost = "seed"
    t_T, t_E, pool, alpha, w_T, w_E = _grid_inputs()
    args = (t_T, t_E, pool, alpha, w_T, w_E)
    jitted = _jitted(cost, False)(*args)
    mapped = jax.jit(jax.vmap(_call(cost, False)))(*args)  # per-element scalar calls
    for a, b in zip(jitted, mapped, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)

    def loss(t_T):
        return jnp.sum(_call(cost, False)(t_T, t_E, pool, alpha, w_T, w_E).x_E)

    g = jax.jit(jax.grad(loss))(t_T)
    assert g.shape == t_T.shape and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dtype_in_equals_dtype_out(dtype):
    # Traced only (jax.eval_shape): dtypes are decided at trace time.
    t_T, t_E, pool, alpha, w_T, w_E = _grid_inputs(dtype)

    def dtypes(f, *args):
        return [v.dtype for v in jax.tree.leaves(jax.eval_shape(f, *args))]

    for cost in COSTS:
        for weighted in (False, True):
            got = dtypes(_call(cost, weighted), t_T, t_E, pool, alpha, w_T, w_E)
            assert got == [dtype] * 4, got
        # python-float hyperparameters do not promote
        got = dtypes(
            lambda a, b, cost=cost: nj.project_budget(a, b, pool=1.5, alpha=2.0, cost=cost),
            t_T,
            t_E,
        )
        assert got == [dtype] * 4, got
        assert dtypes(lambda x, cost=cost: nj.overdrive_cost(x, 2.0, cost=cost), t_T) == [dtype]
        for weights in (None, (w_T, w_E)):
            got = dtypes(
                lambda a, b, w, cost=cost: nj.project_global_pool(
                    a, b, pool_total=2.0, alpha=2.0, cost=cost, weights=w
                ),
                t_T,
                t_E,
                weights,
            )
            assert got == [dtype] * 5, got
    assert dtypes(nj.project_fixed_sum, t_T, t_E) == [dtype] * 4


def test_leading_batch_shapes_broadcast():
    rng = np.random.default_rng(0)
    t_T = rng.uniform(-0.5, 4.0, (3, 1, 4))
    t_E = rng.uniform(-0.5, 4.0, (5, 1))
    pool = rng.uniform(0.3, 4.0, (5, 1))
    alpha = rng.uniform(0.2, 5.0, (4,))
    for cost in ["seed"]:  # the broadcasting is shared by both costs
        out = jax.jit(functools.partial(nj.project_budget, cost=cost))(
            t_T, t_E, pool=pool, alpha=alpha
        )
        assert all(v.shape == (3, 5, 4) for v in out), [v.shape for v in out]
        flat = [np.broadcast_to(v, (3, 5, 4)).ravel() for v in (t_T, t_E, pool, alpha)]
        flat = [np.pad(v, (0, N - v.size), mode="edge") for v in flat]  # the [N] compile
        ref = _jitted(cost, False)(*flat, np.ones(N), np.ones(N))
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a).ravel(), b[:60], rtol=1e-12, atol=1e-14)
        # a scalar call gives scalars
        one = jax.eval_shape(functools.partial(nj.project_budget, cost=cost), 2.0, 1.0)
        assert all(v.shape == () for v in one)


# --------------------------------------------------------------------------------------
# Gradients against finite differences, away from where the solution is non-smooth.


def _smooth_point(case, cost, margin=0.02):
    """True when the reference solution is at least `margin` away from every place where
    the solution map is not differentiable: the kinks x = 1, the axes (unless held there
    by a positive bound multiplier), the budget's active/inactive switch, the clipping
    of t at 0, and ties between local minima."""
    t_T, t_E, pool, alpha, w_T, w_E = case
    ref = rb.solve_region(t_T, t_E, pool, alpha, cost=cost, w_T=w_T, w_E=w_E)
    if ref.feasible_target:
        slack = pool - float(np.sum(rb.cost_np(np.maximum([t_T, t_E], 0), alpha, cost)))
        return slack > margin and min(abs(t_T), abs(t_E)) > margin
    if ref.tie_gap < margin or ref.price < margin:
        return False
    for x, t, w in ((ref.x_T, t_T, w_T), (ref.x_E, t_E, w_E)):
        if x == 0:
            # held at 0 by the bound: lambda c'(0) - w t > 0 (c'(0) = 1)
            if ref.price - w * t < margin:
                return False
        elif x < margin or abs(x - 1) < margin:
            return False
    return True


@pytest.mark.parametrize("weighted", [False, True], ids=["equal", "weighted"])
@pytest.mark.parametrize("cost", COSTS)
def test_gradients_match_finite_differences(cost, weighted):
    # Each example: N smooth points in one [N] batch (outputs are elementwise, so a random
    # tangent checks every point's derivative at once), eagerly. The points come from a
    # seeded NumPy generator (hypothesis draws the seed): most random points are smooth,
    # and rejection is cheaper there than as a hypothesis filter.
    @settings(SETTINGS, max_examples=1)
    @given(st.integers(0, 2**32 - 1))
    def run(seed):
        rng = np.random.default_rng(seed)
        rows = []
        while len(rows) < N:
            pool = float(rng.choice([rng.uniform(0.1, 1), rng.uniform(1, 2), rng.uniform(2, 5)]))
            alpha = float(10.0 ** rng.uniform(-1, 1))
            X = float(rb.cost_inv_np(pool, alpha, cost))
            t = rng.uniform(-0.5, 2 * X + 1, 2)
            w = 10.0 ** rng.uniform(-1, 1, 2) if weighted else np.ones(2)
            case = (float(t[0]), float(t[1]), pool, alpha, float(w[0]), float(w[1]))
            if _smooth_point(case, cost):
                rows.append(case)
        args = tuple(jnp.asarray(col, jnp.float64) for col in zip(*rows))

        def f(t_T, t_E, pool, alpha, w_T, w_E):
            out = _call(cost, weighted)(t_T, t_E, pool, alpha, w_T, w_E)
            return out.x_T, out.x_E, out.spent, out.price

        # with respect to targets, pool, alpha and (if weighted) the weights
        if weighted:
            jtu.check_grads(f, args, order=1, modes=("fwd", "rev"), eps=EPS)
        else:
            w = args[4:]
            jtu.check_grads(lambda *a: f(*a, *w), args[:4], order=1, modes=("fwd", "rev"), eps=EPS)

    run()


def test_global_pool_gradients_match_finite_differences():
    t_T = jnp.array([2.0, 0.6, 1.4, 3.1])
    t_E = jnp.array([0.5, 1.8, 0.4, 2.6])
    w_T = jnp.array([1.0, 2.0, 0.5, 1.5])
    w_E = jnp.array([0.7, 1.0, 3.0, 1.2])
    pool, alpha = 8.0, 1.5

    def f(t_T, t_E, pool_total, alpha, w_T, w_E):
        out = nj.project_global_pool(
            t_T, t_E, pool_total=pool_total, alpha=alpha, cost="convex", weights=(w_T, w_E)
        )
        return out.x_T, out.x_E, out.price

    ref = rb.solve_global_convex(t_T, t_E, pool, alpha, w_T, w_E)
    # away from kinks: every coordinate at 0 (held by its bound) or clear of 0 and 1
    for x, t, w in ((ref.x_T, t_T, w_T), (ref.x_E, t_E, w_E)):
        held = (x == 0) & (ref.price - w * t > 0.02)
        assert np.all(held | ((x > 0.02) & (np.abs(x - 1) > 0.02))), (x, ref.price)
    assert ref.price > 0.02
    args = (t_T, t_E, jnp.asarray(pool), jnp.asarray(alpha), w_T, w_E)
    # jitted: eagerly, the bisection loop would be recompiled on every call
    jtu.check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"), eps=EPS)


# --------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, [1.0, 0.0]])
def test_bad_hyperparameters_raise(bad):
    t = jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        nj.project_budget(t, t, alpha=bad)
    with pytest.raises(ValueError, match="pool"):
        nj.project_budget(t, t, pool=bad)
    with pytest.raises(ValueError, match="w_T"):
        nj.project_budget(t, t, weights=(bad, 1.0))
    with pytest.raises(ValueError, match="w_E"):
        nj.project_budget(t, t, weights=(1.0, bad))
    with pytest.raises(ValueError, match="alpha"):
        nj.overdrive_cost(t, bad)
    with pytest.raises(ValueError, match="pool_total"):
        nj.project_global_pool(t, t, pool_total=bad)
    with pytest.raises(ValueError, match="alpha"):
        nj.project_global_pool(t, t, pool_total=2.0, alpha=bad)
    with pytest.raises(ValueError, match="w_E"):
        nj.project_global_pool(t, t, pool_total=2.0, weights=(1.0, bad))


def test_unknown_cost_raises():
    for call in (
        lambda: nj.project_budget(1.0, 1.0, cost="quadratic"),
        lambda: nj.overdrive_cost(1.0, 2.0, cost="Seed"),
        lambda: nj.project_global_pool(jnp.ones(2), jnp.ones(2), pool_total=1.0, cost=""),
    ):
        with pytest.raises(ValueError, match="cost"):
            call()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_targets_are_treated_as_zero(dtype):
    t_T, t_E, pool, alpha, w_T, w_E = _grid_inputs(dtype)
    bad = np.array([np.nan, np.inf, -np.inf])
    k = np.arange(N)
    # every pattern: T bad, E bad, both bad (different kinds), on top of the grid targets
    nT = np.where(k % 4 == 0, bad[k % 3], np.where(k % 4 == 2, bad[(k + 1) % 3], t_T))
    nE = np.where(k % 4 == 1, bad[k % 3], np.where(k % 4 == 2, bad[k % 3], t_E))
    nT, nE = jnp.asarray(nT, dtype), jnp.asarray(nE, dtype)
    zT, zE = (jnp.where(jnp.isfinite(v), v, 0) for v in (nT, nE))
    for cost in COSTS:
        for weighted in (False, True) if dtype == np.float64 else (False,):
            # inside jit (the weighted path eagerly: see _runner)
            fn = _runner(cost, weighted) or _call(cost, weighted)
            got = fn(nT, nE, pool, alpha, w_T, w_E)
            want = fn(zT, zE, pool, alpha, w_T, w_E)
            for a, b in zip(got, want, strict=True):
                assert bool(jnp.all(jnp.isfinite(a)))
                np.testing.assert_array_equal(a, b)
            spent = _spent64(
                np.asarray(got.x_T, np.float64),
                np.asarray(got.x_E, np.float64),
                np.asarray(alpha, np.float64),
                cost,
            )
            assert np.all(spent <= np.asarray(pool, np.float64) * (1 + 1e-6))

        g = _global(cost)
        args = (jnp.asarray(2.0, dtype), jnp.asarray(2.0, dtype), w_T[:NG], w_E[:NG])
        got, want = g(nT[:NG], nE[:NG], *args), g(zT[:NG], zE[:NG], *args)
        for a, b in zip(got, want, strict=True):
            assert bool(jnp.all(jnp.isfinite(a)))
            np.testing.assert_array_equal(a, b)
        assert float(jnp.sum(got.spent)) <= 2.0 * (1 + 1e-6)
    got, want = jax.jit(nj.project_fixed_sum)(nT, nE), jax.jit(nj.project_fixed_sum)(zT, zE)
    for a, b in zip(got, want, strict=True):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Global pool.

NG = 12  # regions per global-pool example


@st.composite
def _global_case(draw, dtype, cost, weighted):
    b = draw(_batch(dtype, cost, weighted, n=NG))
    # total pool: from far below to above what the clipped targets need
    need = float(
        np.sum(_spent64(np.maximum(b["t_T"], 0), np.maximum(b["t_E"], 0), b["alpha"][0], cost))
    )
    frac = draw(st.one_of(_floats(0.02, 1.5), st.just(1.0)))
    total = _cast(dtype, max(0.05, min(need, 1e7) * frac))
    return dict(b, alpha=np.full(NG, b["alpha"][0])), total


@functools.cache
def _global(cost):
    # The global pool has one code path for all weights (None means 1), so weights are
    # always passed (equal weights as arrays of ones) and each (cost, dtype) compiles once.
    def call(t_T, t_E, total, alpha, w_T, w_E):
        return nj.project_global_pool(
            t_T, t_E, pool_total=total, alpha=alpha, cost=cost, weights=(w_T, w_E)
        )

    return jax.jit(call)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cost", COSTS)
def test_global_pool(cost, dtype):
    @settings(SETTINGS, max_examples=20)
    @given(st.booleans().flatmap(lambda weighted: _global_case(dtype, cost, weighted)))
    def run(bt):
        b, total = bt
        alpha = float(b["alpha"][0])
        args = [jnp.asarray(b[k], dtype) for k in ("t_T", "t_E")]
        w = [jnp.asarray(b[k], dtype) for k in ("w_T", "w_E")]
        out = _global(cost)(*args, jnp.asarray(total, dtype), jnp.asarray(alpha, dtype), *w)
        assert out.price.shape == () and out.gap.shape == ()
        assert all(v.dtype == dtype for v in out)
        x_T, x_E, spent = (np.asarray(v, np.float64) for v in out[:3])
        price, gap = float(out.price), float(out.gap)
        msg = f"targets {b}, pool_total={total!r}, alpha={alpha!r}"
        assert np.all(np.isfinite(x_T) & np.isfinite(x_E)) and math.isfinite(price), msg
        assert np.all((x_T >= 0) & (x_E >= 0)), msg
        ulps = 4 * np.finfo(dtype).eps  # rounding of the closed form given the price
        for x, t in ((x_T, b["t_T"]), (x_E, b["t_E"])):
            over = x - np.maximum(t, 0)
            _report(over <= ulps * np.maximum(1, t), b, f"x above max(t, 0) by {over.max()!r}")
        mine = _spent64(x_T, x_E, alpha, cost)
        assert mine.sum() <= total * (1 + 1e-6), (mine.sum(), msg)
        np.testing.assert_allclose(spent, mine, rtol=1e-6, atol=1e-6)
        assert price >= 0, msg
        need = _spent64(np.maximum(b["t_T"], 0), np.maximum(b["t_E"], 0), alpha, cost).sum()
        if need <= total * (1 - MARGIN[dtype]):
            # feasible: price 0 and the (clipped) targets back, to rounding
            assert price == 0, msg
            ulps = 4 * np.finfo(dtype).eps
            for x, t in ((x_T, b["t_T"]), (x_E, b["t_E"])):
                t = np.maximum(t, 0)
                _report(np.abs(x - t) <= ulps * np.maximum(1, t), b, "feasible target changed")
        scale = max(1.0, float(np.max(np.abs(np.concatenate([b["t_T"], b["t_E"]])))))
        assert math.isfinite(gap) and gap >= 0, msg
        primal = rb.objective_np(
            x_T, x_E, np.maximum(b["t_T"], 0), np.maximum(b["t_E"], 0), b["w_T"], b["w_E"]
        )
        tT0, tE0 = np.maximum(b["t_T"], 0), np.maximum(b["t_E"], 0)
        lam_d, best_dual = rb.max_dual(tT0, tE0, total, alpha, cost, b["w_T"], b["w_E"])
        tol = (1e-9 if dtype == np.float64 else 1e-4) * scale**2
        # weak duality: a feasible point is never better than a dual lower bound, and the
        # library's lower bound (primal - gap) is no better than the best dual value
        if mine.sum() <= total:
            assert primal >= best_dual - tol, msg
        assert primal - gap <= best_dual + tol, msg
        if cost == "convex" and dtype == np.float64:
            ref = rb.solve_global_convex(tT0, tE0, total, alpha, b["w_T"], b["w_E"])
            xtol = 1e-6 * max(1.0, float(np.max(ref.x_T)), float(np.max(ref.x_E)))
            np.testing.assert_allclose(x_T, ref.x_T, rtol=0, atol=xtol, err_msg=msg)
            np.testing.assert_allclose(x_E, ref.x_E, rtol=0, atol=xtol, err_msg=msg)
            assert abs(price - ref.price) <= 1e-6 * max(1.0, ref.price), (price, ref.price, msg)
            assert gap <= 1e-6 * max(1.0, primal), msg

    run()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cost", COSTS)
def test_global_pool_feasible_targets_come_back(cost, dtype):
    # A total pool that covers every clipped target: price 0 and the targets back (to
    # rounding), including targets just above the kink x = 1.
    eps = float(np.finfo(dtype).eps)
    t_T = np.array([1 + 1e-9, 1 + 1e-12, 1 + 64 * eps, 1.3, 2.7, 0.3, 0.0, -1.0, 1.0, 1.5, 0.9, 3])
    t_E = np.array([0.2, 1 + 1e-7, 0.0, 1 + 1e-10, 0.4, 1.7, 2.2, 0.5, 1.0, 1 + 8 * eps, 0, 1])
    t_T, t_E = (np.asarray(v, dtype) for v in (t_T, t_E))
    w = jnp.asarray(np.linspace(0.5, 2.0, NG), dtype)
    alpha = 2.0
    total = 1.01 * float(np.sum(_spent64(np.maximum(t_T, 0), np.maximum(t_E, 0), alpha, cost)))
    out = _global(cost)(t_T, t_E, jnp.asarray(total, dtype), jnp.asarray(alpha, dtype), w, w)
    assert float(out.price) == 0
    for x, t in ((out.x_T, t_T), (out.x_E, t_E)):
        t = np.maximum(t, 0).astype(np.float64)
        err = np.abs(np.asarray(x, np.float64) - t)
        assert np.all(err <= 4 * eps * np.maximum(1, t)), (t[err.argmax()], err.max())


def test_global_pool_of_identical_regions_equals_per_region():
    n = 5  # regions per pool

    def pooled(t_T, t_E, pool, alpha, w_T, w_E):
        return nj.project_global_pool(
            jnp.full(n, t_T),
            jnp.full(n, t_E),
            pool_total=n * pool,
            alpha=alpha,
            cost="convex",
            weights=(jnp.full(n, w_T), jnp.full(n, w_E)),
        )

    pooled = jax.jit(jax.vmap(pooled))  # N independent pools in one call

    @settings(SETTINGS, max_examples=4)
    @given(st.booleans().flatmap(lambda weighted: _batch(np.float64, "convex", weighted)))
    def run(b):
        weighted = bool(np.any(b["w_T"] != 1) or np.any(b["w_E"] != 1))
        args = [jnp.asarray(b[k]) for k in ("t_T", "t_E", "pool", "alpha", "w_T", "w_E")]
        one = (_runner("convex", weighted) or _call("convex", weighted))(*args)
        many = pooled(*args)
        scale = np.maximum(1, np.maximum(np.abs(b["t_T"]), np.abs(b["t_E"])))
        for x1, xn in ((one.x_T, many.x_T), (one.x_E, many.x_E)):
            err = np.abs(np.asarray(xn) - np.asarray(x1)[:, None]).max(axis=1)
            _report(err <= 1e-6 * scale, b, "global pool of copies != per region")
        p1, pn = np.asarray(one.price), np.asarray(many.price)
        _report(np.abs(pn - p1) <= 1e-6 * np.maximum(1, p1), b, "price differs")

    run()


# --------------------------------------------------------------------------------------
# Fixed sum.


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fixed_sum(dtype):
    @settings(SETTINGS, max_examples=10)
    @given(st.lists(st.tuples(_target(dtype, 1.0), _target(dtype, 1.0)), min_size=N, max_size=N))
    def run(rows):
        tT, tE = (np.array([_cast(dtype, v) for v in col]) for col in zip(*rows))
        out = jax.jit(nj.project_fixed_sum)(jnp.asarray(tT, dtype), jnp.asarray(tE, dtype))
        assert all(v.dtype == dtype and v.shape == (N,) for v in out)
        x_T, x_E, spent, price = (np.asarray(v, np.float64) for v in out)
        eps = float(np.finfo(dtype).eps)
        assert np.all(np.abs(x_T + x_E - 1) <= eps) and np.all(np.abs(spent - 1) <= eps)
        assert np.all((x_T >= 0) & (x_E >= 0))
        rT, rE, rp = rb.solve_fixed_sum(tT, tE)
        tol = 4 * eps * np.maximum(1, np.maximum(np.abs(tT), np.abs(tE)))
        b = {"t_T": tT, "t_E": tE}
        _report(np.abs(x_T - rT) <= tol, b, "x_T != reference")
        _report(np.abs(x_E - rE) <= tol, b, "x_E != reference")
        _report(np.abs(price - rp) <= tol, b, "price != t_i - x_i")

    run()


def test_overdrive_cost_matches_reference():
    x = np.linspace(0.0, 4.0, 401)
    for cost in COSTS:
        for alpha in (0.1, 2.0, 10.0):
            np.testing.assert_allclose(
                nj.overdrive_cost(x, alpha, cost=cost),
                rb.cost_np(x, alpha, cost),
                rtol=1e-15,
                atol=1e-15,
            )


def test_global_pool_seed_cost_gradients_match_finite_differences_at_spend_jumps():
    """Seed cost: the total spend can jump across the pool as the multiplier grows, and
    then the multiplier sits at the jump (spend < pool) for a whole open set of inputs.
    Gradients there must follow the jump (the switching coordinate's tie), not the spend
    equation; both kinds of case are checked against central differences."""
    rng = np.random.default_rng(0)
    n = 5

    @jax.jit
    def f(t_T, t_E, pool_total, alpha, w_T, w_E, r_T, r_E):
        o = nj.project_global_pool(
            t_T, t_E, pool_total=pool_total, alpha=alpha, cost="seed", weights=(w_T, w_E)
        )
        return jnp.sum(r_T * o.x_T + r_E * o.x_E), jnp.sum(o.spent)

    grad = jax.jit(jax.grad(lambda *a: f(*a)[0], argnums=range(6)))
    checked = {"jump": 0, "smooth": 0}
    for _ in range(60):
        args = [jnp.asarray(v) for v in (
            rng.uniform(0, 3, n), rng.uniform(0, 3, n), rng.uniform(0.45, 1.8) * n,
            rng.uniform(0.5, 3), rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n))]
        r = [jnp.asarray(rng.normal(size=n)) for _ in range(2)]
        dirs = [jnp.asarray(rng.normal(size=np.shape(v))) for v in args]

        def at(eps, args=args, r=r, dirs=dirs):
            return float(f(*[x + eps * d for x, d in zip(args, dirs)], *r)[0])

        fd = (at(1e-6) - at(-1e-6)) / 2e-6
        if abs(fd - (at(1e-5) - at(-1e-5)) / 2e-5) > 1e-4 * (1 + abs(fd)):
            continue  # a piece switch within the difference step: not differentiable
        g = grad(*args, *r)
        an = sum(float(jnp.sum(gi * d)) for gi, d in zip(g, dirs))
        assert abs(an - fd) <= 1e-4 * (1 + abs(fd)), (an, fd, args)
        spent = float(f(*args, *r)[1])
        checked["jump" if spent < float(args[2]) * (1 - 1e-9) else "smooth"] += 1
    assert checked["jump"] >= 5 and checked["smooth"] >= 5, checked
