"""Two processes on 127.0.0.1 (``jax.distributed``, gloo collectives on CPU, one CPU device
each) run one sharded simulation; its summary matches the single-process run.

The workers are started with ``python -c``, on a free port, with a hard deadline; whatever
happens, both are killed and reaped before the test returns.
"""

import json
import textwrap

import jax
import jax.numpy as jnp
from process_workers import free_port, run_workers

import sims
from narset_jax.params import NarsetParams
from narset_jax.sharding import region_mesh
from sims.sharding import sharded_rollout

# The repository root (this file may live in tests/ or wip/tests/).
N, T, SEED = 96, 5, 3
# The global pool, and small enough to bind: every window's multiplier search is a
# cross-process all-reduce (gloo).
PARAMS = dict(budget="global", pool=0.6, beta=0.8)
DEADLINE_S = 240

WORKER = textwrap.dedent(
    f"""
    import argparse, json, sys
    from narset_jax.distributed import setup_devices
    args = argparse.Namespace(devices="1", coordinator=sys.argv[1], num_processes=2,
                              process_id=int(sys.argv[2]))
    setup = setup_devices(args)  # jax.distributed.initialize, gloo on CPU
    import jax
    import sims
    from narset_jax.params import NarsetParams
    from narset_jax.sharding import region_mesh
    from sims.sharding import sharded_rollout
    mesh = region_mesh(setup.devices)
    out = {{"process": setup.process_id, "processes": setup.num_processes,
           "devices": len(setup.devices),
           "local": [d.id for d in jax.local_devices()]}}
    res = sharded_rollout(NarsetParams(**{PARAMS!r}), sims.load_scenario("crisis"),
                          jax.random.key({SEED}), {N}, {T}, mesh=mesh)
    out["metrics"] = res.metrics.to_dict()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def _run_workers():
    coordinator = f"127.0.0.1:{free_port()}"
    outputs = run_workers([[WORKER, coordinator, str(i)] for i in range(2)], DEADLINE_S)
    results = []
    for code, out, err in outputs:
        assert code == 0, f"worker failed (exit {code}):\n{err[-3000:]}"
        line = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert line, f"worker printed no result:\n{out[-2000:]}\n{err[-2000:]}"
        results.append(json.loads(line[-1][len("RESULT "):]))
    return results


def test_two_processes_match_single_process():
    results = _run_workers()
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["processes"] == 2 and r["devices"] == 2 and len(r["local"]) == 1
    # Every process sees the same (replicated) summary.
    assert results[0]["metrics"] == results[1]["metrics"]
    # The same simulation in this one process, over two local devices (float32, as the
    # workers run without x64). Two shards either way, and a sum of two partial sums is
    # the same whichever way round, so even the global pool's summary matches bitwise.
    ref = sharded_rollout(
        NarsetParams(**PARAMS), sims.load_scenario("crisis"), jax.random.key(SEED), N, T,
        mesh=region_mesh(jax.devices()[:2]), dtype=jnp.float32,
    ).metrics.to_dict()
    assert results[0]["metrics"] == ref
    assert ref["utilisation"] > 0.9  # the pool did bind
