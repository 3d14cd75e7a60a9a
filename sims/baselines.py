"""Baseline controllers, run through the same pipeline as Narset.

- ``"narset"``: the controller as configured.
- ``"single_threshold"``: one need threshold, no dwell: ``theta_enter`` and ``theta_exit``
  both at their midpoint (``theta_exit`` a hair below, as the params require
  ``theta_exit < theta_enter``) and ``k_enter = k_exit = 1``.
- ``"no_inertia"``: ``beta = 1``.
- ``"static_split"``: fixed targets ``(pool / 2, pool / 2)`` (the pool split evenly).
- ``"always_overdrive"``: fixed targets ``(1.25, 0.25)``: Tamiyo in overdrive, Emrakul at a
  probing heartbeat.

The fixed-target baselines still run the whole step (so their decision records carry the
same smoothed signals and scores), then replace the targets: projection (under the params'
budget mode) and authority are recomputed from the fixed targets, and the mode is reported
as a constant 0 (they have no modes).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

from narset_jax.authority import authority
from narset_jax.budget import (
    overdrive_cost,
    project_budget,
    project_fixed_sum,
    project_global_pool,
)
from narset_jax.params import NarsetParams
from narset_jax.step import Decision, NarsetState, narset_step
from narset_jax.telemetry import Telemetry

__all__ = [
    "CONTROLLERS",
    "OVERDRIVE_TARGETS",
    "check_controller",
    "controller_params",
    "controller_step",
    "fixed_targets",
    "step_fn",
]

CONTROLLERS = ("narset", "static_split", "single_threshold", "no_inertia", "always_overdrive")
OVERDRIVE_TARGETS = (1.25, 0.25)
# theta_exit sits this far below theta_enter for the single-threshold baseline.
_SINGLE_GAP = 1e-4


def check_controller(controller: str) -> str:
    """Return ``controller`` if it is one of [`sims.CONTROLLERS`][], else raise ValueError."""
    if controller not in CONTROLLERS:
        raise ValueError(
            f"unknown controller {controller!r}; valid: {', '.join(CONTROLLERS)}"
        )
    return controller


def controller_params(params: NarsetParams, controller: str) -> NarsetParams:
    """The params a controller actually runs with (the pipeline-based baselines change
    them; the others use them unchanged). Works on traced params."""
    check_controller(controller)
    if controller == "single_threshold":
        mid = 0.5 * (params.theta_enter + params.theta_exit)
        one = jnp.ones_like(params.k_enter)
        return dataclasses.replace(
            params,
            theta_enter=mid,
            theta_exit=mid - _SINGLE_GAP,
            k_enter=one,
            k_exit=one,
        )
    if controller == "no_inertia":
        return dataclasses.replace(params, beta=jnp.ones_like(params.beta))
    return params


def fixed_targets(params: NarsetParams, controller: str, like):
    """The fixed targets ``(t_T, t_E)`` of a fixed-target baseline, shaped like ``like``."""
    if controller == "static_split":
        half = 0.5 * params.pool.astype(like.dtype)
        return jnp.broadcast_to(half, like.shape), jnp.broadcast_to(half, like.shape)
    if controller == "always_overdrive":
        t_T, t_E = OVERDRIVE_TARGETS
        return jnp.full(like.shape, t_T, like.dtype), jnp.full(like.shape, t_E, like.dtype)
    raise ValueError(f"{controller!r} has no fixed targets")


def _project(p: NarsetParams, t_T, t_E):
    if p.budget == "region":
        a = project_budget(t_T, t_E, pool=p.pool, alpha=p.alpha, cost=p.cost)
        return a.x_T, a.x_E, a.spent, a.price
    if p.budget == "global":
        n = t_T.shape[-1]
        g = project_global_pool(t_T, t_E, pool_total=p.pool * n, alpha=p.alpha, cost=p.cost)
        return g.x_T, g.x_E, g.spent, jnp.broadcast_to(g.price, t_T.shape)
    a = project_fixed_sum(t_T, t_E)
    return a.x_T, a.x_E, a.spent, a.price


def controller_step(
    params: NarsetParams, controller: str, state: NarsetState, telemetry: Telemetry
) -> tuple[NarsetState, Decision]:
    """One window of the named controller: ``(state, telemetry) -> (state, decision)``.

    ``controller`` is static (a Python string). For ``"narset"`` this is exactly
    [`narset_jax.step.narset_step`][].
    """
    check_controller(controller)
    p = controller_params(params, controller)
    state, d = narset_step(p, state, telemetry)
    if controller not in ("static_split", "always_overdrive"):
        return state, d
    dtype = d.x_T.dtype
    pc = p.astype(dtype)
    t_T, t_E = fixed_targets(pc, controller, d.x_T)
    x_T, x_E, spent, price = _project(pc, t_T, t_E)
    auth = authority(pc, x_T, x_E, d.raw.boundary & d.raw.valid)
    zero = jnp.zeros_like(d.mode_weight)
    d = dataclasses.replace(
        d,
        x_T=x_T,
        x_E=x_E,
        cost_T=overdrive_cost(x_T, pc.alpha, pc.cost),
        cost_E=overdrive_cost(x_E, pc.alpha, pc.cost),
        spent=spent,
        overdrive_T=x_T > 1,
        overdrive_E=x_E > 1,
        mode=jnp.zeros_like(d.mode),
        mode_weight=zero,
        target_T=t_T,
        target_E=t_E,
        price=price,
        enter_count=zero,
        exit_count=zero,
        **auth._asdict(),
    )
    return state, d


@functools.cache
def step_fn(controller: str):
    """The named controller as a ``(params, state, telemetry) -> (state, decision)``
    function (one object per name, so jit caches are shared): what
    [`narset_jax.decision_log.replay`][] needs for a log written by that controller.
    ``"narset"`` gives [`narset_jax.step.narset_step`][] itself."""
    check_controller(controller)
    if controller == "narset":
        return narset_step

    def step(params, state, telemetry):
        return controller_step(params, controller, state, telemetry)

    step.__name__ = f"{controller}_step"
    return step
