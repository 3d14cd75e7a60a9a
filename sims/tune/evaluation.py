"""Hard evaluation of controllers on held-out seeds, and its table.

Every candidate (the starting params, the tuned params, the random search's best, the
baselines) runs with the **hard** hysteresis on the same evaluation seeds, so differences
are paired; each scenario under its recommended budget mode unless one is fixed for all
([`sims.tune.scenario_params`][]). How to read the result is in ``docs/tuning.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims.tune.loss import scenario_params
from sims.tune.params_map import hard
from sims.tune.stats import t_interval, verdict
from sims.tune.training import STREAM_EVAL, run_keys

__all__ = [
    "REPORT_METRICS",
    "check_relaxed_step",
    "evaluate",
    "format_budget",
    "format_table",
    "load_holdout",
    "load_scenario",
    "relaxed_step_error",
    "rollout_objectives",
]

REPORT_METRICS = (
    "progress",
    "flap_rate",
    "budget_churn",
    "overdrive_fraction",
    "unsafe_lysis",
    "rollbacks",
    "spoofer_capture",
)


def load_scenario(name, ecology=None, *, flag: str = "--scenario"):
    """The params of ``ecology`` (default the stylised one) that ``name`` names: one of its
    shipped scenarios or a scenario TOML file, through the ecology's ``load_scenario``
    ([`sims.Ecology`][]). A bad name or file is a one-line ``UserError`` that starts with
    ``flag`` and names the file."""
    eco = sims.get_ecology(ecology)
    try:
        return eco.load_scenario(name)
    except (ValueError, OSError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise UserError(f"{flag} {str(name)!r}: {lines[0]}") from None


def load_holdout(names, train_labels, ecology=None) -> dict[str, Any]:
    """The held-out evaluation scenarios, ``label -> params``: ``names`` (shipped names of
    ``ecology`` or TOML files, any ecology's; see [`sims.tune.load_scenario`][]), or by
    default every shipped scenario of the ecology not trained on. A held-out scenario
    whose label (its ``name``, else the file's stem) is a training scenario's or another
    held-out one's is refused in one line, as is an empty list."""
    eco = sims.get_ecology(ecology)
    if names is None:
        names = [n for n in eco.scenarios if n not in train_labels]
    holdout: dict[str, Any] = {}
    for name in names:
        sc = load_scenario(name, eco, flag="--holdout")
        if sc.name in train_labels:
            raise UserError(f"--holdout {str(name)!r} is also a training scenario "
                            f"({sc.name!r}); give its file another name")
        if sc.name in holdout:
            raise UserError(f"--holdout {str(name)!r}: a held-out scenario is already named "
                            f"{sc.name!r}; give one of them another name")
        holdout[sc.name] = sc
    if not holdout:
        raise UserError("no held-out scenario: every shipped scenario is trained on; "
                        "pass --holdout PATH.toml")
    return holdout


def relaxed_step_error(ecology, scenario, relax: str = "soft") -> str | None:
    """``None`` if a window of ``ecology`` runs under the relaxed hysteresis ``relax``
    (traced with ``jax.eval_shape``, nothing is computed), else the first line of the
    ``NotImplementedError`` its step raises (the neural ecology has no relaxed form)."""
    eco = sims.get_ecology(ecology)
    params = NarsetParams(hysteresis=relax)
    scenario = eco.prepare(scenario.without_metadata())

    def window():
        carry = sims.rollout_init(params, scenario, jax.random.key(0), 2, ecology=eco)
        return sims.rollout_chunk(params, scenario, carry, 1, ecology=eco)[0]

    try:
        jax.eval_shape(window)
    except NotImplementedError as err:
        return (str(err).strip().splitlines() or ["no relaxed step"])[0]
    return None


def check_relaxed_step(ecology, scenario, relax: str = "soft") -> None:
    """A one-line ``UserError`` for ``--method grad`` on an ecology without a relaxed step
    (see [`sims.tune.evaluation.relaxed_step_error`][])."""
    eco = sims.get_ecology(ecology)
    why = relaxed_step_error(eco, scenario, relax)
    if why is not None:
        raise UserError(f"--method grad is not available on the {eco.name} ecology ({why}); "
                        "use --method es, which tunes the hard controller on any ecology")


def rollout_objectives(params, controller, scenario, keys, n_regions, n_steps, weights, dtype,
                       ecology=None):
    """Objective and metrics of one controller over seeds, one ``sims.rollout`` per seed
    (so every call shares ``sims.rollout``'s compiled program for that controller), on
    ``ecology`` (default: the stylised one; ``scenario`` is its params).

    **Returns:** ``(objective [len(keys)] (NumPy), [metrics dict per seed])``.
    """
    params = params.astype(dtype)
    scenario = scenario.astype(dtype)
    objs, mets = [], []
    for k in keys:
        m = sims.rollout(
            params, scenario, k, n_regions, n_steps, controller=controller, ecology=ecology,
            dtype=dtype,
        ).metrics
        objs.append(float(sims.objective(m, weights)))
        mets.append(m.to_dict())
    return np.asarray(objs), mets


def evaluate(
    candidates: Mapping[str, tuple[NarsetParams, str]],
    scenarios: Mapping[str, sims.Scenario],
    *,
    seeds: int,
    n_regions: int,
    n_steps: int,
    seed: int = 0,
    weights=None,
    reference: str | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    budget: str | None = None,
    dtype=jnp.float32,
    progress: Callable[[], None] | None = None,
    ecology=None,
) -> dict[str, Any]:
    """Evaluate controllers with the **hard** hysteresis on held-out seeds.

    **Arguments:**

    - ``candidates``: ``label -> (params, controller)``; ``controller`` is one of
      [`sims.CONTROLLERS`][]. Params are switched to ``hysteresis="hard"``.
    - ``scenarios``: ``name -> Scenario`` (with metadata: every candidate, baselines
      included, runs a scenario under its recommended budget mode).
    - ``budget``: one budget mode for every scenario instead, or ``None`` (see
      [`sims.tune.scenario_params`][]).
    - ``seeds``: number of evaluation seeds (from the run's ``STREAM_EVAL``, disjoint from
      training); every candidate sees the same seeds (paired comparison).
    - ``reference``: a label; each other candidate also gets the paired difference of its
      objective against it, with a t-interval.
    - ``pairs``: ``(a, b)`` labels; candidate ``a`` also gets the paired difference
      ``a - b`` under ``"versus"`` (e.g. the gradient-tuned params against random search).

    **Returns:** ``{scenario: {label: {"controller", "budget", "objective": t_interval,
    "objective_values": [...], "delta": t_interval or None, "versus": {b: t_interval},
    "metrics": {name: mean}}}}``.
    """
    if seeds < 2:
        raise ValueError(f"need at least 2 evaluation seeds, got {seeds}")
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    keys = jax.random.split(run_keys(seed, STREAM_EVAL), seeds)
    out: dict[str, Any] = {}
    for sc_name, sc in scenarios.items():
        rows: dict[str, Any] = {}
        values: dict[str, np.ndarray] = {}
        for label, (params, controller) in candidates.items():
            params = scenario_params(hard(params), sc, budget)
            obj, mets = rollout_objectives(
                params, controller, sc, keys, n_regions, n_steps, weights, dtype, ecology
            )
            values[label] = obj
            rows[label] = {
                "controller": controller,
                "budget": params.budget,
                "objective": t_interval(obj),
                "objective_values": obj.tolist(),
                "metrics": {m: float(np.mean([d[m] for d in mets])) for m in REPORT_METRICS},
                "delta": None,
                "versus": {},
            }
            if progress is not None:
                progress()
        if reference is not None and reference in values:
            for label in rows:
                if label != reference:
                    rows[label]["delta"] = t_interval(values[label] - values[reference])
        for a, b in pairs:
            if a in values and b in values:
                rows[a]["versus"][b] = t_interval(values[a] - values[b])
        out[sc_name] = rows
    return out


def _fmt_ci(ci) -> str:
    return f"{ci['mean']:8.3f} [{ci['lo']:7.3f}, {ci['hi']:7.3f}]"


def format_table(evaluation: dict[str, Any], held_out: set[str], reference: str,
                 n_seeds: int, n_regions: int, n_steps: int) -> str:
    """A readable table of an evaluation (one block per scenario)."""
    lines = [
        f"Evaluation: hard hysteresis, {n_seeds} held-out seeds, N={n_regions}, T={n_steps}. "
        "J = objective (lower is better), mean [95% t-interval]; "
        f"dJ = paired difference vs {reference}.",
    ]
    head = (f"  {'controller':<17} {'J':>8} {'[95% CI]':>18}   {'dJ':>8} {'[95% CI]':>18}"
            f"  {'progress':>8} {'flap':>6} {'churn':>6} {'overdr':>6} {'unsafe':>6}"
            f" {'rollbk':>6} {'capture':>7}")
    for sc_name, rows in evaluation.items():
        tag = "held-out" if sc_name in held_out else "trained on"
        mode = next(iter(rows.values()), {}).get("budget")
        lines.append("")
        lines.append(f"{sc_name} ({tag}" + (f", budget {mode})" if mode else ")"))
        lines.append(head)
        for label, row in rows.items():
            d = row["delta"]
            dtxt = _fmt_ci(d) if d is not None else f"{'-':>8} {'':>18}"
            m = row["metrics"]
            lines.append(
                f"  {label:<17} {_fmt_ci(row['objective'])}   {dtxt}"
                f"  {m['progress']:8.3f} {m['flap_rate']:6.2f} {m['budget_churn']:6.1f}"
                f" {m['overdrive_fraction']:6.3f} {m['unsafe_lysis']:6.2f}"
                f" {m['rollbacks']:6.2f} {m['spoofer_capture']:7.3f}"
            )
        for label in ("tuned", "random_search"):
            if label in rows and rows[label]["delta"] is not None:
                lines.append(f"  -> {label} vs {reference}: {verdict(rows[label]['delta'])}")
        for label, row in rows.items():
            for other, d in row.get("versus", {}).items():
                lines.append(f"  -> {label} vs {other}: dJ = {d['mean']:.3f} "
                             f"[{d['lo']:.3f}, {d['hi']:.3f}], {verdict(d)}")
    return "\n".join(lines)


def format_budget(method: str, warm: Mapping[str, Any], rollouts: int, batch: int,
                  seconds: Mapping[str, float], population: int = 1) -> str:
    """Two lines under the evaluation table: what the tuned params and the random search
    each spent in rollouts (the same number), and their wall times. ``warm``: the run's
    ``warm_start`` record; ``batch``: rollouts per candidate or iteration (``S x B``);
    ``seconds``: ``train``, ``random_search``, ``surrogate``, ``evaluation``;
    ``population``: ES candidates per generation."""
    name = {"grad": "gradient", "es": "ES"}.get(method, method)
    n_warm, n_method = warm["random_search_candidates"], warm["method_iterations"]
    n_rs = rollouts // batch
    steps = (f"{n_method // population} ES generations x {population} candidates x {batch}"
             if method == "es" else f"{n_method} {name} iterations x {batch}")
    spent = (steps if not n_warm else f"random search {n_warm} candidates x {batch}, then "
             f"{steps} from its best (candidate {warm['start']})")
    tuned_s = seconds["train"] + seconds["random_search"] * n_warm / max(n_rs, 1)
    return (f"Rollouts: tuned {spent} = {rollouts}; random_search {n_rs} candidates x "
            f"{batch} = {rollouts}.\n"
            f"Wall time: tuned {tuned_s:.1f} s ({name} {seconds['train']:.1f} s"
            + (" + its share of the random search's" if n_warm else "")
            + f"), random_search {seconds['random_search']:.1f} s, surrogate report "
            f"{seconds['surrogate']:.1f} s, evaluation {seconds['evaluation']:.1f} s "
            "(compilation included).")
