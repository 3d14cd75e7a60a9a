"""Evolution strategies on the **hard** controller: the gradient-free peer of the
gradient tuner (``narset tune --method es``).

The strategies are [evosax](https://github.com/RobertTLange/evosax)'s (``SNES``,
``Open_ES``, ``CMA_ES``; imported only when an ES run starts). They search the same raw
space as the gradient ([`sims.tune.to_params`][]), but score every candidate with the hard
controller that is simulated and deployed, so no relaxation stands between the objective
and what is optimised.

**Budget.** Generation ``g`` scores its ``P`` candidates on the ``S x B`` rollouts of the
gradient's iteration ``g`` (the same keys, [`sims.tune.batch_keys`][]: common random
numbers within a generation, fresh seeds every generation), and a run has ``K / P``
generations for ``K`` gradient iterations, so ES uses exactly the gradient's ``K * S * B``
rollouts (``narset tune`` gives it the iterations the warm start leaves,
[`sims.tune.warm_start_split`][], a multiple of the population). The whole population of
a budget mode's scenarios is one jitted, vmapped call
([`sims.tune.population_objectives`][]) of the rollout on ``TuneConfig.ecology``: any
[`sims.Ecology`][], the neural one included (it has no relaxed step, so only ES tunes on
it).

**Result.** The distribution's mean after the last generation (as the gradient returns its
last iterate, not its best batch). Each generation's best candidate and the best so far are
recorded in the history; they were scored on different seeds, so they are not compared
across generations.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims.tune.loss import TuneConfig, budget_groups, grouped_population_objectives
from sims.tune.params_map import from_params, hard
from sims.tune.training import STREAM_TRAIN, ListRecord, TrainState, batch_keys, run_keys

__all__ = [
    "ES_DEFAULT_LEARNING_RATE",
    "ES_STRATEGIES",
    "STREAM_ES",
    "ESHistory",
    "check_es_settings",
    "es_init",
    "es_train",
    "evolve",
    "make_strategy",
    "rollout_objective",
    "start_raw",
]

ES_STRATEGIES = ("snes", "open_es", "cma_es")
"""The strategies ``[es] strategy`` accepts: evosax's ``SNES`` (separable natural ES,
the default), ``Open_ES`` (OpenAI-ES, antithetic sampling) and ``CMA_ES``."""

ES_DEFAULT_LEARNING_RATE = {"snes": 1.0, "open_es": 0.05, "cma_es": 1.0}
"""The mean's step when ``[es] learning_rate`` is not set: SNES's natural-gradient step
(plain SGD, 1 is the textbook value), OpenAI-ES's adam step in raw units, CMA-ES's
``c_mean``."""

STREAM_ES = 2
"""The key stream of the strategy's own draws (the candidates' perturbations), beside
``STREAM_TRAIN`` (the rollouts' seeds) and ``STREAM_EVAL``."""


@dataclasses.dataclass
class ESHistory(ListRecord):
    """Per-generation records (plain lists, JSON-ready).

    ``loss``: the population's mean objective (hard controller, the generation's ``S x B``
    rollouts); ``best``: the generation's best candidate; ``best_so_far``: the running
    minimum of ``best`` (over different seeds, so optimistic); ``std``: the search
    distribution's mean standard deviation, in raw units, when the generation was drawn;
    ``objective``: ``[S]`` the population's mean per training scenario; ``seconds``: wall
    time of the generation.
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    best: list[float] = dataclasses.field(default_factory=list)
    best_so_far: list[float] = dataclasses.field(default_factory=list)
    std: list[float] = dataclasses.field(default_factory=list)
    objective: list[list[float]] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)



def _float_dtype():
    """The strategy's own dtype: JAX's default float (evosax draws in it)."""
    return jnp.asarray(0.0).dtype


def start_raw(base: NarsetParams) -> dict[str, jax.Array]:
    """The raw params an ES run starts from (in the strategy's dtype, JAX's default
    float; candidates are cast to the rollouts' dtype when they are scored)."""
    return from_params(base, _float_dtype())


# Strategies by configuration: evosax jits ask and tell with the strategy object as a
# static argument, so reusing one object reuses their compiled programs.
_STRATEGIES: dict[tuple, tuple] = {}


def make_strategy(strategy: str, population: int, solution, sigma: float,
                  learning_rate: float | None = None):
    """An evosax strategy over pytrees shaped like ``solution``, and its params (one
    object per configuration and shape of ``solution``, so that its compiled ``ask`` and
    ``tell`` are reused).

    ``sigma`` is the initial standard deviation of the search distribution (raw units);
    ``learning_rate`` the mean's step (default [`sims.tune.es.ES_DEFAULT_LEARNING_RATE`][]).

    **Returns:** ``(algorithm, algorithm_params)``.
    """
    if strategy not in ES_STRATEGIES:
        raise ValueError(f"unknown ES strategy {strategy!r}; valid: {', '.join(ES_STRATEGIES)}")
    lr = ES_DEFAULT_LEARNING_RATE[strategy] if learning_rate is None else float(learning_rate)
    leaves, treedef = jax.tree.flatten(solution)
    key = (strategy, int(population), float(sigma), lr, _float_dtype().name, treedef,
           tuple((np.shape(x), jnp.result_type(x).name) for x in leaves))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _new_strategy(strategy, int(population), solution, float(sigma), lr)
    return _STRATEGIES[key]


def _new_strategy(strategy, population, solution, sigma, lr):
    import optax
    from evosax.algorithms import CMA_ES, SNES, Open_ES

    dt = _float_dtype()
    if strategy == "snes":
        algo = SNES(population_size=population, solution=solution, optimizer=optax.sgd(lr))
        params = algo.default_params.replace(std_init=jnp.asarray(sigma, dt))
    elif strategy == "open_es":
        algo = Open_ES(population_size=population, solution=solution, optimizer=optax.adam(lr),
                       std_schedule=optax.constant_schedule(sigma), use_antithetic_sampling=True)
        params = algo.default_params
    else:
        algo = CMA_ES(population_size=population, solution=solution)
        params = algo.default_params.replace(std_init=jnp.asarray(sigma, dt), c_mean=lr)
    return algo, params


def es_init(raw0: Mapping[str, Any], *, strategy: str = "snes", population: int = 8,
            sigma: float = 0.5, learning_rate: float | None = None, seed: int = 0):
    """The strategy and the state before the first generation, centred on ``raw0``.

    **Returns:** ``(algorithm, algorithm_params, state)``; ``state`` is a
    [`sims.tune.TrainState`][] whose ``raw`` is the distribution's mean, ``opt_state`` the
    strategy's state and ``iteration`` the generations done (so the tune checkpoint holds
    it as it holds adam's).
    """
    dt = _float_dtype()
    raw0 = {n: jnp.asarray(v, dt) for n, v in raw0.items()}
    algo, params = make_strategy(strategy, population, raw0, sigma, learning_rate)
    es_state = algo.init(run_keys(seed, STREAM_ES), raw0, params)
    return algo, params, TrainState(raw=algo.get_mean(es_state), opt_state=es_state, iteration=0)


def evolve(
    objective: Callable[[dict, int], Any],
    raw0: Mapping[str, Any],
    *,
    generations: int,
    population: int = 8,
    strategy: str = "snes",
    sigma: float = 0.5,
    learning_rate: float | None = None,
    seed: int = 0,
    state: TrainState | None = None,
    history: ESHistory | None = None,
    stop_after: int | None = None,
    callback: Callable[[TrainState, ESHistory], None] | None = None,
) -> tuple[TrainState, ESHistory]:
    """Minimise ``objective`` with an evolution strategy, starting from ``raw0``.

    **Arguments:**

    - ``objective(population, generation)``: ``population`` is ``name -> [P]`` raw values
      (the pytree of ``raw0`` with a leading candidate axis); returns ``[P]`` or ``[P, S]``
      objectives (lower is better; the fitness is the mean over the last axis). The tuner's
      is [`sims.tune.es.rollout_objective`][]; any function of the raw params works.
    - ``generations``: total generations; ``population``, ``strategy``, ``sigma``,
      ``learning_rate``: see [`sims.tune.es.make_strategy`][].
    - ``seed``: the perturbations' keys come from its ``STREAM_ES`` (one per generation,
      so a resumed run continues exactly).
    - ``state``, ``history``: resume from these; ``stop_after``: stop once this many
      generations are done; ``callback(state, history)`` after every generation.

    **Returns:** ``(state, history)``; ``state.raw`` is the distribution's mean.
    """
    algo, params, state0 = es_init(raw0, strategy=strategy, population=population,
                                   sigma=sigma, learning_rate=learning_rate, seed=seed)
    state = state0 if state is None else state
    history = ESHistory() if history is None else history
    es_key = run_keys(seed, STREAM_ES)
    dt = _float_dtype()
    end = generations if stop_after is None else min(generations, stop_after)
    while state.iteration < end:
        t0 = time.perf_counter()
        g = state.iteration
        k_ask, k_tell = jax.random.split(jax.random.fold_in(es_key, g))
        pop, es_state = algo.ask(k_ask, state.opt_state, params)
        values = np.asarray(objective(pop, g), np.float64).reshape(population, -1)
        fitness = values.mean(axis=1)
        std = float(jnp.mean(es_state.std))
        es_state, _ = algo.tell(k_tell, pop, jnp.asarray(fitness, dt), es_state, params)
        state = TrainState(raw=algo.get_mean(es_state), opt_state=es_state, iteration=g + 1)
        best = float(np.min(fitness))
        history.loss.append(float(np.mean(fitness)))
        history.best.append(best)
        history.best_so_far.append(min([best, *history.best_so_far[-1:]]))
        history.std.append(std)
        history.objective.append([float(v) for v in values.mean(axis=0)])
        history.seconds.append(time.perf_counter() - t0)
        if callback is not None:
            callback(state, history)
    return state, history


def rollout_objective(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    *,
    cfg: TuneConfig,
    batch: int,
    seed: int = 0,
    weights=None,
    budget: str | None = None,
) -> Callable[[dict, int], np.ndarray]:
    """The tuner's ES objective: ``(population, generation) -> [P, S]``, each candidate's
    mean **hard** objective per training scenario over the ``B`` seeds of the gradient's
    iteration ``generation`` (every scenario under its budget mode, as in training). Each
    budget mode's scenarios are one jitted, vmapped call over the candidates, scenarios and
    seeds ([`sims.tune.grouped_population_objectives`][])."""
    dtype = cfg.jdtype
    groups = budget_groups(hard(base), scenarios, budget, dtype)
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    weights = jax.tree.map(lambda w: jnp.asarray(w, dtype), weights)
    train_key = run_keys(seed, STREAM_TRAIN)
    fwd = dataclasses.replace(cfg, checkpoint=False, truncate=None)

    def objective(population, generation):
        n = int(np.shape(next(iter(population.values())))[0])
        keys = batch_keys(train_key, generation, len(scenarios), batch)
        obj = grouped_population_objectives(population, np.ones(n), groups, keys, weights, fwd)
        return obj.mean(axis=2)

    return objective


def es_train(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    *,
    iters: int,
    cfg: TuneConfig,
    batch: int = 4,
    seed: int = 0,
    weights=None,
    population: int = 8,
    strategy: str = "snes",
    sigma: float = 0.5,
    learning_rate: float | None = None,
    budget: str | None = None,
    state: TrainState | None = None,
    history: ESHistory | None = None,
    stop_after: int | None = None,
    callback: Callable[[TrainState, ESHistory], None] | None = None,
) -> tuple[TrainState, ESHistory]:
    """Tune ``base``'s [`sims.tune.TUNED`][] fields with an evolution strategy on the
    hard controller, with the gradient's rollout budget: ``iters / population``
    generations of ``population`` candidates, each scored on ``len(scenarios) * batch``
    rollouts (``iters`` must be a multiple of ``population``). The other arguments are
    [`sims.tune.train`][]'s and [`sims.tune.es.evolve`][]'s.

    **Returns:** ``(state, history)``; ``state.raw`` is the final mean.
    """
    if population <= 0 or iters % population:
        raise ValueError(f"iters ({iters}) must be a positive multiple of the population "
                         f"({population})")
    objective = rollout_objective(base, scenarios, cfg=cfg, batch=batch, seed=seed,
                                  weights=weights, budget=budget)
    return evolve(objective, start_raw(base), generations=iters // population,
                  population=population, strategy=strategy, sigma=sigma,
                  learning_rate=learning_rate, seed=seed, state=state, history=history,
                  stop_after=stop_after, callback=callback)


def check_es_settings(s: Mapping[str, Any]) -> None:
    """Raise a one-line ``UserError`` for bad ``--method es`` settings (the ``[es]``
    config table, ``--iters``). The population's memory is checked with the training's
    ([`sims.tune.settings.check_training_memory`][])."""
    if s["method"] not in ("grad", "es"):
        raise UserError(f"--method must be 'grad' or 'es', got {s['method']!r}")
    if s["method"] != "es":
        return
    strategy, pop = s["es_strategy"], s["es_population"]
    if strategy not in ES_STRATEGIES:
        raise UserError(f"[es] strategy must be one of {', '.join(ES_STRATEGIES)}, "
                        f"got {strategy!r}")
    if pop < 2 or (strategy == "open_es" and pop % 2):
        raise UserError(f"[es] population must be an{' even' if strategy == 'open_es' else ''}"
                        f" integer >= 2 for {strategy}, got {pop}")
    for key in ("es_sigma", "es_learning_rate"):
        value = s[key]
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UserError(f"[es] {key[3:]} must be > 0, got {value}")
    if not s.get("warm_start", 0) and s["iters"] % pop:
        raise UserError(
            f"--method es: --iters {s['iters']} is not a multiple of the ES population {pop} "
            "([es] population): without a warm start ES runs iters / population "
            "generations, so that it uses the gradient's iters x scenarios x batch rollouts"
        )
