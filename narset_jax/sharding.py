"""Regions over a device mesh: the mesh, the shardings of per-region arrays, and the
inspection of compiled programs for collectives. The closed-loop rollouts that use them
live in [`sims.sharding`][].

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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXIS",
    "collectives",
    "hlo_computations",
    "loop_compiler_options",
    "mesh_axis",
    "padded_size",
    "region_mesh",
    "region_sharding",
    "region_specs",
    "shard_regions",
]

AXIS = "regions"


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


def mesh_axis(mesh: Mesh) -> str:
    """The name of a one-axis mesh's axis (``ValueError`` for other meshes)."""
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
    return NamedSharding(mesh, P(*([None] * (ndim - 1)), mesh_axis(mesh)))


def shard_regions(tree, mesh: Mesh, n_regions: int | None = None):
    """``device_put`` a pytree of per-region arrays onto the mesh (``[..., N]`` leaves
    sharded, the rest replicated). Single-process convenience for arrays built on the host;
    sharded rollouts build their state inside ``jit`` instead."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.ndim(x)]
    if n_regions is None:
        if not leaves:
            return jax.device_put(tree, NamedSharding(mesh, P()))
        n_regions = jnp.shape(leaves[0])[-1]
    specs = region_specs(tree, n_regions, mesh_axis(mesh))
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


def padded_size(n_regions: int, n_devices: int) -> int:
    """``n_regions`` rounded up to a multiple of ``n_devices``: the per-region path pads
    with extra regions (ids ``N .. N_pad - 1``), simulates them and drops them."""
    return -(-n_regions // n_devices) * n_devices


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


def loop_compiler_options(mesh: Mesh) -> dict | None:
    """Compiler options for a jitted scan over windows on ``mesh`` (``None`` if none
    apply)."""
    platforms = {d.platform for d in mesh.devices.flat}
    if platforms == {"cpu"} and _cpu_options_supported():
        return dict(_CPU_LOOP_OPTIONS)
    return None


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


def hlo_computations(hlo_text: str) -> dict[str, list[str]]:
    """The computations of an HLO module text: ``name -> its lines``."""
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
    comps = hlo_computations(hlo_text)
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

