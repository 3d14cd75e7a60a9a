"""Closed-loop rollouts: a [`sims.Controller`][] and an [`sims.Ecology`][] in one
``lax.scan``.

Window ``t``: the controller reads the telemetry of window ``t - 1`` (before the first
window, the noise-free [`sims.observe`][] of the initial state) and decides; the ecology
then runs window ``t`` under that decision and emits its telemetry.

[`sims.rollout`][] is one jitted call. For long runs, [`sims.rollout_init`][],
[`sims.rollout_chunk`][] and [`sims.rollout_metrics`][] split it into chunks of windows with
identical results, so a caller can write each chunk's records and keep memory flat.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from narset_jax.hysteresis import gate
from narset_jax.params import NarsetParams
from narset_jax.step import Decision, NarsetState
from narset_jax.telemetry import Telemetry
from sims.checks import check_dtype, check_n_regions, check_n_steps
from sims.controllers import Controller, get_controller
from sims.ecologies import Ecology, get_ecology
from sims.ecologies.stylised import Action, Events, SimState
from sims.metrics import Accum, Metrics, init_accum, metrics_from
from sims.scenario import Scenario

__all__ = [
    "AUTHORITY_TEMP",
    "RolloutCarry",
    "RolloutResult",
    "advance",
    "rollout",
    "rollout_chunk",
    "rollout_init",
    "rollout_metrics",
]

# Temperature (intensity units) of the relaxed authority tiers and overdrive indicator.
AUTHORITY_TEMP = 0.05


class RolloutCarry(eqx.Module):
    """Everything a rollout carries between windows.

    **Fields:** ``sim`` (the ecology's state, e.g. [`sims.SimState`][]), ``ctl`` (the
    controller's, [`narset_jax.NarsetState`][]),
    ``telemetry`` (the telemetry the controller reads next), ``acc`` (metric
    accumulators), ``t`` (the next window's index, int32 scalar).
    """

    sim: SimState | Any
    ctl: NarsetState
    telemetry: Telemetry
    acc: Accum
    t: jax.Array


class RolloutResult(eqx.Module):
    """The result of [`sims.rollout`][].

    **Fields:**

    - ``metrics``: [`sims.Metrics`][] (scalars).
    - ``final``: the final [`sims.RolloutCarry`][].
    - ``decisions``: with ``record=True``, the [`narset_jax.Decision`][] of every window,
      each field ``[T, N]`` (``decisions.raw`` is the telemetry each decision read);
      otherwise ``None``.
    - ``telemetry``: with ``record=True``, the [`narset_jax.Telemetry`][] each window
      emitted (``[T, N]``); otherwise ``None``.
    - ``events``: with ``record=True``, the simulator's [`sims.Events`][] (``[T, N]``).
    """

    metrics: Metrics
    final: RolloutCarry
    decisions: Decision | None
    telemetry: Telemetry | None
    events: Events | None


def _relaxed(hard, soft, variant):
    """The hard value, the soft one, or hard forward with soft gradients."""
    if variant == "hard":
        return hard
    if variant == "soft":
        return soft
    return hard + (soft - jax.lax.stop_gradient(soft))


def _action(params: NarsetParams, d: Decision, variant: str):
    """What the ecology reads from a decision. Hard runs use the controller's integer
    tiers; relaxed runs rebuild the same tiers from gates (identical forward values for
    ``"straight_through"``) so that gradients reach ``x`` and the ``tau`` thresholds."""
    if variant == "hard":
        return d
    p = params.astype(d.x_T.dtype)
    at = d.raw.boundary & d.raw.valid
    at = at.astype(d.x_T.dtype)

    def tier(x, tau_rev, tau_irr):
        return gate(x - tau_rev, AUTHORITY_TEMP, variant) + gate(
            x - tau_irr, AUTHORITY_TEMP, variant
        ) * at

    return Action(
        x_T=d.x_T,
        x_E=d.x_E,
        tier_T=tier(d.x_T, p.tau_germinate, p.tau_fossilise),
        tier_E=tier(d.x_E, p.tau_sedate, p.tau_lysis),
    )


def _materialised(fn, t, *operands):
    """``fn(*operands)``, behind a fusion boundary: a ``lax.cond`` whose two branches are
    both ``fn`` (``t >= 0`` is always true; XLA cannot tell, so it keeps the conditional).

    XLA materialises a conditional's operands and results and fuses nothing across them.
    The relaxed (differentiable) ecology needs this under ``jax.grad``: without it XLA
    fused the ecology's rematerialised forward into each of the half-dozen large backward
    fusions that read it, recomputing it in every one (its backward ran at about 10x its
    forward); with it, the gradient step through a checkpointed rollout ran ~17 % faster
    at N = 4096 (docs/tuning.md section 8). ``t`` must not be batched under ``vmap``
    (the rollout's window counter is not), or the cond becomes a select of both branches.
    """
    return jax.lax.cond(t >= 0, fn, fn, *operands)


def _window(params, scenario, controller: Controller, ecology: Ecology, carry: RolloutCarry):
    ctl, d = controller.step(params, carry.ctl, carry.telemetry)
    return advance(params, scenario, carry, ctl, d, ecology=ecology)


def advance(params: NarsetParams, scenario: Scenario, carry: RolloutCarry, ctl, d, *,
            ecology: Ecology | str | None = None):
    """The ecology's half of a window: given the controller's new state ``ctl`` and its
    decision ``d`` (made from ``carry.telemetry``), run the ecology one window, update the
    accumulators and return ``(carry, (d, telemetry, events))``.

    [`sims.rollout_chunk`][] calls the controller and this in one compiled body. Callers
    that must reproduce decisions bit for bit elsewhere (the ``narset simulate`` log, which
    ``narset replay`` re-runs) call the controller as its own jitted step and then this:
    XLA on CPU contracts multiply-adds into FMAs differently in different fusions, so the
    same maths compiled into a larger program can differ in the last bit.

    ``ecology``: an [`sims.Ecology`][] or its name (default: the stylised one);
    ``scenario`` is its params.
    """
    ecology = get_ecology(ecology)
    variant = params.hysteresis
    sim = carry.sim
    action = _action(params, d, variant)
    if variant == "hard":
        sim_new, tel, ev = ecology.step(scenario, sim, action, carry.t, relax=variant)
    else:
        sim_new, tel, ev = _materialised(
            partial(ecology.step, relax=variant), carry.t, scenario, sim, action, carry.t
        )
    acc = carry.acc
    dtype = d.x_T.dtype
    m = d.mode_weight
    od_hard = (d.overdrive_T | d.overdrive_E).astype(dtype)
    od_soft = gate(jnp.maximum(d.x_T, d.x_E) - 1, AUTHORITY_TEMP, "soft")
    acc = Accum(
        n=acc.n + 1,
        switches=acc.switches + jnp.abs(m - acc.prev_mode),
        churn=acc.churn + jnp.abs(d.x_T - acc.prev_x_T) + jnp.abs(d.x_E - acc.prev_x_E),
        overdrive=acc.overdrive + _relaxed(od_hard, od_soft, variant),
        unsafe=acc.unsafe + ev.unsafe,
        rollbacks=acc.rollbacks + ev.rollback,
        panics=acc.panics + ev.panic,
        lysis=acc.lysis + ev.lysis,
        spend=acc.spend + d.spent,
        health=acc.health + ev.health,
        mode=acc.mode + m,
        x_T=acc.x_T + d.x_T,
        x_E=acc.x_E + d.x_E,
        missing=acc.missing + (~d.raw.valid).astype(dtype),
        prev_mode=m,
        prev_x_T=d.x_T,
        prev_x_E=d.x_E,
    )
    new = RolloutCarry(sim=sim_new, ctl=ctl, telemetry=tel, acc=acc, t=carry.t + 1)
    return new, (d, tel, ev)


def rollout_init(
    params: NarsetParams,
    scenario: Scenario,
    key,
    n_regions: int,
    *,
    dtype=jnp.float32,
    region_ids=None,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
) -> RolloutCarry:
    """The carry before the first window: fresh ecology and controller, the initial
    observation, zeroed accumulators."""
    del params
    n = check_n_regions(n_regions)
    dtype = check_dtype(dtype)
    ecology = get_ecology(ecology)
    sim = ecology.init(key, n, scenario, dtype=dtype, region_ids=region_ids)
    ctl = get_controller(controller).init(n, dtype, region_ids=sim.region)
    return RolloutCarry(
        sim=sim,
        ctl=ctl,
        telemetry=ecology.observe(scenario, sim),
        acc=init_accum(n, dtype),
        t=jnp.zeros((), jnp.int32),
    )


def rollout_chunk(
    params: NarsetParams,
    scenario: Scenario,
    carry: RolloutCarry,
    n_steps: int,
    *,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
    record: bool = False,
    checkpoint: bool = False,
):
    """Advance a carry by ``n_steps`` windows (a ``lax.scan``).

    **Returns:** ``(carry, records)``; ``records`` is ``(decisions, telemetry, events)``
    stacked along a leading time axis when ``record`` is true, else ``None``.
    """
    controller = get_controller(controller)
    ecology = get_ecology(ecology)
    check_n_steps(n_steps)

    # Per-region constants are closed over instead of carried: a carried array is copied
    # every window, and a gradient saves it once per window as a residual.
    names = ecology.constant_fields
    consts, moving = _split_constants(carry, names)

    def body(c, _):
        c, out = _window(params, scenario, controller, ecology, _join_constants(consts, c))
        return _split_constants(c, names)[1], (out if record else None)

    if checkpoint:
        body = jax.checkpoint(body)
    moving, records = jax.lax.scan(body, moving, None, length=n_steps)
    return _join_constants(consts, moving), records


def _split_constants(carry: RolloutCarry, names: tuple[str, ...]):
    """``(constants, carry without them)``: the removed fields (the ecology state's
    ``names`` and the controller's region ids) are ``None`` in the carry."""
    consts = {k: getattr(carry.sim, k) for k in names}, carry.ctl.region
    sim = dataclasses.replace(carry.sim, **dict.fromkeys(names))
    ctl = dataclasses.replace(carry.ctl, region=None)
    return consts, dataclasses.replace(carry, sim=sim, ctl=ctl)


def _join_constants(consts, carry: RolloutCarry) -> RolloutCarry:
    sim_consts, region = consts
    sim = dataclasses.replace(carry.sim, **sim_consts)
    ctl = dataclasses.replace(carry.ctl, region=region)
    return dataclasses.replace(carry, sim=sim, ctl=ctl)


def _pool(params: NarsetParams, dtype):
    if params.budget == "fixed_sum":
        return jnp.ones((), dtype)
    return params.pool.astype(dtype)


def rollout_metrics(params: NarsetParams, scenario: Scenario, carry: RolloutCarry, *,
                    ecology: Ecology | str | None = None) -> Metrics:
    """The [`sims.Metrics`][] of the windows run so far."""
    outcome = get_ecology(ecology).outcome(scenario, carry.sim)
    dtype = carry.acc.churn.dtype
    return metrics_from(carry.acc, outcome, _pool(params, dtype))


@partial(
    jax.jit,
    static_argnames=("n_regions", "n_steps", "controller", "ecology", "record", "checkpoint",
                     "dtype"),
)
def _rollout(params, scenario, key, region_ids, n_regions, n_steps, controller, ecology, record,
             checkpoint, dtype):
    carry = rollout_init(params, scenario, key, n_regions, dtype=dtype, region_ids=region_ids,
                         controller=controller, ecology=ecology)
    carry, records = rollout_chunk(
        params,
        scenario,
        carry,
        n_steps,
        controller=controller,
        ecology=ecology,
        record=record,
        checkpoint=checkpoint,
    )
    metrics = rollout_metrics(params, scenario, carry, ecology=ecology)
    d, tel, ev = records if record else (None, None, None)
    return RolloutResult(metrics=metrics, final=carry, decisions=d, telemetry=tel, events=ev)


def rollout(
    params: NarsetParams,
    scenario: Scenario,
    key,
    n_regions: int,
    n_steps: int,
    *,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
    record: bool = False,
    checkpoint: bool = False,
    dtype=jnp.float32,
    region_ids: Any = None,
) -> RolloutResult:
    """Simulate ``n_regions`` regions for ``n_steps`` windows under a controller.

    Pure and jitted (``n_regions``, ``n_steps``, ``controller``, ``record``, ``checkpoint``
    and ``dtype`` are static); ``vmap`` it over params or over scenario float leaves, and
    differentiate the metrics with respect to ``NarsetParams`` float leaves when
    ``params.hysteresis`` is ``"soft"`` or ``"straight_through"``. The same flag relaxes the
    simulator's events (see [`sims.sim_step`][]).

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][]. For the global pool (``budget="global"``)
      the pool is ``params.pool * n_regions``.
    - ``scenario``: the ecology's params: for the stylised ecology a [`sims.Scenario`][].
      Its metadata (name, recommended budget) is ignored here; apply a recommended budget
      with ``scenario.recommended_params(params)``.
    - ``key``: a PRNG key.
    - ``n_regions``, ``n_steps``: positive ints.
    - ``controller``: a [`sims.Controller`][] or one of the names [`sims.CONTROLLERS`][].
    - ``ecology``: an [`sims.Ecology`][] or its name (default: the stylised ecology).
    - ``record``: also return every window's decisions, telemetry and events (``[T, N]``).
    - ``checkpoint``: wrap the scan body in ``jax.checkpoint`` (memory-flat gradients of
      long rollouts).
    - ``dtype``: ``jnp.float32`` (default) or ``jnp.float64``.
    - ``region_ids``: optional ``[N]`` ids (default ``0 .. N-1``). With a per-region
      budget, regions are independent: a subset of ids reproduces exactly those regions.

    **Returns:** a [`sims.RolloutResult`][].
    """
    controller = get_controller(controller)
    ecology = get_ecology(ecology)
    n = check_n_regions(n_regions)
    check_n_steps(n_steps)
    dtype = check_dtype(dtype)
    if region_ids is None:
        region_ids = jnp.arange(n, dtype=jnp.int32)
    else:
        region_ids = jnp.asarray(region_ids).astype(jnp.int32)
    return _rollout(
        params,
        ecology.prepare(scenario),
        key,
        region_ids,
        n,
        n_steps,
        controller,
        ecology,
        record,
        checkpoint,
        dtype.type,
    )

