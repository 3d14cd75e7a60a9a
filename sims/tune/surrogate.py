"""The surrogate gap: how far the relaxed objective that the gradient differentiates is
from the hard objective of the controller that is deployed.

[`sims.tune.surrogate.surrogate_report`][] compares, per training scenario, the relaxed
and the hard objective at the starting and at the final params, on the same rollouts (the
keys of training iteration 0, which the random search also scores its candidates on), and
the rank agreement (Spearman) of the two objectives over the random search's candidates:
a surrogate whose ranking of candidates disagrees with the hard one can lead the gradient
astray however small its gap at one point. ``narset tune`` prints the report after training
and writes it to its summary under ``surrogate`` (``docs/tuning.md``). The "relaxed"
objective is the one the run's estimator differentiates: a relaxed rollout's for the
pathwise estimators, the hard controller's smoothed by per-region perturbations for
``"smoothed"`` ([`sims.tune.estimators`][]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.params import NarsetParams
from sims.tune import estimators, evaluation
from sims.tune.loss import TuneConfig, budget_groups, grouped_population_objectives, scenario_params
from sims.tune.params_map import hard, to_params

__all__ = ["format_surrogate", "spearman", "surrogate_report"]

# At most this many region-rollouts per vmapped call of the relaxed candidates (memory).
_MAX_REGIONS_PER_CALL = 1 << 21


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of ``a`` and ``b`` (ties get their mean rank); ``None``
    when it is undefined (fewer than 2 values, a constant or a non-finite one)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-d arrays of one length, got {a.shape} and {b.shape}")
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return None if den == 0 else float((ra * rb).sum() / den)


def _gap(relaxed: float, hard_value: float) -> dict[str, Any]:
    gap = relaxed - hard_value
    return {"relaxed": relaxed, "hard": hard_value, "gap": gap,
            "gap_share": abs(gap) / abs(hard_value) if hard_value != 0 else None}


def surrogate_report(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    labels: Sequence[str],
    *,
    estimator: str,
    candidates: Mapping[str, Any],
    hard_candidates: np.ndarray,
    final_raw: Mapping[str, Any],
    final_temp: float,
    keys,
    n_regions: int,
    n_steps: int,
    weights=None,
    budget: str | None = None,
    dtype=jnp.float32,
    controller="narset",
    ecology=None,
    smoothing_sigma: float = estimators.SMOOTHING_SIGMA,
    seed: int = 0,
) -> dict[str, Any]:
    """The relaxed and hard objectives at the start and at the final params, and their rank
    agreement over the random search's candidates.

    **Arguments:**

    - ``base``: the starting params (their hysteresis is replaced); ``scenarios`` (with
      their metadata: each runs under its budget mode) and their ``labels``.
    - ``estimator``: the gradient estimator (one of [`sims.tune.ESTIMATORS`][]); its
      objective is the "relaxed" one: the rollouts of its relaxed hysteresis, or for
      ``"smoothed"`` the hard rollouts perturbed per region (``smoothing_sigma``, with the
      perturbations of training iteration 0, from ``seed``).
    - ``candidates``: the random search's candidates, ``name -> [K]`` raw values, candidate
      0 being the starting params; ``hard_candidates``: their hard objectives ``[K, S, B]``
      on ``keys`` (the random search's own rollouts).
    - ``final_raw``: the tuned raw params; ``final_temp``: the temperature factor of their
      relaxed objective (the last iteration's, with annealing).
    - ``keys``: ``[S, B]``, the rollouts of every number here.

    **Returns:** a JSON-ready dict: per scenario ``{"start": {...}, "final": {...},
    "spearman"}`` with ``relaxed``, ``hard``, ``gap = relaxed - hard`` and ``gap_share =
    |gap| / |hard|`` (means over the ``B`` seeds), the same over all scenarios under
    ``"all"``, and the extra rollouts this cost.
    """
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    cfg = TuneConfig(n_regions, n_steps, checkpoint=False, dtype=jnp.dtype(dtype).name,
                     controller=controller, ecology=ecology)
    base = base.astype(dtype)
    hysteresis = estimators.estimator_hysteresis(estimator)
    relaxed_base = base.replace(hysteresis=hysteresis)
    n_sc, batch = keys.shape
    hard_candidates = np.asarray(hard_candidates, np.float64).reshape(-1, n_sc, batch)
    n_cand = hard_candidates.shape[0]

    # Relaxed: every candidate and the final params in one vmapped call per budget mode.
    raws = {n: jnp.concatenate([jnp.asarray(candidates[n], cfg.jdtype).reshape(-1),
                                jnp.asarray(final_raw[n], cfg.jdtype).reshape(1)])
            for n in candidates}
    temps = np.concatenate([np.ones(n_cand), [final_temp]])
    groups = budget_groups(relaxed_base, scenarios, budget, cfg.jdtype)
    w = jax.tree.map(lambda v: jnp.asarray(v, cfg.jdtype), weights)
    widest = max(len(g.index) for g in groups)
    per_call = max(1, _MAX_REGIONS_PER_CALL // (batch * n_regions * widest))
    if estimator == "smoothed":  # antithetic pairs: twice the regions per candidate
        nkeys = estimators.noise_keys(seed, 0, n_sc, batch)
        relaxed = estimators.grouped_smoothed_objectives(
            raws, groups, keys, nkeys, w, smoothing_sigma, cfg, chunk=max(1, per_call // 2))
    else:
        relaxed = grouped_population_objectives(raws, temps, groups, keys, w, cfg,
                                                chunk=per_call)

    # Hard, final params: sims.rollout per seed (the random search's compiled program).
    final = hard(to_params(final_raw, base))
    hard_final = np.stack([
        evaluation.rollout_objectives(scenario_params(final, sc, budget), controller, sc,
                                      keys[s], n_regions, n_steps, weights, dtype, ecology)[0]
        for s, sc in enumerate(scenarios)
    ])

    def block(rel_start, hard_start, rel_final, hard_fin, rel_cands, hard_cands):
        return {"start": _gap(float(np.mean(rel_start)), float(np.mean(hard_start))),
                "final": _gap(float(np.mean(rel_final)), float(np.mean(hard_fin))),
                "spearman": spearman(rel_cands, hard_cands)}

    per_scenario = {
        label: block(relaxed[0, s], hard_candidates[0, s], relaxed[n_cand, s], hard_final[s],
                     relaxed[:n_cand, s].mean(axis=1), hard_candidates[:, s].mean(axis=1))
        for s, label in enumerate(labels)
    }
    overall = block(relaxed[0], hard_candidates[0], relaxed[n_cand], hard_final,
                    relaxed[:n_cand].mean(axis=(1, 2)), hard_candidates.mean(axis=(1, 2)))
    return {
        "estimator": estimator,
        "hysteresis": hysteresis,
        "smoothing_sigma": float(smoothing_sigma) if estimator == "smoothed" else None,
        "seeds": (f"the {n_sc} x {batch} rollouts of training iteration 0 (the random "
                  f"search's), N={n_regions}, T={n_steps}"),
        "temp_factor": {"start": 1.0, "final": float(final_temp)},
        "candidates": n_cand,
        "scenarios": per_scenario,
        "all": overall,
        "rollouts": {
            "relaxed": (n_cand + 1) * n_sc * batch * (2 if estimator == "smoothed" else 1),
            "hard": n_sc * batch,
            "note": ("in addition to training, random search and evaluation; the hard "
                     "objectives of the start and of the candidates are the random search's"),
        },
    }


def format_surrogate(report: Mapping[str, Any]) -> str:
    """The report as a short text block."""
    if report.get("estimator") == "smoothed":
        what = (f"the smoothed objective (hard controller, per-region perturbations sigma "
                f"{report['smoothing_sigma']:g}, antithetic pairs; what the gradient "
                "estimates)")
    else:
        what = (f"the relaxed controller ({report['hysteresis']} hysteresis, what the "
                "gradient differentiates)")
    lines = [
        f"Surrogate gap: objective J of {what} vs the hard one (deployed), mean over "
        f"{report['seeds']}.",
        f"  {'scenario':<17} {'params':<6} {'relaxed':>9} {'hard':>9} {'gap':>9} "
        f"{'|gap|/|hard|':>12}",
    ]

    def share(v):
        return f"{100 * v:11.1f}%" if v is not None else f"{'-':>12}"

    rows = dict(report["scenarios"])
    if len(rows) > 1:
        rows["all scenarios"] = report["all"]
    for label, r in rows.items():
        for which in ("start", "final"):
            g = r[which]
            lines.append(f"  {label if which == 'start' else '':<17} {which:<6} "
                         f"{g['relaxed']:9.3f} {g['hard']:9.3f} {g['gap']:9.3f} "
                         f"{share(g['gap_share'])}")
    rho = ", ".join(f"{label} {'-' if r['spearman'] is None else format(r['spearman'], '.2f')}"
                    for label, r in rows.items())
    n = report["rollouts"]
    lines.append(f"  rank agreement (Spearman, relaxed vs hard) over {report['candidates']} "
                 f"random-search candidates: {rho}")
    lines.append(f"  (extra rollouts: {n['relaxed']} relaxed, {n['hard']} hard)")
    return "\n".join(lines)
