"""The gradient estimators of ``narset tune`` side by side, on the same rollout budget.

    python -m benchmarks.estimators --out benchmarks/results/estimators.json

For each estimator (``--estimators``, default all of ``sims.tune.ESTIMATORS``) one
``narset tune`` run through the library ([`sims.tune.run_tune`][]) with the same settings
otherwise: training scenarios ``--scenarios`` (default steady, crisis), ``--iters`` K,
``--regions`` N, ``--steps`` T, ``--batch`` B, seed 0, so every estimator trains on the
same ``K * S * B`` seeds (the smoothed estimator runs two hard rollouts per seed, an
antithetic pair), all ``K`` iterations from the default params (no random-search warm
start); the random search and the evaluation are the run's own (the same for
every estimator: same seeds, hard controller, held-out seeds, held-out scenarios
``--holdout``, default heterogeneous, spoofing, dropout).

Reported per estimator: the surrogate gap ``|relaxed - hard| / |hard|`` at the start and at
the final params on every training scenario (``summary["surrogate"]``), the Spearman rank
agreement, the training time, ``alpha`` before and after with its gradient, and the tuned
params' hard objective (mean, 95% t-interval) on every evaluated scenario with the paired
difference against the random search and against the chosen estimator.

``--knobs`` instead measures how the hard objective depends on ``alpha`` and the pool at the
default params (``--knob-scenario``, default crisis; ``--regions``, ``--steps``,
``--batch`` seeds, float64): how often the pool binds while a target is in overdrive, the
objective and its metrics along a sweep of each (same seeds), and the smoothed estimator's
gradient against central differences of the smoothed objective (same seeds and
perturbations), each with its standard error:

    python -m benchmarks.estimators --knobs --regions 512 --steps 150 \
        --out benchmarks/results/estimators_knobs.json

The choice (issue 15): among the estimators whose final gap is at most 5% of ``|J_hard|``
on every training scenario, the one whose tuned params have the lowest mean objective over
the held-out scenarios. The rule is applied to the numbers, not asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

GAP_LIMIT = 0.05


def run_one(estimator: str, args, workdir: Path) -> dict:
    from sims import tune

    overrides = {
        "scenarios": args.scenarios.split(","), "iters": args.iters,
        "regions": args.regions, "steps": args.steps, "batch": args.batch,
        "seed": args.seed, "estimator": estimator, "dtype": args.dtype,
    }
    if "warm_start" in tune.DEFAULTS:  # every iteration to the estimator, from the defaults
        overrides["warm_start"] = 0.0
    settings, explicit = tune.build_settings(overrides)
    t0 = time.perf_counter()
    result = tune.run_tune(settings, explicit, out=workdir / estimator,
                           holdout=args.holdout.split(","), baselines="none",
                           progress=False)
    wall = time.perf_counter() - t0
    s = result.summary
    ev = json.loads((workdir / estimator / "evaluation.json").read_text())
    return {"summary": s, "evaluation": ev["results"], "wall_s": wall,
            "surrogate_text": result.surrogate}


def choose(rows: dict, train: list[str], held: list[str]) -> tuple[str | None, dict]:
    """Apply the rule; returns ``(choice, reasons)``."""
    reasons = {}
    for est, r in rows.items():
        gaps = r["gap_final"]
        ok = all(gaps[sc] is not None and gaps[sc] <= GAP_LIMIT for sc in train)
        reasons[est] = {"gap_ok": ok, "held_out_mean": r["held_out_mean"]}
    eligible = [e for e, v in reasons.items() if v["gap_ok"]]
    if not eligible:
        return None, reasons
    return min(eligible, key=lambda e: reasons[e]["held_out_mean"]), reasons


def knobs(args) -> dict:
    """``alpha`` and the pool at the default params (see the module docstring)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import sims
    from narset_jax.params import NarsetParams
    from sims import tune
    from sims.tune import estimators as est

    f64 = jnp.float64
    base = NarsetParams().astype(f64)
    scenario = sims.load_scenario(args.knob_scenario)
    sc = scenario.without_metadata().astype(f64)
    base = tune.scenario_params(base, scenario)
    N, T, B = args.regions, args.steps, args.batch
    weights = jax.tree.map(lambda w: jnp.asarray(w, f64), sims.DEFAULT_WEIGHTS)
    keys = tune.batch_keys(tune.run_keys(args.seed, tune.STREAM_TRAIN), 0, 1, B)
    show = ("progress", "flap_rate", "budget_churn", "overdrive_fraction", "unsafe_lysis",
            "rollbacks", "mean_x_T", "mean_x_E")

    def hard(params, record=False):
        out = [sims.rollout(params, sc, k, N, T, dtype=f64, record=record) for k in keys[0]]
        row = {"objective": float(np.mean([float(sims.objective(r.metrics, weights))
                                           for r in out]))}
        row.update({m: float(np.mean([float(getattr(r.metrics, m)) for r in out]))
                    for m in show})
        return row, out

    _, recs = hard(base, record=True)
    binds, od = [], []
    for r in recs:
        d = r.decisions
        over = (d.x_T > 1) | (d.x_E > 1)
        binds.append(float(jnp.mean((d.spent >= base.pool - 1e-9) & over)))
        od.append(float(jnp.mean(over)))
    sweeps = {
        "alpha": {str(a): hard(base.replace(alpha=a))[0] for a in (1.0, 1.5, 2.0, 2.5, 3.0)},
        "pool": {str(p): hard(base.replace(pool=p))[0] for p in (1.2, 1.35, 1.5, 1.65, 1.8)},
    }
    cfg = tune.TuneConfig(N, T, dtype="float64", checkpoint=False)
    stacked = tune.stack_scenarios([scenario]).astype(f64)
    nkeys = est.noise_keys(args.seed, 0, 1, B)
    sigma = jnp.asarray(est.SMOOTHING_SIGMA, f64)
    raw = tune.from_params(base, f64)
    g = est.smoothed_grad(raw, base, stacked, keys, nkeys, weights, sigma, cfg=cfg,
                          perturb_pool=base.budget == "region")
    h = 0.2

    def smoothed(r, b=base):
        jp, jm, _ = est.smoothed_samples(r, b, stacked, keys, nkeys, weights, sigma, cfg=cfg,
                                         perturb_pool=b.budget == "region")
        return (np.asarray(jp) + np.asarray(jm)) / 2

    def fd(lo, hi):
        d = (hi - lo) / (2 * h)
        return {"mean": float(d.mean()), "se": float(d.std() / np.sqrt(d.size))}

    gradients = {
        "alpha (raw units)": {
            "estimator": {"mean": float(g["grad"]["alpha"]), "se": float(g["se"]["alpha"])},
            "finite_differences": fd(smoothed({**raw, "alpha": raw["alpha"] - h}),
                                     smoothed({**raw, "alpha": raw["alpha"] + h}))},
        "log(pool)": {
            "estimator": {"mean": float(g["grad_log_pool"]), "se": float(g["se_log_pool"])},
            "finite_differences": fd(smoothed(raw, base.replace(pool=base.pool * np.exp(-h))),
                                     smoothed(raw, base.replace(pool=base.pool * np.exp(h))))},
    }
    return {"scenario": scenario.name, "budget": base.budget, "regions": N, "steps": T,
            "seeds": B, "dtype": "float64",
            "pool_binds_in_overdrive_share": float(np.mean(binds)),
            "overdrive_share": float(np.mean(od)),
            "sweeps": sweeps, "smoothed_gradient": gradients,
            "smoothing_sigma": est.SMOOTHING_SIGMA, "fd_step_raw": h,
            "samples": g["samples"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default=None,
                    help="comma-separated (default: every sims.tune.ESTIMATORS)")
    ap.add_argument("--scenarios", default="steady,crisis")
    ap.add_argument("--holdout", default="heterogeneous,spoofing,dropout")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--regions", type=int, default=256)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--workdir", default=None, help="keep each run's outputs here")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--knobs", action="store_true",
                    help="instead: alpha and the pool at the default params (see above)")
    ap.add_argument("--knob-scenario", default="crisis")
    args = ap.parse_args(argv)

    import numpy as np

    if args.knobs:
        from benchmarks import _common

        res = {"machine": _common.machine(), "knobs": knobs(args)}
        text = json.dumps(res, indent=2, sort_keys=True)
        print(text if not args.out else json.dumps(res["knobs"]["smoothed_gradient"]),
              file=sys.stderr if args.out else sys.stdout)
        if args.out:
            from narset_jax.atomic import write_text

            write_text(args.out, text + "\n")
        return 0

    from benchmarks import _common
    from sims import tune

    estimators = (args.estimators.split(",") if args.estimators else list(tune.ESTIMATORS))
    train = args.scenarios.split(",")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    runs = {}
    for est in estimators:
        print(f"[{est}] running ...", file=sys.stderr, flush=True)
        runs[est] = run_one(est, args, workdir)
        print(runs[est]["surrogate_text"], file=sys.stderr, flush=True)

    first = runs[estimators[0]]["evaluation"]
    train_labels = runs[estimators[0]]["summary"]["surrogate"]["scenarios"].keys()
    held = [sc for sc in first if sc not in train_labels]
    rows = {}
    for est, run in runs.items():
        s, ev = run["summary"], run["evaluation"]
        sur = s["surrogate"]
        rows[est] = {
            "gap_start": {sc: v["start"]["gap_share"] for sc, v in sur["scenarios"].items()},
            "gap_final": {sc: v["final"]["gap_share"] for sc, v in sur["scenarios"].items()},
            "relaxed_final": {sc: v["final"]["relaxed"] for sc, v in sur["scenarios"].items()},
            "hard_final": {sc: v["final"]["hard"] for sc, v in sur["scenarios"].items()},
            "spearman": {sc: v["spearman"] for sc, v in sur["scenarios"].items()},
            "train_s": s["seconds"]["train"],
            "wall_s": run["wall_s"],
            "final_loss": s["final_loss"],
            "knobs": s["knobs"],
            "tuned": {sc: ev[sc]["tuned"]["objective"] for sc in ev},
            "tuned_vs_random_search": {sc: ev[sc]["tuned"]["versus"].get("random_search")
                                       for sc in ev},
            "held_out_mean": float(np.mean([ev[sc]["tuned"]["objective"]["mean"]
                                            for sc in held])),
        }
    ref = {sc: first[sc] for sc in first}
    baseline_rows = {
        label: {sc: ref[sc][label]["objective"] for sc in ref}
        for label in ("defaults", "random_search") if label in ref[next(iter(ref))]
    }
    choice, reasons = choose(rows, list(train_labels), held)
    if choice is not None:
        for est, run in runs.items():
            rows[est]["versus_choice"] = {
                sc: tune.t_interval(np.asarray(run["evaluation"][sc]["tuned"]["objective_values"])
                                    - np.asarray(runs[choice]["evaluation"][sc]["tuned"]
                                                 ["objective_values"]))
                for sc in run["evaluation"]
            }
    out = {
        "machine": _common.machine(),
        "command": "python -m benchmarks.estimators " + " ".join(argv or sys.argv[1:]),
        "config": {"estimators": estimators, "train": train, "holdout": held,
                   "iters": args.iters, "regions": args.regions, "steps": args.steps,
                   "batch": args.batch, "seed": args.seed, "dtype": args.dtype},
        "rule": (f"final surrogate gap <= {GAP_LIMIT:.0%} of |J_hard| on every training "
                 "scenario, then the lowest mean tuned objective over the held-out scenarios"),
        "choice": choice,
        "reasons": reasons,
        "estimators": rows,
        "reference": baseline_rows,
    }
    for est, r in rows.items():
        gaps = ", ".join(f"{sc} {100 * v:.1f}%" for sc, v in r["gap_final"].items())
        print(f"{est:>17}: final gap {gaps}; held-out mean J {r['held_out_mean']:.3f}; "
              f"train {r['train_s']:.0f} s; alpha {r['knobs']['alpha']['start']:.3f} -> "
              f"{r['knobs']['alpha']['final']:.3f}", file=sys.stderr)
    print(f"choice: {choice}", file=sys.stderr)
    text = json.dumps(out, indent=2, sort_keys=True)
    if args.out:
        from narset_jax.atomic import write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text + "\n")
    else:
        print(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
