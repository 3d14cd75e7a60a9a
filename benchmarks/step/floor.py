"""Arithmetic floor: how many elementwise operations one window is (as written and as
compiled), and how fast this machine's XLA runs elementwise arithmetic at best."""

from __future__ import annotations

import collections
import dataclasses
import re
import time

import jax
import jax.numpy as jnp

import sims
from benchmarks.step._harness import bump, chunk_fn, outer_body, setup

__all__ = ["arithmetic_floor"]

# Per-element cost classes of jaxpr primitives (data movement is counted apart).
_MOVE = {"broadcast_in_dim", "reshape", "squeeze", "convert_element_type", "slice",
         "concatenate", "dynamic_slice", "dynamic_update_slice", "copy", "copy_p", "iota",
         "stop_gradient", "pad", "gather", "scatter", "transpose", "stack"}
_SLOW = {"div", "sqrt", "rsqrt", "cbrt", "exp", "exp2", "log", "log1p", "expm1", "pow",
         "tanh", "logistic", "erf", "sin", "cos", "atan2", "integer_pow", "rem"}


def _jaxpr_ops(jaxpr, n, mult=1.0, acc=None):
    """Elementwise primitive applications per region in a jaxpr (nested jaxprs walked,
    a scan's body counted ``length`` times), by primitive name."""
    acc = collections.Counter() if acc is None else acc
    for e in jaxpr.eqns:
        inner = []
        for v in e.params.values():
            for j in v if isinstance(v, (list, tuple)) else [v]:
                j = getattr(j, "jaxpr", j)
                if hasattr(j, "eqns"):
                    inner.append(j)
        if inner:
            m = mult * (e.params.get("length", 1) if e.primitive.name == "scan" else 1)
            for j in inner[:1] if e.primitive.name == "cond" else inner:
                _jaxpr_ops(j, n, m, acc)
            continue
        for o in e.outvars:
            size = 1
            for d in getattr(o.aval, "shape", ()):
                size *= d
            if size >= n // 4:
                acc[e.primitive.name] += mult * size / n
    return acc


def _hlo_ops(hlo, n):
    """Elementwise HLO instructions the compiled window executes per region (fused
    computations included, so ops XLA duplicated into several fusions count each time)."""
    from narset_jax.sharding import hlo_computations

    comps = hlo_computations(hlo)
    inst = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\][^ ]* ([\w-]+)\(")
    skip = {"parameter", "fusion", "bitcast", "broadcast", "constant", "tuple",
            "get-tuple-element", "copy", "while", "call", "conditional"}
    acc = collections.Counter()

    def walk(name, depth):
        for line in comps.get(name, []):
            m = inst.match(line)
            if m and m.group(2) not in skip:
                size = 1
                for d in filter(None, m.group(1).split(",")):
                    size *= int(d)
                if size >= n:
                    acc[m.group(2)] += size / n
                elif size >= n // 64:
                    # A block of regions (the projection's lax.map): every region passes
                    # through it once per window.
                    acc[m.group(2)] += 1.0
            if depth < 4:
                for callee in re.findall(r"(?:calls|to_apply|body|branch_computations)="
                                         r"\{?%?([\w.\-]+)", line):
                    walk(callee, depth + 1)

    walk(outer_body(comps), 0)
    return acc


def _peak_kernel(n, chains=8, depth=100):
    """One fused XLA kernel of ``chains`` independent multiply-add chains of ``depth`` steps
    over ``[n]`` float32: the best case for elementwise arithmetic (one pass over memory,
    contractible to FMAs, enough independent work per element to fill the pipelines).
    Returns ``(compiled, x, ops_per_element)``."""
    import numpy as np

    x = jnp.asarray(np.random.default_rng(0).random(n, dtype=np.float32))

    def f(x):
        ys = [x + np.float32(c) for c in range(chains)]
        for i in range(depth):
            ys = [y * np.float32(0.999 + 1e-6 * i + 1e-7 * c) + np.float32(1e-3 * (i % 7))
                  for c, y in enumerate(ys)]
        return sum(ys)

    return jax.jit(f).lower(x).compile(), x, 2 * chains * depth + chains


def _memory_kernel(moving, steps):
    """A scan that reads and writes every carried ``[N]`` array once per window
    (``x + 1``) and does nothing else."""
    f = jax.jit(lambda c: jax.lax.scan(lambda c, _: (jax.tree.map(bump, c), None), c, None,
                                       length=steps)[0])
    return f.lower(moving).compile()


def arithmetic_floor(n, repeats, target_per_second=30e6, steps=10):
    """How much elementwise work one closed-loop window is, against this machine's best
    elementwise rate under XLA and its memory floor, all timed in the same rounds (this
    VM's speed drifts by tens of percent from minute to minute): the time a window would
    take at that rate if it were one perfectly fused kernel, plus the time to stream its
    state once."""
    import statistics

    params, sc, carry = setup(n)
    window = lambda c: sims.rollout_chunk(params, sc, c, 1)[0]  # noqa: E731
    written = _jaxpr_ops(jax.make_jaxpr(window)(carry).jaxpr, n)
    chunk = chunk_fn(params, sc, steps).lower(carry).compile()
    compiled = _hlo_ops(chunk.as_text(), n)
    peak, x, peak_ops = _peak_kernel(n)
    # What sims.rollout_chunk carries: it closes over the ecology's constant fields and the
    # controller's region ids instead of carrying them.
    moving = dataclasses.replace(
        carry,
        sim=dataclasses.replace(carry.sim, **dict.fromkeys(sims.STYLISED.constant_fields)),
        ctl=dataclasses.replace(carry.ctl, region=None),
    )
    memory = _memory_kernel(moving, steps)
    calls = {"window": lambda: chunk(carry), "peak": lambda: peak(x),
             "memory": lambda: memory(moving)}
    for f in calls.values():
        jax.block_until_ready(f())
    rounds = {k: [] for k in calls}
    for _ in range(max(repeats, 10)):
        for k, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            rounds[k].append(time.perf_counter() - t0)
    arith = {k: v for k, v in written.items() if k not in _MOVE}
    n_arith = sum(arith.values())
    n_compiled = sum(compiled.values())
    per_round = []
    for w, p, m in zip(rounds["window"], rounds["peak"], rounds["memory"]):
        rate = peak_ops * n / p  # ops per second
        per_round.append({
            "window_ns": w / steps / n * 1e9,
            "g_ops_per_second": rate / 1e9,
            "written_at_peak_ns": n_arith / rate * 1e9,
            "compiled_at_peak_ns": n_compiled / rate * 1e9,
            "memory_ns": m / steps / n * 1e9,
        })
    med = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    out = {
        "n": n,
        "written_ops_per_region_window": n_arith,
        "written_slow_ops_per_region_window": sum(v for k, v in arith.items() if k in _SLOW),
        "written_data_movement_per_region_window": sum(
            v for k, v in written.items() if k in _MOVE),
        "written_top": dict(collections.Counter(arith).most_common(12)),
        "compiled_ops_per_region_window": n_compiled,
        "compiled_top": dict(compiled.most_common(12)),
        "peak_kernel_ops_per_element": peak_ops,
        "median_of_rounds": med,
        "rounds": per_round,
        "target_ns_per_region_window": 1e9 / target_per_second,
    }
    print(f"floor   one window: {n_arith:.0f} elementwise ops per region as written "
          f"({out['written_slow_ops_per_region_window']:.0f} divisions, roots, "
          f"transcendentals), {n_compiled:.0f} as compiled", flush=True)
    print(f"floor   same rounds (median): the window {med['window_ns']:.1f} ns per "
          f"region-window; best fused XLA kernel {med['g_ops_per_second']:.1f} G ops/s, so "
          f"{med['written_at_peak_ns']:.1f} ns (written ops) / {med['compiled_at_peak_ns']:.1f}"
          f" ns (compiled ops) of pure arithmetic; streaming the state once "
          f"{med['memory_ns']:.1f} ns; the target allows "
          f"{out['target_ns_per_region_window']:.1f} ns", flush=True)
    return out
