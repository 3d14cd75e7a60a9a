"""Scaling sweeps: compile time, steady-state throughput and memory of the closed loop
(controller plus simulator) against the number of regions and devices.

For each device count ``D`` and each size ``N``: build a sharded rollout
([`sims.sharding.ShardedRollout`][]), time tracing plus compilation of a chunk of
``T`` windows, run it ``warmup`` times, then time ``repeats`` runs (each waits for the
result with ``block_until_ready``). Throughput is ``N * T / median time`` in region-windows
per second. Memory is XLA's own account of the compiled chunk per device (arguments,
outputs and temporaries; on GPU also the allocator's peak). See ``docs/scaling.md``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from narset_jax.errors import UserError

__all__ = [
    "SweepError",
    "SweepRow",
    "check_sweep_ecology",
    "check_sweep_memory",
    "machine",
    "parse_sizes",
    "run_sweep",
    "summarise",
    "sweep_document",
]


class SweepError(UserError, ValueError):
    """A bad sweep argument (one line)."""


@dataclass
class SweepRow:
    """One (device count, size) point of a sweep.

    **Fields:** ``n_regions``, ``devices`` (total, all processes), ``steps`` (windows per
    timed call), ``budget``, ``path`` (``"shard_map"``, ``"gspmd"``, or ``"jit"``: one
    device, unsharded, for an ecology that is not ``shardable``), ``compile_s``
    (trace, lower and compile the chunk), ``seconds`` (median of the timed runs), ``times``
    (every timed run), ``throughput`` (region-windows per second, ``N * T / seconds``),
    ``bytes_per_device`` (XLA's argument + output + temporary bytes of the chunk, minus
    aliased), ``bytes_per_region`` (that times the device count, over ``N``),
    ``temp_bytes_per_device``, ``device_peak_bytes`` (the allocator's peak where the
    backend reports one, e.g. GPU; else ``None``), ``rss_peak_bytes`` (this process's peak
    resident memory so far; monotone over the sweep), ``cpu_seconds`` (median CPU time of
    this process per timed run, all threads: on a shared machine ``N * T / cpu_seconds``
    is the steadier figure), ``load_average`` (1-minute, at the end of the point),
    ``collectives_in_loop`` (collective ops inside the compiled scan; see
    [`narset_jax.sharding.collectives`][]).
    """

    n_regions: int
    devices: int
    steps: int
    budget: str
    path: str
    compile_s: float
    seconds: float
    times: list
    throughput: float
    bytes_per_device: int | None
    bytes_per_region: float | None
    temp_bytes_per_device: int | None
    device_peak_bytes: int | None
    rss_peak_bytes: int
    cpu_seconds: float | None = None
    load_average: float | None = None
    collectives_in_loop: dict | None = None


def parse_sizes(text: str | Sequence) -> list[int]:
    """``"1e2,1e3,5000"`` -> ``[100, 1000, 5000]`` (positive integers, kept in order)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    sizes = []
    for part in parts:
        part = str(part).strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SweepError(f"--regions: {part!r} is not a number") from None
        if not value.is_integer() or value < 1:
            raise SweepError(f"--regions: {part!r} is not a positive integer")
        sizes.append(int(value))
    if not sizes:
        raise SweepError("--regions: no sizes given")
    return sizes


def check_sweep_memory(sizes: Sequence[int], dtype="float32", processes: int = 1, *,
                       available: int | None = None) -> None:
    """Refuse (a one-line ``UserError`` stating the estimate) a sweep whose largest size
    cannot fit in this machine's memory: its regions are split over ``processes``, and
    one size is held at a time ([`narset_jax.resources.closed_loop_bytes`][])."""
    import numpy as np

    from narset_jax.resources import check_fits, closed_loop_bytes

    n = max(sizes)
    per_process = -(-n // max(int(processes), 1))
    what = f"--regions {n}" + (f" over {processes} processes" if processes > 1 else "")
    needed = closed_loop_bytes(per_process, itemsize=np.dtype(dtype).itemsize)
    check_fits(needed, what, available=available)


def check_sweep_ecology(ecology, device_counts: Sequence[int], processes: int = 1) -> None:
    """Refuse (one line) an ecology that is not ``shardable`` on more than one device."""
    from sims.ecologies import get_ecology

    eco = get_ecology(ecology)
    if not eco.shardable and (processes > 1 or any(d != 1 for d in device_counts)):
        raise SweepError(f"the {eco.name} ecology runs on one device only (its state is not "
                         "split by the sharded rollout); use --devices 1")


def machine() -> dict:
    """What ran the sweep (a number is never quoted without its machine)."""
    import jax

    devs = jax.devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": getattr(devs[0], "device_kind", str(devs[0])),
        "n_devices": len(devs),
        "n_processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        m = None
    if m is None:
        return {"bytes": None, "temp": None}
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return {"bytes": int(total), "temp": int(m.temp_size_in_bytes)}


def _device_peak(devices) -> int | None:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def _rss_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_sweep(
    sizes: Sequence[int],
    steps: int,
    *,
    device_counts: Sequence[int] = (1,),
    budget: str = "region",
    scenario="steady",
    params=None,
    dtype="float32",
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = True,
    on_row: Callable[[SweepRow], None] | None = None,
    controller="narset",
    ecology=None,
) -> list[SweepRow]:
    """Measure the closed loop at every (device count, size).

    **Arguments:**

    - ``sizes``: numbers of regions.
    - ``steps``: windows per timed call (one ``lax.scan``).
    - ``device_counts``: devices per process for each mesh (the device-count axis).
    - ``budget``: ``"region"``, ``"global"`` or ``"fixed_sum"`` (replaces ``params.budget``).
    - ``scenario``: a scenario name, path or params object of the ecology.
    - ``params``: [`narset_jax.NarsetParams`][] (default ``NarsetParams()``).
    - ``dtype``: ``"float32"`` or ``"float64"``.
    - ``repeats``, ``warmup``: timed and untimed runs after compilation.
    - ``seed``: PRNG seed.
    - ``progress``: show a progress bar (stderr).
    - ``on_row``: called with each finished row.
    - ``controller``, ``ecology``: as in [`sims.rollout`][] (``scenario`` is the
      ecology's params).

    **Returns:** the rows, device count major, size minor.
    """
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from narset_jax.params import NarsetParams
    from narset_jax.sharding import collectives, region_mesh
    from sims.ecologies import get_ecology
    from sims.sharding import ShardedRollout

    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise SweepError(f"--steps must be a positive integer, got {steps!r}")
    if repeats < 1 or warmup < 0:
        raise SweepError("--repeats must be >= 1 and --warmup >= 0")
    check_sweep_memory(sizes, dtype, jax.process_count())
    eco = get_ecology(ecology)
    check_sweep_ecology(eco, device_counts, jax.process_count())
    params = NarsetParams() if params is None else params
    params = params.replace(budget=budget)
    sc = eco.load_scenario(scenario)
    dt = jnp.dtype(dtype)
    key = jax.random.key(seed)
    rows: list[SweepRow] = []
    todo = [(d, n) for d in device_counts for n in sizes]
    bar = tqdm(todo, desc="sweep", unit="size", disable=not progress, file=sys.stderr)
    for d, n in bar:
        bar.set_postfix_str(f"D={d} N={n:.0e}")
        mesh = region_mesh(d)
        if eco.shardable:
            runner = ShardedRollout(params, n, mesh, controller=controller, ecology=eco,
                                    dtype=dt)
        else:
            runner = _OneDevice(n, controller=controller, ecology=eco, dtype=dt)
        carry = jax.block_until_ready(runner.init(params, sc, key))
        t0 = time.perf_counter()
        compiled = runner.lower_chunk(params, sc, carry, steps, donate=True).compile()
        compile_s = time.perf_counter() - t0
        scw = eco.prepare(sc)
        # The carry is donated (updated in place, as in a real run) and chained from call to
        # call: every timed call runs T further windows.
        for _ in range(warmup):
            carry = jax.block_until_ready(compiled(params, scw, carry))[0]
        times, cpu = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            carry = jax.block_until_ready(compiled(params, scw, carry))[0]
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        med = statistics.median(times)
        mem = _memory(compiled)
        n_dev = mesh.devices.size
        row = SweepRow(
            n_regions=n,
            devices=n_dev,
            steps=steps,
            budget=budget,
            path=runner.path,
            compile_s=compile_s,
            seconds=med,
            times=times,
            throughput=n * steps / med,
            bytes_per_device=mem["bytes"],
            bytes_per_region=None if mem["bytes"] is None else mem["bytes"] * n_dev / n,
            temp_bytes_per_device=mem["temp"],
            device_peak_bytes=_device_peak(mesh.devices.flat),
            rss_peak_bytes=_rss_peak(),
            cpu_seconds=statistics.median(cpu),
            load_average=_load(),
            collectives_in_loop=collectives(compiled.as_text())["in_loop"],
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
        del carry, compiled
    bar.close()
    return rows


class _OneDevice:
    """An unsharded stand-in for [`sims.sharding.ShardedRollout`][] on one device, for an
    ecology that is not ``shardable``: plain ``jit`` of the rollout's init and chunk."""

    path = "jit"

    def __init__(self, n_regions, *, controller, ecology, dtype):
        self.n_regions, self.controller, self.ecology, self.dtype = (
            n_regions, controller, ecology, dtype)

    def init(self, params, scenario, key):
        import jax

        from sims.rollout import rollout_init

        fn = lambda p, s, k: rollout_init(  # noqa: E731
            p, s, k, self.n_regions, dtype=self.dtype.type, controller=self.controller,
            ecology=self.ecology)
        return jax.jit(fn)(params, self.ecology.prepare(scenario), key)

    def lower_chunk(self, params, scenario, carry, n_steps, *, donate=False):
        import jax

        from sims.rollout import rollout_chunk

        fn = lambda p, s, c: rollout_chunk(  # noqa: E731
            p, s, c, n_steps, controller=self.controller, ecology=self.ecology)
        return jax.jit(fn, donate_argnums=(2,) if donate else ()).lower(
            params, self.ecology.prepare(scenario), carry)


def summarise(rows: Sequence[SweepRow]) -> dict:
    """Scaling figures per device count: throughput by size and, where both ends were
    measured, the time ratio from the smallest size ``>= 1e4`` to the largest over the
    size ratio (1.0 is exactly linear scaling)."""
    out = {}
    for d in sorted({r.devices for r in rows}):
        sub = sorted((r for r in rows if r.devices == d), key=lambda r: r.n_regions)
        entry = {
            "throughput": {str(r.n_regions): r.throughput for r in sub},
            "compile_s": {str(r.n_regions): r.compile_s for r in sub},
            "max_compile_s": max(r.compile_s for r in sub),
        }
        big = [r for r in sub if r.n_regions >= 10**4]
        if len(big) >= 2:
            lo, hi = big[0], big[-1]
            entry["linearity"] = {
                "from": lo.n_regions,
                "to": hi.n_regions,
                "time_ratio_over_size_ratio": (hi.seconds / lo.seconds)
                / (hi.n_regions / lo.n_regions),
            }
        out[str(d)] = entry
    return out


def rows_as_dicts(rows: Sequence[SweepRow]) -> list[dict]:
    """The rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]


def sweep_document(rows: Sequence[SweepRow], *, command: str, sizes, steps: int, budget: str,
                   scenario: str, dtype: str, repeats: int, warmup: int, device_counts,
                   processes: int, ecology: str = "stylised") -> dict:
    """The JSON document of a sweep (``narset sweep --json``): the command that reproduces
    it, the machine, the settings (``ecology`` only when it is not the default stylised
    one), every row, the summary and a plot title."""
    import jax

    doc = {
        "command": command,
        "machine": machine(),
        "config": {
            "sizes": sizes,
            "steps": steps,
            "budget": budget,
            "scenario": scenario,
            "dtype": dtype,
            "repeats": repeats,
            "warmup": warmup,
            "devices_per_process": list(device_counts),
            "processes": processes,
            "unit": "region-windows per second = regions * windows / median wall time",
        },
        "rows": rows_as_dicts(rows),
        "summary": summarise(rows),
        "title": (
            f"narset sweep: {budget} budget, {dtype}, T={steps}, "
            f"{jax.default_backend()} ({machine()['device_kind']})"
        ),
    }
    if ecology != "stylised":
        doc["config"]["ecology"] = ecology
        doc["title"] = doc["title"].replace("narset sweep: ", f"narset sweep: {ecology}, ", 1)
    return doc
