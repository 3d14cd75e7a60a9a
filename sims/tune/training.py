"""Gradient training of the tuned fields: keys, optimiser, state, history and the loop.

optax adam after clipping by global norm, a fresh batch of seeds each iteration (a pure
function of the iteration number, which makes resuming exact), the gradient from the
chosen estimator ([`sims.tune.estimators`][]: the smoothed score function on the hard
controller, or a relaxed rollout's pathwise gradient) and optional temperature annealing
([`sims.tune.train`][]).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sims
from narset_jax.params import NarsetParams
from sims.tune import estimators
from sims.tune.loss import BudgetGroup, TuneConfig, budget_groups, grouped_loss_and_grad
from sims.tune.params_map import anneal_factor, from_params

__all__ = [
    "STREAM_EVAL",
    "STREAM_TRAIN",
    "History",
    "TrainState",
    "batch_keys",
    "make_optimizer",
    "run_keys",
    "train",
    "train_init",
    "train_step",
]

# ---------------------------------------------------------------------------------------
# Keys: one root seed, separate streams for training, evaluation and random search.

STREAM_TRAIN = 0
STREAM_EVAL = 1


def run_keys(seed: int, stream: int):
    """The root key of a stream (``STREAM_TRAIN`` or ``STREAM_EVAL``) of a run's seed.
    Evaluation seeds are therefore disjoint from every training seed."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def batch_keys(train_key, iteration: int, n_scenarios: int, batch: int):
    """The ``[S, B]`` keys of a training iteration: fresh seeds (and so fresh regions) for
    every iteration, a pure function of the iteration number (what makes resuming exact)."""
    k = jax.random.fold_in(train_key, iteration)
    return jax.random.split(k, n_scenarios * batch).reshape(n_scenarios, batch)


# ---------------------------------------------------------------------------------------
# Training.


def make_optimizer(learning_rate: float, clip_norm: float) -> optax.GradientTransformation:
    """Adam after clipping by global norm; a step whose gradient is not finite is skipped
    (and counted) rather than applied."""
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
    return optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate)),
        max_consecutive_errors=1_000_000,
    )


class TrainState(NamedTuple):
    """Everything an iteration needs besides the (static) setup: the raw params, the
    optimiser state and the number of iterations done. Together with the run's seed this
    determines the rest of the run exactly."""

    raw: dict
    opt_state: Any
    iteration: int


class ListRecord:
    """Mixin for a dataclass of per-iteration lists: to and from plain JSON data."""

    def to_dict(self) -> dict[str, list]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        return cls(**{f.name: list(data.get(f.name, [])) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class History(ListRecord):
    """Per-iteration records (plain lists, JSON-ready).

    ``loss``: the surrogate loss at the params before the step (for the smoothed
    estimator, the smoothed objective); ``grad_norm``: the gradient's global norm before
    clipping; ``temp_factor``; ``finite``: whether the step was applied; ``objective``:
    ``[S]`` mean objective per training scenario; ``grad_alpha``: the gradient's
    ``alpha`` coordinate (raw units); ``grad_log_pool``: the estimated ``dJ / d log(pool)``
    (smoothed estimator on per-region scenarios; ``None`` otherwise: the pool is not
    tuned); ``seconds``: wall time of the iteration (not part of the exact-resume
    guarantee).
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    temp_factor: list[float] = dataclasses.field(default_factory=list)
    finite: list[bool] = dataclasses.field(default_factory=list)
    objective: list[list[float]] = dataclasses.field(default_factory=list)
    grad_alpha: list[float] = dataclasses.field(default_factory=list)
    grad_log_pool: list[float | None] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)



def train_init(raw, optimizer: optax.GradientTransformation) -> TrainState:
    """The state before the first iteration."""
    return TrainState(raw=raw, opt_state=optimizer.init(raw), iteration=0)


def _update_fn(optimizer):
    @jax.jit
    def update(raw, opt_state, grad):
        updates, opt_state = optimizer.update(grad, opt_state, raw)
        return optax.apply_updates(raw, updates), opt_state

    return update


def train_step(
    state: TrainState,
    *,
    groups: Sequence[BudgetGroup],
    weights,
    train_key,
    batch: int,
    cfg: TuneConfig,
    update: Callable,
    temp_factor: float = 1.0,
    smoothing: tuple[float, int] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One iteration: a fresh batch, the loss and gradient, one optimiser step.

    **Arguments:** ``groups``: the training scenarios split by budget mode
    ([`sims.tune.budget_groups`][]); ``smoothing``: ``(sigma, seed)`` for the smoothed
    estimator ([`sims.tune.estimators`][]; ``groups`` then have the hard hysteresis),
    ``None`` for the pathwise gradient; the rest as in [`sims.tune.train`][].

    **Returns:** ``(new_state, record)`` with the record's ``loss``, ``grad_norm``,
    ``finite``, ``objective`` (per scenario, in the training list's order),
    ``grad_alpha`` and ``grad_log_pool``.
    """
    n_sc = sum(len(g.index) for g in groups)
    keys = batch_keys(train_key, state.iteration, n_sc, batch)
    pool_grad = None
    if smoothing is None:
        temp = jnp.asarray(temp_factor, cfg.jdtype)
        loss, obj, grad, gnorm = grouped_loss_and_grad(state.raw, groups, keys, weights,
                                                       temp, cfg)
    else:
        sigma, seed = smoothing
        nkeys = estimators.noise_keys(seed, state.iteration, n_sc, batch)
        est = estimators.grouped_smoothed_grad(state.raw, groups, keys, nkeys, weights,
                                               sigma, cfg)
        loss, obj, grad, gnorm = est["loss"], est["objective"], est["grad"], est["grad_norm"]
        pool_grad = est["grad_log_pool"]
    raw, opt_state = update(state.raw, state.opt_state, grad)
    finite = bool(jnp.isfinite(gnorm))
    record = {
        "loss": float(loss),
        "grad_norm": float(gnorm),
        "finite": finite,
        "objective": [float(v) for v in np.mean(obj, axis=1)],
        "grad_alpha": float(grad["alpha"]),
        "grad_log_pool": pool_grad,
    }
    return TrainState(raw=raw, opt_state=opt_state, iteration=state.iteration + 1), record


def train(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    *,
    iters: int,
    cfg: TuneConfig,
    batch: int = 4,
    seed: int = 0,
    weights=None,
    learning_rate: float = 0.05,
    clip_norm: float = 1.0,
    anneal: float = 1.0,
    budget: str | None = None,
    estimator: str | None = None,
    smoothing_sigma: float = estimators.SMOOTHING_SIGMA,
    state: TrainState | None = None,
    history: History | None = None,
    stop_after: int | None = None,
    callback: Callable[[TrainState, History], None] | None = None,
) -> tuple[TrainState, History]:
    """Tune ``base``'s [`sims.tune.TUNED`][] fields by gradient descent.

    **Arguments:**

    - ``base``: starting params; their hysteresis must be the estimator's
      ([`sims.tune.estimators.estimator_hysteresis`][]: ``"hard"`` for ``"smoothed"``).
    - ``scenarios``: the training [`sims.Scenario`][]s (with their metadata: each one's
      rollouts use its recommended budget mode, see
      [`sims.tune.scenario_params`][]).
    - ``iters``: total iterations; ``cfg``: [`sims.tune.TuneConfig`][].
    - ``batch``: seeds per scenario per iteration (``S * batch`` rollouts an iteration).
    - ``seed``: the run's seed (training keys come from its ``STREAM_TRAIN``).
    - ``weights``: [`sims.ObjectiveWeights`][] (default ``sims.DEFAULT_WEIGHTS``).
    - ``learning_rate``, ``clip_norm``: adam's step and the global-norm clip.
    - ``anneal``: final temperature factor (see [`sims.tune.anneal_factor`][]).
    - ``budget``: one budget mode for every scenario, or ``None`` (default) for each
      scenario's recommendation (``base.budget`` where it has none).
    - ``estimator``: one of [`sims.tune.ESTIMATORS`][]; ``None`` picks the pathwise one of
      ``base.hysteresis`` (``"soft"``, ``"straight_through"`` or ``"saturating"``).
    - ``smoothing_sigma``: the smoothed estimator's perturbation s.d. (raw units).
    - ``state``, ``history``: resume from these (from a checkpoint).
    - ``stop_after``: stop once this many iterations are done (as if interrupted).
    - ``callback``: called after every iteration with the state and history
      ([`sims.tune.run_tune`][] checkpoints and draws its progress bar here).

    **Returns:** ``(state, history)``.
    """
    if estimator is None:
        if base.hysteresis not in ("soft", "straight_through", "saturating"):
            raise ValueError("tuning needs hysteresis 'soft', 'straight_through' or "
                             f"'saturating', got {base.hysteresis!r}")
        estimator = base.hysteresis
    if base.hysteresis != estimators.estimator_hysteresis(estimator):
        raise ValueError(f"estimator {estimator!r} needs hysteresis "
                         f"{estimators.estimator_hysteresis(estimator)!r}, got "
                         f"{base.hysteresis!r}")
    smoothing = (float(smoothing_sigma), seed) if estimator == "smoothed" else None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    dtype = cfg.jdtype
    base = base.astype(dtype)
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    weights = jax.tree.map(lambda w: jnp.asarray(w, dtype), weights)
    groups = budget_groups(base, scenarios, budget, dtype)
    optimizer = make_optimizer(learning_rate, clip_norm)
    if state is None:
        state = train_init(from_params(base, dtype), optimizer)
    history = History() if history is None else history
    update = _update_fn(optimizer)
    train_key = run_keys(seed, STREAM_TRAIN)
    end = iters if stop_after is None else min(iters, stop_after)
    while state.iteration < end:
        t0 = time.perf_counter()
        temp = anneal_factor(state.iteration, iters, anneal) if smoothing is None else 1.0
        state, rec = train_step(
            state,
            groups=groups,
            weights=weights,
            train_key=train_key,
            batch=batch,
            cfg=cfg,
            update=update,
            temp_factor=temp,
            smoothing=smoothing,
        )
        history.loss.append(rec["loss"])
        history.grad_norm.append(rec["grad_norm"])
        history.finite.append(rec["finite"])
        history.objective.append(rec["objective"])
        history.grad_alpha.append(rec["grad_alpha"])
        history.grad_log_pool.append(rec["grad_log_pool"])
        history.temp_factor.append(temp)
        history.seconds.append(time.perf_counter() - t0)
        if callback is not None:
            callback(state, history)
    return state, history
