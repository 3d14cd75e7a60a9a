"""Two studies on the neural ecology (``docs/neural.md``, "Transfer" and "Does overdrive
pay?").

    python -m sims.neural_study --out benchmarks/results/neural_study.json \\
        [--stylised-table S.json --neural-table N.json] \\
        [--regions 32] [--steps 50] [--seeds 8] [--scenario NAME ...] [--neural KEY=VALUE]

- **Transfer** (needs the two tables, both written by ``python -m sims.table --ci --json``
  with the same rows): for each scenario, Spearman's rank correlation between the
  controllers' mean objectives in the stylised and in the neural ecology (and between
  stylised ``progress`` and neural final test accuracy); and whether the stylised-tuned
  params (the ``narset:<label>`` row) beat Narset's defaults in the neural ecology: the
  paired difference over seeds, with a 95 % t-interval ([`transfer`][]).
- **Does overdrive pay?** On task-switch scenarios (``task_switch``: every region's label
  mapping switches at window 20; ``task_switch_crisis``: the same in the crisis mesh),
  Narset against ``no_overdrive`` (Narset with its targets capped at 1): recovery time
  ([`recovery_time`][]) and test accuracy, per seed, with 95 % t-intervals and paired
  differences ([`overdrive_study`][]).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["PRE_WINDOWS", "main", "markdown", "overdrive_study", "recovery_time", "transfer"]

# The pre-switch level is the mean test accuracy over this many windows before the switch.
PRE_WINDOWS = 5


def recovery_time(curve, switch_at: int, pre_windows: int = PRE_WINDOWS) -> tuple[int, bool]:
    """Windows until a test-accuracy curve regains its pre-switch level.

    ``curve[t]`` is the accuracy after window ``t``; the switch acts from window
    ``switch_at`` on. The pre-switch level is the mean of ``curve`` over the
    ``pre_windows`` windows before ``switch_at``. The recovery time is the smallest
    ``k >= 1`` with ``curve[switch_at + k - 1] >= level``: the number of windows trained on
    the new task until the level is back.

    **Returns:** ``(k, censored)``; if the curve never regains the level, ``k`` is the
    number of windows after the switch plus one (a lower bound) and ``censored`` is true.
    """
    c = np.asarray(curve, np.float64)
    if not 0 < pre_windows <= switch_at < c.size:
        raise ValueError(f"need 0 < pre_windows ({pre_windows}) <= switch_at ({switch_at}) "
                         f"< len(curve) ({c.size})")
    level = float(np.mean(c[switch_at - pre_windows:switch_at]))
    hit = np.flatnonzero(c[switch_at:] >= level)
    if hit.size:
        return int(hit[0]) + 1, False
    return c.size - switch_at + 1, True


def _interval(values):
    from sims.tune.stats import t_interval

    return t_interval(values)


def _load_study_scenario(name):
    from sims.ecologies.neural import NEURAL_SCENARIO_DIR, NEURAL_SCENARIOS, load_neural_scenario

    path = NEURAL_SCENARIO_DIR / f"{name}.toml"
    if name not in NEURAL_SCENARIOS and path.is_file():
        return load_neural_scenario(path)
    return load_neural_scenario(name)


def overdrive_study(n_regions=32, n_steps=50, seeds=tuple(range(8)), scenario="task_switch",
                    ecology=None, params=None, controllers=("narset", "no_overdrive"),
                    pre_windows=PRE_WINDOWS, progress=True) -> dict:
    """Narset with overdrive against the same controller capped at ``x <= 1`` on a
    task-switch scenario (a name, a TOML path or a ``NeuralScenario`` with ``switch_at``).

    Per run, over the regions that switch: the mean test-accuracy curve, its pre-switch
    level, [`recovery_time`][], the final accuracy and the mean after the switch; and the
    run's overdrive share, mean ``x_T``, rollbacks per 100, compute (M parameter-steps per
    region) and objective.

    **Returns:** ``{"config", "runs": {controller: [per seed]}, "summary": {controller:
    {metric: t-interval}}, "paired": {metric: t-interval of first - second controller}}``.
    """
    import jax

    import sims
    from narset_jax.params import NarsetParams
    from sims.ecologies.neural import Neural

    eco = ecology or Neural()
    sc = _load_study_scenario(scenario) if not hasattr(scenario, "switch_at") else scenario
    switch_at = int(sc.switch_at)
    if switch_at <= 0 or switch_at >= n_steps:
        raise ValueError(f"scenario {sc.name!r}: switch_at ({switch_at}) must lie inside "
                         f"the run's {n_steps} windows")
    params = params if params is not None else NarsetParams()
    runs: dict = {c: [] for c in controllers}
    t0 = time.perf_counter()
    for c in controllers:
        for seed in seeds:
            r = sims.rollout(params, sc, jax.random.key(seed), n_regions, n_steps,
                             controller=c, ecology=eco, record=True)
            acc = np.asarray(r.events.test_acc, np.float64)
            switched = np.asarray(r.final.sim.u_switch) < float(sc.switch_fraction)
            curve = acc[:, switched].mean(1)
            k, censored = recovery_time(curve, switch_at, pre_windows)
            m = r.metrics.to_dict()
            trained = np.asarray(r.events.params_trained, np.float64)
            runs[c].append({
                "seed": int(seed),
                "curve": curve.tolist(),
                "pre_level": float(np.mean(curve[switch_at - pre_windows:switch_at])),
                "recovery": k,
                "censored": censored,
                "final_acc": float(curve[-1]),
                "post_acc": float(np.mean(curve[switch_at:])),
                "overdrive": m["overdrive_fraction"],
                "mean_x_T": m["mean_x_T"],
                "rollbacks": m["rollbacks"],
                "compute": float(np.mean(np.sum(trained, 0)) * eco.steps / 1e6),
                "objective": float(sims.objective(r.metrics)),
            })
            if progress:
                print(f"  {c:14s} seed {seed}: recovery {k}{'+' if censored else ''}, "
                      f"final {curve[-1]:.3f} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
    keys = ("recovery", "final_acc", "post_acc", "pre_level", "overdrive", "mean_x_T",
            "rollbacks", "compute", "objective")
    summary = {c: {k: _interval([run[k] for run in runs[c]]) for k in keys} for c in runs}
    for c in runs:
        summary[c]["censored"] = int(sum(run["censored"] for run in runs[c]))
    a, b = controllers[0], controllers[-1]
    paired = {k: _interval([x[k] - y[k] for x, y in zip(runs[a], runs[b], strict=True)])
              for k in keys}
    return {
        "config": {"regions": n_regions, "steps": n_steps, "seeds": list(seeds),
                   "scenario": sc.name, "switch_at": switch_at,
                   "switch_fraction": float(sc.switch_fraction), "pre_windows": pre_windows,
                   "controllers": list(controllers), "paired": f"{a} - {b}",
                   "ecology_settings": {f: getattr(eco, f) for f in (
                       "hidden", "n_slots", "seed_hidden", "steps", "batch")},
                   "seconds": time.perf_counter() - t0},
        "runs": runs,
        "summary": summary,
        "paired": paired,
    }


def _spearman(x, y) -> dict:
    from scipy.stats import spearmanr

    res = spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(x)}


def transfer(stylised: dict, neural: dict, label: str = "tuned") -> dict:
    """Rank agreement between the two ecologies' tables (``sims.table`` results, the
    neural one with ``ci``), scenario by scenario, over the rows both have; and the paired
    effect of the ``narset:<label>`` row against ``narset`` in the neural ecology (and, for
    comparison, in the stylised one) on the objective and on accuracy.

    **Returns:** ``{"rows", "objective": {scenario: {"rho", "p", "n"}},
    "accuracy": {...}, "tuned": {ecology: {scenario: {metric: t-interval}}}}``.
    """
    scenarios = [s for s in neural["objective"] if s in stylised["objective"]]
    rows = [r for r in neural["suite"] if r in stylised["suite"]]
    out: dict = {"rows": rows, "objective": {}, "accuracy": {}, "tuned": {}}
    for s in scenarios:
        out["objective"][s] = _spearman([stylised["objective"][s][r] for r in rows],
                                        [neural["objective"][s][r] for r in rows])
        out["accuracy"][s] = _spearman(
            [stylised["metrics"][s][r]["progress"] for r in rows],
            [neural["metrics"][s][r]["test_acc_final"] for r in rows])
    out["objective"]["suite"] = _spearman([stylised["suite"][r] for r in rows],
                                          [neural["suite"][r] for r in rows])
    tuned = f"narset:{label}"
    for eco_name, table, acc_key in (("neural", neural, "test_acc_final"),
                                     ("stylised", stylised, "progress")):
        seeds = table.get("per_seed")
        if not seeds or tuned not in table["suite"]:
            continue
        out["tuned"][eco_name] = {}
        for s in scenarios:
            d = {}
            for k in ("objective", acc_key, "overdrive_fraction", "rollbacks"):
                t, base = seeds[s][tuned][k], seeds[s]["narset"][k]
                d[k] = _interval([x - y for x, y in zip(t, base, strict=True)])
            out["tuned"][eco_name][s] = d
    return out


def _fmt(ci, f="{:.3f}"):
    return f"{f.format(ci['mean'])} [{f.format(ci['lo'])}, {f.format(ci['hi'])}]"


def markdown(result: dict) -> str:
    """The studies' Markdown tables."""
    lines = []
    tr = result.get("transfer")
    if tr:
        lines += ["Spearman rank correlation, stylised vs neural, over the rows "
                  + ", ".join(tr["rows"]) + ":", "",
                  "| scenario | objective rho (p) | progress vs test acc rho (p) |",
                  "|---|---|---|"]
        for s, v in tr["objective"].items():
            a = tr["accuracy"].get(s)
            acc = f"{a['rho']:+.2f} ({a['p']:.2f})" if a else "-"
            lines.append(f"| {s} | {v['rho']:+.2f} ({v['p']:.2f}) | {acc} |")
        for eco_name, per in tr["tuned"].items():
            keys = list(next(iter(per.values())))
            lines += ["", f"Tuned - defaults in the {eco_name} ecology (paired over seeds, "
                      "mean [95 % t-interval]):", "",
                      "| scenario | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for s, d in per.items():
                lines.append(f"| {s} | " + " | ".join(_fmt(d[k]) for k in keys) + " |")
    for od in (result.get("overdrive") or {}).values():
        cfg = od["config"]
        keys = ("recovery", "final_acc", "post_acc", "pre_level", "overdrive", "mean_x_T",
                "rollbacks", "compute", "objective")
        lines += ["", f"Overdrive study: {cfg['scenario']}, switch at window {cfg['switch_at']}"
                  f", N={cfg['regions']}, T={cfg['steps']}, {len(cfg['seeds'])} seeds "
                  "(mean [95 % t-interval]):", "",
                  "| controller | " + " | ".join(keys) + " | censored |",
                  "|---" * (len(keys) + 2) + "|"]
        for c, d in od["summary"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(d[k]) for k in keys)
                         + f" | {d['censored']} |")
        lines.append(f"| {cfg['paired']} | " + " | ".join(_fmt(od['paired'][k]) for k in keys)
                     + " | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import json

    from sims.table import neural_settings

    p = argparse.ArgumentParser(description="Transfer and overdrive studies (neural ecology).")
    p.add_argument("--out", required=True, metavar="PATH", help="write the results as JSON")
    p.add_argument("--stylised-table", metavar="PATH",
                   help="python -m sims.table --ci --json output (stylised)")
    p.add_argument("--neural-table", metavar="PATH",
                   help="python -m sims.table --ecology neural --ci --json output")
    p.add_argument("--label", default="tuned", help="the tables' narset:LABEL row")
    p.add_argument("--regions", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help="task-switch scenario(s) of the overdrive study (default: task_switch "
                        "and task_switch_crisis)")
    p.add_argument("--neural", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-overdrive-study", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.regions <= 0 or args.steps <= 0 or args.seeds <= 1:
        p.error("--regions and --steps must be positive and --seeds at least 2")
    if (args.stylised_table is None) != (args.neural_table is None):
        p.error("--stylised-table and --neural-table go together")
    try:
        settings = neural_settings(args.neural)
    except ValueError as err:
        p.error(str(err))
    result: dict = {}
    if args.stylised_table:
        tables = []
        for path in (args.stylised_table, args.neural_table):
            try:
                with open(path) as f:
                    tables.append(json.load(f))
            except (OSError, ValueError) as err:
                p.error(f"{path}: {err}")
        result["transfer"] = transfer(*tables, label=args.label)
        result["transfer"]["tables"] = [args.stylised_table, args.neural_table]
    if not args.no_overdrive_study:
        from sims.ecologies.neural import Neural

        result["overdrive"] = {}
        for name in args.scenario or ("task_switch", "task_switch_crisis"):
            try:
                study = overdrive_study(
                    args.regions, args.steps, tuple(range(args.seeds)), name,
                    ecology=Neural(**settings), progress=not args.quiet)
            except ValueError as err:
                p.error(f"--scenario {name}: {err}")
            result["overdrive"][study["config"]["scenario"]] = study
    from narset_jax.atomic import write_json

    write_json(args.out, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
