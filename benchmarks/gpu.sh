#!/usr/bin/env bash
# One-shot GPU run: correctness checks and the CPU comparison with the compiled (Numba)
# peer, then the scaling sweeps, all written as JSON.
#
#   bash benchmarks/gpu.sh            # writes to $OUT if set, else benchmarks/results/gpu/
#
# Needs no network: it uses whatever JAX the Python below has (PY, default .venv/bin/python,
# else python3). With a CUDA-enabled jaxlib the sweeps run on the GPU(s); without one, the
# script says so in device.json and stops after the CPU checks. Every step's output lands
# in $OUT; a failed step is recorded in status.json and the script goes on to the next.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so the allocator's peak is the program's
STATUS="$OUT/status.json"
echo "{}" > "$STATUS"

step() {  # step NAME TIMEOUT_S CMD... : run, log to $OUT/NAME.log, record exit status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.log"
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  "$PY" - "$STATUS" "$name" "$rc" "$((SECONDS - t0))" <<'EOF'
import json, sys
path, name, rc, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = json.load(open(path))
data[name] = {"exit": rc, "seconds": secs}
json.dump(data, open(path, "w"), indent=2)
EOF
  tail -n 5 "$OUT/$name.log"
  return 0
}

# 1. The card and the software.
(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$OUT/nvidia-smi.csv") 2>/dev/null || echo "no nvidia-smi" > "$OUT/nvidia-smi.csv"
"$PY" - "$OUT/device.json" <<'EOF'
import json, os, platform, sys
import jax
devs = jax.devices()
info = {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [getattr(d, "device_kind", str(d)) for d in devs],
    "n_devices": len(devs),
    "platform": platform.platform(),
    "cpu_count": os.cpu_count(),
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF
BACKEND=$("$PY" -c "import jax; print(jax.default_backend())")
NDEV=$("$PY" -c "import jax; print(jax.device_count())")

# 2. Correctness on CPU host devices (the test suite's conftest forces 4 of them).
step tests_cpu 900 env JAX_PLATFORMS=cpu "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_sharding.py tests/test_numpy_oracle.py tests/test_multiprocess.py \
  tests/test_numba_peer.py tests/test_budget_sparse.py

# 2b. On the host CPU, the compiled peer: the closed loop in Numba (1, 2 and all threads)
#     against JAX (1, 2 and all host devices) and NumPy, in one run with interleaved
#     repetitions (docs/scaling.md section 4). Needs numba (the bench extra).
NPROC=$(nproc 2>/dev/null || echo 2)
THREADS=$("$PY" -c "print(','.join(str(k) for k in sorted({1, 2, $NPROC})))")
DEVICES=$("$PY" -c "print(','.join(str(k) for k in sorted({2, $NPROC})))")
if "$PY" -c "import numba" 2>/dev/null; then
  step numba_cpu 2400 env JAX_PLATFORMS=cpu "$PY" -m benchmarks.numba_peer \
    --sizes 1e4,1e5,1e6 --threads "$THREADS" --devices "$DEVICES" \
    --out "$OUT/numba_peer_cpu.json"
else
  echo "numba is not installed (pip install -e .[bench]): no Numba-vs-JAX comparison" \
    | tee "$OUT/numba_cpu.log"
fi

if [[ "$BACKEND" != "gpu" && "$BACKEND" != "cuda" ]]; then
  echo "backend is $BACKEND, not a GPU: stopping after the CPU checks (see $OUT/device.json)"
  exit 0
fi

# 3. Correctness on the GPU: the closed loop against the NumPy reference (float64), and
#    sharded against unsharded on the GPU (bitwise for per-region pools).
step check_gpu 900 "$PY" - "$OUT/check_gpu.json" <<'EOF'
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import sims
from sims import numpy_twin as ref
from narset_jax.params import NarsetParams
from narset_jax.sharding import region_mesh
from sims.sharding import sharded_rollout

out = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind}
sc = sims.Scenario.from_dict(dict(base="crisis", spoofer_fraction=0.2, dropout_rate=0.1,
                                  nan_rate=0.1, shock_corr=0.5))
key = jax.random.key(11)
for budget in ("region", "global", "fixed_sum"):
    p = NarsetParams(budget=budget, pool=0.6, beta=0.8)
    n, T = 256, 12
    jx = sims.rollout(p, sc, key, n, T, dtype=jnp.float64, record=True)
    init = jax.jit(lambda k: sims.rollout_init(p, sc.without_metadata(), k, n,
                                                dtype=jnp.float64))(key)
    c = ref.from_jax(init)
    worst = 0.0
    for t in range(T):
        c = ref.window(p, sc, c)
        d = c.last[0]
        for name in ("x_T", "x_E", "spent", "price"):
            worst = max(worst, float(np.max(np.abs(getattr(d, name)
                                                   - np.asarray(getattr(jx.decisions, name)[t])))))
    one = sharded_rollout(p, sc, key, 4096, 8, mesh=region_mesh(jax.devices()[:1]))
    alld = sharded_rollout(p, sc, key, 4096, 8, mesh=region_mesh())
    plain = sims.rollout(p, sc, key, 4096, 8)
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    out[budget] = {
        "max_abs_diff_vs_numpy_float64": worst,
        "sharded_all_devices_vs_one_device_final_state": diff(one.final, alld.final),
        "sharded_vs_sims_rollout_final_state": diff(plain.final, one.final),
        "metrics_all_devices_equal_one_device": one.metrics.to_dict() == alld.metrics.to_dict(),
    }
    print(budget, out[budget], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
EOF

# 4. The sweeps (float32): per-region pool to 1e7 regions, the global pool, and the
#    device-count axis when there are several GPUs.
DEVS=1
if [[ "$NDEV" -ge 2 ]]; then DEVS=$("$PY" -c "n=$NDEV; print(','.join(str(d) for d in (1,2,4,8) if d <= n))"); fi
step sweep_region 1800 "$PY" -m narset_jax.cli sweep --regions 1e2,1e3,1e4,1e5,1e6,1e7 \
  --steps 50 --devices "$DEVS" --json "$OUT/sweep_region.json" --plot "$OUT/sweep_region.png" \
  --no-progress
step sweep_global 1800 "$PY" -m narset_jax.cli sweep --regions 1e3,1e4,1e5,1e6,1e7 \
  --steps 50 --devices "$DEVS" --budget global --json "$OUT/sweep_global.json" \
  --plot "$OUT/sweep_global.png" --no-progress

# 5. The step benchmark's GPU-relevant parts (JAX rows, stage profile, PRNG comparison).
step bench_step 1800 "$PY" -m benchmarks.step --sizes 1e4,1e5,1e6,1e7 --steps 50 \
  --skip numpy,loop,variants --profile-n 1e6 --out "$OUT/step.json"

echo "done: $OUT"
cat "$STATUS"
