"""Closed-loop throughput (controller plus simulator): JAX vs NumPy vs a per-region Python
loop, and where the time goes.

Every number in the JSON comes from this one run on this one machine; speed claims are
ratios against baselines measured in the same run. On a shared machine, wall-clock rates
swing with other jobs, so each row also has the process's CPU time (``process_time``, all
threads), and region-windows per CPU-second is the figure to compare across runs.

    python -m benchmarks.step --out benchmarks/results/step.json

Rows:

* ``jax``: ``jax.jit`` of ``sims.rollout_chunk`` (one ``lax.scan`` of ``--steps`` windows,
  controller plus ecology plus metric accumulators), float32, per-region budget, ``steady``
  scenario. Median of ``--repeats`` timed calls after a warm-up; compile time is tracing,
  lowering and compiling the chunk.
* ``jax_sharded`` (when the process has several devices, e.g. with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the same chunk sharded over all
  of them with ``sims.sharding`` (on a CPU, one thread per device).
* ``numpy``: ``sims.numpy_twin`` (the same windows, eager NumPy), same N.
* ``python_loop``: the NumPy twin called once per region on ``[1]`` slices (a
  per-region Python loop) on ``--loop-n`` regions; its rate is **extrapolated** to the
  other sizes (it is linear in N by construction) and marked ``extrapolated``.
* ``profile``: at ``--profile-n``, (a) each stage jitted alone; (b) the compiled chunk under
  ``jax.profiler``, per-thunk self time grouped by pipeline stage (stages are tagged with
  ``jax.named_scope`` by wrapping the stage functions in this process only); (c) the
  structure of the compiled loop (kernels and copies per window).
* ``prng``: the simulator's counter-based hash against ``jax.random`` (threefry, rbg,
  unsafe_rbg) drawing as many numbers per region and window (4 normals, 10 uniforms).
* ``variants``: the chunk in child processes with XLA flags or budget blocking changed.
* ``changes`` (``benchmarks/step/changes.py``): what the budget stage's changes of issue 19
  bought (dense as before, the new blocking rule, the sparse projection), compiled in one
  process and timed in interleaved rounds at ``--variant-sizes``, with a bitwise check;
  and their cost under ``vmap`` over params (the phase grid).
* ``floor``: at ``--profile-n``, the elementwise operations of one window per region, as
  written (the jaxpr) and as compiled (XLA's loop body, ops it duplicated into several
  fusions counted each time), timed in the same rounds as the best elementwise rate of one
  fused XLA kernel on this machine and a scan that only streams the carried state: the
  time a window would take with perfect fusion, and its memory floor.

Each section is a module of this package: ``throughput`` (``jax``, ``jax_sharded``,
``numpy``, ``python_loop``), ``profiling``, ``prng``, ``floor``, ``variants`` and
``changes``; this module runs them in that order (``--skip`` takes ``numpy``, ``loop``,
``profile``, ``prng``, ``floor``, ``variants``, ``changes``) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from benchmarks import _common
from benchmarks.step._harness import SCENARIO
from benchmarks.step.changes import bench_changes, bench_vmap
from benchmarks.step.floor import arithmetic_floor
from benchmarks.step.prng import bench_prng
from benchmarks.step.profiling import profile_stages, profile_trace
from benchmarks.step.throughput import (
    bench_jax,
    bench_jax_sharded,
    bench_numpy,
    bench_python_loop,
)
from benchmarks.step.variants import bench_variants, child

__all__ = ["main"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/step.json")
    p.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--numpy-max", type=float, default=1e5)
    p.add_argument("--loop-n", type=int, default=20)
    p.add_argument("--profile-n", type=float, default=1e5)
    p.add_argument("--variant-sizes", default="1e5,1e6")
    p.add_argument("--skip", default="", help="comma list of sections to skip")
    p.add_argument("--vmap-k", type=int, default=4, help="params in the vmap row of changes")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--patch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child(int(args.child), args.steps, args.repeats, args.patch)

    sizes = [int(float(x)) for x in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    result = {"machine": _common.machine(), "scenario": SCENARIO, "dtype": "float32",
              "budget": "region", "load_average_start": os.getloadavg()}
    result["jax"] = bench_jax(sizes, args.steps, args.repeats)
    if jax.local_device_count() > 1:
        result["jax_sharded"] = bench_jax_sharded(
            sizes, args.steps, args.repeats, jax.local_device_count()
        )
    np_sizes = [n for n in sizes if n <= args.numpy_max]
    if "numpy" not in skip:
        result["numpy"] = bench_numpy(np_sizes, args.steps, args.repeats)
    if "loop" not in skip:
        result["python_loop"] = bench_python_loop(args.loop_n, 2, sizes)
    if "profile" not in skip:
        pn = int(args.profile_n)
        result["profile"] = {
            "trace": profile_trace(pn, min(args.steps, 10)),
            "stages_alone": profile_stages(pn, args.repeats),
        }
    if "prng" not in skip:
        result["prng"] = bench_prng(int(args.profile_n), min(args.steps, 10), args.repeats)
    if "floor" not in skip:
        result["floor"] = arithmetic_floor(int(args.profile_n), args.repeats)
    if "variants" not in skip:
        vs = [int(float(x)) for x in args.variant_sizes.split(",")]
        result["variants"] = bench_variants(vs, args.steps, args.repeats)

    if "changes" not in skip:
        vs = [int(float(x)) for x in args.variant_sizes.split(",")]
        result["changes"] = {
            "rows": bench_changes(vs, args.steps, max(args.repeats, 5)),
            "vmap": bench_vmap(vs[0], args.steps, args.vmap_k, max(args.repeats, 5)),
        }

    jax_at = {r["n"]: r for r in result["jax"]}
    sharded_at = {r["n"]: r for r in result.get("jax_sharded", [])}
    ratios = {}
    for r in result.get("numpy", []):
        if r["n"] in jax_at:
            j = jax_at[r["n"]]
            ratios[f"jax_over_numpy_at_{r['n']}"] = j["per_second"] / r["per_second"]
            ratios[f"jax_over_numpy_cpu_at_{r['n']}"] = j["per_cpu_second"] / r["per_cpu_second"]
        if r["n"] in sharded_at:
            ratios[f"jax_all_devices_over_numpy_at_{r['n']}"] = (
                sharded_at[r["n"]]["per_second"] / r["per_second"])
    if "python_loop" in result:
        loop = result["python_loop"]["measured"]
        for n, j in jax_at.items():
            ratios[f"jax_over_python_loop_at_{n}"] = j["per_second"] / loop["per_second"]
    lo, hi = jax_at.get(10**4), jax_at.get(10**6)
    if lo and hi:
        ratios["time_ratio_1e6_over_1e4_per_size_ratio"] = (hi["seconds"] / lo["seconds"]) / 100
        ratios["cpu_time_ratio_1e6_over_1e4_per_size_ratio"] = (
            hi["cpu_seconds"] / lo["cpu_seconds"]) / 100
    result["ratios"] = ratios
    result["load_average_end"] = os.getloadavg()
    print("ratios:", json.dumps(ratios, indent=1))

    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")
