"""Baseline controllers by name: the string-keyed entry points kept for callers that hold a
controller name (the CLI, TOML files, decision logs). The controllers themselves are the
classes of [`sims.controllers`][]; this module only resolves names to them.
"""

from __future__ import annotations

import functools

from narset_jax.params import NarsetParams
from narset_jax.step import Decision, NarsetState, narset_step
from narset_jax.telemetry import Telemetry
from sims.controllers import (
    CONTROLLERS,
    OVERDRIVE_TARGETS,
    Controller,
    FixedTargets,
    NarsetController,
    get_controller,
)

__all__ = [
    "CONTROLLERS",
    "OVERDRIVE_TARGETS",
    "check_controller",
    "controller_params",
    "controller_step",
    "fixed_targets",
    "step_fn",
]


def check_controller(controller: str | Controller) -> str | Controller:
    """Return ``controller`` if it names one of [`sims.CONTROLLERS`][] (or is a
    [`sims.Controller`][]), else raise ValueError."""
    get_controller(controller)
    return controller


def controller_params(params: NarsetParams, controller: str | Controller) -> NarsetParams:
    """The params a controller actually runs with (the pipeline-based baselines change
    them; the others use them unchanged). Works on traced params."""
    return get_controller(controller).effective_params(params)


def fixed_targets(params: NarsetParams, controller: str | Controller, like):
    """The fixed targets ``(t_T, t_E)`` of a fixed-target baseline, shaped like ``like``."""
    c = get_controller(controller)
    if not isinstance(c, FixedTargets):
        raise ValueError(f"{controller!r} has no fixed targets")
    return c.targets(params, like)


def controller_step(
    params: NarsetParams, controller: str | Controller, state: NarsetState, telemetry: Telemetry
) -> tuple[NarsetState, Decision]:
    """One window of the named controller: ``(state, telemetry) -> (state, decision)``.

    ``controller`` is static (a name or a [`sims.Controller`][]). For ``"narset"`` this is
    exactly [`narset_jax.step.narset_step`][].
    """
    return get_controller(controller).step(params, state, telemetry)


def step_fn(controller: str | Controller):
    """The controller as a ``(params, state, telemetry) -> (state, decision)`` function (one
    object per controller, so jit caches are shared): what
    [`narset_jax.decision_log.replay`][] needs for a log written by that controller.
    ``"narset"`` gives [`narset_jax.step.narset_step`][] itself."""
    return _step_fn(get_controller(controller))


@functools.cache
def _step_fn(c: Controller):
    if type(c) is NarsetController:
        return narset_step

    def step(params, state, telemetry):
        return c.step(params, state, telemetry)

    step.__name__ = f"{c.name}_step"
    return step
