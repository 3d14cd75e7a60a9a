"""The chunk in child processes with XLA flags or budget blocking changed (XLA flags are
read once per process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.step.throughput import bench_jax

__all__ = ["VARIANTS", "bench_variants", "child"]

# The repository root: children run ``python -m benchmarks.step`` from there.
ROOT = Path(__file__).resolve().parents[2]

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
            cmd = [sys.executable, "-m", "benchmarks.step", "--child", str(n),
                   "--steps", str(steps), "--repeats", str(repeats)]
            if patch:
                cmd += ["--patch", patch]
            if env.get("NARSET_BENCH_THREADS") == "1":
                cmd = ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                                 cwd=ROOT)
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
