"""The per-region budget projection against the slow reference in ``reference_budget.py``.

Each hypothesis example is a whole batch of cases, solved by ONE jitted call of the library
(compiling once per cost / dtype / weighting) and case by case by the reference. The cases
cover every regime of DESIGN.md section 2: pool < 1, 1 <= pool <= 2 and pool > 2; alpha in
[0.1, 10]; targets negative, zero, huge, exactly on and near the kink ``x = 1``, near the
axis end points, on and near the diagonal (where the seed cost has exact ties), and next to
the ridge where the argmin switches piece.

Tolerances (float64 / float32):

* ``max |x - x_ref| <= 1e-7 / 1e-3``, except at near-ties (see below);
* ``f(x) <= f(x_ref) + 1e-11 / 1e-6`` times ``scale = max(1, max_i w_i |t_i|)``. The scale
  is 1 for ordinary targets; it grows only for huge ones, where merely rounding the exact
  answer to the working precision already moves the objective by about
  ``|grad f| * ulp(x) ~ w |t| * eps``. (A linear scale: stricter than the ``|t|^2``
  scaling the brief allowed.)
* near-ties: where the reference's best distinct other local minimum is within
  ``1e-9 * scale`` (float64) or ``1e-6 * scale`` (float32, the objective tolerance: a
  wrong pick with a bigger gap fails the objective check anyway) of the best, only the
  objective is checked. Ties are detected by the reference (``RegionRef.tie_gap``).
* feasibility: ``c(x_T) + c(x_E) <= pool * (1 + 1e-12 / 1e-6)``, evaluated in float64
  at the returned values.
* price: relative ``1e-6 / 1e-2`` against the reference, where the problem is
  well-conditioned (not a near-tie and some active coordinate has ``c'(x) >= 0.05``).

The reference itself is checked here too, against a brute-force search over rays from the
origin (independent of its curve parametrisation).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import narset_jax as nj
from narset_jax.testing import reference_budget as rb

BATCH = 48
SETTINGS = settings(
    max_examples=7,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # no shrinking: it reruns whole batches for minutes, and a failure already lists every
    # bad case as a one-line reproducer
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


def _floats(lo, hi, **kw):
    # XLA on CPU flushes subnormals to zero, so they are not meaningful test inputs.
    return st.floats(lo, hi, allow_subnormal=False, **kw)


def _cast(dtype, v):
    """v rounded to dtype, with subnormals flushed to 0 as XLA does."""
    v = float(dtype(v))
    return 0.0 if abs(v) < np.finfo(dtype).tiny else v


TOL = {
    np.float64: dict(x=1e-7, obj=1e-11, tie=1e-9, feas=1e-12, price=1e-6),
    np.float32: dict(x=1e-3, obj=1e-6, tie=1e-6, feas=1e-6, price=1e-2),
}
HUGE = {np.float64: 1e12, np.float32: 1e6}


# --------------------------------------------------------------------------------------
# Case generation.


def _pool(draw):
    kind = draw(st.sampled_from(["<1", "=1", "1..2", "=2", ">2", "note"]))
    if kind == "<1":
        return draw(_floats(0.05, 1.0, exclude_max=True))
    if kind == "1..2":
        return draw(_floats(1.0, 2.0, exclude_min=True, exclude_max=True))
    if kind == ">2":
        return draw(_floats(2.0, 6.0, exclude_min=True))
    return {"=1": 1.0, "=2": 2.0, "note": 1.5}[kind]


def _small_offset(draw, dtype):
    kmax = 7 if dtype == np.float32 else 13
    k = draw(st.integers(1, kmax))
    return draw(st.sampled_from([-1.0, 1.0])) * 10.0 ** (-k) * draw(_floats(1.0, 9.9))


def _coordinate(draw, dtype, X, Y):
    """One target component. X: the axis end point c^-1(pool); Y: c^-1(pool - 1), the
    value of this coordinate at which the other one sits on its kink (None if pool < 1)."""
    kind = draw(
        st.sampled_from(
            ["generic"] * 4
            + ["negative", "zero", "huge", "kink", "near_kink", "near_X"]
            + ["near_Y"] * (Y is not None)
        )
    )
    huge = HUGE[dtype]
    if kind == "generic":
        return draw(_floats(-0.5, 2.0 * X + 1.0))
    if kind == "negative":
        return -(10.0 ** draw(_floats(-6.0, math.log10(huge))))
    if kind == "zero":
        return draw(st.sampled_from([0.0, -0.0]))
    if kind == "huge":
        return draw(st.sampled_from([huge, 10.0 ** draw(_floats(1.0, math.log10(huge)))]))
    if kind == "kink":
        return 1.0
    if kind == "near_kink":
        return 1.0 + _small_offset(draw, dtype)
    if kind == "near_X":
        return X * (1.0 + _small_offset(draw, dtype))
    return Y * (1.0 + _small_offset(draw, dtype))


def _piece(x):
    """Which smooth piece of the budget curve (or axis end) a point lies on."""
    return (x[0] > 1.0, x[1] > 1.0, x[0] <= 0.0, x[1] <= 0.0)


@st.composite
def region_case(draw, dtype, cost, weighted):
    pool = _pool(draw)
    alpha = draw(st.sampled_from([2.0, None]))
    if alpha is None:
        alpha = 10.0 ** draw(_floats(-1.0, 1.0))
    if weighted:
        w = tuple(10.0 ** draw(_floats(-1.0, 1.0)) for _ in range(2))
    else:
        w = (1.0, 1.0)
    pool, alpha = _cast(dtype, pool), _cast(dtype, alpha)
    w = tuple(_cast(dtype, v) for v in w)
    X = float(rb.cost_inv_np(pool, alpha, cost))
    Y = float(rb.cost_inv_np(pool - 1.0, alpha, cost)) if pool > 1.0 else None
    shape = draw(st.sampled_from(["independent"] * 3 + ["diagonal", "ridge", "ridge"]))
    if shape == "independent":
        t = (_coordinate(draw, dtype, X, Y), _coordinate(draw, dtype, X, Y))
    elif shape == "diagonal":  # exact ties for the seed cost with equal weights
        v = draw(_floats(0.0, 2.0 * X + 1.0))
        t = (v, v * (1.0 + draw(st.sampled_from([0.0, _small_offset(draw, dtype)]))))
    else:  # next to where the argmin switches piece (located on a coarse sampling)
        a = np.array([draw(_floats(0.0, 2.0 * X + 1.0)) for _ in range(2)])
        b = np.array([draw(_floats(0.0, 2.0 * X + 1.0)) for _ in range(2)])

        def label(u):
            return _piece(rb.coarse_argmin(*(a + u * (b - a)), pool, alpha, cost, *w))

        lo, hi = 0.0, 1.0
        if label(lo) != label(hi):
            for _ in range(24):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if label(mid) == label(lo) else (lo, mid)
        u = 0.5 * (lo + hi) + draw(st.sampled_from([0.0, _small_offset(draw, dtype)]))
        t = tuple(a + u * (b - a))
    t = tuple(_cast(dtype, v) for v in t)
    return dict(t_T=t[0], t_E=t[1], pool=pool, alpha=alpha, w_T=w[0], w_E=w[1])


# --------------------------------------------------------------------------------------
# The library, one jitted call per batch.


@functools.cache
def _library(cost, weighted):
    def call(t_T, t_E, pool, alpha, w_T, w_E):
        return nj.project_budget(
            t_T,
            t_E,
            pool=pool,
            alpha=alpha,
            cost=cost,
            weights=(w_T, w_E) if weighted else None,
        )

    return jax.jit(call)


def _run_library(cases, dtype, cost, weighted):
    """The library on a list of cases, in jitted calls of exactly BATCH cases (padded by
    repeating the last), so that each (cost, dtype, weighting) compiles once."""
    n = len(cases)
    padded = list(cases) + [cases[-1]] * (-n % BATCH)
    parts = []
    for start in range(0, len(padded), BATCH):
        chunk = padded[start : start + BATCH]
        cols = [
            jnp.asarray(np.array([c[k] for c in chunk], dtype=dtype))
            for k in ("t_T", "t_E", "pool", "alpha", "w_T", "w_E")
        ]
        out = _library(cost, weighted)(*cols)
        for name in out._fields:
            assert getattr(out, name).dtype == dtype, (name, getattr(out, name).dtype)
            assert getattr(out, name).shape == (BATCH,)
        parts.append(out)
    return {
        name: np.concatenate([np.asarray(getattr(o, name), np.float64) for o in parts])[:n]
        for name in parts[0]._fields
    }


def _check_case(case, got, dtype, cost):
    """List of complaints (empty when the library's answer for one case is acceptable)."""
    tol = TOL[dtype]
    ref = rb.solve_region(**case, cost=cost)
    x = (got["x_T"], got["x_E"])
    bad = []
    scale = max(1.0, case["w_T"] * abs(case["t_T"]), case["w_E"] * abs(case["t_E"]))
    if not all(math.isfinite(v) for v in (*x, got["spent"], got["price"])):
        return [f"non-finite output {got}"]
    if min(x) < 0:
        bad.append(f"negative x {x}")
    spent = float(np.sum(rb.cost_np(np.array(x), case["alpha"], cost)))
    if spent > case["pool"] * (1 + tol["feas"]):
        bad.append(f"infeasible: spent {spent!r} > pool {case['pool']!r}")
    if abs(got["spent"] - spent) > tol["feas"] * max(1.0, spent):
        bad.append(f"reported spent {got['spent']!r} != c(x_T) + c(x_E) = {spent!r}")
    if ref.feasible_target:
        if x != (ref.x_T, ref.x_E) or got["price"] != 0:
            bad.append(f"feasible target changed: x={x} price={got['price']}")
        return bad
    excess = ref.objective_excess(*x)
    if excess > tol["obj"] * scale:
        bad.append(f"objective {excess:.3g} above the reference's")
    tie = ref.tie_gap <= tol["tie"] * scale
    err = max(abs(x[0] - ref.x_T), abs(x[1] - ref.x_E))
    if not tie and err > tol["x"]:
        bad.append(f"argmin off by {err:.3g}: lib {x} ref {(ref.x_T, ref.x_E)}")
    if got["price"] < 0:
        bad.append(f"negative price {got['price']}")
    slopes = rb.dcost_np(np.array([v for v in x if v > 0]), case["alpha"], cost)
    if not tie and slopes.size and slopes.max() >= 0.05:
        if abs(got["price"] - ref.price) > tol["price"] * max(1.0, ref.price):
            bad.append(f"price {got['price']!r} vs reference {ref.price!r}")
    return bad


def _check_batch(cases, dtype, cost, weighted):
    got = _run_library(cases, dtype, cost, weighted)
    failures = []
    for k, case in enumerate(cases):
        bad = _check_case(case, {n: float(v[k]) for n, v in got.items()}, dtype, cost)
        if bad:
            failures.append(
                f"project_budget({case['t_T']!r}, {case['t_E']!r}, pool={case['pool']!r}, "
                f"alpha={case['alpha']!r}, cost={cost!r}, weights=({case['w_T']!r}, "
                f"{case['w_E']!r}), dtype={dtype.__name__}): " + "; ".join(bad)
            )
    assert not failures, f"{len(failures)} bad cases:\n" + "\n".join(failures[:10])


@pytest.mark.parametrize("weighted", [False, True], ids=["equal", "weighted"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cost", ["seed", "convex"])
def test_matches_reference(cost, dtype, weighted):
    @SETTINGS
    @given(st.lists(region_case(dtype, cost, weighted), min_size=BATCH, max_size=BATCH))
    def run(cases):
        _check_batch(cases, dtype, cost, weighted)

    run()


# --------------------------------------------------------------------------------------
# Hand-picked cases: the note's numbers and the exact ties of the seed cost.


def test_note_numbers():
    # DESIGN.md section 2: with B = 1.5 and alpha = 2, x_T = 1.5 spends the whole pool and
    # x_T = 1.2 leaves 0.42 for Emrakul (seed cost).
    c = nj.overdrive_cost(jnp.array([0.5, 1.0, 1.2, 1.5]), 2.0)
    np.testing.assert_allclose(c, [0.5, 1.0, 1.08, 1.5], rtol=0, atol=1e-15)
    # the defaults are the note's pool and alpha (and the seed cost)
    a = jax.jit(nj.project_budget)(jnp.array([1.5, 1.2, 1.2]), jnp.array([0.0, 0.4, 5.0]))
    assert a.x_T[:2].tolist() == [1.5, 1.2] and a.x_E[:2].tolist() == [0.0, 0.4]
    assert a.price[:2].tolist() == [0.0, 0.0]
    ref = rb.solve_region(1.2, 5.0, 1.5, 2.0, "seed")
    assert abs(float(a.x_T[2]) - ref.x_T) <= 1e-12 and abs(float(a.x_E[2]) - ref.x_E) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_exact_diagonal_ties_pick_a_best_point(dtype):
    # Equal weights and t_T == t_E: the seed problem is symmetric, so a solution off the
    # diagonal has an equally good mirror image. Any of them is acceptable.
    cases = [
        dict(t_T=_cast(dtype, t), t_E=_cast(dtype, t), pool=pool, alpha=alpha, w_T=1.0, w_E=1.0)
        for pool in (0.5, 1.0, 1.5, 2.0, 3.0)
        for alpha in (0.1, 0.5, 2.0, 10.0)
        for t in np.linspace(0.0, 6.0, 25)
    ]
    _check_batch(cases, dtype, "seed", False)


# Cases that once failed, kept as fixed regression checks (same compiled batch functions).
REGRESSIONS = [
    # (cost, dtype, weighted, t_T, t_E, pool, alpha, w_T, w_E)
    # argmin candidates tie in float32; x_T and x_E came from different candidates
    ("seed", np.float32, True, 2.7918899059295654, 0.9101616740226746, 1.5,
     0.1779506802558899, 5.036199569702148, 1.079813838005066),
    ("convex", np.float32, True, 2.2166318893432617, 1.5488271713256836, 2.0, 2.0,
     3.1622776985168457, 7.004228591918945),
    # x_E = 5.6e-17 instead of 0 under jit; the price then mixed in the E coordinate
    ("convex", np.float64, False, 2.9019272904506614, 0.500000075, 1.5, 2.0, 1.0, 1.0),
]  # fmt: skip


@pytest.mark.parametrize("case", REGRESSIONS, ids=[f"{c[0]}-{c[1].__name__}" for c in REGRESSIONS])
def test_regressions(case):
    cost, dtype, weighted, *v = case
    keys = ("t_T", "t_E", "pool", "alpha", "w_T", "w_E")
    _check_batch([dict(zip(keys, v, strict=True))], dtype, cost, weighted)


# --------------------------------------------------------------------------------------
# The reference against brute force.


def _rays(case, cost, n=20001):
    """Best point on the budget curve among n rays from the origin (bisection on each)."""
    th = np.linspace(0.0, np.pi / 2, n)
    ct, st_ = np.cos(th), np.sin(th)
    lo = np.zeros(n)
    hi = np.full(n, 2.0 * float(rb.cost_inv_np(case["pool"], case["alpha"], cost)) + 1.0)
    lin = (lambda x: np.minimum(x, 1.0)) if cost == "seed" else (lambda x: x)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        xT, xE = mid * ct, mid * st_
        # c(x_T) + c(x_E) - pool, summed so that a tiny overdrive is not lost to rounding
        over = np.maximum(xT - 1.0, 0.0) ** 2 + np.maximum(xE - 1.0, 0.0) ** 2
        ok = (lin(xT) + lin(xE) - case["pool"]) + case["alpha"] * over <= 0.0
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    xT, xE = lo * ct, lo * st_
    xT[-1], xE[0] = 0.0, 0.0
    tc = np.maximum([case["t_T"], case["t_E"]], 0.0)
    g = case["w_T"] * xT * (0.5 * xT - tc[0]) + case["w_E"] * xE * (0.5 * xE - tc[1])
    k = int(np.argmin(g))
    return float(xT[k]), float(xE[k])


@pytest.mark.parametrize("cost", ["seed", "convex"])
def test_reference_beats_brute_force(cost):
    @settings(SETTINGS, max_examples=40)
    @given(region_case(np.float64, cost, weighted=True))
    def run(case):
        ref = rb.solve_region(**case, cost=cost)
        if ref.feasible_target:
            return
        x = _rays(case, cost)
        # Every ray point is feasible, so none may beat the reference...
        assert ref.objective_excess(*x) >= -1e-12 * max(1.0, abs(ref.objective))
        # ...and away from ties the best ray point is close to the reference's answer.
        if ref.tie_gap > 1e-6 * max(1.0, abs(ref.objective)):
            assert max(abs(x[0] - ref.x_T), abs(x[1] - ref.x_E)) < 2e-3
        # The reference's own answer is feasible to working precision and stationary.
        assert ref.spent <= case["pool"] * (1 + 1e-15)

    run()
