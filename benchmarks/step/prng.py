"""The simulator's counter-based hash (``sims._rng``) against ``jax.random`` (threefry, rbg,
unsafe_rbg), drawing as many numbers per region and window as the simulator does."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.step._harness import setup, timed

__all__ = ["bench_prng", "hash_draws"]


def hash_draws(sim, t=7):
    from sims._rng import normal, step_base, stream, uniform_pair

    base = step_base(sim.k0, sim.k1, t)
    acc = jnp.zeros(sim.k0.shape, jnp.float32)
    for s in range(4):
        acc = acc + normal(stream(base, s), jnp.float32)
    for s in range(4, 9):
        u, v = uniform_pair(stream(base, s), jnp.float32)
        acc = acc + u + v
    return acc


def bench_prng(n, steps, repeats):
    """Draws per region and window as the simulator needs them, T windows in a scan."""
    params, sc, carry = setup(n)
    out = {}

    def hash_scan(sim):
        def body(acc, t):
            return acc + hash_draws(sim, t), None
        return jax.lax.scan(body, jnp.zeros(n, jnp.float32), jnp.arange(steps))[0]

    def random_scan(key):
        def body(acc, t):
            k = jax.random.fold_in(key, t)
            k1, k2 = jax.random.split(k)
            z = jax.random.normal(k1, (4, n), jnp.float32).sum(0)
            u = jax.random.uniform(k2, (10, n), jnp.float32).sum(0)
            return acc + z + u, None
        return jax.lax.scan(body, jnp.zeros(n, jnp.float32), jnp.arange(steps))[0]

    cases = {"counter hash (sims._rng)": (jax.jit(hash_scan), carry.sim)}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        cases[f"jax.random {impl}"] = (jax.jit(random_scan), jax.random.key(0, impl=impl))
    for name, (f, arg) in cases.items():
        jax.block_until_ready(f(arg))
        wall, cpu = timed(lambda f=f, arg=arg: f(arg), repeats, best=True)
        out[name] = {"ns_per_region_window": wall / (n * steps) * 1e9,
                     "cpu_ns_per_region_window": cpu / (n * steps) * 1e9}
        print(f"prng    {name:28s} {wall / (n * steps) * 1e9:7.2f} ns/region-window", flush=True)
    return out
