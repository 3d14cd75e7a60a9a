"""Random search: the gradient-free baseline that tuning is compared against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.params import NarsetParams
from sims.tune import evaluation
from sims.tune.loss import scenario_params
from sims.tune.params_map import TUNED, from_params, hard, to_params
from sims.tune.training import STREAM_TRAIN, batch_keys, run_keys

__all__ = [
    "WARM_START",
    "SearchResult",
    "candidate_raws",
    "random_search",
    "warm_start",
    "warm_start_split",
]

WARM_START = {"grad": 0.0, "es": 0.5}
"""The default share of the rollout budget spent on the warm start's random search, per
method (``[random_search] warm_start`` or ``--warm-start`` override it). Measured in
``docs/tuning.md`` (sections 6 and 7): ES, with ``K / 8`` generations, was significantly
worse than the random search on every scenario without it and never with it; the
(smoothed) gradient does far better with all its iterations than from a warm start."""


class SearchResult(NamedTuple):
    """Result of [`sims.tune.random_search`][]: the best ``raw`` and its params,
    every candidate's mean objective, the index of the best, the rollouts used, and every
    rollout's objective ``[candidates, S, B]`` (``objectives``) and every candidate's raw
    params (``raws``, see [`sims.tune.candidate_raws`][])."""

    raw: dict
    params: NarsetParams
    scores: np.ndarray
    best: int
    rollouts: int
    objectives: np.ndarray | None = None
    raws: list | None = None

    def raw_at(self, index: int) -> dict:
        """The raw params of candidate ``index``."""
        if self.raws is None:
            raise ValueError("this SearchResult does not hold its candidates' raws")
        return self.raws[index]


def candidate_raws(base: NarsetParams, candidates: int, *, seed: int = 0,
                   sigma: float = 1.0) -> list[dict]:
    """The raw params of [`sims.tune.random_search`][]'s candidates: candidate 0 is
    ``base``, candidate ``i > 0`` is ``raw(base) + sigma * z_i`` (``z`` from the run's
    ``STREAM_TRAIN``)."""
    raw0 = from_params(base, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    names = list(TUNED)
    rng_key = jax.random.fold_in(run_keys(seed, STREAM_TRAIN), 2**31 - 1)
    z = np.array(jax.random.normal(rng_key, (candidates, len(names))), np.float64)
    z[0] = 0.0
    return [{n: raw0[n] + sigma * z[i, j] for j, n in enumerate(names)}
            for i in range(candidates)]


def random_search(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    *,
    candidates: int,
    batch: int,
    n_regions: int,
    n_steps: int,
    seed: int = 0,
    sigma: float = 1.0,
    weights=None,
    budget: str | None = None,
    dtype=jnp.float32,
    progress: Callable[[int], None] | None = None,
    controller="narset",
    ecology=None,
) -> SearchResult:
    """Gradient-free baseline: Gaussian random search in the same raw space.

    Candidate 0 is ``base``; candidate ``i > 0`` is ``raw(base) + sigma * z_i``. Every
    candidate is scored with the **hard** controller on the same ``len(scenarios) * batch``
    rollouts (the seeds of training iteration 0: common random numbers, so candidates are
    compared on equal terms), each scenario under the same budget mode as in training
    (``budget``, see [`sims.tune.scenario_params`][]), and the lowest mean objective
    wins. With ``candidates``
    equal to the gradient run's iterations, both methods use exactly the same number of
    rollouts (the gradient's rollouts also pay for a backward pass).

    **Returns:** [`sims.tune.SearchResult`][].
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates <= 0:
        raise ValueError(f"candidates must be a positive int, got {candidates!r}")
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    hard_base = hard(base)
    raws = candidate_raws(base, candidates, seed=seed, sigma=sigma)
    keys = batch_keys(run_keys(seed, STREAM_TRAIN), 0, len(scenarios), batch)
    scores = np.zeros(candidates)
    objectives = np.zeros((candidates, len(scenarios), batch))
    for i, raw in enumerate(raws):
        params = to_params(raw, hard_base)
        total = []
        for s, sc in enumerate(scenarios):
            o, _ = evaluation.rollout_objectives(scenario_params(params, sc, budget),
                                                 controller, sc, keys[s], n_regions, n_steps,
                                                 weights, dtype, ecology)
            total.append(o)
        objectives[i] = np.stack(total)
        scores[i] = float(np.mean(np.concatenate(total)))
        if progress is not None:
            progress(i)
    best = int(np.argmin(scores))
    return SearchResult(
        raw=raws[best],
        params=to_params(raws[best], hard_base),
        scores=scores,
        best=best,
        rollouts=candidates * len(scenarios) * batch,
        objectives=objectives,
        raws=raws,
    )


def warm_start_split(iters: int, share: float, population: int = 1) -> tuple[int, int]:
    """How a run of ``iters`` iterations' rollouts is split by ``share`` (``[random_search]
    warm_start``): ``(candidates, method_iters)``, the random-search candidates scored
    first and the iterations the method (gradient or ES) then runs from their best, with
    ``candidates + method_iters == iters``, so the run uses exactly the rollouts of
    ``iters`` iterations. ``method_iters`` is the largest multiple of ``population`` (ES
    generations are whole) not above ``iters * (1 - share)``, and at least one
    population; ``share = 0`` is ``(0, iters)``: the method starts from the starting
    params. A ``ValueError`` if no iteration would be left."""
    if not 0 <= share < 1:
        raise ValueError(f"warm_start must be in [0, 1), got {share}")
    if share == 0:
        return 0, iters
    method = population * int(iters * (1 - share) / population + 1e-9)
    if method < population:
        raise ValueError(
            f"warm_start {share}: --iters {iters} leaves no "
            + (f"generation of {population} candidates" if population > 1 else "iteration")
            + " after the random search; raise --iters or lower warm_start")
    return iters - method, method


def warm_start(result: SearchResult, candidates: int) -> int | None:
    """The candidate a warm-started run starts from: the best (lowest mean hard objective
    on the shared seeds) of ``result``'s first ``candidates`` candidates, which are those
    of a random search with ``candidates`` candidates (the perturbations of candidate ``i``
    do not depend on how many are drawn). ``None`` when ``candidates == 0``."""
    if candidates <= 0:
        return None
    if candidates > len(result.scores):
        raise ValueError(f"warm start from {candidates} candidates, but the random search "
                         f"scored {len(result.scores)}")
    return int(np.argmin(result.scores[:candidates]))
