"""The tuning loss: the mean of [`sims.objective`][] over a batch of scenarios and seeds.

Each term is a full rollout (``lax.scan`` over simulator plus controller) with a relaxed
(``"soft"``, ``"straight_through"`` or ``"saturating"``) hysteresis: the pathwise
estimators of [`sims.tune.estimators`][], optionally ``jax.checkpoint``-ed per
window and optionally truncated into windows of ``truncate`` steps. Every rollout runs
with its scenario's recommended budget mode unless one mode is fixed for all
([`sims.tune.scenario_params`][]); the budget mode is static, so a training batch is split
into one vmapped group per mode and the groups' losses are summed
([`sims.tune.budget_groups`][], [`sims.tune.grouped_loss_and_grad`][]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sims
from narset_jax.params import NarsetParams
from sims.tune.params_map import to_params, with_temperature

__all__ = [
    "BudgetGroup",
    "TuneConfig",
    "batch_loss",
    "budget_groups",
    "grouped_loss_and_grad",
    "grouped_population_objectives",
    "loss_and_grad",
    "population_objectives",
    "rollout_metrics",
    "scenario_params",
    "stack_scenarios",
    "truncated_scan",
]


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Static configuration of the loss (hashable: it selects the compiled program).

    **Fields:**

    - ``n_regions``, ``n_steps``: ``N`` regions, ``T`` windows per rollout.
    - ``truncate``: ``None`` for full backpropagation through time, or a window length
      ``W < T``: gradients flow within each window of ``W`` steps only (the forward pass is
      unchanged; see ``docs/tuning.md``).
    - ``checkpoint``: wrap each simulated window in ``jax.checkpoint`` (rematerialise in the
      backward pass), so memory does not grow with ``T`` times the step's residuals.
    - ``dtype``: ``"float32"`` or ``"float64"``.
    - ``controller``: the controller whose params are tuned (a Narset-family
      [`sims.Controller`][] or its name; default ``"narset"``).
    - ``ecology``: the [`sims.Ecology`][] (or its name) the rollouts run on; ``None`` is the
      stylised ecology, whose params are the scenarios.
    """

    n_regions: int
    n_steps: int
    truncate: int | None = None
    checkpoint: bool = True
    dtype: str = "float32"
    controller: Any = "narset"
    ecology: Any = None

    def __post_init__(self):
        for name in ("n_regions", "n_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        t = self.truncate
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
            raise ValueError(f"truncate must be a positive int or None, got {t!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype).type


def stack_scenarios(scenarios: Sequence[sims.Scenario]) -> sims.Scenario:
    """Stack scenarios along a new leading axis (metadata dropped), for ``vmap``."""
    scenarios = [s.without_metadata() for s in scenarios]
    if not scenarios:
        raise ValueError("need at least one scenario")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *scenarios)


def scenario_params(
    params: NarsetParams, scenario: sims.Scenario, budget: str | None = None
) -> NarsetParams:
    """The params a rollout of ``scenario`` runs with: ``params`` with ``budget`` if one is
    given, else with the scenario's recommended budget mode
    (``scenario.recommended_params(params)``), else unchanged.

    This is ``narset simulate``'s rule without ``--budget``: a params file that sets
    ``budget`` fixes it (the CLI passes it as ``budget``); otherwise the scenario decides
    (``spoofing`` recommends the global pool), and a scenario without a recommendation
    keeps ``params.budget``. Training, random search and evaluation all use it, so every
    controller is trained and judged on a scenario under the same budget mode.
    """
    if budget is not None:
        return params.replace(budget=budget)
    return scenario.recommended_params(params)


class BudgetGroup(NamedTuple):
    """The training scenarios that share a budget mode (static, so it selects the compiled
    program): ``params`` (the base params with that mode), ``scenarios`` (stacked to
    ``[S_g]``, metadata dropped) and ``index`` (their positions in the training list)."""

    params: NarsetParams
    scenarios: sims.Scenario
    index: tuple[int, ...]


def budget_groups(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    budget: str | None = None,
    dtype=None,
) -> list[BudgetGroup]:
    """Split training scenarios into groups of one budget mode each (see
    [`sims.tune.scenario_params`][]), in order of first appearance. Rollouts of
    different modes are different programs and cannot share one ``vmap``; the training
    loss runs one ``vmap`` per group and sums them ([`sims.tune.grouped_loss_and_grad`][]).

    **Arguments:** ``base``: the starting params; ``scenarios``: with their metadata (the
    recommendation is metadata); ``budget``: a mode for every scenario, or ``None``;
    ``dtype``: cast params and scenarios to it (default: leave them).
    """
    if not scenarios:
        raise ValueError("need at least one scenario")
    modes: dict[str, list[int]] = {}
    for i, sc in enumerate(scenarios):
        modes.setdefault(scenario_params(base, sc, budget).budget, []).append(i)
    groups = []
    for mode, index in modes.items():
        params = base.replace(budget=mode)
        stacked = stack_scenarios([scenarios[i] for i in index])
        if dtype is not None:
            params, stacked = params.astype(dtype), stacked.astype(dtype)
        groups.append(BudgetGroup(params=params, scenarios=stacked, index=tuple(index)))
    return groups


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def truncated_scan(chunk: Callable, carry, n_steps: int, window: int):
    """Run ``n_steps`` steps as chunks of ``window`` with gradients truncated at chunk
    starts (truncated backpropagation through time).

    Each chunk starts from ``stop_gradient`` of the carry. The float leaves of the carry
    returned after a chunk are ``end + (prev - stop_gradient(prev))``: the forward value
    is exactly ``end``, and the gradient accumulates every chunk's local derivative, so
    quantities that are sums over steps (and the final state, by telescoping) get the
    truncated-BPTT gradient instead of only the last chunk's. Integer, boolean and key
    leaves pass through. Parameters must be closed over by ``chunk``, not carried: every
    carried leaf is stopped at chunk starts.

    **Arguments:**

    - ``chunk``: ``(carry, n) -> carry``, advancing ``n`` (a Python int) steps.
    - ``carry``: the initial carry (a pytree).
    - ``n_steps``: total steps; ``window``: steps per chunk (the last chunk may be shorter).

    **Returns:** the final carry.
    """

    def one(c, n):
        end = chunk(jax.lax.stop_gradient(c), n)
        return jax.tree.map(
            lambda e, p: e + (p - jax.lax.stop_gradient(p)) if _is_float(e) else e, end, c
        )

    n_full, rest = divmod(n_steps, window)
    if n_full:
        carry, _ = jax.lax.scan(lambda c, _: (one(c, window), None), carry, None, length=n_full)
    if rest:
        carry = one(carry, rest)
    return carry


def rollout_metrics(params: NarsetParams, scenario, key, cfg: TuneConfig) -> sims.Metrics:
    """The [`sims.Metrics`][] of one rollout of the Narset controller (differentiable when
    ``params.hysteresis`` is relaxed). The forward values equal ``sims.rollout``'s."""
    loop = dict(controller=cfg.controller, ecology=cfg.ecology)
    carry = sims.rollout_init(params, scenario, key, cfg.n_regions, dtype=cfg.jdtype, **loop)
    if cfg.truncate is None or cfg.truncate >= cfg.n_steps:
        carry, _ = sims.rollout_chunk(
            params, scenario, carry, cfg.n_steps, checkpoint=cfg.checkpoint, **loop
        )
    else:
        chunk = lambda c, n: sims.rollout_chunk(  # noqa: E731
            params, scenario, c, n, checkpoint=cfg.checkpoint, **loop
        )[0]
        carry = truncated_scan(chunk, carry, cfg.n_steps, cfg.truncate)
    return sims.rollout_metrics(params, scenario, carry, ecology=cfg.ecology)


def batch_loss(raw, base, scenarios, keys, weights, temp_factor, cfg: TuneConfig):
    """The tuning loss: the mean objective over a batch of scenarios and seeds.

    **Arguments:**

    - ``raw``: raw params (see [`sims.tune.to_params`][]).
    - ``base``: [`narset_jax.NarsetParams`][] with the relaxed hysteresis (``"soft"`` or
      ``"straight_through"``).
    - ``scenarios``: [`sims.Scenario`][] stacked to ``[S]`` (see
      [`sims.tune.stack_scenarios`][]).
    - ``keys``: ``[S, B]`` PRNG keys, one rollout each.
    - ``weights``: [`sims.ObjectiveWeights`][].
    - ``temp_factor``: scalar factor on the relaxation temperatures.
    - ``cfg``: [`sims.tune.TuneConfig`][] (static).

    **Returns:** ``(loss, objective [S, B])``.
    """
    params = with_temperature(to_params(raw, base), temp_factor)
    one = lambda sc, k: rollout_metrics(params, sc, k, cfg)  # noqa: E731
    metrics = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, 0))(scenarios, keys)
    obj = sims.objective(metrics, weights)
    return jnp.mean(obj), obj


@partial(jax.jit, static_argnames=("cfg",))
def loss_and_grad(raw, base, scenarios, keys, weights, temp_factor, cfg: TuneConfig):
    """Jitted ``(loss, objective [S, B], grad, grad_norm)`` of
    [`sims.tune.batch_loss`][] with respect to ``raw``. ``grad_norm`` is the global
    norm before clipping."""
    (loss, obj), grad = jax.value_and_grad(batch_loss, has_aux=True)(
        raw, base, scenarios, keys, weights, temp_factor, cfg
    )
    return loss, obj, grad, optax.tree.norm(grad)


@jax.jit
def _combine(weights, losses, grads):
    """``sum_g w_g loss_g``, ``sum_g w_g grad_g`` and the sum's global norm."""
    loss = sum(w * v for w, v in zip(weights, losses))
    grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(weights, gs)), *grads)
    return loss, grad, optax.tree.norm(grad)


def grouped_loss_and_grad(raw, groups: Sequence[BudgetGroup], keys, weights, temp_factor,
                          cfg: TuneConfig):
    """[`sims.tune.loss_and_grad`][] over training scenarios of several budget modes.

    Each [`sims.tune.BudgetGroup`][] is one ``vmap``-ed call on its own scenarios'
    rows of ``keys`` (``[S, B]``, in the training list's order); the losses (and gradients)
    are summed with weights ``S_g / S``, so the loss is the mean objective over all
    ``S * B`` rollouts, as with a single group. With one group this is exactly
    ``loss_and_grad``.

    **Returns:** ``(loss, objective [S, B] (NumPy, training order), grad, grad_norm)``.
    """
    n_sc = keys.shape[0]
    parts = [
        loss_and_grad(raw, g.params, g.scenarios, keys[np.asarray(g.index)], weights,
                      temp_factor, cfg=cfg)
        for g in groups
    ]
    obj = np.empty(keys.shape, np.float64)
    for g, part in zip(groups, parts):
        obj[np.asarray(g.index)] = np.asarray(part[1])
    if len(parts) == 1:
        loss, _, grad, gnorm = parts[0]
        return loss, obj, grad, gnorm
    w = tuple(jnp.asarray(len(g.index) / n_sc, cfg.jdtype) for g in groups)
    loss, grad, gnorm = _combine(w, tuple(p[0] for p in parts), tuple(p[2] for p in parts))
    return loss, obj, grad, gnorm


# ---------------------------------------------------------------------------------------
# A population of candidates, forward only (evolution strategies, the surrogate report).


@partial(jax.jit, static_argnames=("cfg",))
def population_objectives(raw, temp_factors, base, scenarios, keys, weights, cfg: TuneConfig):
    """The objective of every candidate on every rollout of a batch, in one compiled call.

    **Arguments:**

    - ``raw``: raw params of ``C`` candidates: ``name -> [C]`` (see
      [`sims.tune.to_params`][]).
    - ``temp_factors``: ``[C]`` factors on the relaxation temperatures (ignored by the
      hard hysteresis).
    - ``base``: [`narset_jax.NarsetParams`][] whose hysteresis (``"hard"``, ``"soft"`` or
      ``"straight_through"``) and budget mode every candidate runs with.
    - ``scenarios``: stacked to ``[S]``; ``keys``: ``[S, B]``; ``weights``:
      [`sims.ObjectiveWeights`][]; ``cfg``: [`sims.tune.TuneConfig`][] (static; forward
      only, so ``checkpoint`` and ``truncate`` do not change the values).

    **Returns:** ``objective [C, S, B]``: ``vmap`` over candidates of the same rollout as
    [`sims.tune.batch_loss`][] (``rollout_metrics`` then [`sims.objective`][]).
    """

    def candidate(r, temp):
        params = with_temperature(to_params(r, base), temp)
        one = lambda sc, k: sims.objective(rollout_metrics(params, sc, k, cfg), weights)  # noqa: E731
        return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, 0))(scenarios, keys)

    return jax.vmap(candidate)(raw, temp_factors)


def grouped_population_objectives(raw, temp_factors, groups: Sequence[BudgetGroup], keys,
                                  weights, cfg: TuneConfig, chunk: int | None = None):
    """[`sims.tune.population_objectives`][] over scenarios of several budget modes: one
    call per [`sims.tune.BudgetGroup`][] on its rows of ``keys`` (``[S, B]``).

    ``chunk``: at most this many candidates per call (the last chunk is padded with copies
    of the first candidate, so every call has the same shape and one program serves all);
    ``None`` runs all ``C`` candidates in one call per group.

    **Returns:** ``objective [C, S, B]`` (NumPy float64, scenarios in the training order).
    """
    n_cand = int(np.shape(temp_factors)[0])
    size = n_cand if chunk is None else max(1, min(int(chunk), n_cand))
    n_calls = -(-n_cand // size)
    pad = n_calls * size - n_cand
    temps = jnp.asarray(temp_factors, cfg.jdtype)
    raw = {n: jnp.asarray(v, cfg.jdtype) for n, v in raw.items()}
    if pad:
        raw = {n: jnp.concatenate([v, jnp.repeat(v[:1], pad)]) for n, v in raw.items()}
        temps = jnp.concatenate([temps, jnp.repeat(temps[:1], pad)])
    out = np.empty((n_calls * size, *keys.shape), np.float64)
    for g in groups:
        rows = np.asarray(g.index)
        for c in range(n_calls):
            part = slice(c * size, (c + 1) * size)
            obj = population_objectives({n: v[part] for n, v in raw.items()}, temps[part],
                                        g.params, g.scenarios, keys[rows], weights, cfg=cfg)
            out[part, rows] = np.asarray(obj)
    return out[:n_cand]
