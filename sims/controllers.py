"""The `Controller` interface: Narset and the baselines, one small class each.

A controller turns telemetry into decisions, window by window:

    state = controller.init(n_regions, dtype)
    state, decision = controller.step(params, state, telemetry)

Controllers are ``equinox`` modules with no array fields, so an instance is hashable and
equal to any other instance of its class: it is chosen once, outside ``jit`` (from a name
with [`sims.get_controller`][] where a string comes from the CLI or a TOML file), and
passed to jitted code as a static argument. Every controller emits a full
[`narset_jax.Decision`][], so rollouts, metrics, logs and replay treat them alike.

Shipped (``CONTROLLERS`` lists their names, in table order):

- ``"narset"`` ([`sims.NarsetController`][]): the controller as configured.
- ``"static_split"``: fixed targets ``(pool / 2, pool / 2)`` (the pool split evenly).
- ``"single_threshold"``: one need threshold, no dwell: ``theta_enter`` and ``theta_exit``
  both at their midpoint (``theta_exit`` a hair below, as the params require
  ``theta_exit < theta_enter``) and ``k_enter = k_exit = 1``.
- ``"no_inertia"``: ``beta = 1``.
- ``"always_overdrive"``: fixed targets ``(1.25, 0.25)``: Tamiyo in overdrive, Emrakul at a
  probing heartbeat.

Ablations (``ABLATIONS``; in ``REGISTRY`` for [`sims.get_controller`][], not in the table):

- ``"no_overdrive"`` ([`sims.controllers.NoOverdrive`][]): Narset with its targets clipped
  to at most 1 before the projection, so ``x_T, x_E <= 1``.

Adding a controller: subclass [`sims.Controller`][] (or one of the two families below),
give it a ``name`` and register it in ``REGISTRY`` here. Nothing else changes: the CLI's
``--controller`` choices, the baseline table and ``narset replay`` read the registry.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from narset_jax.authority import authority
from narset_jax.budget import overdrive_cost
from narset_jax.budget_mode import project_budget_mode
from narset_jax.params import NarsetParams
from narset_jax.step import Decision, NarsetState, init_state, narset_step
from narset_jax.telemetry import Telemetry

__all__ = [
    "ABLATIONS",
    "CONTROLLERS",
    "OVERDRIVE_TARGETS",
    "REGISTRY",
    "AlwaysOverdrive",
    "Controller",
    "FixedTargets",
    "NarsetController",
    "NoInertia",
    "NoOverdrive",
    "SingleThreshold",
    "StaticSplit",
    "get_controller",
]

OVERDRIVE_TARGETS = (1.25, 0.25)
# theta_exit sits this far below theta_enter for the single-threshold baseline.
SINGLE_GAP = 1e-4


class Controller(eqx.Module):
    """What a controller provides. Implementations have no array fields (they are static
    configuration); everything tunable lives in the params passed to ``step``.

    **Must provide:** ``name`` (a class attribute, the CLI and log name) and ``step``.
    """

    name: ClassVar[str]

    def init(self, n_regions: int, dtype=jnp.float32, *, region_ids=None) -> NarsetState:
        """A fresh state for ``n_regions`` regions (every shipped controller carries a
        [`narset_jax.NarsetState`][], so its decisions carry the smoothed signals)."""
        return init_state(n_regions, dtype, region_ids=region_ids)

    def effective_params(self, params: NarsetParams) -> NarsetParams:
        """The params this controller actually runs with (works on traced params)."""
        return params

    @abc.abstractmethod
    def step(
        self, params: NarsetParams, state: NarsetState, telemetry: Telemetry
    ) -> tuple[NarsetState, Decision]:
        """One window for every region: ``(state, telemetry) -> (state, decision)``."""


class NarsetController(Controller):
    """Narset itself: [`narset_jax.step.narset_step`][] with the params as given, or as
    [`NarsetController.effective_params`][] changes them in a subclass."""

    name: ClassVar[str] = "narset"

    def step(self, params, state, telemetry):
        return narset_step(self.effective_params(params), state, telemetry)


class SingleThreshold(NarsetController):
    """Narset without hysteresis: one threshold at the midpoint, no dwell."""

    name: ClassVar[str] = "single_threshold"

    def effective_params(self, params):
        mid = 0.5 * (params.theta_enter + params.theta_exit)
        one = jnp.ones_like(params.k_enter)
        return dataclasses.replace(
            params,
            theta_enter=mid,
            theta_exit=mid - SINGLE_GAP,
            k_enter=one,
            k_exit=one,
        )


class NoInertia(NarsetController):
    """Narset with ``beta = 1``: targets jump at once."""

    name: ClassVar[str] = "no_inertia"

    def effective_params(self, params):
        return dataclasses.replace(params, beta=jnp.ones_like(params.beta))


class FixedTargets(Controller):
    """A baseline with fixed targets. It still runs Narset's whole step (so its decision
    records carry the same smoothed signals and scores), then replaces the targets: the
    projection (under the params' budget mode) and authority are recomputed from the fixed
    targets, and the mode is reported as a constant 0 (it has no modes).

    **Must provide:** ``name`` and ``targets``.
    """

    @abc.abstractmethod
    def targets(self, params: NarsetParams, like) -> tuple:
        """The fixed targets ``(t_T, t_E)``, shaped like ``like``."""

    def step(self, params, state, telemetry):
        state, d = narset_step(params, state, telemetry)
        dtype = d.x_T.dtype
        pc = params.astype(dtype)
        t_T, t_E = self.targets(pc, d.x_T)
        # Adding zeros of a per-region array is exact, and makes fixed targets vary over
        # regions like the rest of the state: under shard_map a broadcast scalar does not,
        # and the scan over windows then rejects the carry's types.
        zero_x = jnp.zeros_like(d.x_T)
        t_T, t_E = t_T + zero_x, t_E + zero_x
        zero = jnp.zeros_like(d.mode_weight)
        d = dataclasses.replace(
            d,
            mode=jnp.zeros_like(d.mode),
            mode_weight=zero,
            enter_count=zero,
            exit_count=zero,
            **_projected(pc, d, t_T, t_E),
        )
        return state, d


def _projected(pc: NarsetParams, d: Decision, t_T, t_E) -> dict:
    """The decision fields that follow from targets ``(t_T, t_E)``: the projection (under
    the params' budget mode), its costs and price, overdrive flags and authority."""
    x_T, x_E, spent, price = project_budget_mode(pc, t_T, t_E)
    auth = authority(pc, x_T, x_E, d.raw.boundary & d.raw.valid)
    return dict(
        x_T=x_T,
        x_E=x_E,
        cost_T=overdrive_cost(x_T, pc.alpha, pc.cost),
        cost_E=overdrive_cost(x_E, pc.alpha, pc.cost),
        spent=spent,
        overdrive_T=x_T > 1,
        overdrive_E=x_E > 1,
        target_T=t_T,
        target_E=t_E,
        price=price,
        **auth._asdict(),
    )


class StaticSplit(FixedTargets):
    """The pool split evenly: targets ``(pool / 2, pool / 2)``."""

    name: ClassVar[str] = "static_split"

    def targets(self, params, like):
        half = 0.5 * params.pool.astype(like.dtype)
        return jnp.broadcast_to(half, like.shape), jnp.broadcast_to(half, like.shape)


class AlwaysOverdrive(FixedTargets):
    """Tamiyo always in overdrive, Emrakul at a probing heartbeat: ``OVERDRIVE_TARGETS``."""

    name: ClassVar[str] = "always_overdrive"

    def targets(self, params, like):
        t_T, t_E = OVERDRIVE_TARGETS
        return jnp.full(like.shape, t_T, like.dtype), jnp.full(like.shape, t_E, like.dtype)


class NoOverdrive(NarsetController):
    """Narset capped at ``x <= 1``: its targets (after inertia) are clipped to at most 1,
    in the decision and in the state the next window's inertia starts from, and projected
    again. Everything else (signals, modes, dwell) is Narset's. An ablation for the
    overdrive study (``docs/neural.md``, "Does overdrive pay?"), not a table baseline."""

    name: ClassVar[str] = "no_overdrive"

    def step(self, params, state, telemetry):
        p = self.effective_params(params)
        state, d = narset_step(p, state, telemetry)
        pc = p.astype(d.x_T.dtype)
        one = jnp.ones_like(d.target_T)
        t_T, t_E = jnp.minimum(d.target_T, one), jnp.minimum(d.target_E, one)
        state = dataclasses.replace(state, target_T=t_T, target_E=t_E)
        return state, dataclasses.replace(d, **_projected(pc, d, t_T, t_E))


# Table order: Narset first, then the baselines. The registry also holds the ablations
# (ABLATIONS), which the baseline table and the CLI's choices leave out.
CONTROLLERS = tuple(
    c.name for c in (NarsetController, StaticSplit, SingleThreshold, NoInertia, AlwaysOverdrive)
)
ABLATIONS = (NoOverdrive.name,)
REGISTRY: dict[str, type[Controller]] = {
    c.name: c
    for c in (NarsetController, StaticSplit, SingleThreshold, NoInertia, AlwaysOverdrive,
              NoOverdrive)
}


def get_controller(controller: str | Controller) -> Controller:
    """The controller named ``controller`` (one of ``CONTROLLERS``), or ``controller``
    itself if it already is a [`sims.Controller`][]. Raises ``ValueError`` naming the valid
    names otherwise."""
    if isinstance(controller, Controller):
        return controller
    if isinstance(controller, str) and controller in REGISTRY:
        return REGISTRY[controller]()
    raise ValueError(f"unknown controller {controller!r}; valid: {', '.join(REGISTRY)}")
