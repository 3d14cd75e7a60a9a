"""The baseline table: Narset and every baseline on every shipped scenario.

    python -m sims.table [--regions 2000] [--steps 150] [--seeds 2] [--json PATH]

Prints Markdown: the objective ([`sims.objective`][] with [`sims.DEFAULT_WEIGHTS`][]; lower is
better) of each controller in each scenario, the suite score (the mean over the scenarios,
"the combination" of ``docs/simulator.md``), and the suite-mean metrics. Each scenario
runs with its recommended budget mode (``spoofing``: the global pool). The README's table
is this command's output.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["baseline_table", "main", "markdown"]

_COLUMNS = (
    ("progress", "progress", "{:.3f}"),
    ("flap_rate", "flaps/100", "{:.2f}"),
    ("budget_churn", "churn/100", "{:.2f}"),
    ("overdrive_fraction", "overdrive", "{:.3f}"),
    ("unsafe_lysis", "unsafe lysis/100", "{:.3f}"),
    ("rollbacks", "rollbacks/100", "{:.3f}"),
    ("spoofer_capture", "spoofer capture", "{:+.4f}"),
    ("utilisation", "utilisation", "{:.3f}"),
)


def baseline_table(n_regions=2000, n_steps=150, seeds=(0, 1), scenarios=None,
                   controllers=None, progress=True) -> dict:
    """Run every controller on every scenario and seed.

    **Returns:** ``{"objective": {scenario: {controller: mean}}, "metrics": {scenario:
    {controller: {metric: mean}}}, "suite": {controller: mean objective}, "config": ...}``.
    """
    import jax

    import sims

    scenarios = list(scenarios or sims.SCENARIOS)
    controllers = list(controllers or sims.CONTROLLERS)
    objective: dict = {}
    metrics: dict = {}
    t0 = time.perf_counter()
    for name in scenarios:
        sc = sims.load_scenario(name)
        params = sc.recommended_params()
        objective[name], metrics[name] = {}, {}
        for c in controllers:
            objs, mets = [], []
            for seed in seeds:
                r = sims.rollout(params, sc, jax.random.key(seed), n_regions, n_steps,
                                 controller=c)
                objs.append(float(sims.objective(r.metrics)))
                mets.append(r.metrics.to_dict())
            objective[name][c] = float(np.mean(objs))
            metrics[name][c] = {k: float(np.mean([m[k] for m in mets])) for k in mets[0]}
            if progress:
                print(f"  {name:14s} {c:18s} {objective[name][c]:8.3f}  "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    suite = {c: float(np.mean([objective[s][c] for s in scenarios])) for c in controllers}
    return {
        "objective": objective,
        "metrics": metrics,
        "suite": suite,
        "config": {"regions": n_regions, "steps": n_steps, "seeds": list(seeds),
                   "weights": sims.DEFAULT_WEIGHTS.to_dict()},
    }


def markdown(result: dict) -> str:
    """The two Markdown tables (objective by scenario; suite-mean metrics)."""
    obj, suite = result["objective"], result["suite"]
    scenarios = list(obj)
    controllers = list(suite)
    lines = ["| controller | " + " | ".join(scenarios) + " | **suite** |",
             "|---" * (len(scenarios) + 2) + "|"]
    for c in controllers:
        cells = []
        for s in scenarios:
            v = obj[s][c]
            best = min(obj[s].values())
            cells.append(f"**{v:.2f}**" if v == best else f"{v:.2f}")
        best_suite = min(suite.values())
        sv = f"**{suite[c]:.2f}**" if suite[c] == best_suite else f"{suite[c]:.2f}"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {sv} |")
    lines.append("")
    lines.append("| controller (mean over scenarios) | "
                 + " | ".join(h for _, h, _ in _COLUMNS) + " |")
    lines.append("|---" * (len(_COLUMNS) + 1) + "|")
    for c in controllers:
        vals = []
        for key, _, fmt in _COLUMNS:
            v = float(np.mean([result["metrics"][s][c][key] for s in scenarios]))
            vals.append(fmt.format(round(v, 6) + 0.0))  # no "-0.0000"
        lines.append(f"| {c} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Narset vs the baselines on every scenario.")
    p.add_argument("--regions", type=int, default=2000)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. K-1, averaged")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.regions <= 0 or args.steps <= 0 or args.seeds <= 0:
        p.error("--regions, --steps and --seeds must be positive")
    result = baseline_table(args.regions, args.steps, tuple(range(args.seeds)),
                            progress=not args.quiet)
    if args.json:
        from narset_jax.atomic import write_json

        write_json(args.json, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
