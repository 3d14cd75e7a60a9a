"""Cost of one evolution-strategy generation (``narset tune --method es``) against one
forward rollout times the population, measured in the same process.

    python -m benchmarks.es --regions 4096 --steps 500 --population 8 \\
        --out benchmarks/results/es.json

Three programs at the same N, T, scenario and seeds, each compiled once before timing:

* ``generation``: one whole ES generation as ``sims.tune.es.evolve`` runs it: the
  strategy's ``ask``, the population's hard objectives (``sims.tune.es.rollout_objective``:
  ``P`` candidates x ``B`` seeds in one jitted, vmapped call) and ``tell``;
* ``forward``: the same objective for one candidate (the same vmapped rollout with a
  population of 1: ``B`` seeds of the hard controller);
* ``rollout``: ``sims.rollout`` of the hard controller, one seed (what ``narset simulate``
  and the evaluation run).

They are called in turn, round after round (this shared VM's speed drifts by tens of
percent from minute to minute, which then hits all three alike), and each round gives the
ratios ``generation / (P x forward)`` and ``generation / (P x B x rollout)``; the median
round is reported. Below 1, the vmapped population is cheaper than running its rollouts
one after another; above 1, the strategy's own work (or the vmap) costs more than it saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.params import NarsetParams
    from sims import tune
    from sims.tune import es

    base = NarsetParams(hysteresis="hard")
    scenario = sims.load_scenario(args.scenario)
    cfg = tune.TuneConfig(args.regions, args.steps, checkpoint=False)
    objective = es.rollout_objective(base, [scenario], cfg=cfg, batch=args.batch)
    P = args.population
    algo, params, state = es.es_init(es.start_raw(base), population=P, strategy=args.strategy)
    key = jax.random.key(0)

    def generation(st):
        k_ask, k_tell = jax.random.split(key)
        pop, es_state = algo.ask(k_ask, st.opt_state, params)
        fitness = np.asarray(objective(pop, 0), np.float64).reshape(P, -1).mean(axis=1)
        es_state, _ = algo.tell(k_tell, pop, jnp.asarray(fitness, pop[tune.TUNED[0]].dtype),
                                es_state, params)
        return algo.get_mean(es_state)

    one = {n: jnp.asarray(v)[None] for n, v in state.raw.items()}
    rollout_key = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, 1)[0, 0]
    hard = base.astype(jnp.float32)
    calls = {
        "generation": lambda: generation(state),
        "forward": lambda: objective(one, 0),
        "rollout": lambda: sims.rollout(hard, scenario, rollout_key, args.regions, args.steps)
        .metrics,
    }
    compile_s = {}
    for name, f in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.rounds):
        for name, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - t0)
    rounds = {
        "generation/(P x forward)": [g / (P * f) for g, f in
                                     zip(times["generation"], times["forward"])],
        "generation/(P x B x rollout)": [g / (P * args.batch * r) for g, r in
                                         zip(times["generation"], times["rollout"])],
    }
    return {
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "seconds_all": times,
        "first_call_s (compile + run)": compile_s,
        "ratio_per_round": rounds,
        "ratio_median": {k: statistics.median(v) for k, v in rounds.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regions", type=int, default=4096)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="seeds per candidate (B)")
    p.add_argument("--strategy", default="snes")
    p.add_argument("--scenario", default="crisis")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)

    from benchmarks import _common

    result = {
        "machine": _common.machine(),
        "config": {"regions": args.regions, "steps": args.steps, "population": args.population,
                   "batch": args.batch, "strategy": args.strategy, "scenario": args.scenario,
                   "rounds": args.rounds, "dtype": "float32"},
        **measure(args),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        from narset_jax.atomic import write_text

        write_text(args.out, text + "\n")
    print(json.dumps({"ratio_median": result["ratio_median"],
                      "seconds_median": result["seconds_median"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
