"""Where the time goes: the compiled chunk under ``jax.profiler`` with per-thunk self time
grouped by pipeline stage, the structure of its loop body, and each stage jitted alone."""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import re
import shutil
import tempfile

import jax

import sims
from benchmarks.step._harness import bump, chunk_fn, outer_body, setup, timed
from benchmarks.step.prng import hash_draws

__all__ = ["profile_stages", "profile_trace"]


# Stage functions, by the module namespace that calls them: each is wrapped in a
# jax.named_scope (in this process only) so that the compiled HLO says which stage an op
# came from.
_STAGES = {
    "narset_jax.step": ("sanitise", "smooth", "scores", "update_mode", "targets", "inertia",
                        "_project", "authority", "overdrive_cost"),
    "sims.ecologies.stylised": ("step_base", "stream", "normal", "uniform_pair",
                                "sim_transition"),
    "sims.controllers": ("narset_step",),
}
_LABEL = {
    "step_base": "prng", "stream": "prng", "normal": "prng", "uniform_pair": "prng",
    "_project": "projection", "overdrive_cost": "decision record",
    "sim_transition": "simulator (excluding prng)", "narset_step": "controller (other)",
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
        params, sc, carry = setup(n)
        compiled = chunk_fn(params, sc, steps).lower(carry).compile()
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


def _loop_structure(hlo):
    """Kernels and copies in the scan body, and the carry size."""
    from narset_jax.sharding import hlo_computations

    comps = hlo_computations(hlo)
    lines = comps[outer_body(comps)]
    n_fusion = sum(1 for x in lines if " fusion(" in x)
    copies = [x for x in lines if re.match(r"\s*%copy[.\d]* = ", x)]
    big = [x for x in copies if re.search(r"\[\d{3,}\]", x)]
    params = [x for x in lines if " parameter(0)" in x]
    carry = len(re.findall(r"\[\d+\]", params[0])) if params else None
    return {"loop_body_fusions": n_fusion, "loop_body_copies_of_region_arrays": len(big),
            "loop_carry_region_arrays": carry}



def profile_stages(n, repeats):
    """Each stage jitted alone, ns per region (float32)."""
    from narset_jax.budget import project_budget
    from narset_jax.step import narset_step

    params, sc, carry = setup(n)
    ctl_state, d = jax.jit(lambda s, t: narset_step(params, s, t))(carry.ctl, carry.telemetry)
    a, b = d.target_T, d.target_E
    parts = {
        "controller step (state and decision record)":
            (jax.jit(lambda s, t: narset_step(params, s, t)), (carry.ctl, carry.telemetry)),
        "budget projection alone (default: sparse)":
            (jax.jit(lambda a, b: project_budget(a, b)), (a, b)),
        "budget projection alone (dense, blocked)":
            (jax.jit(lambda a, b: project_budget(a, b, block_size=32768, sparse=None)), (a, b)),
        "budget projection alone (dense, unblocked)":
            (jax.jit(lambda a, b: project_budget(a, b, block_size=None, sparse=None)), (a, b)),
        "simulator transition":
            (jax.jit(lambda s, d, t: sims.sim_transition(sc, s, d, t)), (carry.sim, d, carry.t)),
        "simulator prng (9 hashes, 4 normals, 10 uniforms)": (jax.jit(hash_draws), (carry.sim,)),
        "closed-loop window (one, unrolled)":
            (jax.jit(lambda c: sims.rollout_chunk(params, sc, c, 1)[0]), (carry,)),
        "memory floor (copy the carry)": (jax.jit(lambda c: jax.tree.map(bump, c)), (carry,)),
    }
    out = {}
    for name, (f, args) in parts.items():
        jax.block_until_ready(f(*args))
        wall, cpu = timed(lambda f=f, args=args: f(*args), repeats, best=True)
        out[name] = {"ns_per_region": wall / n * 1e9, "cpu_ns_per_region": cpu / n * 1e9}
        print(f"stage   {name:52s} {wall / n * 1e9:7.1f} ns/region ({cpu / n * 1e9:6.1f} CPU)",
              flush=True)
    return out
