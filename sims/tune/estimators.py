"""Gradient estimators of the tuning objective, and the smoothed (score-function) one.

``narset tune --estimator NAME`` (``[relaxation] estimator``) chooses how the gradient of
the objective with respect to the raw params is estimated ([`sims.tune.ESTIMATORS`][]):

- ``"smoothed"`` (the default): the gradient of the **hard** controller's objective
  smoothed by Gaussian noise, ``F(raw) = E_eps[J_hard(raw + sigma eps)]``, estimated by
  the score function on antithetic pairs with **one perturbation per region**. Each
  rollout runs twice, hard, with every region ``i``'s params at ``raw + sigma eps_i`` and
  ``raw - sigma eps_i`` (same seed, so the same regions and shocks); with ``J_i^+-`` the
  objective of region ``i`` alone ([`sims.tune.estimators.region_objectives`][])

      grad F ~= mean_i (J_i^+ - J_i^-) eps_i / (2 sigma)

  over every region of every rollout of the batch. In the per-region budget mode regions
  are independent given the exogenous shocks, so each region is a sample and the
  estimate is unbiased for ``grad F`` (the antithetic pair is the baseline: it cancels the
  region's own level). With the global pool the regions share a price, and the
  per-region estimate leaves out the effect of a region's params on the others through it
  (and the spoofer-capture term, a ratio over regions); it is then biased. The pool is
  perturbed too (log-scale, per-region modes only) so its derivative is estimated and
  reported, but never applied: the pool is the operator's budget. ``temp_dwell`` changes
  nothing in the hard controller and is not perturbed (its gradient is exactly 0).
- ``"soft"``, ``"anneal"``, ``"straight_through"``, ``"saturating"``: the pathwise
  gradient of a relaxed rollout ([`sims.tune.loss_and_grad`][]) with the hysteresis of
  that name (``"anneal"`` is ``"soft"`` with the temperatures annealed, by default to
  ``ANNEAL_DEFAULT``; ``"saturating"`` is the soft controller whose mode weight is pushed
  to {0, 1} every window, [`narset_jax.hysteresis.saturate`][]).

See ``docs/tuning.md`` (sections 3 and 12) for the comparison that chose the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sims
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims.metrics import metrics_from
from sims.tune.loss import BudgetGroup, TuneConfig
from sims.tune.params_map import TUNED, to_params

__all__ = [
    "ANNEAL_DEFAULT",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "PATHWISE",
    "SMOOTHING_SIGMA",
    "STREAM_SMOOTH",
    "UNPERTURBED",
    "describe",
    "estimator_hysteresis",
    "grouped_smoothed_grad",
    "grouped_smoothed_objectives",
    "knob_report",
    "legacy_estimator",
    "noise_keys",
    "region_objectives",
    "resolve_estimator",
    "smoothed_grad",
    "smoothed_population",
    "smoothed_samples",
]

ESTIMATORS = ("smoothed", "soft", "anneal", "straight_through", "saturating")
"""The gradient estimators ``narset tune --estimator`` offers."""

DEFAULT_ESTIMATOR = "smoothed"
"""The default: see ``docs/tuning.md`` section 12 for the comparison that chose it."""

PATHWISE = {"soft": "soft", "anneal": "soft", "straight_through": "straight_through",
            "saturating": "saturating"}
"""The pathwise estimators and the hysteresis each differentiates."""

ANNEAL_DEFAULT = 0.1
"""The final temperature factor of ``--estimator anneal`` when ``--anneal`` is not given."""

SMOOTHING_SIGMA = 0.2
"""Default standard deviation (raw units) of the smoothed estimator's perturbations."""

STREAM_SMOOTH = 3
"""The key stream of the smoothed estimator's perturbations (besides ``STREAM_TRAIN`` 0,
``STREAM_EVAL`` 1 and ``STREAM_ES`` 2)."""

UNPERTURBED = ("temp_dwell",)
"""Tuned fields the smoothed estimator leaves alone: they do not change the hard
controller, so the smoothed objective is flat in them (gradient exactly 0)."""

POOL = "pool"
"""The extra coordinate of the smoothed estimator: ``log(pool)``, estimated, not tuned."""


def estimator_hysteresis(estimator: str) -> str:
    """The hysteresis an estimator's rollouts run with (``"hard"`` for ``"smoothed"``)."""
    if estimator == "smoothed":
        return "hard"
    if estimator not in PATHWISE:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    return PATHWISE[estimator]


def legacy_estimator(hysteresis: str, anneal: float) -> str:
    """The estimator that the old ``--hysteresis`` and ``--anneal`` flags selected."""
    if hysteresis == "straight_through":
        return "straight_through"
    if hysteresis == "saturating":
        return "saturating"
    return "anneal" if anneal < 1 else "soft"


def resolve_estimator(settings: dict[str, Any], explicit: set[str]) -> None:
    """Fill in ``settings["estimator"]`` and make ``hysteresis`` and ``anneal`` agree with
    it (in place). Without an explicit estimator, an explicit ``--hysteresis`` or
    ``--anneal`` (flag or config) selects the estimator it always did (``soft``,
    ``anneal`` or ``straight_through``); otherwise the default applies. A one-line
    ``UserError`` when they contradict."""
    est = settings.get("estimator")
    legacy = explicit & {"hysteresis", "anneal"}
    if "estimator" not in explicit and legacy:
        est = legacy_estimator(settings["hysteresis"], settings["anneal"])
    if est not in ESTIMATORS:
        raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {est!r}")
    hyst = estimator_hysteresis(est)
    if "hysteresis" in explicit and settings["hysteresis"] != hyst and est != "smoothed":
        raise UserError(f"--hysteresis {settings['hysteresis']} contradicts --estimator {est} "
                        f"(which differentiates {hyst})")
    if est == "smoothed" and legacy:
        raise UserError("--hysteresis and --anneal apply to the pathwise estimators (soft, "
                        "anneal, straight_through, saturating), not to --estimator smoothed")
    if est == "anneal":
        if "anneal" not in explicit:
            settings["anneal"] = ANNEAL_DEFAULT
        elif not settings["anneal"] < 1:
            raise UserError(f"--estimator anneal needs --anneal < 1, got {settings['anneal']}")
    settings["estimator"] = est
    settings["hysteresis"] = hyst
    if not settings.get("smoothing_sigma", 1) > 0:
        raise UserError(f"--smoothing-sigma must be > 0, got {settings['smoothing_sigma']}")


# ---------------------------------------------------------------------------------------
# Per-region objectives.


def _expand(x, axis: int, n: int):
    """``(x with a size-1 axis after its region axis, vmap axis)``, or ``(x, None)`` for
    a leaf without that region axis."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        return x, None
    a = axis % x.ndim
    if x.shape[a] != n:
        return x, None
    return jnp.expand_dims(x, a + 1), a


def region_objectives(params: NarsetParams, scenario, carry, weights, *, ecology=None):
    """``[N]``: the objective of each region alone, from a rollout's final carry.

    Region ``i``'s metrics are [`sims.metrics_from`][] on its own accumulators and its
    own ecology state (its slice of every ``[..., N]`` leaf, kept as a 1-region run), so
    ``mean_i J_i`` is the rollout's objective for every term that is a mean over regions
    (all of them but ``spoofer_capture``, which is 0 for a single region). ``params.pool``
    may be a scalar or ``[N]``.
    """
    eco = sims.get_ecology(ecology)
    n = carry.acc.spend.shape[-1]
    dtype = carry.acc.churn.dtype
    pool = (jnp.ones((), dtype) if params.budget == "fixed_sum"
            else jnp.asarray(params.pool, dtype))
    pool = jnp.broadcast_to(pool, (n,))

    def split(tree, axis):
        leaves, treedef = jax.tree.flatten(tree)
        pairs = [_expand(x, axis, n) for x in leaves]
        return (jax.tree.unflatten(treedef, [p[0] for p in pairs]),
                jax.tree.unflatten(treedef, [p[1] for p in pairs]))

    acc, acc_axes = split(carry.acc, -1)
    sim, sim_axes = split(carry.sim, eco.region_axis)

    def one(acc_i, sim_i, pool_i):
        m = metrics_from(acc_i, eco.outcome(scenario, sim_i), pool_i)
        return sims.objective(m, weights)

    return jax.vmap(one, in_axes=(acc_axes, sim_axes, 0))(acc, sim, pool)


# ---------------------------------------------------------------------------------------
# The smoothed estimator.


def noise_keys(seed: int, iteration: int, n_scenarios: int, batch: int):
    """The ``[S, B]`` perturbation keys of an iteration (stream ``STREAM_SMOOTH``)."""
    root = jax.random.fold_in(jax.random.key(seed), STREAM_SMOOTH)
    k = jax.random.fold_in(root, iteration)
    return jax.random.split(k, n_scenarios * batch).reshape(n_scenarios, batch)


def _coords(perturb_pool: bool) -> tuple[str, ...]:
    return tuple(n for n in TUNED if n not in UNPERTURBED) + ((POOL,) if perturb_pool else ())


def _draw(key, n: int, coords, dtype):
    z = jax.random.normal(key, (len(coords), n), dtype)
    return dict(zip(coords, z))


def _perturbed(raw, base: NarsetParams, eps, shift):
    """``base`` with per-region tuned fields at ``raw + shift * eps`` (``[N]`` leaves)
    and, if ``eps`` has a pool coordinate, ``pool * exp(shift * eps_pool)``."""
    r = {n: raw[n] + shift * eps[n] if n in eps else raw[n] for n in TUNED}
    params = to_params(r, base)
    if POOL in eps:
        params = params.replace(pool=base.pool * jnp.exp(shift * eps[POOL]))
    return params


def _pair_objectives(raw, base, scenario, key, nkey, weights, sigma, cfg: TuneConfig,
                     perturb_pool: bool):
    """``(J_plus [N], J_minus [N], eps)``: the antithetic pair of hard rollouts of one
    seed, every region perturbed by ``+-sigma eps_i``."""
    dtype = cfg.jdtype
    coords = _coords(perturb_pool)
    eps = _draw(nkey, cfg.n_regions, coords, dtype)
    loop = dict(controller=cfg.controller, ecology=cfg.ecology)

    def signed(shift):
        params = _perturbed(raw, base, eps, shift)
        carry = sims.rollout_init(params, scenario, key, cfg.n_regions, dtype=dtype, **loop)
        carry, _ = sims.rollout_chunk(params, scenario, carry, cfg.n_steps, **loop)
        return region_objectives(params, scenario, carry, weights, ecology=cfg.ecology)

    j = jax.vmap(signed)(jnp.stack([sigma, -sigma]).astype(dtype))
    return j[0], j[1], eps


@partial(jax.jit, static_argnames=("cfg", "perturb_pool"))
def smoothed_samples(raw, base, scenarios, keys, nkeys, weights, sigma, cfg: TuneConfig,
                     perturb_pool: bool = True):
    """The smoothed estimator's samples on one budget group: every region of every
    rollout, perturbed both ways (see the module docstring).

    **Arguments:** ``raw`` (raw params, [`sims.tune.to_params`][]); ``base`` (hard
    hysteresis, the group's budget mode; its ``pool`` is the unperturbed pool);
    ``scenarios`` stacked to ``[S]``; ``keys`` and ``nkeys``: ``[S, B]`` rollout and
    perturbation keys; ``weights``; ``sigma`` (raw units); ``cfg`` (static;
    ``checkpoint`` and ``truncate`` do not apply); ``perturb_pool``: also perturb
    ``log(pool)`` (per-region modes).

    **Returns:** ``(j_plus [S, B, N], j_minus [S, B, N], eps)``: each region's objective
    with its params at ``raw + sigma eps_i`` and ``raw - sigma eps_i``, and the
    perturbations (``name -> [S, B, N]``, ``"pool"`` for ``log(pool)`` if perturbed).
    """

    def one(sc, k, nk):
        return _pair_objectives(raw, base, sc, k, nk, weights, sigma, cfg, perturb_pool)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, 0, 0))(
        scenarios, keys, nkeys)


@jax.jit
def _score(jp, jm, eps, sigma):
    diff = (jp - jm) / (2 * sigma)
    n = jnp.asarray(diff.size, diff.dtype)
    grad = {k: jnp.mean(diff * e) for k, e in eps.items()}
    se = {k: jnp.std(diff * e) / jnp.sqrt(n) for k, e in eps.items()}
    return jnp.mean((jp + jm) / 2, axis=-1), grad, se


def smoothed_grad(raw, base, scenarios, keys, nkeys, weights, sigma, cfg: TuneConfig,
                  perturb_pool: bool = True) -> dict[str, Any]:
    """The smoothed estimator on one budget group (arguments as
    [`sims.tune.estimators.smoothed_samples`][]):

        grad_k = mean over regions and rollouts of (J_i^+ - J_i^-) eps_ik / (2 sigma)

    **Returns:** a dict: ``loss`` (the smoothed objective, mean of the pairs),
    ``objective [S, B]``, ``grad`` (``name -> scalar`` for every tuned field; 0 for
    [`sims.tune.estimators.UNPERTURBED`][]), ``se`` (the per-coordinate standard error of
    ``grad`` over the ``S B N`` region samples), ``grad_log_pool``, ``se_log_pool``
    (NaN unless ``perturb_pool``), ``samples``.
    """
    sigma = jnp.asarray(sigma, cfg.jdtype)
    jp, jm, eps = smoothed_samples(raw, base, scenarios, keys, nkeys, weights, sigma,
                                   cfg=cfg, perturb_pool=perturb_pool)
    obj, grad, se = _score(jp, jm, eps, sigma)
    zero = jnp.zeros((), jp.dtype)
    nan = jnp.asarray(jnp.nan, jp.dtype)
    return {"loss": jnp.mean(obj), "objective": obj,
            "grad": {n: grad.get(n, zero) for n in TUNED},
            "se": {n: se.get(n, zero) for n in TUNED},
            "grad_log_pool": grad.get(POOL, nan), "se_log_pool": se.get(POOL, nan),
            "samples": int(jp.size)}


def _pool_is_per_region(group: BudgetGroup) -> bool:
    return group.params.budget == "region"


def grouped_smoothed_grad(raw, groups: Sequence[BudgetGroup], keys, nkeys, weights, sigma,
                          cfg: TuneConfig) -> dict[str, Any]:
    """[`sims.tune.estimators.smoothed_grad`][] over budget groups, combined with
    weights ``S_g / S`` as [`sims.tune.grouped_loss_and_grad`][] does (standard errors
    combine as independent). The pool's derivative comes from the per-region groups only
    (``None`` if there are none).

    **Returns:** the dict of ``smoothed_grad`` with NumPy/float values, ``objective``
    ``[S, B]`` in the training order, ``grad`` as JAX scalars (for the optimiser) and
    ``grad_norm``.
    """
    n_sc = keys.shape[0]
    sig = jnp.asarray(sigma, cfg.jdtype)
    obj = np.empty(keys.shape, np.float64)
    loss, grad, var = 0.0, None, {n: 0.0 for n in TUNED}
    pool_parts = []
    for g in groups:
        rows = np.asarray(g.index)
        pp = _pool_is_per_region(g)
        part = smoothed_grad(raw, g.params, g.scenarios, keys[rows], nkeys[rows], weights,
                             sig, cfg=cfg, perturb_pool=pp)
        w = len(g.index) / n_sc
        obj[rows] = np.asarray(part["objective"])
        loss = loss + w * float(part["loss"])
        scaled = {n: w * v for n, v in part["grad"].items()}
        grad = scaled if grad is None else {n: grad[n] + scaled[n] for n in TUNED}
        for n in TUNED:
            var[n] += (w * float(part["se"][n])) ** 2
        if pp:
            pool_parts.append((len(g.index), float(part["grad_log_pool"]),
                               float(part["se_log_pool"])))
    grad = {n: jnp.asarray(v, cfg.jdtype) for n, v in grad.items()}
    if pool_parts:
        total = sum(p[0] for p in pool_parts)
        gp = sum(p[0] * p[1] for p in pool_parts) / total
        sp = float(np.sqrt(sum((p[0] * p[2]) ** 2 for p in pool_parts))) / total
    else:
        gp = sp = None
    return {"loss": loss, "objective": obj, "grad": grad,
            "grad_norm": float(optax.tree.norm(grad)),
            "se": {n: float(np.sqrt(v)) for n, v in var.items()},
            "grad_log_pool": gp, "se_log_pool": sp}


@partial(jax.jit, static_argnames=("cfg", "perturb_pool"))
def smoothed_population(raw, base, scenarios, keys, nkeys, weights, sigma, cfg: TuneConfig,
                        perturb_pool: bool):
    """The smoothed objective of ``C`` candidates (``name -> [C]`` raw values) on one
    budget group, ``[C, S, B]`` (each the mean of an antithetic pair, one perturbation per
    region), in one compiled call."""
    def candidate(r):
        def one(sc, k, nk):
            jp, jm, _ = _pair_objectives(r, base, sc, k, nk, weights, sigma, cfg, perturb_pool)
            return jnp.mean((jp + jm) / 2)

        return jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, 0, 0))(
            scenarios, keys, nkeys)

    return jax.vmap(candidate)(raw)


def grouped_smoothed_objectives(raw: Mapping[str, Any], groups: Sequence[BudgetGroup], keys,
                                nkeys, weights, sigma, cfg: TuneConfig,
                                chunk: int | None = None) -> np.ndarray:
    """The smoothed objective (mean of the antithetic pairs, one perturbation per region)
    of ``C`` candidates (``name -> [C]`` raw values) on every rollout: ``[C, S, B]``
    (NumPy float64, training order), at most ``chunk`` candidates per call (padded so
    that every call has one shape)."""
    n_cand = int(np.shape(raw[TUNED[0]])[0])
    size = n_cand if chunk is None else max(1, min(int(chunk), n_cand))
    n_calls = -(-n_cand // size)
    pad = n_calls * size - n_cand
    raw = {n: jnp.asarray(raw[n], cfg.jdtype) for n in TUNED}
    if pad:
        raw = {n: jnp.concatenate([v, jnp.repeat(v[:1], pad)]) for n, v in raw.items()}
    sig = jnp.asarray(sigma, cfg.jdtype)
    out = np.empty((n_calls * size, *keys.shape), np.float64)
    for g in groups:
        rows = np.asarray(g.index)
        for c in range(n_calls):
            part = slice(c * size, (c + 1) * size)
            out[part, rows] = np.asarray(smoothed_population(
                {n: v[part] for n, v in raw.items()}, g.params, g.scenarios, keys[rows],
                nkeys[rows], weights, sig, cfg=cfg, perturb_pool=_pool_is_per_region(g)))
    return out[:n_cand]


# ---------------------------------------------------------------------------------------
# Reporting.


def describe(estimator: str, sigma: float, anneal: float = 1.0) -> str:
    """A few words on an estimator, for the run's first line and the reports."""
    if estimator == "smoothed":
        return (f"smoothed estimator: hard controller, per-region Gaussian perturbations "
                f"sigma {sigma:g}, antithetic score function")
    extra = f", annealed to {anneal:g}" if anneal < 1 else ""
    return f"{estimator} estimator: {PATHWISE[estimator]} hysteresis{extra}"


def knob_report(start: NarsetParams, final: NarsetParams, history) -> dict[str, Any]:
    """``alpha`` and ``pool`` over a gradient run: values at the start and at the end,
    and the gradient's first, last and mean over iterations (``alpha``: raw units; the
    pool: ``dJ/d log(pool)`` and ``dJ/d pool``, estimated by the smoothed estimator on
    per-region scenarios, never applied). JSON-ready."""
    ga = [float(v) for v in history.grad_alpha]
    gp = [v for v in history.grad_log_pool if v is not None]
    pool = float(start.pool)

    def stats(v):
        return ({"first": v[0], "last": v[-1], "mean": float(np.mean(v)),
                 "nonzero_iterations": int(sum(x != 0 for x in v)), "iterations": len(v)}
                if v else None)

    return {
        "alpha": {"start": float(start.alpha), "final": float(final.alpha),
                  "grad_raw": stats(ga)},
        "pool": {"value": pool, "tuned": False,
                 "grad_log_pool": stats(gp),
                 "grad_pool_mean": float(np.mean(gp)) / pool if gp else None,
                 "note": ("estimated by the smoothed estimator on per-region scenarios, "
                          "not applied: the pool is the operator's budget")},
    }
