"""What the budget stage's changes of issue 19 bought, in one process with interleaved
rounds (the machine may be shared): the jitted chunk with the projection as before (dense,
cache-blocked above 65,536 regions), dense with the new blocking rule (blocked only above
2**18 regions), sparse with the binding regions found by ``jnp.nonzero``, and the default
(sparse, found by a prefix sum and a scatter: only the infeasible regions are projected), each
compiled from the same code with ``narset_jax.budget``'s module settings patched while it
traces. Every variant's final carry must equal the first's bit for bit (``bitwise``).

``vmap``: the same chunk vmapped over ``--vmap-k`` params (as the phase grid does), dense
against the default, where a batched call runs the dense path (docs/scaling.md)."""

from __future__ import annotations

import contextlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import narset_jax.budget as budget
import sims
from benchmarks.step._harness import chunk_fn, clock, setup
from narset_jax.params import NarsetParams, stack_params

__all__ = ["VARIANTS", "bench_changes", "bench_vmap"]

_NEVER = 1 << 62
VARIANTS = {
    "before: dense, blocked above 65536": {"_SPARSE_MIN": _NEVER, "_UNBLOCKED_MAX": 65536},
    "dense, blocked above 2**18": {"_SPARSE_MIN": _NEVER},
    "sparse, indices by jnp.nonzero": {"_INDEX_SEARCH": "nonzero"},
    "sparse (default)": {},
}


@contextlib.contextmanager
def patched(settings):
    old = {k: getattr(budget, k) for k in settings}
    for k, v in settings.items():
        setattr(budget, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(budget, k, v)


def _interleaved(runs, rounds, rw):
    """Median wall and CPU rates of each callable, one call of each per round."""
    times = {k: ([], []) for k in runs}
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            w0, c0 = clock()
            jax.block_until_ready(runs[k]())
            w1, c1 = clock()
            times[k][0].append(w1 - w0)
            times[k][1].append(c1 - c0)
    return {k: {"per_second": rw / statistics.median(w),
                "per_cpu_second": rw / statistics.median(c), "rounds": rounds}
            for k, (w, c) in times.items()}


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bench_changes(sizes, steps, rounds):
    out = []
    for n in sizes:
        params, sc, carry = setup(n)
        runs, results = {}, {}
        for name, settings in VARIANTS.items():
            with patched(settings):
                compiled = chunk_fn(params, sc, steps).lower(carry).compile()
            runs[name] = lambda compiled=compiled, carry=carry: compiled(carry)
            results[name] = runs[name]()
        first = next(iter(results.values()))
        rates = _interleaved(runs, rounds, n * steps)
        base = rates[next(iter(VARIANTS))]
        for name in VARIANTS:
            row = {"n": n, "steps": steps, "variant": name, **rates[name],
                   "speedup_over_before": rates[name]["per_second"] / base["per_second"],
                   "cpu_speedup_over_before":
                       rates[name]["per_cpu_second"] / base["per_cpu_second"],
                   "bitwise": _same(results[name], first)}
            out.append(row)
            print(f"change  N={n:>9,d} {name:36s} {row['per_second'] / 1e6:6.2f} M rw/s "
                  f"({row['per_cpu_second'] / 1e6:6.2f} M per CPU-s) "
                  f"x{row['speedup_over_before']:.2f} bitwise={row['bitwise']}", flush=True)
    return out


def bench_vmap(n, steps, k, rounds):
    """The chunk vmapped over ``k`` params (pool and beta varied), dense against the
    default."""
    sc = sims.load_scenario("steady").without_metadata()
    grid = stack_params([NarsetParams(pool=1.2 + 0.2 * i, beta=0.3 + 0.1 * i)
                         for i in range(k)])
    _, _, carry = setup(n)
    carries = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x))), carry)

    def chunk(p, c):
        return sims.rollout_chunk(p, sc, c, steps)[0]

    runs, results = {}, {}
    for name in ("dense, blocked above 2**18", "sparse (default)"):
        with patched(VARIANTS[name]):
            compiled = jax.jit(jax.vmap(chunk)).lower(grid, carries).compile()
        runs[name] = lambda compiled=compiled: compiled(grid, carries)
        results[name] = runs[name]()
    rates = _interleaved(runs, rounds, k * n * steps)
    dense = rates["dense, blocked above 2**18"]
    out = {"n": n, "k": k, "steps": steps,
           "bitwise": _same(*results.values()),
           "default_over_dense": rates["sparse (default)"]["per_second"] / dense["per_second"],
           "rows": rates}
    print(f"vmap    N={n:>9,d} K={k}: default/dense {out['default_over_dense']:.3f}, "
          f"bitwise={out['bitwise']}", flush=True)
    return out
