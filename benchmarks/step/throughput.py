"""Throughput rows: the jitted chunk (``jax``), the same chunk over all local devices
(``jax_sharded``), the NumPy closed loop (``numpy``) and a per-region Python loop
(``python_loop``, extrapolated to the other sizes)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

import sims
from benchmarks.step._harness import SCENARIO, chunk_fn, clock, rate_row, setup, timed
from narset_jax.params import NarsetParams

__all__ = ["bench_jax", "bench_jax_sharded", "bench_numpy", "bench_python_loop"]


def bench_jax(sizes, steps, repeats, dtype=jnp.float32):
    rows = []
    for n in sizes:
        params, sc, carry = setup(n, dtype)
        f = chunk_fn(params, sc, steps)
        w0, c0 = clock()
        compiled = f.lower(carry).compile()
        w1, c1 = clock()
        run = lambda compiled=compiled, carry=carry: compiled(carry)  # noqa: E731
        wall, cpu = timed(run, repeats)
        best_wall, best_cpu = timed(run, repeats, warmup=0, best=True)
        rows.append(rate_row(n, steps, wall, cpu, compile_s=w1 - w0, compile_cpu_s=c1 - c0,
                         best_per_second=n * steps / best_wall,
                         best_per_cpu_second=n * steps / best_cpu,
                         load=os.getloadavg()[0]))
        print(f"jax     N={n:>9,d}  {n * steps / wall / 1e6:8.2f} M rw/s  "
              f"({n * steps / cpu / 1e6:6.2f} M per CPU-s)  compile {w1 - w0:5.2f} s",
              flush=True)
    return rows


def bench_jax_sharded(sizes, steps, repeats, devices):
    """The same chunk through ``sims.sharding`` over ``devices`` host devices (on a CPU
    each device runs on its own thread: this is how one process uses several cores)."""
    from narset_jax.sharding import region_mesh
    from sims.sharding import ShardedRollout

    rows = []
    for n in sizes:
        params = NarsetParams()
        sc = sims.load_scenario(SCENARIO)
        runner = ShardedRollout(params, n, region_mesh(jax.devices()[:devices]))
        carry = [jax.block_until_ready(runner.init(params, sc, jax.random.key(0)))]
        w0, c0 = clock()
        compiled = runner.lower_chunk(params, sc, carry[0], steps, donate=True).compile()
        w1, c1 = clock()
        scw = sc.without_metadata()

        def run(compiled=compiled, carry=carry, params=params, scw=scw):
            carry[0] = compiled(params, scw, carry[0])[0]
            return carry[0]

        wall, cpu = timed(run, repeats)
        best_wall, best_cpu = timed(run, repeats, warmup=0, best=True)
        rows.append(rate_row(n, steps, wall, cpu, devices=devices, compile_s=w1 - w0,
                         compile_cpu_s=c1 - c0, best_per_second=n * steps / best_wall,
                         best_per_cpu_second=n * steps / best_cpu, load=os.getloadavg()[0]))
        print(f"jax x{devices} N={n:>9,d}  {n * steps / wall / 1e6:8.2f} M rw/s  "
              f"({n * steps / cpu / 1e6:6.2f} M per CPU-s)", flush=True)
    return rows


def bench_numpy(sizes, steps, repeats):
    from sims import numpy_twin as ref

    rows = []
    for n in sizes:
        params, sc, carry = setup(n, jnp.float32)
        scenario = sims.load_scenario(SCENARIO)
        start = ref.from_jax(carry)
        k = max(1, min(steps, 5))  # a few windows are enough: the cost is per window

        def run(start=start, k=k, params=params, scenario=scenario):
            c = start
            for _ in range(k):
                c = ref.window(params, scenario, c)
            return c.sim.health

        wall, cpu = timed(run, max(1, repeats // 2), warmup=0, best=True)
        rows.append(rate_row(n, k, wall, cpu))
        print(f"numpy   N={n:>9,d}  {n * k / wall / 1e6:8.2f} M rw/s", flush=True)
    return rows


def bench_python_loop(n, windows, extrapolate_to):
    from sims import numpy_twin as ref

    params, sc, carry = setup(n, jnp.float32)
    scenario = sims.load_scenario(SCENARIO)
    regions = [ref.take(ref.from_jax(carry), slice(i, i + 1)) for i in range(n)]
    w0, c0 = clock()
    for _ in range(windows):
        regions = [ref.window(params, scenario, c) for c in regions]
    w1, c1 = clock()
    per_rw = (w1 - w0) / (n * windows)
    row = rate_row(n, windows, w1 - w0, c1 - c0, measured=True)
    print(f"python  N={n:>9,d}  {1 / per_rw:10.0f} rw/s (measured)", flush=True)
    extrapolated = [
        {"n": m, "per_second": 1 / per_rw, "seconds_per_window": m * per_rw,
         "extrapolated": True, "from_n": n}
        for m in extrapolate_to
    ]
    return {"measured": row, "extrapolated": extrapolated}
