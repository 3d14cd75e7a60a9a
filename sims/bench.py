"""Throughput of the simulator, the controller and the closed loop (region-windows/s).

    python -m sims.bench [--regions 100000] [--steps 100] [--json PATH]

Three measurements, float32, best of three after a warm-up call:

- ``simulator``: ``sims.sim_step`` in a ``lax.scan`` (the actions change every window, so
  nothing is constant-folded), initial state included;
- ``controller``: ``narset_jax.step.narset_rollout`` over stored telemetry (30% of regions
  in crisis);
- ``closed_loop``: ``sims.rollout`` (controller, simulator and metrics in one scan),
  crisis scenario.
"""

from __future__ import annotations

import argparse
import sys
import time


def _best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(n_regions=100_000, n_steps=100) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.params import NarsetParams
    from narset_jax.step import init_state, narset_rollout
    from narset_jax.telemetry import Telemetry

    n, t = n_regions, n_steps
    params = NarsetParams()
    sc = sims.load_scenario("crisis").without_metadata()
    key = jax.random.key(0)

    @jax.jit
    def simulator(key):
        state = sims.init(key, n, sc)

        def body(c, i):
            st, x_T, x_E = c
            tier_T = (x_T > 0.2).astype(jnp.int32) + (x_T > 0.5).astype(jnp.int32)
            tier_E = jnp.where(x_E > 0.5, 2, 1)
            st, tel = sims.sim_step(sc, st, sims.Action(x_T, x_E, tier_T, tier_E), i)
            x_T = jnp.clip(x_T + 0.01 * (tel.anomalies - 0.5), 0, 1.5)
            x_E = jnp.clip(x_E - 0.01 * (tel.anomalies - 0.5), 0, 1.5)
            return (st, x_T, x_E), None

        x0 = jnp.full((n,), 0.6, jnp.float32)
        (st, x_T, _), _ = jax.lax.scan(body, (state, x0, x0), jnp.arange(t))
        return st.health.sum() + x_T.sum()

    crisis = np.random.default_rng(0).uniform(size=n) < 0.3
    tel = jax.tree.map(lambda a, b: jnp.where(crisis, b, a), Telemetry.calm(n), Telemetry.crisis(n))
    stacked = Telemetry.stack([tel] * t)
    s0 = init_state(n)
    controller = jax.jit(lambda p, s, x: narset_rollout(p, s, x)[0].target_T.sum())

    def loop():
        return sims.rollout(params, sc, key, n, t).metrics

    out = {"regions": n, "steps": t, "device": str(jax.devices()[0])}
    for name, fn in (
        ("simulator", lambda: jax.block_until_ready(simulator(key))),
        ("controller", lambda: jax.block_until_ready(controller(params, s0, stacked))),
        ("closed_loop", lambda: jax.block_until_ready(loop())),
    ):
        dt = _best(fn)
        out[name] = {"seconds": dt, "region_windows_per_s": n * t / dt}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.regions <= 0 or args.steps <= 0:
        p.error("--regions and --steps must be positive")
    out = bench(args.regions, args.steps)
    for name in ("simulator", "controller", "closed_loop"):
        r = out[name]
        print(f"{name:12s} {r['region_windows_per_s'] / 1e6:7.1f} M region-windows/s "
              f"({r['seconds']:.3f} s for {args.regions} x {args.steps})")
    if args.json:
        from narset_jax.atomic import write_json

        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
