"""The benchmark of the Numba peer beside JAX and NumPy (``python -m benchmarks.numba_peer``;
see the package docstring for the rows)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.numba_peer import NumbaPeer, available
from benchmarks.numba_peer.kernel import numba

__all__ = ["bench", "main", "ratios"]

# ---------------------------------------------------------------------------------------
# The benchmark.

_SCENARIO = "steady"


def _jax_setup(n, steps, devices):
    """A callable that runs one timed chunk of ``steps`` windows on ``devices`` devices
    (1: ``jax.jit`` of ``sims.rollout_chunk``; more: ``sims.sharding``, donated carry)."""
    import jax

    from benchmarks.step._harness import chunk_fn, setup
    from narset_jax.params import NarsetParams

    if devices == 1:
        params, sc, carry = setup(n)
        compiled = chunk_fn(params, sc, steps).lower(carry).compile()
        return lambda: compiled(carry)
    import sims
    from narset_jax.sharding import region_mesh
    from sims.sharding import ShardedRollout

    params = NarsetParams()
    sc = sims.load_scenario(_SCENARIO)
    runner = ShardedRollout(params, n, region_mesh(jax.devices()[:devices]))
    state = [jax.block_until_ready(runner.init(params, sc, jax.random.key(0)))]
    compiled = runner.lower_chunk(params, sc, state[0], steps, donate=True).compile()
    scw = sc.without_metadata()

    def run():
        state[0] = compiled(params, scw, state[0])[0]
        return state[0]

    return run


def _time_once(fn):
    import time

    import jax

    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - w0, time.process_time() - c0


def _child(sizes, steps, devices):
    """Serve timings on request: read ``N`` per line, answer one JSON line of
    ``[wall, cpu]`` for one chunk (after a warm-up at setup)."""
    import jax

    runs = {}
    for n in sizes:
        runs[n] = _jax_setup(n, steps, devices)
        jax.block_until_ready(runs[n]())
    print(json.dumps({"ready": jax.device_count()}), flush=True)
    for line in sys.stdin:
        n = int(line)
        print(json.dumps(_time_once(runs[n])), flush=True)


def _start_child(sizes, steps, devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    cmd = [sys.executable, "-m", "benchmarks.numba_peer", "--child", str(devices),
           "--sizes", ",".join(str(n) for n in sizes), "--steps", str(steps)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    ready = json.loads(proc.stdout.readline())
    if ready.get("ready") != devices:
        proc.kill()
        raise RuntimeError(f"the {devices}-device child started with {ready} devices")

    def ask(n):
        proc.stdin.write(f"{n}\n")
        proc.stdin.flush()
        return tuple(json.loads(proc.stdout.readline()))

    return proc, ask


def _row(name, n, steps, walls, cpus, **extra):
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    rw = n * steps
    return {"name": name, "n": n, "steps": steps, "rounds": len(walls),
            "seconds": wall, "cpu_seconds": cpu, "per_second": rw / wall,
            "per_cpu_second": rw / cpu if cpu > 0 else None,
            "best_per_second": rw / min(walls), "walls": walls, "cpus": cpus, **extra}


def bench(sizes, steps, numpy_steps, rounds, threads=(1, 2), devices=(2,)):
    """Rows for every N: JAX on 1 device (``jax``) and on each of ``devices`` host devices
    (``jax_<d>dev``, one child process each), NumPy, and Numba on each of ``threads``
    threads (``numba_<k>``); the repetitions of all rows interleaved round by round."""
    import jax
    import jax.numpy as jnp

    import sims
    from benchmarks.step._harness import setup
    from sims import numpy_twin as ref

    children = {d: _start_child(sizes, steps, d) for d in devices if d > 1}
    rows = []
    try:
        for n in sizes:
            params, sc, carry0 = setup(n, jnp.float32)
            scenario = sims.load_scenario(_SCENARIO)
            jax_run = _jax_setup(n, steps, 1)
            twin0 = ref.from_jax(carry0)
            peer = NumbaPeer(params, scenario, twin0)

            def numpy_run(twin0=twin0, params=params, scenario=scenario):
                c = twin0
                for _ in range(numpy_steps):
                    c = ref.window(params, scenario, c)
                return c.sim.health

            def numba_run(k, peer=peer):
                numba.set_num_threads(k)
                peer.run(steps)
                return peer.sim.health

            tasks = {
                "jax": (lambda jax_run=jax_run: _time_once(jax_run), steps),
                "numpy": (lambda numpy_run=numpy_run: _time_once(numpy_run), numpy_steps),
            }
            for k in threads:
                tasks[f"numba_{k}"] = (lambda k=k: _time_once(lambda: numba_run(k)), steps)
            for d, (_proc, ask) in children.items():
                tasks[f"jax_{d}dev"] = (lambda n=n, ask=ask: ask(n), steps)
            # Warm-up (Numba compiles on its first call).
            jax.block_until_ready(jax_run())
            for k in threads:
                numba_run(k)
            times = {k: ([], []) for k in tasks}
            for r in range(rounds):
                order = list(tasks) if r % 2 == 0 else list(reversed(tasks))
                for k in order:
                    w, c = tasks[k][0]()
                    times[k][0].append(w)
                    times[k][1].append(c)
            for k, (_fn, k_steps) in tasks.items():
                row = _row(k, n, k_steps, *times[k], load=os.getloadavg()[0])
                rows.append(row)
                print(f"{k:9s} N={n:>9,d}  {row['per_second'] / 1e6:8.2f} M rw/s  "
                      f"({row['per_cpu_second'] / 1e6:6.2f} M per CPU-s)", flush=True)
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    finally:
        for proc, _ask in children.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    return rows


def ratios(rows):
    at = {(r["name"], r["n"]): r for r in rows}
    out = {}
    bases = sorted({name for name, _ in at if name == "numpy" or name.startswith("numba")})
    for (name, n), r in at.items():
        for base in bases:
            if name.startswith("jax") and (base, n) in at:
                b = at[(base, n)]
                out[f"{name}_over_{base}_at_{n}"] = r["per_second"] / b["per_second"]
                out[f"{name}_over_{base}_cpu_at_{n}"] = r["per_cpu_second"] / b["per_cpu_second"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/numba_peer.json")
    p.add_argument("--sizes", default="1e4,1e5,1e6")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--numpy-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", default="1,2", help="Numba thread counts (rows numba_K)")
    p.add_argument("--devices", default="2",
                   help="host-device counts > 1 for the sharded JAX rows (jax_Ddev); 0: none")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    if args.child is not None:
        return _child(sizes, args.steps, args.child)
    if not available():
        raise SystemExit("benchmarks.numba_peer needs numba: pip install numba (the bench extra)")

    from benchmarks import _common

    result = {"machine": _common.machine(), "scenario": _SCENARIO, "dtype": "float32",
              "budget": "region", "numba": numba.__version__,
              "numba_threads": numba.config.NUMBA_NUM_THREADS,
              "load_average_start": os.getloadavg(),
              "note": "medians over interleaved rounds; per_cpu_second uses process_time "
                      "of the process that ran the row (all its threads)"}
    threads = [int(x) for x in args.threads.split(",")]
    devices = [int(x) for x in args.devices.split(",")]
    result["rows"] = bench(sizes, args.steps, args.numpy_steps, args.rounds, threads, devices)
    result["ratios"] = ratios(result["rows"])
    result["load_average_end"] = os.getloadavg()
    print("ratios:", json.dumps(result["ratios"], indent=1))

    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")
