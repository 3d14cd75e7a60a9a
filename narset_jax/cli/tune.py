"""``narset tune``: tune Narset's hyperparameters by gradient descent through rollouts.

    narset tune --scenario steady --scenario crisis --iters 40 --regions 256 --steps 100 \\
        --out out/tune [--json summary.json]

Trains by gradient (``--estimator``, default ``smoothed``), checkpointing every few
iterations (``--resume`` continues bit for bit), then runs a random search with the
same number of rollouts and evaluates the defaults, the tuned params, the random search's
best and the simulator's baselines with the **hard** controller on held-out seeds and
held-out scenarios. Every rollout runs its scenario's recommended budget mode (the global
pool for ``spoofing``), as ``narset simulate`` does without ``--budget``, unless the
``--params`` file sets ``budget``, which then holds for every scenario.

``--method es`` replaces the gradient by an evolution strategy on the hard controller with
the same number of rollouts; either way the surrogate gap (relaxed against hard objective)
is printed before the evaluation and written to the summary. Writes to ``--out``:

- ``params.toml``: the tuned params (hard hysteresis), for ``narset simulate --params``;
  without a ``budget`` line unless ``--params`` fixed one, so that ``narset simulate``
  applies the scenario's recommended mode, as the evaluation did;
- ``random_search_params.toml``: the random search's best;
- ``history.json``: per-iteration loss, gradient norm, temperature; the run's settings;
- ``evaluation.json``: the evaluation (means, 95% t-intervals, paired differences);
- ``loss_curve.png``, ``params_before_after.png``;
- ``checkpoint.npz``: the resumable training state.

See ``docs/tuning.md``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# The shipped settings file, sims/tune/tune_default.toml (sims.tune.DEFAULT_CONFIG), named
# here so that building the parser does not import sims.
DEFAULT_CONFIG_NAME = "tune_default.toml"
ESTIMATORS = ("smoothed", "soft", "anneal", "straight_through", "saturating")  # sims.tune's


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune",
        help="tune the controller's hyperparameters by gradient descent through rollouts",
        description=(
            "Estimate the gradient of the objective of whole simulated rollouts (--estimator) "
            "with respect to alpha, beta, the thresholds, the dwell, the EWMA rates, the "
            "policy gains and the authority thresholds; optimise with adam; then compare "
            "against the defaults, the baselines and a random search with the same number "
            "of rollouts, with the hard controller on held-out seeds and scenarios. "
            "See docs/tuning.md."
        ),
    )
    p.add_argument("--scenario", action="append", default=None, metavar="NAME",
                   help="training scenario: a shipped name or a .toml path (repeatable)")
    p.add_argument("--iters", type=int, default=None, help="iterations K")
    p.add_argument("--regions", type=int, default=None, help="regions N per rollout")
    p.add_argument("--steps", type=int, default=None, help="windows T per rollout")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", default=None, metavar="PATH", help="write a summary as JSON")
    p.add_argument("--config", default=None, metavar="PATH",
                   help=f"settings TOML (default: the shipped {DEFAULT_CONFIG_NAME})")
    p.add_argument("--params", default=None, metavar="PATH",
                   help="starting params TOML or a preset (tuned; default: "
                   "NarsetParams()); a budget line in "
                   "it fixes the budget mode for every scenario (otherwise each scenario's "
                   "recommended mode is used, as by narset simulate)")
    p.add_argument("--batch", type=int, default=None, help="seeds per scenario per iteration")
    p.add_argument("--lr", type=float, default=None, help="adam learning rate")
    p.add_argument("--clip", type=float, default=None, help="global-norm gradient clip")
    p.add_argument("--estimator", default=None, choices=ESTIMATORS, help="gradient estimator "
                   "(default smoothed); docs/tuning.md section 3")
    p.add_argument("--smoothing-sigma", type=float, default=None, metavar="SIGMA",
                   help="--estimator smoothed: s.d. of the perturbations, raw units (0.2)")
    p.add_argument("--hysteresis", default=None, choices=("soft", "straight_through"),
                   help="old flag: selects --estimator soft or straight_through")
    p.add_argument("--anneal", type=float, default=None, metavar="F",
                   help="anneal the temperatures geometrically to F times their value")
    p.add_argument("--truncate", type=int, default=None, metavar="W",
                   help="truncate backpropagation to windows of W steps (0: off)")
    p.add_argument("--no-remat", dest="remat", action="store_const", const=False, default=None,
                   help="do not wrap the simulated window in jax.checkpoint")
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="simulation dtype (default float32)")
    p.add_argument("--sigma", type=float, default=None,
                   help="random search: s.d. of perturbations in raw units")
    p.add_argument("--warm-start", type=float, default=None, metavar="F", help="share of "
                   "the budget spent first on random search, whose best the method starts "
                   "from (default: 0 for grad, 0.5 for es)")
    p.add_argument("--ecology", default=None, metavar="NAME", help="stylised (default) or "
                   "neural (--method es only); --scenario/--holdout name its scenarios")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="C",
                   help="write checkpoint.npz every C iterations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop (with a checkpoint) once K iterations are done, as if "
                   "interrupted; continue later with --resume")
    p.add_argument("--holdout", action="append", default=None, metavar="NAME",
                   help="held-out evaluation scenario: a shipped name or a scenario TOML "
                   "file (repeatable; default: every shipped scenario not trained on)")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comma-separated baseline controllers to evaluate (default: all of "
                   "static_split, single_threshold, no_inertia, always_overdrive; 'none')")
    p.add_argument("--eval-seeds", type=int, default=None,
                   help="held-out evaluation seeds (>= 8)")
    p.add_argument("--eval-regions", type=int, default=None, help="regions for evaluation")
    p.add_argument("--eval-steps", type=int, default=None, help="windows for evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--method", default=None, choices=("grad", "es"),
                   help="grad: gradient descent with --estimator (default); "
                   "es: an evolution strategy on the hard controller with the same rollout "
                   "budget (settings in the config's [es] table; --iters must be a multiple "
                   "of its population)")
    p.set_defaults(run=run)
    return p


def _settings(args) -> tuple[dict[str, Any], set[str]]:
    """Merge the shipped config, ``--config`` and flags. Returns the settings and the set
    of keys given explicitly (by ``--config`` or a flag)."""
    from sims import tune

    flags = {
        "scenarios": args.scenario,
        "iters": args.iters,
        "regions": args.regions,
        "steps": args.steps,
        "batch": args.batch,
        "learning_rate": args.lr,
        "clip_norm": args.clip,
        "estimator": args.estimator, "smoothing_sigma": args.smoothing_sigma,
        "hysteresis": args.hysteresis,
        "anneal": args.anneal,
        "truncate": args.truncate,
        "remat": args.remat,
        "seed": args.seed,
        "dtype": args.dtype,
        "sigma": args.sigma,
        "warm_start": args.warm_start,
        "ecology": args.ecology,
        "method": args.method,
        "checkpoint_every": args.checkpoint_every,
        "eval_seeds": args.eval_seeds,
    }
    from sims.tune.presets import params_file
    return tune.build_settings(flags, config=args.config, params=params_file(args.params))


def run(args) -> int:
    settings, explicit = _settings(args)
    from narset_jax.atomic import write_json
    from sims import tune

    if args.eval_regions is not None:  # the training sizes are checked by run_tune
        tune.settings.check_eval_memory(args.eval_regions, settings["dtype"])

    result = tune.run_tune(
        settings, explicit, out=args.out, resume=args.resume, stop_after=args.stop_after,
        holdout=args.holdout, baselines=args.baselines, eval_regions=args.eval_regions,
        eval_steps=args.eval_steps, progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    if result.table is not None:
        if result.surrogate is not None:
            print(result.surrogate + "\n")
        print(result.table)
    if args.json:
        write_json(args.json, result.summary)
    return 0
