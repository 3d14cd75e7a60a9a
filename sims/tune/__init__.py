"""Gradient tuning of Narset's hyperparameters through whole simulated rollouts.

The library behind ``narset tune``, one topic per module:

- **Parameterisation** (``params_map``). The tuned fields of [`narset_jax.NarsetParams`][]
  are the image of an unconstrained pytree of raw floats under softplus and sigmoid maps,
  so every constraint holds by construction and nothing is clipped after an optimiser step
  (``theta_exit < theta_enter`` and ``tau_sedate < tau_lysis`` through positive gaps).
  See [`sims.tune.to_params`][] and [`sims.tune.from_params`][].
- **Loss** (``loss``). The mean of [`sims.objective`][] over a batch of scenarios and
  seeds, each a full rollout (``lax.scan`` over simulator plus controller) with the
  ``"soft"`` or ``"straight_through"`` hysteresis, optionally ``jax.checkpoint``-ed per
  window and optionally truncated into windows of ``truncate`` steps
  ([`sims.tune.batch_loss`][]).
- **Budget modes.** Every rollout (training, random search, evaluation) runs with its
  scenario's recommended budget mode, as ``narset simulate`` does without ``--budget``,
  unless one mode is fixed for all ([`sims.tune.scenario_params`][]). The budget
  mode is static, so a training batch is split into one vmapped group per mode and the
  groups' losses are summed ([`sims.tune.budget_groups`][]).
- **Training** (``training``). optax adam after clipping by global norm, a fresh batch of
  seeds each iteration, optional temperature annealing ([`sims.tune.train`][]).
- **Gradient estimators** (``estimators``): the default ``smoothed`` estimator (the hard
  controller under per-region Gaussian perturbations, antithetic score function, one
  sample per region) and the pathwise ones (``soft``, ``anneal``, ``straight_through``,
  ``saturating``) ([`sims.tune.smoothed_grad`][]).
- **Evolution strategies** (``es``): the gradient-free peer, evosax's strategies on the
  hard controller with the gradient's rollout budget, each generation's population in one
  vmapped call ([`sims.tune.es_train`][]); ``narset tune --method es``.
- **The surrogate gap** (``surrogate``): the relaxed against the hard objective at the
  start and at the final params, and their rank agreement over the random search's
  candidates ([`sims.tune.surrogate_report`][]).
- **Random search** (``search``) with the same number of rollouts (optionally, and by
  default for ES, its first half is also the method's warm start: the method starts from
  the best of its first candidates, [`sims.tune.warm_start_split`][]), and **evaluation**
  (``evaluation``, ``stats``) with the hard controller on held-out seeds, with
  t-intervals ([`sims.tune.random_search`][], [`sims.tune.evaluate`][]).
- **A run** (``settings``, ``checkpoint``, ``run``): the settings and their checks, the
  resumable checkpoint, and [`sims.tune.run_tune`][], which does all of the above and
  writes the outputs.

The objective, the relaxations and how to read an evaluation are in ``docs/tuning.md``.
"""

from sims.tune.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from sims.tune.es import ESHistory, es_train, evolve
from sims.tune.estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    grouped_smoothed_grad,
    region_objectives,
    smoothed_grad,
)
from sims.tune.evaluation import (
    REPORT_METRICS,
    evaluate,
    format_table,
    load_holdout,
    load_scenario,
    rollout_objectives,
)
from sims.tune.loss import (
    BudgetGroup,
    TuneConfig,
    batch_loss,
    budget_groups,
    grouped_loss_and_grad,
    grouped_population_objectives,
    loss_and_grad,
    population_objectives,
    rollout_metrics,
    scenario_params,
    stack_scenarios,
    truncated_scan,
)
from sims.tune.params_map import (
    TEMPERATURES,
    TUNED,
    anneal_factor,
    from_params,
    hard,
    to_params,
    with_temperature,
)
from sims.tune.run import TuneResult, params_toml, run_tune
from sims.tune.search import (
    SearchResult,
    candidate_raws,
    random_search,
    warm_start,
    warm_start_split,
)
from sims.tune.settings import (
    DEFAULT_CONFIG,
    DEFAULTS,
    ES_KEYS,
    RUN_KEYS,
    build_settings,
    check_settings,
    read_config,
    run_config,
)
from sims.tune.stats import t_interval, t_quantile_975, verdict
from sims.tune.surrogate import format_surrogate, spearman, surrogate_report
from sims.tune.training import (
    STREAM_EVAL,
    STREAM_TRAIN,
    History,
    TrainState,
    batch_keys,
    make_optimizer,
    run_keys,
    train,
    train_init,
    train_step,
)

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "DEFAULTS",
    "DEFAULT_CONFIG",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "ES_KEYS",
    "REPORT_METRICS",
    "RUN_KEYS",
    "STREAM_EVAL",
    "STREAM_TRAIN",
    "TEMPERATURES",
    "TUNED",
    "BudgetGroup",
    "ESHistory",
    "History",
    "SearchResult",
    "TrainState",
    "TuneConfig",
    "TuneResult",
    "anneal_factor",
    "batch_keys",
    "batch_loss",
    "budget_groups",
    "build_settings",
    "candidate_raws",
    "check_settings",
    "es_train",
    "evaluate",
    "evolve",
    "format_surrogate",
    "format_table",
    "from_params",
    "grouped_loss_and_grad",
    "grouped_population_objectives",
    "grouped_smoothed_grad",
    "hard",
    "load_checkpoint",
    "load_holdout",
    "load_scenario",
    "loss_and_grad",
    "make_optimizer",
    "params_toml",
    "population_objectives",
    "random_search",
    "read_checkpoint_meta",
    "read_config",
    "region_objectives",
    "rollout_metrics",
    "rollout_objectives",
    "run_config",
    "run_keys",
    "run_tune",
    "save_checkpoint",
    "scenario_params",
    "smoothed_grad",
    "spearman",
    "stack_scenarios",
    "surrogate_report",
    "t_interval",
    "t_quantile_975",
    "to_params",
    "train",
    "train_init",
    "train_step",
    "truncated_scan",
    "verdict",
    "warm_start",
    "warm_start_split",
    "with_temperature",
]
