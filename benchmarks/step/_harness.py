"""What every section of the step benchmark shares: the scenario, the closed-loop chunk it
times, the timers and the row layout of the JSON, and two small HLO and array helpers."""

from __future__ import annotations

import re
import statistics
import time

import jax
import jax.numpy as jnp

import sims
from narset_jax.params import NarsetParams

__all__ = ["SCENARIO", "bump", "chunk_fn", "clock", "outer_body", "rate_row", "setup", "timed"]

SCENARIO = "steady"


def clock():
    return time.perf_counter(), time.process_time()


def timed(fn, repeats, warmup=1, best=False):
    """Median (or with ``best``, the minimum) wall and CPU seconds of ``fn()`` over
    ``repeats`` calls after ``warmup``. The minimum is steadier on a shared machine."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = clock()
        jax.block_until_ready(fn())
        w1, c1 = clock()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    pick = min if best else statistics.median
    return pick(walls), pick(cpus)


def setup(n, dtype=jnp.float32, params=None):
    params = NarsetParams() if params is None else params
    sc = sims.load_scenario(SCENARIO).without_metadata()
    init = jax.jit(
        lambda k: sims.rollout_init(params, sc, k, n, dtype=dtype)
    )
    return params, sc, jax.block_until_ready(init(jax.random.key(0)))


def chunk_fn(params, sc, steps):
    return jax.jit(lambda c: sims.rollout_chunk(params, sc, c, steps)[0])


def rate_row(n, steps, wall, cpu, **extra):
    rw = n * steps
    return {
        "n": n,
        "steps": steps,
        "seconds": wall,
        "cpu_seconds": cpu,
        "per_second": rw / wall,
        "per_cpu_second": rw / cpu if cpu > 0 else None,
        "ns_per_region_window": wall / rw * 1e9,
        **extra,
    }


def outer_body(comps):
    """The name of the largest while-loop body among parsed HLO computations (the scan over
    windows; the projection's block loop is smaller)."""
    bodies = [m.group(1) for lines in comps.values() for line in lines
              if re.search(r"\bwhile\(", line) and (m := re.search(r"body=%?([\w.\-]+)", line))]
    return max(bodies, key=lambda b: len(comps.get(b, [])))



def bump(x):
    """Touch an array once: ``x + 1`` (``~x`` for booleans)."""
    return ~x if x.dtype == bool else x + jnp.ones((), x.dtype)

