"""Closed-form pieces that cost models build their budget-curve candidates from.

* Real roots of a cubic (the stationarity condition on a piece where one agent is in
  overdrive and the other linear, when the overdrive part ``g`` is quadratic).
* The both-in-overdrive piece when ``g(u_T) + g(u_E) = B - 2`` is a circle in ``u``
  (``g`` quadratic): the radial projection (equal weights) and every stationary point of
  the weighted distance (the secular equation).

They know nothing of a particular cost: a model passes its own coefficients, or itself
(for ``model.circle(B, alpha)``). See ``docs/budget.md`` for the derivations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "acos",
    "cbrt",
    "circle_candidates",
    "cos_sin",
    "cubic_extreme_roots",
    "radial_candidate",
    "terms",
    "weighted_circle_candidates",
]


# XLA's CPU backend lowers acos, cos and cbrt to scalar library calls (about 25, 7 and 24 ns
# per element here, against 0.4 ns for exp); these vectorisable forms are accurate to
# ~1e-8 and every root they seed is polished by Newton steps to machine precision.
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
         0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)  # A&S 4.4.46


def terms(x, f64, f32):
    """Iteration or series counts by precision: float64 needs more than float32."""
    return f64 if x.dtype == jnp.float64 else f32


def acos(z):
    """arccos on [-1, 1], absolute error <= 2e-8 (Abramowitz & Stegun 4.4.46)."""
    x = jnp.abs(z)
    poly = jnp.zeros_like(x)
    for coef in reversed(_ACOS):
        poly = poly * x + coef
    r = jnp.sqrt(jnp.maximum(1 - x, 0)) * poly
    return jnp.where(z < 0, jnp.pi - r, r)


def cos_sin(y):
    """(cos y, sin y) for y in [0, pi/3] by Taylor series (error < 1e-10 in float64,
    < 5e-7 in float32, where fewer terms are summed)."""
    y2 = y * y
    c = jnp.ones_like(y)
    s = jnp.ones_like(y)
    for k in range(terms(y, 6, 4), 0, -1):  # float64: cos to y^12, sin to y^13
        c = 1 - y2 / ((2 * k - 1) * (2 * k)) * c
        s = 1 - y2 / ((2 * k) * (2 * k + 1)) * s
    return c, y * s


def cbrt(y):
    """Real cube root, via exp/log and one Newton step."""
    a = jnp.abs(y)
    pos = a > 0
    safe = jnp.where(pos, a, 1)
    r = jnp.exp(jnp.log(safe) / 3)
    r = r - (r * r * r - safe) / (3 * r * r)
    return jnp.where(pos, jnp.sign(y) * r, 0)


def cubic_extreme_roots(b, c, d):
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
    cos3, sin3 = cos_sin(acos(jnp.clip(-q / (2 * safe_m3), -1, 1)) / 3)
    hi3 = 2 * m * cos3
    lo3 = -m * (cos3 + jnp.sqrt(3.0).astype(m.dtype) * sin3)  # 2m cos(phi/3 + 2 pi/3)
    disc = jnp.maximum(q * q / 4 + p * p * p / 27, 0)
    big = -cbrt(jnp.abs(q) / 2 + jnp.sqrt(disc)) * jnp.sign(q)
    one = big + jnp.where(big != 0, -p / (3 * jnp.where(big != 0, big, 1)), 0)
    roots = []
    for v in (jnp.where(three, lo3, one), jnp.where(three, hi3, one)):
        for _ in range(terms(v, 2, 1)):
            f = (v * v + p) * v + q
            df = 3 * v * v + p
            step = f / jnp.where(df != 0, df, 1)
            ok = (df != 0) & (jnp.abs(step) <= 0.25 * (1 + jnp.abs(v)))
            v = jnp.where(ok, v - step, v)
        roots.append(v - s)
    return roots[0], roots[1]


# ---------------------------------------------------------------------------------------
# Both in overdrive, when the piece is an arc of a circle in u-space: ``model.circle(B,
# alpha)`` returns its centre offset ``h`` (centre at ``(-h, -h)``) and radius ``R``.


def circle_candidates(model, t_T, t_E, w_T, w_E, B, alpha, weighted):
    """Candidates on the both-in-overdrive piece of a model whose piece is a circle:
    the radial point (equal weights) or every stationary point (``weighted``)."""
    if weighted:
        iters = 40 if t_T.dtype == jnp.float64 else 30
        return weighted_circle_candidates(model, t_T, t_E, w_T, w_E, B, alpha, iters)
    return radial_candidate(model, t_T, t_E, B, alpha)


def radial_candidate(model, t_T, t_E, B, alpha):
    """Equal weights, both in overdrive: the radial projection onto the circle."""
    h, R = model.circle(B, alpha)
    vT = t_T - 1 + h
    vE = t_E - 1 + h
    nrm = jnp.sqrt(vT * vT + vE * vE)
    scale = R / jnp.where(nrm > 0, nrm, 1)
    uT = vT * scale - h
    uE = vE * scale - h
    valid = (B > 2) & (nrm > 0) & (uT >= 0) & (uE >= 0)
    return [(1 + uT, 1 + uE, valid)]


def weighted_circle_candidates(model, t_T, t_E, w_T, w_E, B, alpha, iters):
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
    h, R = model.circle(B, alpha)
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
    Am = cbrt(gm * gm)
    AM = cbrt(gM * gM)
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
    xT, xE, ok = radial_candidate(model, t_T, t_E, B, alpha)[0]
    out.append((xT, xE, ok & (D == 0)))
    return out
