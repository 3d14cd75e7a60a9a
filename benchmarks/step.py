"""Closed-loop throughput (controller plus simulator): JAX vs NumPy vs a per-region Python
loop, and where the time goes.

Every number in the JSON comes from this one run on this one machine; speed claims are
ratios against baselines measured in the same run. On a shared machine, wall-clock rates
swing with other jobs, so each row also has the process's CPU time (``process_time``, all
threads), and region-windows per CPU-second is the figure to compare across runs.

    python benchmarks/step.py --out benchmarks/results/step.json

Rows:

* ``jax``: ``jax.jit`` of ``sims.rollout_chunk`` (one ``lax.scan`` of ``--steps`` windows,
  controller plus ecology plus metric accumulators), float32, per-region budget, ``steady``
  scenario. Median of ``--repeats`` timed calls after a warm-up; compile time is tracing,
  lowering and compiling the chunk.
* ``jax_sharded`` (when the process has several devices, e.g. with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the same chunk sharded over all
  of them with ``narset_jax.sharding`` (on a CPU, one thread per device).
* ``numpy``: ``benchmarks/numpy_reference.py`` (the same windows, eager NumPy), same N.
* ``python_loop``: the NumPy reference called once per region on ``[1]`` slices (a
  per-region Python loop) on ``--loop-n`` regions; its rate is **extrapolated** to the
  other sizes (it is linear in N by construction) and marked ``extrapolated``.
* ``profile``: at ``--profile-n``, (a) each stage jitted alone; (b) the compiled chunk under
  ``jax.profiler``, per-thunk self time grouped by pipeline stage (stages are tagged with
  ``jax.named_scope`` by wrapping the stage functions in this process only); (c) the
  structure of the compiled loop (kernels and copies per window).
* ``prng``: the simulator's counter-based hash against ``jax.random`` (threefry, rbg,
  unsafe_rbg) drawing as many numbers per region and window (4 normals, 10 uniforms).
* ``variants``: the chunk in child processes with XLA flags or budget blocking changed.
* ``floor``: at ``--profile-n``, the elementwise operations of one window per region, as
  written (the jaxpr) and as compiled (XLA's loop body, ops it duplicated into several
  fusions counted each time), timed in the same rounds as the best elementwise rate of one
  fused XLA kernel on this machine and a scan that only streams the carried state: the
  time a window would take with perfect fusion, and its memory floor.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import sims  # noqa: E402
from narset_jax.params import NarsetParams  # noqa: E402

SCENARIO = "steady"


def _clock():
    return time.perf_counter(), time.process_time()


def _timed(fn, repeats, warmup=1, best=False):
    """Median (or with ``best``, the minimum) wall and CPU seconds of ``fn()`` over
    ``repeats`` calls after ``warmup``. The minimum is steadier on a shared machine."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = _clock()
        jax.block_until_ready(fn())
        w1, c1 = _clock()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    pick = min if best else statistics.median
    return pick(walls), pick(cpus)


def _setup(n, dtype=jnp.float32, params=None):
    params = NarsetParams() if params is None else params
    sc = sims.load_scenario(SCENARIO).without_metadata()
    init = jax.jit(
        lambda k: sims.rollout_init(params, sc, k, n, dtype=dtype)
    )
    return params, sc, jax.block_until_ready(init(jax.random.key(0)))


def _chunk_fn(params, sc, steps):
    return jax.jit(lambda c: sims.rollout_chunk(params, sc, c, steps)[0])


def _row(n, steps, wall, cpu, **extra):
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


def bench_jax(sizes, steps, repeats, dtype=jnp.float32):
    rows = []
    for n in sizes:
        params, sc, carry = _setup(n, dtype)
        f = _chunk_fn(params, sc, steps)
        w0, c0 = _clock()
        compiled = f.lower(carry).compile()
        w1, c1 = _clock()
        run = lambda compiled=compiled, carry=carry: compiled(carry)  # noqa: E731
        wall, cpu = _timed(run, repeats)
        best_wall, best_cpu = _timed(run, repeats, warmup=0, best=True)
        rows.append(_row(n, steps, wall, cpu, compile_s=w1 - w0, compile_cpu_s=c1 - c0,
                         best_per_second=n * steps / best_wall,
                         best_per_cpu_second=n * steps / best_cpu,
                         load=os.getloadavg()[0]))
        print(f"jax     N={n:>9,d}  {n * steps / wall / 1e6:8.2f} M rw/s  "
              f"({n * steps / cpu / 1e6:6.2f} M per CPU-s)  compile {w1 - w0:5.2f} s",
              flush=True)
    return rows


def bench_jax_sharded(sizes, steps, repeats, devices):
    """The same chunk through ``narset_jax.sharding`` over ``devices`` host devices (on a
    CPU each device runs on its own thread: this is how one process uses several cores)."""
    from narset_jax.sharding import ShardedRollout, region_mesh

    rows = []
    for n in sizes:
        params = NarsetParams()
        sc = sims.load_scenario(SCENARIO)
        runner = ShardedRollout(params, n, region_mesh(jax.devices()[:devices]))
        carry = [jax.block_until_ready(runner.init(params, sc, jax.random.key(0)))]
        w0, c0 = _clock()
        compiled = runner.lower_chunk(params, sc, carry[0], steps, donate=True).compile()
        w1, c1 = _clock()
        scw = sc.without_metadata()

        def run(compiled=compiled, carry=carry, params=params, scw=scw):
            carry[0] = compiled(params, scw, carry[0])[0]
            return carry[0]

        wall, cpu = _timed(run, repeats)
        best_wall, best_cpu = _timed(run, repeats, warmup=0, best=True)
        rows.append(_row(n, steps, wall, cpu, devices=devices, compile_s=w1 - w0,
                         compile_cpu_s=c1 - c0, best_per_second=n * steps / best_wall,
                         best_per_cpu_second=n * steps / best_cpu, load=os.getloadavg()[0]))
        print(f"jax x{devices} N={n:>9,d}  {n * steps / wall / 1e6:8.2f} M rw/s  "
              f"({n * steps / cpu / 1e6:6.2f} M per CPU-s)", flush=True)
    return rows


def bench_numpy(sizes, steps, repeats):
    import numpy_reference as ref

    rows = []
    for n in sizes:
        params, sc, carry = _setup(n, jnp.float32)
        scenario = sims.load_scenario(SCENARIO)
        start = ref.from_jax(carry)
        k = max(1, min(steps, 5))  # a few windows are enough: the cost is per window

        def run(start=start, k=k, params=params, scenario=scenario):
            c = start
            for _ in range(k):
                c = ref.window(params, scenario, c)
            return c.sim.health

        wall, cpu = _timed(run, max(1, repeats // 2), warmup=0, best=True)
        rows.append(_row(n, k, wall, cpu))
        print(f"numpy   N={n:>9,d}  {n * k / wall / 1e6:8.2f} M rw/s", flush=True)
    return rows


def bench_python_loop(n, windows, extrapolate_to):
    import numpy_reference as ref

    params, sc, carry = _setup(n, jnp.float32)
    scenario = sims.load_scenario(SCENARIO)
    regions = [ref.take(ref.from_jax(carry), slice(i, i + 1)) for i in range(n)]
    w0, c0 = _clock()
    for _ in range(windows):
        regions = [ref.window(params, scenario, c) for c in regions]
    w1, c1 = _clock()
    per_rw = (w1 - w0) / (n * windows)
    row = _row(n, windows, w1 - w0, c1 - c0, measured=True)
    print(f"python  N={n:>9,d}  {1 / per_rw:10.0f} rw/s (measured)", flush=True)
    extrapolated = [
        {"n": m, "per_second": 1 / per_rw, "seconds_per_window": m * per_rw,
         "extrapolated": True, "from_n": n}
        for m in extrapolate_to
    ]
    return {"measured": row, "extrapolated": extrapolated}


# ---------------------------------------------------------------------------------------
# Profile.

# Stage functions, by the module namespace that calls them: each is wrapped in a
# jax.named_scope (in this process only) so that the compiled HLO says which stage an op
# came from.
_STAGES = {
    "narset_jax.step": ("sanitise", "smooth", "scores", "update_mode", "targets", "inertia",
                        "_project", "authority", "overdrive_cost"),
    "sims.ecology": ("step_base", "stream", "normal", "uniform_pair"),
    "sims.rollout": ("sim_transition", "controller_step"),
}
_LABEL = {
    "step_base": "prng", "stream": "prng", "normal": "prng", "uniform_pair": "prng",
    "_project": "projection", "overdrive_cost": "decision record",
    "sim_transition": "simulator (excluding prng)", "controller_step": "controller (other)",
}


@contextlib.contextmanager
def _scoped_stages():
    import importlib

    saved = []
    for modname, names in _STAGES.items():
        mod = importlib.import_module(modname)
        for name in names:
            fn = getattr(mod, name)
            label = "stage_" + _LABEL.get(name, name).replace(" ", "_").replace("(", "")
            label = label.replace(")", "")

            def wrapped(*a, __fn=fn, __label=label, **k):
                with jax.named_scope(__label):
                    return __fn(*a, **k)

            functools.update_wrapper(wrapped, fn)
            saved.append((mod, name, fn))
            setattr(mod, name, wrapped)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_INST = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")


def _stage_of_instructions(hlo: str) -> dict[str, str]:
    """Instruction name -> innermost ``stage_*`` scope among its (fused) ops."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = _COMP.match(line.strip()) if not line.startswith(" ") else None
        if m:
            cur = m.group(1)
            comps[cur] = []
        elif cur is not None:
            comps[cur].append(line)

    def stages(lines, depth=0):
        c = collections.Counter()
        for line in lines:
            for op in re.findall(r'op_name="([^"]+)"', line):
                found = re.findall(r"stage_([a-z_]+)", op)
                c[found[-1] if found else "rollout (accumulators, carry)"] += 1
            if depth < 3:
                for callee in re.findall(r"calls=%?([\w.\-]+)", line):
                    c.update(stages(comps.get(callee, []), depth + 1))
        return c

    out = {}
    for lines in comps.values():
        for line in lines:
            m = _INST.match(line)
            if not m:
                continue
            name = m.group(1)
            if name.startswith("copy"):
                out[name] = "copies of loop-carried buffers"
            elif "dynamic-update-slice" in name or "dynamic-slice" in name:
                out[name] = "projection (block slicing)"
            else:
                c = stages([line])
                out[name] = c.most_common(1)[0][0].replace("_", " ") if c else "other"
    return out


def _self_times(trace_dir):
    files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as fh:
        data = json.load(fh)
    events = data["traceEvents"] if isinstance(data, dict) else data
    events = [e for e in events if e.get("ph") == "X"]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    self_t, count = collections.Counter(), collections.Counter()
    for es in by_thread.values():
        es.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack = []
        for e in es:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) <= e["ts"]:
                stack.pop()
            if stack:
                stack[-1]["_child"] = stack[-1].get("_child", 0) + e.get("dur", 0)
            stack.append(e)
        for e in es:
            self_t[e["name"]] += e.get("dur", 0) - e.get("_child", 0)
            count[e["name"]] += 1
    return self_t, count


def profile_trace(n, steps, calls=3):
    """Per-thunk self time of the compiled chunk, grouped by stage."""
    with _scoped_stages():
        params, sc, carry = _setup(n)
        compiled = _chunk_fn(params, sc, steps).lower(carry).compile()
    hlo = compiled.as_text()
    stage = _stage_of_instructions(hlo)
    jax.block_until_ready(compiled(carry))
    tmp = tempfile.mkdtemp(prefix="narset-trace-")
    try:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(carry))
        self_t, count = _self_times(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kernels = {k: v for k, v in self_t.items() if k in stage}
    total = sum(kernels.values())
    groups = collections.Counter()
    for k, v in kernels.items():
        groups[stage[k]] += v
    windows = calls * steps
    body = _loop_structure(hlo)
    out = {
        "n": n,
        "steps": steps,
        "calls": calls,
        "kernel_time_ms_per_window": total / 1e3 / windows,
        "share_by_stage": {k: v / total for k, v in groups.most_common()},
        "kernel_executions_per_window": sum(count[k] for k in kernels) / windows,
        "top_kernels": [
            {"name": k, "stage": stage[k], "ms_per_window": v / 1e3 / windows,
             "runs_per_window": count[k] / windows}
            for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
        ],
        **body,
    }
    print(f"profile N={n:,d}: {out['kernel_time_ms_per_window']:.2f} ms of kernels per window,"
          f" {out['kernel_executions_per_window']:.0f} kernel runs per window", flush=True)
    for k, v in out["share_by_stage"].items():
        print(f"   {100 * v:5.1f}%  {k}", flush=True)
    return out


def _outer_body(comps):
    """The name of the largest while-loop body among parsed HLO computations (the scan over
    windows; the projection's block loop is smaller)."""
    bodies = [m.group(1) for lines in comps.values() for line in lines
              if re.search(r"\bwhile\(", line) and (m := re.search(r"body=%?([\w.\-]+)", line))]
    return max(bodies, key=lambda b: len(comps.get(b, [])))


def _loop_structure(hlo):
    """Kernels and copies in the scan body, and the carry size."""
    from narset_jax.sharding import _computations

    comps = _computations(hlo)
    lines = comps[_outer_body(comps)]
    n_fusion = sum(1 for x in lines if " fusion(" in x)
    copies = [x for x in lines if re.match(r"\s*%copy[.\d]* = ", x)]
    big = [x for x in copies if re.search(r"\[\d{3,}\]", x)]
    params = [x for x in lines if " parameter(0)" in x]
    carry = len(re.findall(r"\[\d+\]", params[0])) if params else None
    return {"loop_body_fusions": n_fusion, "loop_body_copies_of_region_arrays": len(big),
            "loop_carry_region_arrays": carry}


def _bump(x):
    """Touch an array once: ``x + 1`` (``~x`` for booleans)."""
    return ~x if x.dtype == bool else x + jnp.ones((), x.dtype)


def profile_stages(n, repeats):
    """Each stage jitted alone, ns per region (float32)."""
    from narset_jax.budget import project_budget
    from narset_jax.step import narset_step

    params, sc, carry = _setup(n)
    ctl_state, d = jax.jit(lambda s, t: narset_step(params, s, t))(carry.ctl, carry.telemetry)
    a, b = d.target_T, d.target_E
    parts = {
        "controller step (state and decision record)":
            (jax.jit(lambda s, t: narset_step(params, s, t)), (carry.ctl, carry.telemetry)),
        "budget projection alone (blocked)":
            (jax.jit(lambda a, b: project_budget(a, b)), (a, b)),
        "budget projection alone (unblocked)":
            (jax.jit(lambda a, b: project_budget(a, b, block_size=None)), (a, b)),
        "simulator transition":
            (jax.jit(lambda s, d, t: sims.sim_transition(sc, s, d, t)), (carry.sim, d, carry.t)),
        "simulator prng (9 hashes, 4 normals, 10 uniforms)": (jax.jit(_hash_draws), (carry.sim,)),
        "closed-loop window (one, unrolled)":
            (jax.jit(lambda c: sims.rollout_chunk(params, sc, c, 1)[0]), (carry,)),
        "memory floor (copy the carry)": (jax.jit(lambda c: jax.tree.map(_bump, c)), (carry,)),
    }
    out = {}
    for name, (f, args) in parts.items():
        jax.block_until_ready(f(*args))
        wall, cpu = _timed(lambda f=f, args=args: f(*args), repeats, best=True)
        out[name] = {"ns_per_region": wall / n * 1e9, "cpu_ns_per_region": cpu / n * 1e9}
        print(f"stage   {name:52s} {wall / n * 1e9:7.1f} ns/region ({cpu / n * 1e9:6.1f} CPU)",
              flush=True)
    return out


def _hash_draws(sim, t=7):
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
    params, sc, carry = _setup(n)
    out = {}

    def hash_scan(sim):
        def body(acc, t):
            return acc + _hash_draws(sim, t), None
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
        wall, cpu = _timed(lambda f=f, arg=arg: f(arg), repeats, best=True)
        out[name] = {"ns_per_region_window": wall / (n * steps) * 1e9,
                     "cpu_ns_per_region_window": cpu / (n * steps) * 1e9}
        print(f"prng    {name:28s} {wall / (n * steps) * 1e9:7.2f} ns/region-window", flush=True)
    return out


# ---------------------------------------------------------------------------------------
# Variants in child processes (XLA flags are read once per process).

VARIANTS = {
    "default": ({}, None),
    "copy insertion with region analysis":
        ({"XLA_FLAGS": "--xla_cpu_copy_insertion_use_region_analysis=true"}, None),
    "projection unblocked (budget._BLOCK = inf)": ({}, "unblocked"),
    "one core (taskset -c 0)": ({"NARSET_BENCH_THREADS": "1"}, None),
}


def child(n, steps, repeats, patch):
    if patch == "unblocked":
        import narset_jax.budget as budget

        budget._BLOCK = 1 << 40
    (row,) = bench_jax([n], steps, repeats)
    print("CHILD " + json.dumps(row), flush=True)


def bench_variants(sizes, steps, repeats):
    out = {}
    for name, (env_extra, patch) in VARIANTS.items():
        rows = []
        for n in sizes:
            env = dict(os.environ)
            for k, v in env_extra.items():
                env[k] = (env.get(k, "") + " " + v).strip() if k == "XLA_FLAGS" else v
            cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(steps),
                   "--repeats", str(repeats)]
            if patch:
                cmd += ["--patch", patch]
            if env.get("NARSET_BENCH_THREADS") == "1":
                cmd = ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            line = [x for x in res.stdout.splitlines() if x.startswith("CHILD ")]
            if res.returncode or not line:
                rows.append({"n": n, "error": res.stderr[-500:]})
                continue
            rows.append(json.loads(line[-1][6:]))
            r = rows[-1]
            print(f"variant {name:44s} N={n:>9,d} {r['per_second'] / 1e6:7.2f} M rw/s "
                  f"({r['per_cpu_second'] / 1e6:6.2f} M per CPU-s)", flush=True)
        out[name] = rows
    return out


# ---------------------------------------------------------------------------------------
# Arithmetic floor: how many elementwise operations one window is, and how fast this
# machine's XLA runs elementwise arithmetic at best.

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
    from narset_jax.sharding import _computations

    comps = _computations(hlo)
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

    walk(_outer_body(comps), 0)
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
    f = jax.jit(lambda c: jax.lax.scan(lambda c, _: (jax.tree.map(_bump, c), None), c, None,
                                       length=steps)[0])
    return f.lower(moving).compile()


def arithmetic_floor(n, repeats, target_per_second=30e6, steps=10):
    """How much elementwise work one closed-loop window is, against this machine's best
    elementwise rate under XLA and its memory floor, all timed in the same rounds (this
    VM's speed drifts by tens of percent from minute to minute): the time a window would
    take at that rate if it were one perfectly fused kernel, plus the time to stream its
    state once."""
    import importlib
    import statistics

    params, sc, carry = _setup(n)
    window = lambda c: sims.rollout_chunk(params, sc, c, 1)[0]  # noqa: E731
    written = _jaxpr_ops(jax.make_jaxpr(window)(carry).jaxpr, n)
    chunk = _chunk_fn(params, sc, steps).lower(carry).compile()
    compiled = _hlo_ops(chunk.as_text(), n)
    peak, x, peak_ops = _peak_kernel(n)
    # What sims.rollout_chunk carries (the per-region constants are closed over).
    _, moving = importlib.import_module("sims.rollout")._split_constants(carry)
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


if __name__ == "__main__":
    main()
