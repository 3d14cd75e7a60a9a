"""Overdrive cost models: the interface the budget projections are written against, the two
models of DESIGN.md §2, and the registry that turns a name into a model.

Strings (``"seed"``, ``"convex"``) stay the currency of the CLI, TOML files and
[`narset_jax.NarsetParams`][]; inside the library the choice is a [`CostModel`][] object,
picked once by [`cost_model`][] outside ``jit`` (a model has no array fields, so it is
static configuration: hashable, equal by type).

Adding a third model is one new class: subclass [`CostModel`][], implement what its
docstring lists, and pass an instance as ``cost=`` to the projections (or add it to
[`COST_MODELS`][] to select it by name).
"""

import abc

import jax.numpy as jnp
from equinox import AbstractClassVar, Module

from narset_jax.budget_common import check_positive, float_dtype
from narset_jax.budget_pieces import circle_candidates, cubic_extreme_roots

__all__ = [
    "COSTS",
    "COST_MODELS",
    "ConvexCost",
    "CostModel",
    "QuadraticOverdriveCost",
    "SeedCost",
    "cost_model",
    "overdrive_cost",
]


class CostModel(Module):
    """The cost ``c(x)`` of an intensity ``x >= 0``, and the closed-form pieces the exact
    projections need from it.

    Every model is linear at nominal operation, ``c(x) = x`` on ``[0, 1]``; models differ in
    the overdrive part ``g(u) = c(1 + u) - 1`` for ``u = x - 1 >= 0``, which must be
    continuous, increasing, with ``g(0) = 0``; ``alpha > 0`` is its curvature parameter, the
    one a user tunes. (The generic code
    relies on this shape: the both-linear piece of the budget curve is the line
    ``x_T + x_E = B``, junctions sit at ``x = 1``, and the global pool's linear piece is
    ``clip(t - lambda/w, 0, 1)``.) All methods are elementwise and must trace under
    ``jit``, ``vmap`` and ``grad``; ``alpha``, the multiplier ``lam`` and the weights are
    arrays broadcastable against ``x``.

    **A new model provides:**

    - ``name`` (class attribute): its registry name; ``convex`` (class attribute): whether
      ``c`` is convex. (If not, the global pool's total spend can jump as its multiplier
      moves, and the gradient follows the switching coordinate's tie.)
    - ``cost(x, alpha)``, ``dcost(x, alpha)``: ``c(x)`` and ``c'(x)`` (the left derivative
      at a kink).
    - ``overdrive(u, alpha)``: ``g(u)``; ``overdrive_inverse(y, alpha)``: the ``u >= 0``
      with ``g(u) = y``, for ``y >= 0`` (the axis endpoints and the limits of the
      one-in-overdrive piece).
    - ``over_linear_roots(a, C, w_o, w_l, alpha)``: on the piece where one agent is in
      overdrive (``x_o = 1 + u``) and the other linear (``x_l = B - 1 - g(u)``), the
      objective is ``f(u) = w_o (u - a)^2 / 2 + w_l (C - g(u))^2 / 2`` with ``a = t_o - 1``,
      ``C = B - 1 - t_l``. Return two ``u`` (any real numbers) such that the minimum of
      ``f`` over any interval is at one of them clipped to it: for a quadratic ``g`` the
      smallest and largest real roots of the cubic ``f'(u) = 0``.
    - ``both_overdrive_candidates(t_T, t_E, w_T, w_E, B, alpha, weighted)``: a list of
      ``(x_T, x_E, valid)``, points on the piece ``g(x_T - 1) + g(x_E - 1) = B - 2``
      (``x > 1``; only when ``B > 2``) among which the minimiser over the piece is, when it
      is not an end of the piece; ``valid`` marks the usable ones. ``weighted`` is a static
      bool: ``False`` promises ``w_T == w_E``.
    - For the gradients (the KKT system, with the Lagrangian's multiplier ``lam``):
      ``curvature_term(lam, x, alpha)``, ``lam c''(x)``;
      ``overdrive_dalpha(u, alpha)``, ``dg(u)/dalpha``;
      ``alpha_slope_term(lam, u, alpha)``, ``lam dg'(u)/dalpha``. (The terms with ``lam``
      include the product, so that a model fixes its order of operations: XLA contracts
      ``a * b + c`` into a fused multiply-add, and results are only reproducible bit for
      bit when the expression is.)
    - For the global pool: ``overdrive_given_price(t, w, lam, alpha)``, the minimiser of
      ``w (x - t)^2 / 2 + lam c(x)`` over ``x >= 1``.

    Inherited, overridable: ``inverse`` (``c^{-1}``), ``price_pieces``, ``piece_margin`` and
    ``given_price`` (the minimiser over ``x >= 0`` given ``lam``, by comparing the
    Lagrangian on the two pieces; a convex model may pick the piece by a cheaper test).

    [`QuadraticOverdriveCost`][] implements the gradient terms and the both-in-overdrive
    piece for ``g(u) = s u + alpha u^2`` (the piece is then a circle).
    """

    name: AbstractClassVar[str]
    convex: AbstractClassVar[bool]

    # The cost and its derivative.

    @abc.abstractmethod
    def cost(self, x, alpha):
        """``c(x)``."""

    @abc.abstractmethod
    def dcost(self, x, alpha):
        """``c'(x)`` (left derivative at a kink)."""

    # The budget curve.

    @abc.abstractmethod
    def overdrive(self, u, alpha):
        """``g(u) = c(1 + u) - 1`` for ``u >= 0``."""

    @abc.abstractmethod
    def overdrive_inverse(self, y, alpha):
        """The ``u >= 0`` with ``g(u) = y``, for ``y >= 0``."""

    def inverse(self, y, alpha):
        """The ``x >= 0`` with ``c(x) = y``, for ``y >= 0`` (negative ``y`` gives 0)."""
        y = jnp.maximum(y, 0)
        return jnp.where(y <= 1, y, 1 + self.overdrive_inverse(jnp.maximum(y - 1, 0), alpha))

    @abc.abstractmethod
    def over_linear_roots(self, a, C, w_o, w_l, alpha):
        """Two stationary points ``(u_lo, u_hi)`` of the one-in-overdrive objective (see the
        class docstring)."""

    @abc.abstractmethod
    def both_overdrive_candidates(self, t_T, t_E, w_T, w_E, B, alpha, weighted):
        """Candidate ``(x_T, x_E, valid)`` on the both-in-overdrive piece (a list)."""

    # Gradients of the projection (KKT system).

    @abc.abstractmethod
    def curvature_term(self, lam, x, alpha):
        """``lam * c''(x)``."""

    @abc.abstractmethod
    def overdrive_dalpha(self, u, alpha):
        """``dg(u)/dalpha`` (which is ``dc(1 + u)/dalpha``)."""

    @abc.abstractmethod
    def alpha_slope_term(self, lam, u, alpha):
        """``lam * dg'(u)/dalpha``."""

    # The global pool: the per-coordinate minimiser given the multiplier.

    @abc.abstractmethod
    def overdrive_given_price(self, t, w, lam, alpha):
        """``argmin_{x >= 1} w (x - t)^2 / 2 + lam c(x)``."""

    def price_pieces(self, t, w, lam, alpha):
        """The minimisers given ``lam`` on the linear piece (``x <= 1``) and the overdrive
        piece (``x >= 1``)."""
        lin = jnp.clip(t - lam / w, 0, 1)
        over = self.overdrive_given_price(t, w, lam, alpha)
        return lin, over

    def piece_margin(self, t, w, lam, alpha, lin=None, over=None):
        """The Lagrangian at the overdrive piece's minimiser minus at the linear piece's
        (the overdrive minimiser wins where this is negative). Where it changes sign as
        ``lam`` grows, the coordinate jumps from one piece to the other and the total
        spend jumps."""
        if lin is None:
            lin, over = self.price_pieces(t, w, lam, alpha)
        f_lin = w * lin * (0.5 * lin - t) + lam * self.cost(lin, alpha)
        f_over = w * over * (0.5 * over - t) + lam * self.cost(over, alpha)
        return f_over - f_lin

    def given_price(self, t, w, lam, alpha):
        """``argmin_{x >= 0} w (x - t)^2 / 2 + lam c(x)``, elementwise, in closed form."""
        lin, over = self.price_pieces(t, w, lam, alpha)
        return jnp.where(self.piece_margin(t, w, lam, alpha, lin, over) < 0, over, lin)


class QuadraticOverdriveCost(CostModel):
    """A model whose overdrive part is ``g(u) = s u + alpha u^2`` (``s >= 0`` fixed).

    Then ``c''(x) = 2 alpha`` in overdrive, ``dg/dalpha = u^2``, ``dg'/dalpha = 2 u``, and
    the both-in-overdrive piece ``g(u_T) + g(u_E) = B - 2`` is a circle in ``u``,
    centred at ``(-h, -h)`` with ``h = s / (2 alpha)``. Subclasses provide
    ``circle(B, alpha) -> (h, R)`` and the rest of [`CostModel`][].
    """

    @abc.abstractmethod
    def circle(self, B, alpha):
        """Centre offset ``h`` (centre at ``(-h, -h)``) and radius ``R`` of the
        both-in-overdrive piece in ``u``-space."""

    def both_overdrive_candidates(self, t_T, t_E, w_T, w_E, B, alpha, weighted):
        return circle_candidates(self, t_T, t_E, w_T, w_E, B, alpha, weighted)

    def curvature_term(self, lam, x, alpha):
        return lam * 2 * alpha * (x > 1)

    def overdrive_dalpha(self, u, alpha):
        return u * u

    def alpha_slope_term(self, lam, u, alpha):
        return lam * 2 * u


class SeedCost(QuadraticOverdriveCost):
    """The design note's formula (``"seed"``, the default): ``c(x) = x`` for ``x <= 1`` and
    ``1 + alpha (x - 1)^2`` above.

    Not convex: the slope drops from 1 to 0 at ``x = 1``, so a small overdrive is cheaper
    than linear and the feasible set has inward dents (``docs/budget.md``).
    """

    name = "seed"
    convex = False

    def cost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return jnp.minimum(x, 1) + alpha * over * over

    def dcost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return jnp.where(x > 1, 2 * alpha * over, jnp.ones_like(x))

    def overdrive(self, u, alpha):
        return alpha * u * u

    def overdrive_inverse(self, y, alpha):
        return jnp.sqrt(y / alpha)

    def over_linear_roots(self, a, C, w_o, w_l, alpha):
        # 2 alpha^2 w_l u^3 + (w_o - 2 alpha w_l C) u - w_o a = 0 (already depressed).
        k3 = 2 * alpha * alpha * w_l
        b = jnp.zeros_like(a)
        c = (w_o - 2 * alpha * w_l * C) / k3
        d = -w_o * a / k3
        return cubic_extreme_roots(b, c, d)

    def circle(self, B, alpha):
        h = jnp.zeros_like(B)
        R = jnp.sqrt(jnp.maximum((B - 2) / alpha + 2 * h * h, 0))
        return h, R

    def overdrive_given_price(self, t, w, lam, alpha):
        # ``- 0`` is ``lam g'(0)`` with ``g'(0) = 0``, kept: dropping it changes the traced
        # program, and the recorded goldens hold the results bit for bit.
        return 1 + jnp.maximum(w * (t - 1) - 0, 0) / (w + 2 * alpha * lam)


class ConvexCost(QuadraticOverdriveCost):
    """The convex variant (``"convex"``): ``c(x) = x + alpha max(x - 1, 0)^2``."""

    name = "convex"
    convex = True

    def cost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return x + alpha * over * over

    def dcost(self, x, alpha):
        over = jnp.maximum(x - 1, 0)
        return 1 + 2 * alpha * over

    def overdrive(self, u, alpha):
        return u + alpha * u * u

    def overdrive_inverse(self, y, alpha):
        return 2 * y / (1 + jnp.sqrt(1 + 4 * alpha * y))

    def over_linear_roots(self, a, C, w_o, w_l, alpha):
        # 2 alpha^2 w_l u^3 + 3 alpha w_l u^2 + (w_o - w_l (2 alpha C - 1)) u
        #   - (w_o a + w_l C) = 0.
        k3 = 2 * alpha * alpha * w_l
        b = 3 * alpha * w_l / k3
        c = (w_o - w_l * (2 * alpha * C - 1)) / k3
        d = -(w_o * a + w_l * C) / k3
        return cubic_extreme_roots(b, c, d)

    def circle(self, B, alpha):
        h = 1 / (2 * alpha)
        R = jnp.sqrt(jnp.maximum((B - 2) / alpha + 2 * h * h, 0))
        return h, R

    def overdrive_given_price(self, t, w, lam, alpha):
        return 1 + jnp.maximum(w * (t - 1) - lam, 0) / (w + 2 * alpha * lam)

    def given_price(self, t, w, lam, alpha):
        # Convex: the overdrive piece wins exactly where the linear minimiser would pass 1.
        lin, over = self.price_pieces(t, w, lam, alpha)
        return jnp.where(t - lam / w <= 1, lin, over)


# ---------------------------------------------------------------------------------------
# The registry: names (CLI, TOML, params) -> model classes.

COST_MODELS: dict[str, type[CostModel]] = {"seed": SeedCost, "convex": ConvexCost}
COSTS = tuple(COST_MODELS)


def cost_model(cost) -> CostModel:
    """The [`CostModel`][] for ``cost``: a registered name (``"seed"``, ``"convex"``) or a
    model instance, returned as is. Call it once, outside ``jit``.

    **Raises:** ``ValueError`` for anything else.
    """
    if isinstance(cost, CostModel):
        return cost
    if isinstance(cost, str) and cost in COST_MODELS:
        return COST_MODELS[cost]()
    raise ValueError(f"cost must be one of {COSTS} or a CostModel, got {cost!r}")


def overdrive_cost(x, alpha, cost="seed"):
    """The cost ``c(x)`` of an intensity, elementwise.

    **Arguments:**

    - ``x``: intensities (any shape).
    - ``alpha``: overdrive curvature, ``> 0`` (broadcastable to ``x``).
    - ``cost``: ``"seed"`` (``1 + alpha (x-1)^2`` above 1, the note's formula),
      ``"convex"`` (``x + alpha max(x-1, 0)^2``), or a [`CostModel`][].

    **Returns:** ``c(x)``, with the shape and dtype of ``x``.
    """
    model = cost_model(cost)
    check_positive("alpha", alpha)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(float_dtype(x))
    return model.cost(x, jnp.asarray(alpha, x.dtype))
