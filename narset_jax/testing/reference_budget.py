"""Slow, obviously-correct reference solvers for the budget projections (for the tests and
the projection benchmark; the library never uses them).

Plain NumPy and the standard library's ``decimal`` (60 significant digits); no JAX, and
nothing shared with ``narset_jax.budget``. The problem (DESIGN.md section 2) is

    min 1/2 * sum_i w_i (x_i - t_i)^2   s.t.   c(x_T) + c(x_E) <= B,  x >= 0

with the cost models

    "seed":   c(x) = x for x <= 1,  1 + alpha (x-1)^2 for x > 1   (non-convex feasible set)
    "convex": c(x) = x + alpha max(x-1, 0)^2.

Method, chosen to be easy to check rather than fast:

1. Clip ``t`` at 0. The feasible set is downward closed, so a coordinate with ``t_i <= 0``
   is 0 at the optimum and a feasible clipped target is the answer (price 0).
2. Otherwise the answer lies on the budget curve ``c(x_T) + c(x_E) = B``. Sample the
   curve densely twice, once parametrised by ``x_T`` and once by ``x_E`` (so the steep
   parts next to the seed cost's kinks are resolved in one of the two), add the kinks
   (``x_T = 1`` and ``x_E = 1``) and the end points on the axes, and order the samples
   along the curve.
3. Every discrete local minimum of the objective along the curve (up to a few, in
   distinct basins) is polished by golden-section search in 60-digit decimal arithmetic
   between its two neighbouring samples, in whichever coordinate moves more there.
4. The set is non-convex for the seed cost, so the polished minima are compared by
   objective (in decimal arithmetic) and the best is the answer. The objective gap to the
   best *distinct* other local minimum is reported as ``tie_gap``: tests use it to tell
   near-ties (where only the objective can be compared) from clear cases.

The multiplier (price) follows from stationarity, ``w_i (t_i - x_i) = lambda c'(x_i)``,
as a least-squares fit over the coordinates with ``x_i > 0``.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal, localcontext

import numpy as np

COSTS = ("seed", "convex")
PREC = 60  # decimal digits used for polishing and for every objective comparison
N_GRID = 10001  # samples per parametrisation (two parametrisations: 20002 + kinks)
N_POLISH = 6  # at most this many basins are polished
POLISH_TOL = Decimal("1e-24")  # golden-section bracket width at which polishing stops
DISTINCT = 1e-8  # two local minima closer than this (max norm) are the same one

_HALF = Decimal("0.5")
_INVPHI = (Decimal(5).sqrt() - 1) / 2  # 1/phi; the default 28-digit context is plenty


def _check_cost(cost):
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}")


# --------------------------------------------------------------------------------------
# The cost function, its inverse and its derivative: NumPy float64 versions (for the dense
# sampling) and Decimal versions (for polishing and for every reported number).
# --------------------------------------------------------------------------------------


def cost_np(x, alpha, cost):
    """c(x), elementwise, float64."""
    _check_cost(cost)
    x = np.asarray(x, dtype=np.float64)
    over = np.maximum(x - 1.0, 0.0)
    if cost == "seed":
        return np.where(x <= 1.0, x, 1.0 + alpha * over**2)
    return x + alpha * over**2


def cost_inv_np(y, alpha, cost):
    """The x >= 0 with c(x) = y, for y >= 0, elementwise, float64."""
    _check_cost(cost)
    y = np.asarray(y, dtype=np.float64)
    e = np.maximum(y - 1.0, 0.0)
    if cost == "seed":
        over = np.sqrt(e / alpha)
    else:  # alpha u^2 + u = e, stable root
        over = 2.0 * e / (1.0 + np.sqrt(1.0 + 4.0 * alpha * e))
    return np.where(y <= 1.0, y, 1.0 + over)


def dcost_np(x, alpha, cost):
    """c'(x), float64; at the seed cost's kink x = 1 this is the left derivative 1."""
    _check_cost(cost)
    x = np.asarray(x, dtype=np.float64)
    over = np.maximum(x - 1.0, 0.0)
    if cost == "seed":
        return np.where(x <= 1.0, 1.0, 2.0 * alpha * over)
    return 1.0 + 2.0 * alpha * over


def _cost_d(x, alpha, cost):
    if x <= 1:
        return x
    over = x - 1
    if cost == "seed":
        return 1 + alpha * over * over
    return x + alpha * over * over


def _cost_inv_d(y, alpha, cost):
    if y <= 0:
        return Decimal(0)
    if y <= 1:
        return y
    e = y - 1
    if cost == "seed":
        return 1 + (e / alpha).sqrt()
    return 1 + 2 * e / (1 + (1 + 4 * alpha * e).sqrt())


def _dcost_d(x, alpha, cost):
    if x <= 1:
        return Decimal(1)
    if cost == "seed":
        return 2 * alpha * (x - 1)
    return 1 + 2 * alpha * (x - 1)


# --------------------------------------------------------------------------------------
# Per-region projection.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegionRef:
    """Reference answer for one region. Floats are the correctly rounded float64 values of
    the 60-digit results."""

    x_T: float
    x_E: float
    price: float
    spent: float
    feasible_target: bool  # the clipped target was feasible (answer = clipped target)
    tie_gap: float  # objective of the best distinct other local minimum minus the best
    minima: tuple  # ((objective, x_T, x_E), ...) as floats, best first
    # exact inputs and results, for objective comparisons
    t: tuple
    w: tuple
    x_dec: tuple
    objective_dec: Decimal

    @property
    def objective(self) -> float:
        return float(self.objective_dec)

    def objective_excess(self, x_T, x_E) -> float:
        """f(x) - f(x_ref), evaluated exactly (60 digits) at the given float values."""
        with localcontext() as ctx:
            ctx.prec = PREC
            x = (Decimal(float(x_T)), Decimal(float(x_E)))
            return float(_objective_d(x, self.t, self.w) - self.objective_dec)


def _objective_d(x, t, w):
    return _HALF * sum(wi * (xi - ti) * (xi - ti) for xi, ti, wi in zip(x, t, w, strict=True))


def _dec(v) -> Decimal:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"reference needs finite inputs, got {v}")
    return Decimal(v)


def _curve_samples(pool, alpha, cost, n):
    """Points on the budget curve ordered from (0, X) to (X, 0), float64 [M] x 2."""
    X = float(cost_inv_np(pool, alpha, cost))
    p = np.linspace(0.0, X, n)
    kinks = [v for v in (1.0, float(cost_inv_np(max(pool - 1.0, 0.0), alpha, cost))) if v < X]
    p = np.concatenate([p, np.asarray(kinks)])
    other = cost_inv_np(np.maximum(pool - cost_np(p, alpha, cost), 0.0), alpha, cost)
    xT = np.concatenate([p, other])
    xE = np.concatenate([other, p])
    order = np.lexsort((-xE, xT))  # along the curve: x_T up, x_E down
    xT, xE = xT[order], xE[order]
    # drop the near-duplicates the two parametrisations share (their rounding noise would
    # make spurious discrete minima)
    keep = np.concatenate([[True], np.maximum(np.diff(xT), -np.diff(xE)) > 1e-9 * X])
    return xT[keep], xE[keep]


def _discrete_minima(g, n_max, spacing):
    """Indices of discrete local minima of g (end points included), best first, at most
    n_max of them and at least `spacing` samples apart."""
    left = np.concatenate([[np.inf], g[:-1]])
    right = np.concatenate([g[1:], [np.inf]])
    idx = np.flatnonzero((g <= left) & (g <= right))
    idx = idx[np.argsort(g[idx], kind="stable")]
    chosen = []
    for i in idx:
        if all(abs(int(i) - j) >= spacing for j in chosen):
            chosen.append(int(i))
            if len(chosen) == n_max:
                break
    return chosen


def solve_region(t_T, t_E, pool, alpha, cost="seed", w_T=1.0, w_E=1.0) -> RegionRef:
    """Reference projection of one region's targets onto the budget set (see module doc)."""
    _check_cost(cost)
    pool, alpha, w_T, w_E = float(pool), float(alpha), float(w_T), float(w_E)
    if not (pool > 0 and alpha > 0 and w_T > 0 and w_E > 0):
        raise ValueError("reference needs pool, alpha and weights > 0")
    with localcontext() as ctx:
        ctx.prec = PREC
        t = (_dec(t_T), _dec(t_E))
        w = (_dec(w_T), _dec(w_E))
        B, a = _dec(pool), _dec(alpha)
        tc = tuple(max(ti, Decimal(0)) for ti in t)

        def spent_d(x):
            return _cost_d(x[0], a, cost) + _cost_d(x[1], a, cost)

        if spent_d(tc) <= B:
            f = _objective_d(tc, t, w)
            return RegionRef(
                x_T=float(tc[0]),
                x_E=float(tc[1]),
                price=0.0,
                spent=float(spent_d(tc)),
                feasible_target=True,
                tie_gap=math.inf,
                minima=((float(f), float(tc[0]), float(tc[1])),),
                t=t,
                w=w,
                x_dec=tc,
                objective_dec=f,
            )

        # Dense sampling (float64), then polish in 60 digits.
        xT, xE = _curve_samples(pool, alpha, cost, N_GRID)
        tcf = np.array([float(tc[0]), float(tc[1])])
        # objective minus its constant part, which keeps huge targets well resolved
        g = w_T * xT * (0.5 * xT - tcf[0]) + w_E * xE * (0.5 * xE - tcf[1])
        starts = _discrete_minima(g, N_POLISH, spacing=20)

        X = _cost_inv_d(B, a, cost)

        def on_curve_T(p):  # point on the curve with x_T = p
            p = min(max(p, Decimal(0)), X)
            return (p, _cost_inv_d(B - _cost_d(p, a, cost), a, cost))

        def on_curve_E(p):
            p = min(max(p, Decimal(0)), X)
            return (_cost_inv_d(B - _cost_d(p, a, cost), a, cost), p)

        found = []
        for i in starts:
            x = _polish(i, xT, xE, on_curve_T, on_curve_E, lambda x: _objective_d(x, t, w))
            found.append((_objective_d(x, t, w), x))
        # the two end points on the axes are always candidates
        for x in ((Decimal(0), X), (X, Decimal(0))):
            found.append((_objective_d(x, t, w), x))
        found.sort(key=lambda fx: fx[0])

        distinct = []
        for f, x in found:
            if all(max(abs(float(x[k] - y[k])) for k in (0, 1)) > DISTINCT for _, y in distinct):
                distinct.append((f, x))
        f_best, x_best = distinct[0]
        tie_gap = float(distinct[1][0] - f_best) if len(distinct) > 1 else math.inf
        price = _price_d(x_best, t, w, a, cost)
        return RegionRef(
            x_T=float(x_best[0]),
            x_E=float(x_best[1]),
            price=float(price),
            spent=float(spent_d(x_best)),
            feasible_target=False,
            tie_gap=tie_gap,
            minima=tuple((float(f), float(x[0]), float(x[1])) for f, x in distinct),
            t=t,
            w=w,
            x_dec=x_best,
            objective_dec=f_best,
        )


def _polish(i, xT, xE, on_curve_T, on_curve_E, f, max_walk=200):
    """Local minimum of f along the curve near sample i: golden-section search between the
    neighbouring samples; if that ends on a bracket end (sample noise made i look like a
    minimum), walk one sample downhill and search again."""
    last = len(xT) - 1
    lo, hi = max(i - 1, 0), min(i + 1, last)
    x = None
    for _ in range(max_walk):
        by_T = abs(xT[hi] - xT[lo]) >= abs(xE[hi] - xE[lo])
        point, coord = (on_curve_T, xT) if by_T else (on_curve_E, xE)
        pa, pb = Decimal(float(coord[lo])), Decimal(float(coord[hi]))
        x = point(_golden(lambda p, point=point: f(point(p)), pa, pb))
        ends = (point(pa), point(pb))
        x = min((x, *ends), key=f)
        p = x[0] if by_T else x[1]
        if abs(p - pa) < POLISH_TOL and lo > 0:
            lo, hi = max(lo - 1, 0), lo + 1
        elif abs(p - pb) < POLISH_TOL and hi < last:
            lo, hi = hi - 1, min(hi + 1, last)
        else:
            break
    return x


def coarse_argmin(t_T, t_E, pool, alpha, cost="seed", w_T=1.0, w_E=1.0, n=2001):
    """Best of n samples per parametrisation of the budget curve (float64, no polishing),
    or the clipped target when it is feasible. Cheap; used to find where the argmin
    switches piece when generating test cases, never as a reference answer."""
    tc = np.maximum(np.array([t_T, t_E], np.float64), 0.0)
    if float(np.sum(cost_np(tc, alpha, cost))) <= pool:
        return float(tc[0]), float(tc[1])
    xT, xE = _curve_samples(pool, alpha, cost, n)
    g = w_T * xT * (0.5 * xT - tc[0]) + w_E * xE * (0.5 * xE - tc[1])
    k = int(np.argmin(g))
    return float(xT[k]), float(xE[k])


def _golden(f, a, b):
    """Minimiser of f on [a, b] (Decimal) by golden-section search; f unimodal there."""
    if b < a:
        a, b = b, a
    c = b - _INVPHI * (b - a)
    d = a + _INVPHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > POLISH_TOL:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INVPHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INVPHI * (b - a)
            fd = f(d)
    return (a + b) / 2


def _price_d(x, t, w, a, cost):
    """Least-squares multiplier from w_i (t_i - x_i) = lambda c'(x_i) over x_i > 0.

    At the seed kink x_i = 1 exactly c' is not defined; such a coordinate is left out
    unless it is the only positive one (then its left derivative 1 is used)."""
    active = [k for k in (0, 1) if x[k] > 0]
    if cost == "seed" and len(active) == 2:
        smooth = [k for k in active if x[k] != 1]
        active = smooth or active
    num = sum(_dcost_d(x[k], a, cost) * w[k] * (t[k] - x[k]) for k in active)
    den = sum(_dcost_d(x[k], a, cost) ** 2 for k in active)
    return max(num / den, Decimal(0))


def solve_regions(t_T, t_E, pool, alpha, cost="seed", w_T=1.0, w_E=1.0) -> list[RegionRef]:
    """solve_region over broadcast 1-D inputs."""
    t_T, t_E, pool, alpha, w_T, w_E = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64).ravel() for v in (t_T, t_E, pool, alpha, w_T, w_E))
    )
    return [
        solve_region(*(float(v[k]) for v in (t_T, t_E, pool, alpha, w_T, w_E)), cost=cost)
        for k in range(t_T.shape[0])
    ]


# --------------------------------------------------------------------------------------
# Global pool: sum over regions of c(x_T) + c(x_E) <= pool_total.
# --------------------------------------------------------------------------------------


def _lagrangian_argmin(t, w, lam, alpha, cost):
    """argmin_{x >= 0} 1/2 w (x - t)^2 + lam c(x), elementwise (float64 arrays)."""
    below = np.clip(t - lam / w, 0.0, 1.0)  # the linear part, x in [0, 1]
    if cost == "convex":
        # x > 1: w (x - t) + lam (1 + 2 alpha (x - 1)) = 0; used exactly when t - lam/w > 1
        above = (w * t - lam + 2.0 * alpha * lam) / (w + 2.0 * alpha * lam)
        return np.where(t - lam / w > 1.0, above, below)
    # seed, x >= 1: w (x - t) + 2 lam alpha (x - 1) = 0, clipped to x >= 1; compare pieces
    above = np.maximum((w * t + 2.0 * alpha * lam) / (w + 2.0 * alpha * lam), 1.0)

    def h(x):
        return 0.5 * w * (x - t) ** 2 + lam * cost_np(x, alpha, "seed")

    return np.where(h(above) < h(below), above, below)


def dual_value(t_T, t_E, pool_total, alpha, cost, lam, w_T=1.0, w_E=1.0) -> float:
    """Lagrangian dual function D(lam), a lower bound on the optimal objective for every
    lam >= 0 (weak duality, holds for the non-convex seed cost too)."""
    t_T, t_E = np.asarray(t_T, np.float64), np.asarray(t_E, np.float64)
    total = 0.0
    for t, w in ((t_T, w_T), (t_E, w_E)):
        w = np.broadcast_to(np.asarray(w, np.float64), t.shape)
        x = _lagrangian_argmin(t, w, lam, alpha, cost)
        total += float(np.sum(0.5 * w * (x - t) ** 2 + lam * cost_np(x, alpha, cost)))
    return total - lam * float(pool_total)


def objective_np(x_T, x_E, t_T, t_E, w_T=1.0, w_E=1.0) -> float:
    """Objective of an allocation, summed over regions (float64)."""
    xT, xE = np.asarray(x_T, np.float64), np.asarray(x_E, np.float64)
    tT, tE = np.asarray(t_T, np.float64), np.asarray(t_E, np.float64)
    return float(np.sum(0.5 * w_T * (xT - tT) ** 2 + 0.5 * w_E * (xE - tE) ** 2))


@dataclasses.dataclass(frozen=True)
class GlobalRef:
    x_T: np.ndarray
    x_E: np.ndarray
    spent: np.ndarray
    price: float
    objective: float


def solve_global_convex(t_T, t_E, pool_total, alpha, w_T=1.0, w_E=1.0) -> GlobalRef:
    """Global pool, convex cost: bisection on the shared multiplier (float64).

    Each region's answer given lam is the closed-form argmin of the Lagrangian; the total
    spend is continuous and non-increasing in lam, so bisection finds the lam where it
    meets the pool (or lam = 0 when the clipped targets already fit)."""
    tT, tE = np.asarray(t_T, np.float64), np.asarray(t_E, np.float64)
    wT = np.broadcast_to(np.asarray(w_T, np.float64), tT.shape)
    wE = np.broadcast_to(np.asarray(w_E, np.float64), tE.shape)

    def alloc(lam):
        xT = _lagrangian_argmin(tT, wT, lam, alpha, "convex")
        xE = _lagrangian_argmin(tE, wE, lam, alpha, "convex")
        return xT, xE, cost_np(xT, alpha, "convex") + cost_np(xE, alpha, "convex")

    xT, xE, spent = alloc(0.0)
    lam = 0.0
    if spent.sum() > pool_total:
        lo = 0.0
        hi = float(max(np.max(wT * tT), np.max(wE * tE), 0.0)) + 1.0  # spend 0 here
        for _ in range(2000):
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            if alloc(mid)[2].sum() > pool_total:
                lo = mid
            else:
                hi = mid
        lam = hi  # the feasible side
        xT, xE, spent = alloc(lam)
    return GlobalRef(
        x_T=xT,
        x_E=xE,
        spent=spent,
        price=lam,
        objective=objective_np(xT, xE, tT, tE, wT, wE),
    )


def max_dual(t_T, t_E, pool_total, alpha, cost, w_T=1.0, w_E=1.0, iters=200):
    """(lam, D(lam)) maximising the concave dual function, by golden-section search."""
    tT, tE = np.asarray(t_T, np.float64), np.asarray(t_E, np.float64)
    hi = float(max(np.max(np.asarray(w_T) * tT), np.max(np.asarray(w_E) * tE), 0.0)) + 1.0

    def D(lam):
        return dual_value(tT, tE, pool_total, alpha, cost, lam, w_T, w_E)

    a, b = 0.0, hi
    r = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = D(c), D(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = D(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = D(d)
    lam = 0.5 * (a + b)
    cands = [(D(v), v) for v in (0.0, lam)]
    best = max(cands)
    return best[1], best[0]


# --------------------------------------------------------------------------------------
# Fixed sum: x_T + x_E = 1, x >= 0, equal weights.
# --------------------------------------------------------------------------------------


def solve_fixed_sum(t_T, t_E):
    """Euclidean projection onto the segment {x_T + x_E = 1, x >= 0}, float64.

    Returns (x_T, x_E, price) where price is the equality multiplier nu in
    x - t + nu = 0 on the positive coordinates, i.e. nu = t_i - x_i (may be negative)."""
    tT, tE = np.asarray(t_T, np.float64), np.asarray(t_E, np.float64)
    xT = np.clip(0.5 * (1.0 + tT - tE), 0.0, 1.0)
    xE = 1.0 - xT
    price = np.where(xT > 0, tT - xT, tE - xE)
    return xT, xE, price
