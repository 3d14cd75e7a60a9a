"""The baseline table: Narset and every baseline on every shipped scenario.

    python -m sims.table [--regions 2000] [--steps 150] [--seeds 2] [--json PATH]
        [--ecology stylised|neural] [--neural KEY=VALUE ...] [--params FILE] [--ci]

Prints Markdown: the objective ([`sims.objective`][] with [`sims.DEFAULT_WEIGHTS`][]; lower is
better) of each controller in each scenario, the suite score (the mean over the scenarios,
"the combination" of ``docs/simulator.md``), and the suite-mean metrics. Each scenario
runs with its recommended budget mode (``spoofing``: the global pool). The README's table
is this command's output.

Options beyond the stylised defaults (which print exactly the table above):

- ``--ecology neural`` runs the neural ecology's scenarios (``docs/neural.md``,
  "Comparison"); ``--neural hidden=16`` (repeatable) sets its static configuration. Its
  runs also report test accuracy (final and mean over windows) and compute (parameter-
  steps per region).
- ``--params FILE`` adds a row ``narset:<label>`` (``--params-label``, default ``tuned``):
  Narset with the params of a TOML file (each scenario's recommended budget mode applied).
- ``--ci`` reports every number as a mean and a 95 % t-interval over the seeds, one table
  per scenario, and keeps every seed's values in the JSON (``per_seed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

__all__ = ["NEURAL_COLUMNS", "baseline_table", "main", "markdown", "markdown_ci",
           "neural_settings"]

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


# The neural ecology's extra per-run numbers (docs/neural.md, "Comparison").
NEURAL_COLUMNS = (
    ("test_acc_final", "test acc (final)", "{:.3f}"),
    ("test_acc_mean", "test acc (mean)", "{:.3f}"),
    ("compute", "compute (M param-steps)", "{:.2f}"),
    ("rollbacks", "rollbacks/100", "{:.2f}"),
    ("unsafe_lysis", "unsafe lysis/100", "{:.3f}"),
    ("flap_rate", "flaps/100", "{:.2f}"),
    ("overdrive_fraction", "overdrive", "{:.3f}"),
    ("spoofer_capture", "spoofer capture", "{:+.3f}"),
)


def _neural_extras(result, ecology) -> dict:
    """Test accuracy (final: mean over regions after the last window; mean: over windows
    and regions) and compute: parameter-steps per region, in millions (each window's
    ``params_trained`` times the ecology's optimiser steps, summed over windows)."""
    ev = result.events
    acc = np.asarray(ev.test_acc, np.float64)
    trained = np.asarray(ev.params_trained, np.float64)
    return {
        "test_acc_final": float(np.mean(acc[-1])),
        "test_acc_mean": float(np.mean(acc)),
        "compute": float(np.mean(np.sum(trained, 0)) * ecology.steps / 1e6),
    }


def _rows(controllers, params):
    """``[(row name, controller name, params or None)]``: the controllers, then one
    Narset row per extra params (``narset:<label>``)."""
    rows = [(c, c, None) for c in controllers]
    rows += [(f"narset:{label}", "narset", p) for label, p in (params or {}).items()]
    return rows


def baseline_table(n_regions=2000, n_steps=150, seeds=(0, 1), scenarios=None,
                   controllers=None, progress=True, *, ecology=None, params=None,
                   ci=False) -> dict:
    """Run every controller on every scenario and seed.

    **Arguments** beyond the sizes: ``ecology`` (an [`sims.Ecology`][] or its name; default
    the stylised one), ``params`` (``{label: NarsetParams}``: extra Narset rows),
    ``ci`` (keep every seed's values and 95 % t-intervals).

    **Returns:** ``{"objective": {scenario: {controller: mean}}, "metrics": {scenario:
    {controller: {metric: mean}}}, "suite": {controller: mean objective}, "config": ...}``;
    with ``ci``, also ``"ci"`` (the same nesting, each value ``{"mean", "lo", "hi", "sd",
    "n"}``, objective included) and ``"per_seed"`` (lists over seeds).
    """
    import jax

    import sims
    from sims.ecologies import get_ecology

    eco = get_ecology(ecology)
    neural = eco.name != "stylised"
    scenarios = list(scenarios or eco.scenarios)
    controllers = list(controllers or sims.CONTROLLERS)
    rows = _rows(controllers, params)
    objective: dict = {}
    metrics: dict = {}
    per_seed: dict = {}
    t0 = time.perf_counter()
    for spec in scenarios:
        sc = eco.load_scenario(spec)
        name = spec if isinstance(spec, str) else sc.name
        objective[name], metrics[name], per_seed[name] = {}, {}, {}
        for row, c, extra in rows:
            run_params = sc.recommended_params(extra)
            objs, mets = [], []
            for seed in seeds:
                r = sims.rollout(run_params, sc, jax.random.key(seed), n_regions, n_steps,
                                 controller=c, **({"ecology": eco, "record": True}
                                                  if neural else {}))
                objs.append(float(sims.objective(r.metrics)))
                m = r.metrics.to_dict()
                if neural:
                    m.update(_neural_extras(r, eco))
                mets.append(m)
            objective[name][row] = float(np.mean(objs))
            metrics[name][row] = {k: float(np.mean([m[k] for m in mets])) for k in mets[0]}
            per_seed[name][row] = {"objective": objs,
                                   **{k: [m[k] for m in mets] for k in mets[0]}}
            if progress:
                print(f"  {name:14s} {row:18s} {objective[name][row]:8.3f}  "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    scenarios = list(objective)
    suite = {r: float(np.mean([objective[s][r] for s in scenarios])) for r, _, _ in rows}
    out = {
        "objective": objective,
        "metrics": metrics,
        "suite": suite,
        "config": {"regions": n_regions, "steps": n_steps, "seeds": list(seeds),
                   "weights": sims.DEFAULT_WEIGHTS.to_dict()},
    }
    if neural or params or ci:
        out["config"].update(ecology=eco.name, seconds=time.perf_counter() - t0,
                             params={k: p.to_dict() for k, p in (params or {}).items()})
        if neural:
            out["config"]["ecology_settings"] = {
                f.name: getattr(eco, f.name) for f in dataclasses.fields(eco)}
    if ci:
        from sims.tune.stats import t_interval

        out["per_seed"] = per_seed
        out["ci"] = {s: {r: {k: t_interval(v) for k, v in per_seed[s][r].items()}
                         for r in per_seed[s]} for s in scenarios}
    return out


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


def _cell(ci: dict, fmt: str) -> str:
    """``mean [lo, hi]`` in ``fmt``."""
    f = [fmt.format(round(ci[k], 6) + 0.0) for k in ("mean", "lo", "hi")]
    return f"{f[0]} [{f[1]}, {f[2]}]"


def markdown_ci(result: dict) -> str:
    """Markdown for a ``ci`` table: the objective by scenario (mean [95 % t-interval]),
    the suite score, then one table per scenario of the metrics (neural ecology:
    ``NEURAL_COLUMNS``; stylised: the suite table's columns)."""
    ci, suite = result["ci"], result["suite"]
    scenarios = list(ci)
    rows = list(suite)
    neural = result["config"].get("ecology", "stylised") != "stylised"
    columns = NEURAL_COLUMNS if neural else _COLUMNS
    lines = ["| controller | " + " | ".join(scenarios) + " | **suite** |",
             "|---" * (len(scenarios) + 2) + "|"]
    for r in rows:
        cells = []
        for s in scenarios:
            best = min(result["objective"][s].values())
            c = _cell(ci[s][r]["objective"], "{:.2f}")
            cells.append(f"**{c}**" if result["objective"][s][r] == best else c)
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {suite[r]:.2f} |")
    for s in scenarios:
        lines += ["", f"**{s}**", "",
                  "| controller | objective | " + " | ".join(h for _, h, _ in columns) + " |",
                  "|---" * (len(columns) + 2) + "|"]
        for r in rows:
            cells = [_cell(ci[s][r]["objective"], "{:.2f}")]
            cells += [_cell(ci[s][r][key], fmt) for key, _, fmt in columns]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def neural_settings(items) -> dict:
    """``["hidden=16", ...]`` -> ``{"hidden": 16, ...}``: the neural ecology's static
    configuration from ``KEY=VALUE`` strings (positive ints, known fields). Raises a
    one-line ``ValueError`` naming the bad item."""
    from sims.ecologies.neural import Neural

    known = [f.name for f in dataclasses.fields(Neural)]
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--neural {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(known)}")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = 0
        if out[key] <= 0:
            raise ValueError(f"--neural {key}: must be a positive integer, got {value!r}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Narset vs the baselines on every scenario.")
    p.add_argument("--regions", type=int, default=2000)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. K-1, averaged")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--ecology", default="stylised", choices=("stylised", "neural"))
    p.add_argument("--neural", action="append", metavar="KEY=VALUE",
                   help="the neural ecology's configuration (e.g. hidden=16, steps=10)")
    p.add_argument("--params", metavar="FILE",
                   help="add a row: Narset with the params of this TOML file")
    p.add_argument("--params-label", default="tuned", help="that row's label (narset:LABEL)")
    p.add_argument("--ci", action="store_true",
                   help="95%% t-intervals over the seeds, one table per scenario")
    args = p.parse_args(argv)
    if args.regions <= 0 or args.steps <= 0 or args.seeds <= 0:
        p.error("--regions, --steps and --seeds must be positive")
    try:
        settings = neural_settings(args.neural)
    except ValueError as err:
        p.error(str(err))
    if settings and args.ecology != "neural":
        p.error("--neural needs --ecology neural")
    ecology = None
    if args.ecology == "neural":
        from sims.ecologies.neural import Neural

        ecology = Neural(**settings)
    params = None
    if args.params:
        from narset_jax.params import NarsetParams, ParamsError

        try:
            params = {args.params_label: NarsetParams.from_toml(args.params)}
        except (OSError, ParamsError, ValueError) as err:
            p.error(f"--params {args.params}: {err}")
    result = baseline_table(args.regions, args.steps, tuple(range(args.seeds)),
                            progress=not args.quiet, ecology=ecology, params=params,
                            ci=args.ci)
    if args.json:
        from narset_jax.atomic import write_json

        write_json(args.json, result)
    print(markdown_ci(result) if args.ci else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
