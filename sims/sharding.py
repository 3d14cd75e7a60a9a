"""Closed-loop rollouts with regions sharded over a device mesh: state never leaves its
shard. The mesh and shardings come from [`narset_jax.sharding`][] (its docstring explains
the two paths, ``shard_map`` for per-region pools and GSPMD for the global pool); this
module runs [`sims.rollout`][]'s pieces on them, for any controller and ecology.

Metrics are reductions over all regions too. By default (``exact_metrics=True``) the few
per-region arrays they read (the ecology's ``metric_fields`` and the accumulators) are
gathered once, at the end of the run, so that the summary is bitwise the single-device
one; ``exact_metrics=False`` reduces them in place. See ``docs/scaling.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from narset_jax.sharding import (
    loop_compiler_options,
    mesh_axis,
    padded_size,
    region_mesh,
    region_sharding,
    region_specs,
)
from sims.checks import check_n_regions, check_n_steps
from sims.controllers import Controller, get_controller
from sims.ecologies import Ecology, get_ecology
from sims.rollout import (
    RolloutCarry,
    RolloutResult,
    advance,
    rollout_chunk,
    rollout_init,
    rollout_metrics,
)

__all__ = ["ShardedRollout", "rollout_runner", "sharded_rollout"]


class ShardedRollout:
    """Compiled pieces of a sharded closed-loop rollout.

    - ``init`` / ``chunk`` / ``metrics``: the rollout as ``sims.rollout_init`` /
      ``rollout_chunk`` / ``rollout_metrics`` (one ``lax.scan`` per chunk);
    - ``controller`` / ``advance``: the two per-window steps that ``narset simulate`` runs
      (the controller as its own jitted step, then ``sims.rollout.advance``);
    - ``to_host``: per-region results as NumPy, padding dropped, gathered from every
      process; ``from_host``, the way back.

    Static configuration (sizes, mesh, controller, flags, dtype, budget mode) is fixed at
    construction; params, scenario, key and carry are traced arguments, so new values never
    recompile. [`sims.sharding.sharded_rollout`][] is the one-call form.

    Per-region leaves are ``[..., N]`` (regions last), except the ecology's state, whose
    regions lie along its ``Ecology.region_axis`` (``0`` for the neural ecology's
    ``[N, ...]`` leaves). An ecology with regions first has its params (e.g. a dataset)
    replicated whatever their shapes.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] (only its budget mode is used here).
    - ``n_regions``: ``N``.
    - ``mesh``: a one-axis mesh (see [`narset_jax.sharding.region_mesh`][]).
    - ``controller``, ``ecology``, ``record``, ``checkpoint``, ``dtype``: as in
      ``sims.rollout``.

    **Attributes:** ``path`` (``"shard_map"`` or ``"gspmd"``), ``n_padded`` (regions
    actually simulated: ``N`` rounded up to the device count on the ``shard_map`` path; the
    extra regions are independent, and dropped from results and metrics).
    """

    def __init__(
        self,
        params,
        n_regions: int,
        mesh: Mesh,
        *,
        controller: Controller | str = "narset",
        ecology: Ecology | str | None = None,
        record: bool = False,
        checkpoint: bool = False,
        dtype=jnp.float32,
    ):
        check_n_regions(n_regions)
        self.controller = get_controller(controller)
        self.ecology = get_ecology(ecology)
        self.mesh = mesh
        self.axis = mesh_axis(mesh)
        self.n_devices = mesh.devices.size
        self.n_regions = n_regions
        self.record = bool(record)
        self.checkpoint = bool(checkpoint)
        self.dtype = jnp.dtype(dtype)
        self.budget = params.budget
        self.path = "gspmd" if params.budget == "global" else "shard_map"
        self.n_padded = (
            n_regions if self.path == "gspmd" else padded_size(n_regions, self.n_devices)
        )
        self.n_local = self.n_padded // self.n_devices
        self.region_axis = int(self.ecology.region_axis)
        self._replicated = NamedSharding(mesh, P())
        self._init = jax.jit(self._init_fn)
        self._chunk = {}
        self._metrics = {
            exact: jax.jit(partial(self._metrics_fn, exact)) for exact in (False, True)
        }
        self._controller_step = jax.jit(partial(self._over_regions, self._local_controller))
        self._advance = jax.jit(partial(self._over_regions, self._local_advance, scenario_at=1))
        self._unpad_jit = jax.jit(self._unpad)

    def __repr__(self) -> str:
        return (
            f"ShardedRollout(n_regions={self.n_regions}, devices={self.n_devices}, "
            f"path={self.path!r}, budget={self.budget!r})"
        )

    # -- traced bodies ---------------------------------------------------------------

    def _specs(self, tree, n):
        """PartitionSpecs of ``tree`` with ``n`` regions: as
        [`narset_jax.sharding.region_specs`][] (a leaf whose last axis has length ``n`` is
        sharded along it), except the ecology state (``sim``) of any
        ``sims.rollout.RolloutCarry`` in ``tree``, whose leaves are sharded along the
        ecology's ``region_axis`` where that axis has length ``n``."""
        specs = region_specs(tree, n, self.axis)
        if self.region_axis == -1:
            return specs
        is_carry = lambda x: isinstance(x, RolloutCarry)  # noqa: E731

        def fix(node, spec):
            if not is_carry(node):
                return spec
            sim = jax.tree.map(lambda x: _spec_along(x, n, self.region_axis, self.axis),
                               node.sim)
            return eqx.tree_at(lambda c: c.sim, spec, sim)

        return jax.tree.map(fix, tree, specs, is_leaf=is_carry)

    def _over_regions(self, fn, *args, scenario_at=None):
        """Run ``fn(*args)`` (traced, inside ``jit``) with per-region leaves (see
        ``_specs``) sharded along the mesh axis and everything else replicated.
        ``scenario_at``: the position of the ecology's params in ``args``, replicated
        whole for an ecology with regions first (``region_axis != -1``).

        ``shard_map`` path: ``fn`` runs on each device's block, with no communication.
        ``gspmd`` path: ``fn`` runs on global shapes and XLA partitions it; cross-region
        reductions (the global pool) become all-reduces.
        """
        in_specs = self._specs(args, self.n_padded)
        if scenario_at is not None and self.region_axis != -1:
            in_specs = list(in_specs)
            in_specs[scenario_at] = jax.tree.map(lambda _: P(), args[scenario_at])
            in_specs = tuple(in_specs)
        if self.path == "gspmd":
            args = self._constrain(args, in_specs)
            out = fn(*args)
            return self._constrain(out, self._specs(out, self.n_padded))
        local = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(
                tuple(self.n_local if i == _sharded_dim(s, self.axis) else d
                      for i, d in enumerate(jnp.shape(x))), x.dtype),
            args, in_specs,
        )
        out_specs = self._specs(jax.eval_shape(fn, *local), self.n_local)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)(*args)

    def _constrain(self, tree, specs):
        return jax.tree.map(
            lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, s)),
            tree,
            specs,
        )

    def _local_init(self, params, scenario, key, ids):
        return rollout_init(params, scenario, key, ids.shape[0], dtype=self.dtype, region_ids=ids,
                            controller=self.controller, ecology=self.ecology)

    def _init_fn(self, params, scenario, key):
        ids = jnp.arange(self.n_padded, dtype=jnp.int32)
        ids = jax.lax.with_sharding_constraint(ids, region_sharding(self.mesh))
        return self._over_regions(self._local_init, params, scenario, key, ids, scenario_at=1)

    def _local_chunk(self, n_steps, params, scenario, carry):
        return rollout_chunk(
            params,
            scenario,
            carry,
            n_steps,
            controller=self.controller,
            ecology=self.ecology,
            record=self.record,
            checkpoint=self.checkpoint,
        )

    def _local_controller(self, params, state, telemetry):
        return self.controller.step(params, state, telemetry)

    def _local_advance(self, params, scenario, carry, ctl, decision):
        return advance(params, scenario, carry, ctl, decision, ecology=self.ecology)

    def _unpad(self, tree):
        n, pad = self.n_regions, self.n_padded
        if n == pad:
            return tree
        return jax.tree.map(partial(_take, n, self.axis), tree, self._specs(tree, pad))

    def _metrics_fn(self, exact, params, scenario, carry):
        if exact:
            # Gather only what the metrics read, once, so that they reduce in the same
            # order as on one device.
            gather = lambda x: jax.lax.with_sharding_constraint(x, self._replicated)  # noqa: E731
            sim = dataclasses.replace(carry.sim, **{
                k: gather(getattr(carry.sim, k)) for k in self.ecology.metric_fields})
            carry = dataclasses.replace(carry, sim=sim, acc=jax.tree.map(gather, carry.acc))
        return rollout_metrics(params, scenario, self._unpad(carry), ecology=self.ecology)

    # -- public ---------------------------------------------------------------------

    def init(self, params, scenario, key):
        """The sharded carry before the first window (``n_padded`` regions)."""
        return self._init(params, self.ecology.prepare(scenario), key)

    def chunk_fn(self, n_steps: int, *, donate: bool = False):
        """The jitted ``(params, scenario, carry) -> (carry, records)`` for ``n_steps``
        (``scenario`` without metadata). ``donate``: the input carry's buffers are reused
        for the output (the caller's carry is deleted), so state is updated in place."""
        check_n_steps(n_steps)
        key = (n_steps, bool(donate))
        if key not in self._chunk:
            self._chunk[key] = jax.jit(
                partial(self._over_regions, partial(self._local_chunk, n_steps),
                        scenario_at=1),
                donate_argnums=(2,) if donate else (),
                compiler_options=loop_compiler_options(self.mesh),
            )
        return self._chunk[key]

    def chunk(self, params, scenario, carry, n_steps: int, *, donate: bool = False):
        """Advance the sharded carry by ``n_steps`` windows (one ``lax.scan``).

        **Returns:** ``(carry, records)``; records (with ``record=True``) are
        ``(decisions, telemetry, events)`` with ``[T, n_padded]`` leaves, sharded along
        regions. With ``donate`` the input carry is consumed (updated in place).
        """
        return self.chunk_fn(n_steps, donate=donate)(params, self.ecology.prepare(scenario), carry)

    def lower_chunk(self, params, scenario, carry, n_steps: int, *, donate: bool = False):
        """``jax.jit(...).lower`` of a chunk, for inspecting or timing compilation."""
        return self.chunk_fn(n_steps, donate=donate).lower(
            params, self.ecology.prepare(scenario), carry
        )

    def controller_step(self, params, state, telemetry):
        """One jitted, sharded controller window of the configured controller.
        **Returns:** ``(state, decision)``."""
        return self._controller_step(params, state, telemetry)

    def advance(self, params, scenario, carry, ctl, decision):
        """The ecology's half of a window (``sims.rollout.advance``), sharded.
        **Returns:** ``(carry, (decision, telemetry, events))``."""
        return self._advance(params, self.ecology.prepare(scenario), carry, ctl, decision)

    def metrics(self, params, scenario, carry, *, exact: bool = True):
        """``sims.Metrics`` of the first ``n_regions`` regions (replicated scalars).

        ``exact``: gather the ~20 ``[N]`` arrays the metrics read onto every device once, so
        that they reduce in the same order as on one device (bitwise-equal summaries for
        any device count); ``False`` reduces them where they are (cross-device sums).
        """
        return self._metrics[bool(exact)](params, self.ecology.prepare(scenario), carry)

    def unpad(self, tree):
        """Drop the padding regions from per-region leaves (``[..., n_padded]``). Without
        padding (``N`` a multiple of the device count) the tree is returned as is, still
        sharded; sliced leaves come back replicated (a global array's sharded axis must
        divide evenly)."""
        if self.n_padded == self.n_regions:
            return tree
        return self._unpad_jit(tree)

    def to_host(self, tree):
        """Per-region results as NumPy on this process: every process's regions (an
        all-gather across processes in a multi-process run; call it on every process),
        padding dropped. For logs and plots, not for the hot loop."""
        def get(x, spec):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                from jax.experimental import multihost_utils

                x = multihost_utils.process_allgather(x, tiled=True)
            x = np.asarray(x)
            if self.n_padded != self.n_regions:
                x = _take(self.n_regions, self.axis, x, spec)
            return x

        return jax.tree.map(get, tree, self._specs(tree, self.n_padded))

    def from_host(self, tree):
        """The inverse of ``to_host``: per-region NumPy arrays (``[..., n_regions]``, all
        regions, the same on every process) as global arrays sharded along regions, padded
        to ``n_padded`` by repeating the last region (padding regions are simulated and
        dropped). Other leaves come back replicated. Each process copies only its own
        shards; there is no communication."""

        def put(x, spec):
            x = np.asarray(x)
            dim = _sharded_dim(spec, self.axis)
            if dim is not None:
                if self.n_padded != self.n_regions:
                    pad = [(0, 0)] * x.ndim
                    pad[dim] = (0, self.n_padded - self.n_regions)
                    x = np.pad(x, pad, mode="edge")
                sharding = NamedSharding(self.mesh, spec)
            else:
                sharding = self._replicated
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, tree, self._specs(tree, self.n_regions))

    def run(self, params, scenario, key, n_steps: int, *, exact_metrics: bool = True):
        """The whole rollout; see [`sims.sharding.sharded_rollout`][]."""
        carry = self.init(params, scenario, key)
        carry, records = self.chunk(params, scenario, carry, n_steps, donate=True)
        metrics = self.metrics(params, scenario, carry, exact=exact_metrics)
        d, tel, ev = self.unpad(records) if self.record else (None, None, None)
        return RolloutResult(
            metrics=metrics, final=self.unpad(carry), decisions=d, telemetry=tel, events=ev
        )


def _spec_along(x, n, dim, axis):
    """``x``'s spec with regions along ``dim``: sharded if that axis has length ``n``."""
    shape = jnp.shape(x)
    if not shape or shape[dim] != n:
        return P()
    return P(*([None] * (dim % len(shape))), axis)


def _sharded_dim(spec, axis):
    """The dimension ``spec`` shards along ``axis`` (``None`` if none)."""
    for i, a in enumerate(spec):
        if a == axis:
            return i
    return None


def _take(n, axis, x, spec):
    """``x`` cut to its first ``n`` regions along the dimension ``spec`` shards."""
    dim = _sharded_dim(spec, axis)
    if dim is None:
        return x
    return x[(slice(None),) * dim + (slice(0, n),)]


def sharded_rollout(
    params,
    scenario,
    key,
    n_regions: int,
    n_steps: int,
    *,
    mesh: Mesh | None = None,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
    record: bool = False,
    checkpoint: bool = False,
    dtype=jnp.float32,
    exact_metrics: bool = True,
):
    """``sims.rollout`` with regions sharded over ``mesh``: the same results, on many devices.

    **Arguments:**

    - ``params``, ``scenario``, ``key``, ``n_regions``, ``n_steps``, ``controller``,
      ``record``, ``checkpoint``, ``dtype``: as in ``sims.rollout``.
    - ``mesh``: a one-axis mesh (default: [`narset_jax.sharding.region_mesh`][] over all
      devices).
    - ``exact_metrics``: gather the metrics' per-region inputs once at the end so the
      summary is bitwise the single-device one (default); ``False`` reduces in place (for
      runs too large to gather ~20 ``[N]`` arrays onto each device).

    **Returns:** a ``sims.RolloutResult``. Its per-region arrays (``final``, records) are
    global ``jax.Array`` objects sharded along regions. Per-region pools match a
    single-device run bitwise; the global pool to rounding.
    """
    check_n_steps(n_steps)
    if mesh is None:
        mesh = region_mesh()
    runner = rollout_runner(params, n_regions, mesh, controller=controller, ecology=ecology,
                            record=record, checkpoint=checkpoint, dtype=dtype)
    return runner.run(params, scenario, key, n_steps, exact_metrics=exact_metrics)


def rollout_runner(
    params,
    n_regions: int,
    mesh: Mesh,
    *,
    controller: Controller | str = "narset",
    ecology: Ecology | str | None = None,
    record: bool = False,
    checkpoint: bool = False,
    dtype=jnp.float32,
) -> ShardedRollout:
    """The [`sims.sharding.ShardedRollout`][] that
    [`sims.sharding.sharded_rollout`][] uses for this configuration (cached, so its
    compiled programs are reused)."""
    return _runner_for(params.budget, n_regions, mesh, get_controller(controller),
                       get_ecology(ecology), bool(record), bool(checkpoint), jnp.dtype(dtype))


@functools.lru_cache(maxsize=8)
def _runner_for(budget, n, mesh, controller, ecology, record, checkpoint, dtype):
    return ShardedRollout(
        _BudgetOnly(budget), n, mesh, controller=controller, ecology=ecology, record=record,
        checkpoint=checkpoint, dtype=dtype,
    )


class _BudgetOnly:
    """What ShardedRollout reads from params at construction: the budget mode."""

    def __init__(self, budget):
        self.budget = budget


