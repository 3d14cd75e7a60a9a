"""The `Ecology` interface: what a controller acts on in a closed loop.

An ecology turns each window's decision into the next window's telemetry, in the style of
gymnax's ``Environment``: the ecology object is static configuration (no array fields, so
it is hashable and passed to ``jit`` as a static argument), its params are an explicit
pytree argument (for the stylised ecology, a [`sims.Scenario`][]), and its state is an
explicit pytree of ``[N]`` arrays.

    state = ecology.init(key, n_regions, params, dtype=dtype)
    telemetry = ecology.observe(params, state)               # before the first window
    state, telemetry, events = ecology.step(params, state, action, t, relax="hard")
    outcome = ecology.outcome(params, state)                 # what the metrics read

The rollout ([`sims.rollout`][]) accumulates the controller's side of the metrics (mode
switches, budget churn, spend, overdrive) and the ecology's events; the ecology reports
what only it can measure (progress, growth, which regions spoof) through ``outcome``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax

from narset_jax.telemetry import Telemetry

__all__ = ["Ecology", "Outcome"]


class Outcome(NamedTuple):
    """What an ecology reports for the metrics at the end of a run.

    - ``progress``: scalar, mean progress over regions (1 is the achievable optimum).
    - ``growth_ratio``: scalar, mean (host + fossilised) / host.
    - ``spoofer``: ``[N]`` bool, regions that spoof their telemetry.
    """

    progress: jax.Array
    growth_ratio: jax.Array
    spoofer: jax.Array


class Ecology(eqx.Module):
    """What an ecology provides. Subclasses have no array fields.

    **Must provide:** ``name`` (class attribute: the ``--ecology`` name and the log's),
    ``init``, ``observe``, ``step`` and ``outcome``.

    **Should provide** (every command line needs them): ``scenarios`` (the shipped scenario
    names) and ``load_scenario`` (params by scenario name or TOML path: what ``--scenario``
    names under ``--ecology``).

    **May provide:** ``region_axis`` (the axis of its state's leaves that holds the regions:
    ``-1``, the default, for ``[..., N]`` leaves; ``0`` for ``[N, ...]`` ones, as the neural
    ecology's; a sharded rollout splits the state along it, and replicates the params of an
    ecology with ``region_axis != -1``), ``shardable = False`` (a sharded rollout cannot
    split its state: sharded runs refuse it, one-device runs take it),
    ``manifest_entries`` (what a decision log's manifest records about the run's params
    beyond their values, e.g. a dataset's hash), ``prepare`` (drop non-array metadata from
    params before ``jit``),
    ``constant_fields`` (state fields no window changes: a rollout closes over them instead
    of carrying them, which saves a copy per window and a residual per window under
    ``grad``), ``metric_fields`` (state fields ``outcome`` reads: a sharded rollout gathers
    them once so that metrics reduce in the same order on any device count).

    ``step`` returns ``events`` with at least the ``[N]`` float fields ``lysis``,
    ``unsafe``, ``panic``, ``rollback`` and ``health``, which the rollout accumulates.

    A sharded rollout runs ``init``, ``observe`` and ``step`` under ``shard_map`` on each
    device's block of regions, so every per-region output must be computed from per-region
    inputs: a constant broadcast to ``[N]`` is not "per region" there (add zeros of a state
    array to it), and the scan over windows rejects the carry.
    """

    name: ClassVar[str]
    scenarios: ClassVar[tuple[str, ...]] = ()
    shardable: ClassVar[bool] = True
    region_axis: ClassVar[int] = -1
    constant_fields: ClassVar[tuple[str, ...]] = ()
    metric_fields: ClassVar[tuple[str, ...]] = ()

    def load_scenario(self, name_or_path) -> Any:
        """This ecology's params: a shipped scenario by name (one of ``scenarios``), a
        scenario TOML file by path, or params (returned unchanged). Errors are one-line
        ``ValueError``s naming the valid scenarios."""
        raise ValueError(f"the {self.name} ecology has no scenario files")

    def manifest_entries(self, params) -> dict[str, Any]:
        """JSON-serialisable entries a decision log's manifest config records about
        ``params`` beyond the scenario's values (default: none)."""
        return {}

    def prepare(self, params: Any) -> Any:
        """Params as passed to jitted code (default: unchanged)."""
        return params

    @abc.abstractmethod
    def init(self, key, n_regions: int, params, *, dtype, region_ids=None) -> Any:
        """A fresh state of ``n_regions`` regions; ``region_ids`` (``[N]`` int32) name them,
        and a region's trajectory may depend only on its own id."""

    @abc.abstractmethod
    def observe(self, params, state) -> Telemetry:
        """The telemetry the controller reads before the first window."""

    @abc.abstractmethod
    def step(self, params, state, action, t, *, relax: str = "hard") -> tuple[Any, Telemetry, Any]:
        """One window under ``action`` (``x_T``, ``x_E``, ``tier_T``, ``tier_E``, each
        ``[N]``; tiers may be relaxed floats). ``t`` is the window index (int32 scalar);
        ``relax`` is ``"hard"``, ``"soft"`` or ``"straight_through"``.
        **Returns:** ``(state, telemetry, events)``."""

    @abc.abstractmethod
    def outcome(self, params, state) -> Outcome:
        """The end-of-run [`sims.ecologies.Outcome`][] the metrics read."""
