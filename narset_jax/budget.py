"""The budget: overdrive cost models and exact projections onto the feasible set.

Per region Narset picks intensities ``(x_T, x_E)`` subject to

    c(x_T) + c(x_E) <= pool,   x >= 0

with one of two cost models (selected by name):

* ``"seed"`` (default): the design note's literal formula, ``c(x) = x`` for ``x <= 1`` and
  ``c(x) = 1 + alpha (x - 1)^2`` above. Its slope drops from 1 to 0 at ``x = 1``, so it is
  *not* convex and the feasible set is non-convex near ``x = 1``.
* ``"convex"``: ``c(x) = x + alpha max(x - 1, 0)^2``.

The projection is solved exactly in closed form by enumerating the smooth pieces of the
budget curve and comparing objectives; see ``docs/budget.md`` for the derivation of every
case. Gradients come from the KKT conditions (a ``custom_jvp``), so they are exact away from
the measure-zero set where the argmin jumps between pieces.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

COSTS = ("seed", "convex")

__all__ = [
    "COSTS",
    "Allocation",
    "GlobalAllocation",
    "overdrive_cost",
    "project_budget",
    "project_global_pool",
    "project_fixed_sum",
    "map_blocks",
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


def _check_cost(cost: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_positive(name: str, value) -> None:
    if value is None or not _is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
        raise ValueError(f"{name} must be finite and > 0, got {bad!r}")


def _float_dtype(*xs):
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


# ---------------------------------------------------------------------------------------
# The cost models and their pieces. ``u = x - 1 >= 0`` is the overdrive amount and
# ``g(u) = c(1 + u) - 1`` the overdrive part of the cost.


def overdrive_cost(x, alpha, cost: str = "seed"):
    """The cost ``c(x)`` of an intensity, elementwise.

    **Arguments:**

    - ``x``: intensities (any shape).
    - ``alpha``: overdrive curvature, ``> 0`` (broadcastable to ``x``).
    - ``cost``: ``"seed"`` (``1 + alpha (x-1)^2`` above 1, the note's formula) or
      ``"convex"`` (``x + alpha max(x-1, 0)^2``).

    **Returns:** ``c(x)``, with the shape and dtype of ``x``.
    """
    _check_cost(cost)
    _check_positive("alpha", alpha)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(_float_dtype(x))
    return _cost(x, jnp.asarray(alpha, x.dtype), cost)


def _cost(x, alpha, cost):
    over = jnp.maximum(x - 1, 0)
    base = jnp.minimum(x, 1) if cost == "seed" else x
    return base + alpha * over * over


def _dcost(x, alpha, cost):
    """c'(x) (left derivative at the seed cost's kink)."""
    over = jnp.maximum(x - 1, 0)
    if cost == "seed":
        return jnp.where(x > 1, 2 * alpha * over, jnp.ones_like(x))
    return 1 + 2 * alpha * over


def _g(u, alpha, cost):
    return alpha * u * u if cost == "seed" else u + alpha * u * u


def _ginv(y, alpha, cost):
    """The u >= 0 with g(u) = y, for y >= 0."""
    y = jnp.maximum(y, 0)
    if cost == "seed":
        return jnp.sqrt(y / alpha)
    return 2 * y / (1 + jnp.sqrt(1 + 4 * alpha * y))


def _cinv(y, alpha, cost):
    """The x >= 0 with c(x) = y, for y >= 0."""
    y = jnp.maximum(y, 0)
    return jnp.where(y <= 1, y, 1 + _ginv(y - 1, alpha, cost))


# ---------------------------------------------------------------------------------------
# Closed-form pieces.


# XLA's CPU backend lowers acos, cos and cbrt to scalar library calls (about 25, 7 and 24 ns
# per element here, against 0.4 ns for exp); these vectorisable forms are accurate to
# ~1e-8 and every root they seed is polished by Newton steps to machine precision.
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
         0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)  # A&S 4.4.46


def _terms(x, f64, f32):
    """Iteration or series counts by precision: float64 needs more than float32."""
    return f64 if x.dtype == jnp.float64 else f32


def _acos(z):
    """arccos on [-1, 1], absolute error <= 2e-8 (Abramowitz & Stegun 4.4.46)."""
    x = jnp.abs(z)
    poly = jnp.zeros_like(x)
    for coef in reversed(_ACOS):
        poly = poly * x + coef
    r = jnp.sqrt(jnp.maximum(1 - x, 0)) * poly
    return jnp.where(z < 0, jnp.pi - r, r)


def _cos_sin(y):
    """(cos y, sin y) for y in [0, pi/3] by Taylor series (error < 1e-10 in float64,
    < 5e-7 in float32, where fewer terms are summed)."""
    y2 = y * y
    c = jnp.ones_like(y)
    s = jnp.ones_like(y)
    for k in range(_terms(y, 6, 4), 0, -1):  # float64: cos to y^12, sin to y^13
        c = 1 - y2 / ((2 * k - 1) * (2 * k)) * c
        s = 1 - y2 / ((2 * k) * (2 * k + 1)) * s
    return c, y * s


def _cbrt(y):
    """Real cube root, via exp/log and one Newton step."""
    a = jnp.abs(y)
    pos = a > 0
    safe = jnp.where(pos, a, 1)
    r = jnp.exp(jnp.log(safe) / 3)
    r = r - (r * r * r - safe) / (3 * r * r)
    return jnp.where(pos, jnp.sign(y) * r, 0)


def _cubic_extreme_roots(b, c, d):
    """Smallest and largest real roots of the monic cubic ``u^3 + b u^2 + c u + d``.

    Trigonometric form when there are three real roots, Cardano's (cancellation-free form)
    when there is one; then two Newton steps polish each root to machine precision.
    """
    s = b / 3
    p = c - b * s
    q = d - s * c + 2 * s * s * s
    m = jnp.sqrt(jnp.maximum(-p / 3, 0))
    m3 = m * m * m
    three = (p < 0) & (jnp.abs(q) / 2 < m3)
    safe_m3 = jnp.where(three, m3, 1)
    cos3, sin3 = _cos_sin(_acos(jnp.clip(-q / (2 * safe_m3), -1, 1)) / 3)
    hi3 = 2 * m * cos3
    lo3 = -m * (cos3 + jnp.sqrt(3.0).astype(m.dtype) * sin3)  # 2m cos(phi/3 + 2 pi/3)
    disc = jnp.maximum(q * q / 4 + p * p * p / 27, 0)
    big = -_cbrt(jnp.abs(q) / 2 + jnp.sqrt(disc)) * jnp.sign(q)
    one = big + jnp.where(big != 0, -p / (3 * jnp.where(big != 0, big, 1)), 0)
    roots = []
    for v in (jnp.where(three, lo3, one), jnp.where(three, hi3, one)):
        for _ in range(_terms(v, 2, 1)):
            f = (v * v + p) * v + q
            df = 3 * v * v + p
            step = f / jnp.where(df != 0, df, 1)
            ok = (df != 0) & (jnp.abs(step) <= 0.25 * (1 + jnp.abs(v)))
            v = jnp.where(ok, v - step, v)
        roots.append(v - s)
    return roots[0], roots[1]


def _over_lin_candidates(t_o, t_l, w_o, w_l, B, alpha, cost):
    """Candidates on the piece where one agent is in overdrive and the other linear.

    With ``x_o = 1 + u`` and ``x_l = B - 1 - g(u)``, stationarity of the objective along
    the piece is a cubic in ``u``; the piece's minimum is at the clipped smallest or
    largest real root (docs/budget.md, case OL).
    """
    a = t_o - 1
    C = B - 1 - t_l
    k3 = 2 * alpha * alpha * w_l
    if cost == "seed":
        b = jnp.zeros_like(a)
        c = (w_o - 2 * alpha * w_l * C) / k3
        d = -w_o * a / k3
    else:
        b = 3 * alpha * w_l / k3
        c = (w_o - w_l * (2 * alpha * C - 1)) / k3
        d = -(w_o * a + w_l * C) / k3
    lo_root, hi_root = _cubic_extreme_roots(b, c, d)
    u_lo = _ginv(B - 2, alpha, cost)
    u_hi = _ginv(B - 1, alpha, cost)
    valid = B > 1
    out = []
    for r in (lo_root, hi_root):
        u = jnp.clip(r, u_lo, u_hi)
        # At the upper end the linear agent is exactly at 0 (not at rounding noise,
        # which would make it look active to the KKT price).
        x_l = jnp.where(r >= u_hi, 0, jnp.maximum(B - 1 - _g(u, alpha, cost), 0))
        out.append((1 + u, x_l, valid))
    return out


def _circle(B, alpha, cost):
    """Both in overdrive: the piece is an arc of a circle in ``u``-space.

    Returns its centre offset ``h`` (centre at ``(-h, -h)``) and radius ``R``.
    """
    h = jnp.zeros_like(B) if cost == "seed" else 1 / (2 * alpha)
    R = jnp.sqrt(jnp.maximum((B - 2) / alpha + 2 * h * h, 0))
    return h, R


def _radial_candidate(t_T, t_E, B, alpha, cost):
    """Equal weights, both in overdrive: the radial projection onto the circle."""
    h, R = _circle(B, alpha, cost)
    vT = t_T - 1 + h
    vE = t_E - 1 + h
    nrm = jnp.sqrt(vT * vT + vE * vE)
    scale = R / jnp.where(nrm > 0, nrm, 1)
    uT = vT * scale - h
    uE = vE * scale - h
    valid = (B > 2) & (nrm > 0) & (uT >= 0) & (uE >= 0)
    return [(1 + uT, 1 + uE, valid)]


def _weighted_circle_candidates(t_T, t_E, w_T, w_E, B, alpha, cost, iters):
    """Unequal weights, both in overdrive: every stationary point of the weighted distance
    on the circle (the secular equation, a quartic), found by safeguarded Newton.

    With ``v = u + h`` (circle centred at the origin, radius ``R``) and ``b = t - 1 + h``,
    stationary points are ``v_i = w_i b_i / (w_i + mu)`` with ``sum v_i^2 = R^2``. Write
    ``m`` for the smaller weight and ``M`` for the larger, ``D = w_M - w_m``:

    * the global minimum on the circle has ``mu > -w_m`` (one root; Newton on
      ``1/R - 1/|v|`` from a lower bound converges monotonically);
    * ``mu`` in ``(-w_M, -w_m)`` holds 0 or 2 roots (one a local minimum), present iff
      ``(A_m + A_M)^{3/2} < D R`` with ``A_i = (w_i |b_i|)^{2/3}``;
    * the "hard case" ``mu = -w_m`` (only when ``b_m = 0``) is added explicitly.
    """
    h, R = _circle(B, alpha, cost)
    bT = t_T - 1 + h
    bE = t_E - 1 + h
    swap = w_T > w_E
    wm, wM = jnp.where(swap, w_E, w_T), jnp.where(swap, w_T, w_E)
    bm, bM = jnp.where(swap, bE, bT), jnp.where(swap, bT, bE)
    D = wM - wm
    gm, gM = wm * bm, wM * bM
    Rs = jnp.where(R > 0, R, 1)
    tiny = jnp.finfo(t_T.dtype).tiny
    eps = jnp.finfo(t_T.dtype).eps

    def psi(delta_m, delta_M):
        vm, vM = gm / delta_m, gM / delta_M
        nv = jnp.sqrt(vm * vm + vM * vM)
        f = 1 / Rs - 1 / nv
        df = -(vm * vm / delta_m + vM * vM / delta_M) / (nv * nv * nv)
        return f, df

    cands = []
    # 1. Global minimum: delta = w_m + mu > 0. psi is convex and decreasing there.
    delta = jnp.maximum(jnp.abs(gm) / Rs, jnp.abs(gM) / Rs - D)
    delta = jnp.maximum(delta, tiny)
    def newton_global(_, delta):
        f, df = psi(delta, D + delta)
        return jnp.maximum(delta - f / jnp.where(df != 0, df, -1), tiny)

    delta = jax.lax.fori_loop(0, iters, newton_global, delta)
    cands.append((gm / delta, gM / (D + delta)))
    # 2. Interior roots: eta = -(w_m + mu) in (0, D), on either side of the minimiser of
    # |v|^2, eta* = D A_m / (A_m + A_M).
    Am = _cbrt(gm * gm)
    AM = _cbrt(gM * gM)
    has_two = (D > 0) & ((Am + AM) * jnp.sqrt(Am + AM) < D * R)
    Ds = jnp.where(D > 0, D, 1)
    eta_star = Ds * Am / jnp.where(Am + AM > 0, Am + AM, 1)
    for lo, hi, sign in ((jnp.zeros_like(D), eta_star, 1), (eta_star, Ds, -1)):
        # psi(eta) = 1/R - 1/|v|: +1/R at the poles, negative at eta* when has_two.
        # On (0, eta*) psi decreases, on (eta*, D) it increases.
        def safeguarded(_, carry, sign=sign):
            eta, lo, hi = carry
            f, df = psi(-eta, D - eta)
            df = -df  # d/d(eta) = -d/d(delta)
            pos = sign * f > 0  # root lies to the right of eta
            lo = jnp.where(pos, eta, lo)
            hi = jnp.where(pos, hi, eta)
            newton = eta - f / jnp.where(df != 0, df, 1)
            inside = (newton > lo) & (newton < hi) & jnp.isfinite(newton)
            return jnp.where(inside, newton, (lo + hi) / 2), lo, hi

        lo, hi = jnp.broadcast_arrays(lo, hi)
        eta, lo, hi = jax.lax.fori_loop(0, iters, safeguarded, ((lo + hi) / 2, lo, hi))
        safe = jnp.where(has_two, eta, Ds / 2)
        cands.append((-gm / jnp.where(safe > 0, safe, 1), gM / (Ds - safe)))
    # 3. Hard case, mu = -w_m: v_M fixed, v_m = +-sqrt(R^2 - v_M^2).
    vM = gM / Ds
    rest = R * R - vM * vM
    root = jnp.sqrt(jnp.maximum(rest, 0))
    hard_ok = (D > 0) & (rest >= 0)
    cands.append((root, jnp.where(hard_ok, vM, jnp.inf)))
    cands.append((-root, jnp.where(hard_ok, vM, jnp.inf)))

    out = []
    for vm, vM in cands:
        vT = jnp.where(swap, vM, vm)
        vE = jnp.where(swap, vm, vM)
        uT, uE = vT - h, vE - h
        on_circle = jnp.abs(jnp.sqrt(vT * vT + vE * vE) - R) <= 64 * eps * (1 + R)
        valid = (B > 2) & on_circle & (uT >= 0) & (uE >= 0) & (D > 0)
        out.append((1 + uT, 1 + uE, valid))
    # Equal weights (D == 0): the radial projection is exact.
    xT, xE, ok = _radial_candidate(t_T, t_E, B, alpha, cost)[0]
    out.append((xT, xE, ok & (D == 0)))
    return out


def _boundary_candidates(t_T, t_E, w_T, w_E, B, alpha, cost, weighted):
    """Every candidate minimiser on the budget curve ``c(x_T) + c(x_E) = B``."""
    X = _cinv(B, alpha, cost)
    J = _cinv(B - 1, alpha, cost)
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
    cands += _over_lin_candidates(t_T, t_E, w_T, w_E, B, alpha, cost)
    swapped = _over_lin_candidates(t_E, t_T, w_E, w_T, B, alpha, cost)
    cands += [(xT, xE, ok) for xE, xT, ok in swapped]
    # Both in overdrive.
    if weighted:
        iters = 40 if t_T.dtype == jnp.float64 else 30
        cands += _weighted_circle_candidates(t_T, t_E, w_T, w_E, B, alpha, cost, iters)
    else:
        cands += _radial_candidate(t_T, t_E, B, alpha, cost)
    return cands


# Beyond this target magnitude the cubic's coefficients would overflow when cubed; the
# target is shrunk radially to it (the projection of a far target converges to the support
# point in its direction at rate O(1/|t|), far below the working precision here).
_TARGET_CAP = {np.dtype(np.float32): 1e8, np.dtype(np.float64): 1e30, np.dtype(np.float16): 1e3}


def _solve(cost, weighted, t_T, t_E, B, alpha, w_T, w_E):
    """Forward solve. Inputs are broadcast, finite-sanitised and clipped at 0."""
    feasible = _cost(t_T, alpha, cost) + _cost(t_E, alpha, cost) <= B
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
    x_T = jnp.where(feasible, t_T, best_T)
    x_E = jnp.where(feasible, t_E, best_E)
    price = jnp.where(feasible, 0, _kkt_price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost))
    return x_T, x_E, price


def _kkt_price(t_T, t_E, x_T, x_E, w_T, w_E, alpha, cost):
    """Least-squares KKT multiplier over the coordinates with ``x > 0``."""
    cT = jnp.where(x_T > 0, _dcost(x_T, alpha, cost), 0)
    cE = jnp.where(x_E > 0, _dcost(x_E, alpha, cost), 0)
    num = w_T * (t_T - x_T) * cT + w_E * (t_E - x_E) * cE
    den = cT * cT + cE * cE
    return jnp.maximum(num / jnp.where(den > 0, den, 1), 0)


@jax.custom_jvp
def _project_core(cost, weighted, t_T, t_E, B, alpha, w_T, w_E):
    return _solve(cost, weighted, t_T, t_E, B, alpha, w_T, w_E)


_project_core = jax.custom_jvp(_project_core.fun, nondiff_argnums=(0, 1))


@_project_core.defjvp
def _project_core_jvp(cost, weighted, primals, tangents):
    """Tangents from the KKT system on the active set (docs/budget.md, "Gradients")."""
    t_T, t_E, B, alpha, w_T, w_E = primals
    dt_T, dt_E, dB, dalpha, dw_T, dw_E = tangents
    x_T, x_E, lam = _solve(cost, weighted, t_T, t_E, B, alpha, w_T, w_E)
    active = lam > 0
    aT, aE = x_T > 0, x_E > 0
    oT, oE = jnp.maximum(x_T - 1, 0), jnp.maximum(x_E - 1, 0)
    cT = jnp.where(aT, _dcost(x_T, alpha, cost), 0)
    cE = jnp.where(aE, _dcost(x_E, alpha, cost), 0)
    hT = w_T + lam * 2 * alpha * (x_T > 1)
    hE = w_E + lam * 2 * alpha * (x_E > 1)
    rT = w_T * dt_T + dw_T * (t_T - x_T) - lam * 2 * oT * dalpha
    rE = w_E * dt_E + dw_E * (t_E - x_E) - lam * 2 * oE * dalpha
    s = dB - (oT * oT + oE * oE) * dalpha
    den = cT * cT / hT + cE * cE / hE
    dlam = (cT * rT / hT + cE * rE / hE - s) / jnp.where(den > 0, den, 1)
    dx_T_act = jnp.where(aT, (rT - cT * dlam) / hT, 0)
    dx_E_act = jnp.where(aE, (rE - cE * dlam) / hE, 0)
    dx_T = jnp.where(active, dx_T_act, jnp.where(t_T > 0, dt_T, 0))
    dx_E = jnp.where(active, dx_E_act, jnp.where(t_E > 0, dt_E, 0))
    dlam = jnp.where(active, dlam, 0)
    return (x_T, x_E, lam), (dx_T, dx_E, dlam)


def _prepare(target_T, target_E, pool, alpha, weights):
    """Cast the inputs to one float dtype; broadcast the targets; sanitise them
    (non-finite -> 0, clip at 0). ``pool``, ``alpha`` and the weights keep their own
    (broadcastable) shapes, so scalar hyperparameters are not expanded to ``[N]``."""
    dtype = _float_dtype(target_T, target_E)
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


def project_budget(
    target_T, target_E, *, pool=1.5, alpha=2.0, cost="seed", weights=None, block_size="auto"
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
    - ``cost``: ``"seed"`` or ``"convex"``.
    - ``weights``: ``(w_T, w_E)``, each ``> 0``, or ``None`` for equal weights.
    - ``block_size``: see :func:`map_blocks` (``"auto"``: cache-sized blocks for large
      inputs; ``None``: one fused computation).

    **Returns:** an :class:`Allocation` with ``x_T``, ``x_E``, ``spent`` and ``price``.

    ```python
    >>> a = project_budget(1.5, 0.5)
    >>> float(a.x_T), float(a.x_E)  # doctest: +SKIP
    ```
    """
    _check_cost(cost)
    _check_positive("pool", pool)
    _check_positive("alpha", alpha)
    if weights is not None:
        if len(weights) != 2:
            raise ValueError("weights must be a pair (w_T, w_E)")
        _check_positive("weights[0] (w_T)", weights[0])
        _check_positive("weights[1] (w_E)", weights[1])
    t_T, t_E, B, a, w_T, w_E = _prepare(target_T, target_E, pool, alpha, weights)
    weighted = weights is not None

    def solve(t_T, t_E, B, a, w_T, w_E):
        x_T, x_E, price = _project_core(cost, weighted, t_T, t_E, B, a, w_T, w_E)
        return Allocation(x_T, x_E, _cost(x_T, a, cost) + _cost(x_E, a, cost), price)

    return map_blocks(solve, t_T, t_E, B, a, w_T, w_E, block_size=block_size)


def map_blocks(fn, *args, block_size="auto"):
    """Apply an elementwise ``fn`` in cache-sized blocks (a ``lax.map`` over blocks).

    XLA's CPU backend does not fuse the projection into one loop: an expensive value
    (a division or square root) with several consumers is materialised, so a large input
    makes ~30 passes over main memory. Processing ``block_size`` elements at a time keeps
    those intermediates in cache (about 1.7x faster at N = 1e6 on the 2-core CPU; see
    ``benchmarks/projection.py``). Inputs with at most ``2 * block_size`` elements, or
    ``block_size=None``, run unblocked. Under ``jit`` with regions sharded across
    devices, call this inside ``shard_map`` (it scans over the leading block axis) or pass
    ``block_size=None``.

    **Arguments:**

    - ``fn``: elementwise function of the ``args`` returning a pytree of arrays with the
      broadcast shape.
    - ``args``: arrays, broadcastable to one shape (scalars are passed through whole).
    - ``block_size``: elements per block, ``"auto"`` (32768) or ``None`` (no blocking).
    """
    if block_size == "auto":
        block_size = _BLOCK
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in args))
    n = int(np.prod(shape, dtype=np.int64))
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


# ---------------------------------------------------------------------------------------
# Global pool: one multiplier shared by every region.


def _given_price(t, w, lam, alpha, cost):
    """``argmin_{x >= 0} 1/2 w (x - t)^2 + lam c(x)``, elementwise, in closed form."""
    lin, over = _price_pieces(t, w, lam, alpha, cost)
    if cost == "convex":
        return jnp.where(t - lam / w <= 1, lin, over)
    return jnp.where(_piece_margin(t, w, lam, alpha, lin, over) < 0, over, lin)


def _price_pieces(t, w, lam, alpha, cost):
    """The minimisers on the linear piece (``x <= 1``) and the overdrive piece."""
    lin = jnp.clip(t - lam / w, 0, 1)
    over = 1 + jnp.maximum(w * (t - 1) - (lam if cost == "convex" else 0), 0) / (
        w + 2 * alpha * lam
    )
    return lin, over


def _piece_margin(t, w, lam, alpha, lin=None, over=None):
    """Seed cost: the Lagrangian on the overdrive piece minus on the linear piece (the
    overdrive minimiser wins where this is negative). Where it changes sign as ``lam``
    grows, the coordinate jumps from one piece to the other and the total spend jumps."""
    if lin is None:
        lin, over = _price_pieces(t, w, lam, alpha, "seed")
    f_lin = w * lin * (0.5 * lin - t) + lam * _cost(lin, alpha, "seed")
    f_over = w * over * (0.5 * over - t) + lam * _cost(over, alpha, "seed")
    return f_over - f_lin


def _lagrangian_parts(t_T, t_E, w_T, w_E, lam, alpha, cost):
    x_T = _given_price(t_T, w_T, lam, alpha, cost)
    x_E = _given_price(t_E, w_E, lam, alpha, cost)
    spent = _cost(x_T, alpha, cost) + _cost(x_E, alpha, cost)
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
    convex, so the total spend can jump as ``lambda`` varies; the returned point is
    feasible and ``gap`` reports the remaining duality gap.

    **Arguments:**

    - ``target_T``, ``target_E``: ``[N]`` targets (any shape; reductions are over all).
    - ``pool_total``: the shared budget, ``> 0``.
    - ``alpha``, ``cost``, ``weights``: as in :func:`project_budget`.
    - ``iters``: bisection steps (default 60 in float64, 32 in float32).

    **Returns:** a :class:`GlobalAllocation`. Gradients (through the implicit function
    theorem on the spend equation) flow to targets, ``pool_total``, ``alpha`` and weights.
    """
    _check_cost(cost)
    _check_positive("pool_total", pool_total)
    _check_positive("alpha", alpha)
    if weights is not None:
        if len(weights) != 2:
            raise ValueError("weights must be a pair (w_T, w_E)")
        _check_positive("weights[0] (w_T)", weights[0])
        _check_positive("weights[1] (w_E)", weights[1])
    t_T, t_E, _, a, w_T, w_E = _prepare(target_T, target_E, 1.0, alpha, weights)
    dtype = t_T.dtype
    B = jnp.asarray(pool_total, dtype)
    if iters is None:
        iters = 60 if dtype == jnp.float64 else 32

    def total(lam):
        return jnp.sum(_lagrangian_parts(t_T, t_E, w_T, w_E, lam, a, cost)[2])

    sg = jax.lax.stop_gradient
    tT0, tE0, wT0, wE0, a0, B0 = (sg(v) for v in (t_T, t_E, w_T, w_E, a, B))

    def total0(lam):
        return jnp.sum(_lagrangian_parts(tT0, tE0, wT0, wE0, lam, a0, cost)[2])

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
    if cost == "seed":
        # The spend can jump down across the pool inside the final bracket (a coordinate
        # switches piece there): then the multiplier sits at that switch, not where the
        # spend equals the pool, and moves with the switching coordinates' tie
        # ``margin(lam, theta) = 0``: dlam = -(dm/dtheta) / (dm/dlam).
        margin = lambda l, t, w, a: _piece_margin(t, w, l, a)  # noqa: E731
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
    x_T, x_E, spent = _lagrangian_parts(t_T, t_E, w_T, w_E, lam, a, cost)
    # With lambda = 0 the seed cost's piece comparison is decided by rounding for targets
    # just above 1; the exact answer is the (clipped) target itself.
    x_T = jnp.where(need, x_T, t_T)
    x_E = jnp.where(need, x_E, t_E)
    spent = _cost(x_T, a, cost) + _cost(x_E, a, cost)

    def dual(l):
        xT, xE, sp = _lagrangian_parts(tT0, tE0, wT0, wE0, l, a0, cost)
        f = 0.5 * jnp.sum(wT0 * (xT - tT0) ** 2 + wE0 * (xE - tE0) ** 2)
        return f + l * (jnp.sum(sp) - B0)

    primal = 0.5 * jnp.sum(wT0 * (sg(x_T) - tT0) ** 2 + wE0 * (sg(x_E) - tE0) ** 2)
    gap = jnp.maximum(primal - jnp.maximum(dual(lo), dual(sg(lam_star))), 0)
    return GlobalAllocation(x_T, x_E, spent, lam, gap)


# ---------------------------------------------------------------------------------------
# Fixed sum: the note's original design.


def project_fixed_sum(target_T, target_E):
    """Exact Euclidean projection onto ``{x_T + x_E = 1, x >= 0}`` (the note's §5.1).

    A non-finite target component is treated as 0.

    **Returns:** an :class:`Allocation`; ``spent`` is ``x_T + x_E`` (= 1) and ``price`` is
    the multiplier of the equality constraint (negative when the targets sum below 1).
    """
    dtype = _float_dtype(target_T, target_E)
    t_T, t_E = jnp.broadcast_arrays(jnp.asarray(target_T, dtype), jnp.asarray(target_E, dtype))
    t_T = jnp.where(jnp.isfinite(t_T), t_T, 0)
    t_E = jnp.where(jnp.isfinite(t_E), t_E, 0)
    x_T = jnp.clip(0.5 * (1 + t_T - t_E), 0, 1)
    x_E = 1 - x_T
    price = jnp.where(x_T > 0, t_T - x_T, t_E - x_E)
    return Allocation(x_T, x_E, x_T + x_E, price)
