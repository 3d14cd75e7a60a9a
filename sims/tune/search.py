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

__all__ = ["SearchResult", "candidate_raws", "random_search"]


class SearchResult(NamedTuple):
    """Result of [`sims.tune.random_search`][]: the best ``raw`` and its params,
    every candidate's mean objective, the index of the best, the rollouts used, and every
    rollout's objective ``[candidates, S, B]`` (``objectives``)."""

    raw: dict
    params: NarsetParams
    scores: np.ndarray
    best: int
    rollouts: int
    objectives: np.ndarray | None = None


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
    )
