"""Regions sharded over a device mesh: closed-loop rollouts whose state never leaves its shard.

Regions are laid along one named axis (``"regions"``) of a ``jax.sharding.Mesh``. Every
per-region array of the simulator and the controller is sharded along it, and stays so
across the ``lax.scan`` over windows. Two paths, picked by the budget mode:

- **Per-region pools** (``budget="region"`` or ``"fixed_sum"``): regions are independent,
  so the whole scan runs under ``jax.shard_map``: each device simulates its own block of
  regions, with no communication at all inside the loop. The projection's cache blocking
  (``narset_jax.budget.map_blocks``) then works on the local block, as it should. Results are
  bitwise those of a single-device run (a region's random draws depend only on its id).
- **Global pool** (``budget="global"``): the scan is jitted with sharded inputs and outputs
  and XLA's SPMD partitioner turns the pool's reductions over regions (the multiplier's
  bisection, one sum per step of it) into cross-device all-reduces of scalars. Per-region
  state is never gathered. Sums in another order round differently, so results match a
  single-device run to rounding (well within 1e-6).

Metrics are reductions over all regions too. By default (``exact_metrics=True``) the few
per-region arrays they read are gathered once, at the end of the run, so that the summary
is bitwise the single-device one; ``exact_metrics=False`` reduces them in place.

Multi-process runs use the same code on a mesh over every process's devices (see
[`narset_jax.distributed`][]). All arrays are created inside ``jit`` from ``arange``, so no
process ever holds another's regions. See ``docs/scaling.md``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXIS",
    "ShardedRollout",
    "collectives",
    "padded_size",
    "region_mesh",
    "region_sharding",
    "region_specs",
    "rollout_runner",
    "shard_regions",
    "sharded_rollout",
]

AXIS = "regions"

# Leaves the metrics read (RolloutCarry paths); gathered once when exact_metrics is set.
_METRIC_SIM_FIELDS = ("loss0", "loss", "cap", "bloat", "spoof_u")


def region_mesh(devices: Sequence | int | None = None, axis: str = AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    **Arguments:**

    - ``devices``: a sequence of devices, or an int ``D`` for the first ``D`` local devices
      of each process (see [`narset_jax.distributed.pick_devices`][]), or ``None``.
    - ``axis``: the axis name regions are sharded along.
    """
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int) and not isinstance(devices, bool):
        from narset_jax.distributed import pick_devices

        devices = pick_devices(devices)
    devices = list(devices)
    if not devices:
        raise ValueError("region_mesh needs at least one device")
    return Mesh(np.array(devices, dtype=object), (axis,))


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a one-axis mesh, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


def region_specs(tree, n_regions: int, axis: str = AXIS):
    """PartitionSpecs for a pytree of arrays (or shape structs): a leaf whose last axis has
    length ``n_regions`` is sharded along it (``P(..., axis)``); anything else is
    replicated (``P()``)."""

    def spec(leaf):
        shape = jnp.shape(leaf)
        if shape and shape[-1] == n_regions:
            return P(*([None] * (len(shape) - 1)), axis)
        return P()

    return jax.tree.map(spec, tree)


def region_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """The sharding of a ``[..., N]`` array with regions on the mesh axis."""
    return NamedSharding(mesh, P(*([None] * (ndim - 1)), _axis(mesh)))


def shard_regions(tree, mesh: Mesh, n_regions: int | None = None):
    """``device_put`` a pytree of per-region arrays onto the mesh (``[..., N]`` leaves
    sharded, the rest replicated). Single-process convenience for arrays built on the host;
    sharded rollouts build their state inside ``jit`` instead."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.ndim(x)]
    if n_regions is None:
        if not leaves:
            return jax.device_put(tree, NamedSharding(mesh, P()))
        n_regions = jnp.shape(leaves[0])[-1]
    specs = region_specs(tree, n_regions, _axis(mesh))
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


def padded_size(n_regions: int, n_devices: int) -> int:
    """``n_regions`` rounded up to a multiple of ``n_devices``: the per-region path pads
    with extra regions (ids ``N .. N_pad - 1``), simulates them and drops them."""
    return -(-n_regions // n_devices) * n_devices


# ---------------------------------------------------------------------------------------
# The rollout.


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
    recompile. [`narset_jax.sharding.sharded_rollout`][] is the one-call form.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][] (only its budget mode is used here).
    - ``n_regions``: ``N``.
    - ``mesh``: a one-axis mesh (see [`narset_jax.sharding.region_mesh`][]).
    - ``controller``, ``record``, ``checkpoint``, ``dtype``: as in ``sims.rollout``.

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
        controller: str = "narset",
        record: bool = False,
        checkpoint: bool = False,
        dtype=jnp.float32,
    ):
        from sims.baselines import check_controller

        if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions <= 0:
            raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
        check_controller(controller)
        self.mesh = mesh
        self.axis = _axis(mesh)
        self.n_devices = mesh.devices.size
        self.n_regions = n_regions
        self.controller_name = controller
        self.record = bool(record)
        self.checkpoint = bool(checkpoint)
        self.dtype = jnp.dtype(dtype)
        self.budget = params.budget
        self.path = "gspmd" if params.budget == "global" else "shard_map"
        self.n_padded = (
            n_regions if self.path == "gspmd" else padded_size(n_regions, self.n_devices)
        )
        self.n_local = self.n_padded // self.n_devices
        self._replicated = NamedSharding(mesh, P())
        self._init = jax.jit(self._init_fn)
        self._chunk = {}
        self._metrics = {
            exact: jax.jit(partial(self._metrics_fn, exact)) for exact in (False, True)
        }
        self._controller = jax.jit(partial(self._over_regions, self._local_controller))
        self._advance = jax.jit(partial(self._over_regions, self._local_advance))
        self._unpad_jit = jax.jit(self._unpad)

    def __repr__(self) -> str:
        return (
            f"ShardedRollout(n_regions={self.n_regions}, devices={self.n_devices}, "
            f"path={self.path!r}, budget={self.budget!r})"
        )

    # -- traced bodies ---------------------------------------------------------------

    def _over_regions(self, fn, *args):
        """Run ``fn(*args)`` (traced, inside ``jit``) with per-region leaves (last axis
        ``n_padded``) sharded along the mesh axis and everything else replicated.

        ``shard_map`` path: ``fn`` runs on each device's block, with no communication.
        ``gspmd`` path: ``fn`` runs on global shapes and XLA partitions it; cross-region
        reductions (the global pool) become all-reduces.
        """
        in_specs = region_specs(args, self.n_padded, self.axis)
        if self.path == "gspmd":
            args = self._constrain(args, in_specs)
            out = fn(*args)
            return self._constrain(out, region_specs(out, self.n_padded, self.axis))
        local = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape[:-1] + (self.n_local,) if jnp.ndim(x) and x.shape[-1] == self.n_padded
                else x.shape, x.dtype),
            args,
        )
        out_specs = region_specs(jax.eval_shape(fn, *local), self.n_local, self.axis)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)(*args)

    def _constrain(self, tree, specs):
        return jax.tree.map(
            lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, s)),
            tree,
            specs,
        )

    def _local_init(self, params, scenario, key, ids):
        from sims.rollout import rollout_init

        return rollout_init(params, scenario, key, ids.shape[0], dtype=self.dtype, region_ids=ids)

    def _init_fn(self, params, scenario, key):
        ids = jnp.arange(self.n_padded, dtype=jnp.int32)
        ids = jax.lax.with_sharding_constraint(ids, region_sharding(self.mesh))
        return self._over_regions(self._local_init, params, scenario, key, ids)

    def _local_chunk(self, n_steps, params, scenario, carry):
        from sims.rollout import rollout_chunk

        return rollout_chunk(
            params,
            scenario,
            carry,
            n_steps,
            controller=self.controller_name,
            record=self.record,
            checkpoint=self.checkpoint,
        )

    def _local_controller(self, params, state, telemetry):
        from sims.baselines import controller_step

        return controller_step(params, self.controller_name, state, telemetry)

    def _local_advance(self, params, scenario, carry, ctl, decision):
        from sims.rollout import advance

        return advance(params, scenario, carry, ctl, decision)

    def _unpad(self, tree):
        n, pad = self.n_regions, self.n_padded
        if n == pad:
            return tree
        return jax.tree.map(
            lambda x: x[..., :n] if jnp.ndim(x) and jnp.shape(x)[-1] == pad else x, tree
        )

    def _metrics_fn(self, exact, params, scenario, carry):
        from sims.rollout import rollout_metrics

        if exact:
            # Gather only what the metrics read, once, so that they reduce in the same
            # order as on one device.
            gather = lambda x: jax.lax.with_sharding_constraint(x, self._replicated)  # noqa: E731
            sim = _replace(
                carry.sim, **{k: gather(getattr(carry.sim, k)) for k in _METRIC_SIM_FIELDS}
            )
            carry = _replace(carry, sim=sim, acc=jax.tree.map(gather, carry.acc))
        return rollout_metrics(params, scenario, self._unpad(carry))

    # -- public ---------------------------------------------------------------------

    def init(self, params, scenario, key):
        """The sharded carry before the first window (``n_padded`` regions)."""
        return self._init(params, scenario.without_metadata(), key)

    def chunk_fn(self, n_steps: int, *, donate: bool = False):
        """The jitted ``(params, scenario, carry) -> (carry, records)`` for ``n_steps``
        (``scenario`` without metadata). ``donate``: the input carry's buffers are reused
        for the output (the caller's carry is deleted), so state is updated in place."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps <= 0:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        key = (n_steps, bool(donate))
        if key not in self._chunk:
            self._chunk[key] = jax.jit(
                partial(self._over_regions, partial(self._local_chunk, n_steps)),
                donate_argnums=(2,) if donate else (),
                compiler_options=_loop_options(self.mesh),
            )
        return self._chunk[key]

    def chunk(self, params, scenario, carry, n_steps: int, *, donate: bool = False):
        """Advance the sharded carry by ``n_steps`` windows (one ``lax.scan``).

        **Returns:** ``(carry, records)``; records (with ``record=True``) are
        ``(decisions, telemetry, events)`` with ``[T, n_padded]`` leaves, sharded along
        regions. With ``donate`` the input carry is consumed (updated in place).
        """
        return self.chunk_fn(n_steps, donate=donate)(params, scenario.without_metadata(), carry)

    def lower_chunk(self, params, scenario, carry, n_steps: int, *, donate: bool = False):
        """``jax.jit(...).lower`` of a chunk, for inspecting or timing compilation."""
        return self.chunk_fn(n_steps, donate=donate).lower(
            params, scenario.without_metadata(), carry
        )

    def controller(self, params, state, telemetry):
        """One jitted, sharded controller window: ``sims.controller_step`` of the
        configured controller. **Returns:** ``(state, decision)``."""
        return self._controller(params, state, telemetry)

    def advance(self, params, scenario, carry, ctl, decision):
        """The ecology's half of a window (``sims.rollout.advance``), sharded.
        **Returns:** ``(carry, (decision, telemetry, events))``."""
        return self._advance(params, scenario.without_metadata(), carry, ctl, decision)

    def metrics(self, params, scenario, carry, *, exact: bool = True):
        """``sims.Metrics`` of the first ``n_regions`` regions (replicated scalars).

        ``exact``: gather the ~20 ``[N]`` arrays the metrics read onto every device once, so
        that they reduce in the same order as on one device (bitwise-equal summaries for
        any device count); ``False`` reduces them where they are (cross-device sums).
        """
        return self._metrics[bool(exact)](params, scenario.without_metadata(), carry)

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
        import numpy as _np

        def get(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                from jax.experimental import multihost_utils

                x = multihost_utils.process_allgather(x, tiled=True)
            x = _np.asarray(x)
            if x.ndim and x.shape[-1] == self.n_padded and self.n_padded != self.n_regions:
                x = x[..., : self.n_regions]
            return x

        return jax.tree.map(get, tree)

    def from_host(self, tree):
        """The inverse of ``to_host``: per-region NumPy arrays (``[..., n_regions]``, all
        regions, the same on every process) as global arrays sharded along regions, padded
        to ``n_padded`` by repeating the last region (padding regions are simulated and
        dropped). Other leaves come back replicated. Each process copies only its own
        shards; there is no communication."""

        def put(x):
            x = np.asarray(x)
            if x.ndim and x.shape[-1] == self.n_regions:
                if self.n_padded != self.n_regions:
                    pad = [(0, 0)] * (x.ndim - 1) + [(0, self.n_padded - self.n_regions)]
                    x = np.pad(x, pad, mode="edge")
                sharding = region_sharding(self.mesh, x.ndim)
            else:
                sharding = self._replicated
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, tree)

    def run(self, params, scenario, key, n_steps: int, *, exact_metrics: bool = True):
        """The whole rollout; see [`narset_jax.sharding.sharded_rollout`][]."""
        from sims.rollout import RolloutResult

        carry = self.init(params, scenario, key)
        carry, records = self.chunk(params, scenario, carry, n_steps, donate=True)
        metrics = self.metrics(params, scenario, carry, exact=exact_metrics)
        d, tel, ev = self.unpad(records) if self.record else (None, None, None)
        return RolloutResult(
            metrics=metrics, final=self.unpad(carry), decisions=d, telemetry=tel, events=ev
        )


# XLA:CPU's copy insertion, run without region analysis, cannot prove that the scan body
# reads each old state array before it writes the new one, and copies ~37 of the ~80
# loop-carried [N] arrays every window; with it, 6 remain (docs/scaling.md, "Profile").
# Copies never change values. Applied per compilation, on CPU only, if this XLA knows it.
_CPU_LOOP_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@functools.cache
def _cpu_options_supported() -> bool:
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros(2)).compile(compiler_options=_CPU_LOOP_OPTIONS)
    except Exception:  # noqa: BLE001 - an XLA without the option
        return False
    return True


def _loop_options(mesh: Mesh) -> dict | None:
    platforms = {d.platform for d in mesh.devices.flat}
    if platforms == {"cpu"} and _cpu_options_supported():
        return dict(_CPU_LOOP_OPTIONS)
    return None


def _replace(module, **changes):
    import dataclasses

    return dataclasses.replace(module, **changes)


def sharded_rollout(
    params,
    scenario,
    key,
    n_regions: int,
    n_steps: int,
    *,
    mesh: Mesh | None = None,
    controller: str = "narset",
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
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps <= 0:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if mesh is None:
        mesh = region_mesh()
    runner = rollout_runner(params, n_regions, mesh, controller=controller, record=record,
                            checkpoint=checkpoint, dtype=dtype)
    return runner.run(params, scenario, key, n_steps, exact_metrics=exact_metrics)


def rollout_runner(
    params,
    n_regions: int,
    mesh: Mesh,
    *,
    controller: str = "narset",
    record: bool = False,
    checkpoint: bool = False,
    dtype=jnp.float32,
) -> ShardedRollout:
    """The [`narset_jax.sharding.ShardedRollout`][] that
    [`narset_jax.sharding.sharded_rollout`][] uses for this configuration (cached, so its
    compiled programs are reused)."""
    return _runner_for(params.budget, n_regions, mesh, controller, bool(record),
                       bool(checkpoint), jnp.dtype(dtype))


@functools.lru_cache(maxsize=8)
def _runner_for(budget, n, mesh, controller, record, checkpoint, dtype):
    return ShardedRollout(
        _BudgetOnly(budget), n, mesh, controller=controller, record=record,
        checkpoint=checkpoint, dtype=dtype,
    )


class _BudgetOnly:
    """What ShardedRollout reads from params at construction: the budget mode."""

    def __init__(self, budget):
        self.budget = budget


# ---------------------------------------------------------------------------------------
# Compiled-HLO inspection.

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "reduce-scatter",
)
_COMP_HEAD = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_CALLED = re.compile(
    r"(?:body|condition|to_apply|calls|called_computations|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)


def _computations(hlo_text: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo_text.splitlines():
        head = _COMP_HEAD.match(line.strip()) if not line.startswith(" ") else None
        if head:
            name = head.group(1)
            comps[name] = []
        elif name is not None:
            if line.strip() == "}":
                name = None
            else:
                comps[name].append(line)
    return comps


def _callees(line: str) -> list[str]:
    out = []
    for group in _CALLED.findall(line):
        out += [n.strip().lstrip("%") for n in group.strip("{}").split(",") if n.strip()]
    return out


def _count(lines) -> dict[str, int]:
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in lines:
        rhs = line.split("=", 1)[1] if "=" in line else line
        for op in COLLECTIVES:
            if re.search(rf"\b{op}(?:-start)?\(", rhs):
                counts[op] += 1
    return counts


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count the collective operations of a compiled program (``compiled.as_text()``).

    **Returns:** ``{"in_loop": counts, "total": counts}``, each mapping ``all-gather``,
    ``all-reduce``, ``all-to-all``, ``collective-permute`` and ``reduce-scatter`` to the
    number of such instructions; ``in_loop`` counts those inside any ``while`` body (the
    scan over windows), following nested calls.
    """
    comps = _computations(hlo_text)
    bodies = set()
    for lines in comps.values():
        for line in lines:
            if re.search(r"\bwhile\(", line):
                m = re.search(r"body=%?([\w.\-]+)", line)
                if m:
                    bodies.add(m.group(1))
    seen: set[str] = set()
    stack = list(bodies)
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            stack += _callees(line)
    in_loop = _count(line for n in seen for line in comps[n])
    total = _count(line for lines in comps.values() for line in lines)
    return {"in_loop": in_loop, "total": total}
