"""Gradient tuning of Narset's hyperparameters through whole simulated rollouts.

The numerical core of ``narset tune``, free of I/O:

- **Parameterisation.** The tuned fields of [`narset_jax.NarsetParams`][] are the image of
  an unconstrained pytree of raw floats under softplus and sigmoid maps, so every
  constraint holds by construction and nothing is clipped after an optimiser step
  (``theta_exit < theta_enter`` and ``tau_sedate < tau_lysis`` through positive gaps).
  See [`narset_jax.tune.to_params`][] and [`narset_jax.tune.from_params`][].
- **Loss.** The mean of [`sims.objective`][] over a batch of scenarios and seeds, each a
  full rollout (``lax.scan`` over simulator plus controller) with the ``"soft"`` or
  ``"straight_through"`` hysteresis, optionally ``jax.checkpoint``-ed per window and
  optionally truncated into windows of ``truncate`` steps
  ([`narset_jax.tune.batch_loss`][]).
- **Budget modes.** Every rollout (training, random search, evaluation) runs with its
  scenario's recommended budget mode, as ``narset simulate`` does without ``--budget``,
  unless one mode is fixed for all ([`narset_jax.tune.scenario_params`][]). The budget
  mode is static, so a training batch is split into one vmapped group per mode and the
  groups' losses are summed ([`narset_jax.tune.budget_groups`][]).
- **Training.** optax adam after clipping by global norm, a fresh batch of seeds each
  iteration, optional temperature annealing ([`narset_jax.tune.train`][]).
- **Random search** with the same number of rollouts, and **evaluation** with the hard
  controller on held-out seeds, with t-intervals ([`narset_jax.tune.random_search`][],
  [`narset_jax.tune.evaluate`][]).

The objective, the relaxations and how to read an evaluation are in ``docs/tuning.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sims
from narset_jax.params import NarsetParams

__all__ = [
    "TUNED",
    "TEMPERATURES",
    "BudgetGroup",
    "TuneConfig",
    "TrainState",
    "History",
    "anneal_factor",
    "batch_keys",
    "batch_loss",
    "budget_groups",
    "evaluate",
    "from_params",
    "grouped_loss_and_grad",
    "loss_and_grad",
    "make_optimizer",
    "random_search",
    "run_keys",
    "scenario_params",
    "stack_scenarios",
    "t_interval",
    "to_params",
    "train",
    "truncated_scan",
    "train_init",
    "train_step",
    "with_temperature",
]

# ---------------------------------------------------------------------------------------
# Parameterisation.
#
# Each tuned field is (kind, parent, c); with s = sigmoid(raw) and e = _UNIT_EPS:
#   "pos":        value = c + softplus(raw)                          (value >= c)
#   "unit":       value = e + (c - e) s                              (value in [e, c])
#   "above_unit": value = parent + (1 - parent) (e + (1 - e) s)      (parent < value <= 1)
#   "above":      value = parent + c + softplus(raw)                 (value > parent)
# Parents come before their children in TUNED. The floors c and e keep every open end open
# in float32, where a sigmoid saturates to exactly 0 or 1 and a softplus underflows to 0;
# theta_exit stays <= 0.99 so that theta_enter can always sit strictly above it.

_FLOOR = 1e-4
_UNIT_EPS = 1e-4

_KINDS: dict[str, tuple[str, str | None, float]] = {
    "alpha": ("pos", None, _FLOOR),
    "beta": ("unit", None, 1.0),
    "theta_exit": ("unit", None, 0.99),
    "theta_enter": ("above_unit", "theta_exit", 0.0),
    "k_enter": ("pos", None, 1.0),
    "k_exit": ("pos", None, 1.0),
    "temp_dwell": ("pos", None, _FLOOR),
    "rate_loss": ("unit", None, 1.0),
    "rate_trend": ("unit", None, 1.0),
    "rate_rollbacks": ("unit", None, 1.0),
    "rate_anomalies": ("unit", None, 1.0),
    "rate_nonfinite": ("unit", None, 1.0),
    "rate_lstm_health": ("unit", None, 1.0),
    "rate_growth_ratio": ("unit", None, 1.0),
    "rate_churn": ("unit", None, 1.0),
    "rate_alpha_shock": ("unit", None, 1.0),
    "rate_active_seeds": ("unit", None, 1.0),
    "rate_fossilised_seeds": ("unit", None, 1.0),
    "gain_T_repair": ("pos", None, 0.0),
    "gain_T_crisis": ("pos", None, 0.0),
    "gain_E_repair": ("pos", None, 0.0),
    "gain_T_consol": ("pos", None, 0.0),
    "gain_T_progress": ("pos", None, 0.0),
    "gain_T_efficiency": ("pos", None, 0.0),
    "gain_E_consol": ("pos", None, 0.0),
    "gain_E_efficiency": ("pos", None, 0.0),
    "tau_sedate": ("pos", None, 0.0),
    "tau_lysis": ("above", "tau_sedate", _FLOOR),
    "tau_germinate": ("pos", None, 0.0),
    "tau_fossilise": ("above", "tau_germinate", _FLOOR),
}

TUNED: tuple[str, ...] = tuple(_KINDS)
"""The tuned fields of ``NarsetParams``, in the order they are rebuilt: ``alpha``,
``beta``; the thresholds ``theta_exit``, ``theta_enter``; the dwell ``k_enter``,
``k_exit`` and its softness ``temp_dwell``; the eleven EWMA rates; the eight policy gains;
the authority thresholds ``tau_*``. Everything else (``pool``, score scales, the limits)
stays at the base params' values."""

TEMPERATURES = ("temp_need", "temp_dwell", "temp_plateau")
"""The controller's relaxation temperatures, multiplied by the annealing factor."""


def _softplus_inv(y):
    y = np.maximum(np.asarray(y, np.float64), 1e-12)
    return y + np.log(-np.expm1(-y))


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def to_params(raw: Mapping[str, Any], base: NarsetParams) -> NarsetParams:
    """Map raw (unconstrained) values to params: ``base`` with the tuned fields replaced.

    **Arguments:**

    - ``raw``: ``name -> scalar`` for every name in [`narset_jax.tune.TUNED`][] (a dict
      pytree; values may be traced).
    - ``base``: the [`narset_jax.NarsetParams`][] that supplies every other field and the
      static choices.

    **Returns:** ``NarsetParams``. Concrete values are validated as usual; by construction
    they always pass.
    """
    missing = [n for n in TUNED if n not in raw]
    if missing:
        raise ValueError(f"raw params lack {', '.join(missing)}")
    out: dict[str, Any] = {}
    for name, (kind, parent, c) in _KINDS.items():
        r = jnp.asarray(raw[name])
        if kind == "pos":
            v = c + jax.nn.softplus(r)
        elif kind == "unit":
            v = _UNIT_EPS + (c - _UNIT_EPS) * jax.nn.sigmoid(r)
        elif kind == "above_unit":
            gap = _UNIT_EPS + (1 - _UNIT_EPS) * jax.nn.sigmoid(r)
            v = out[parent] + (1 - out[parent]) * gap
        else:  # "above"
            v = out[parent] + c + jax.nn.softplus(r)
        out[name] = v
    return dataclasses.replace(base, **out)


def from_params(params: NarsetParams, dtype=None) -> dict[str, jax.Array]:
    """The raw values that [`narset_jax.tune.to_params`][] maps back to ``params``' tuned
    fields (to float rounding; a value within ``1e-4`` of the end of a unit range, such as
    ``beta = 1``, maps to the nearest reachable value).

    **Arguments:**

    - ``params``: concrete [`narset_jax.NarsetParams`][] (scalar leaves).
    - ``dtype``: the raw arrays' dtype (default: ``params.alpha``'s).

    **Returns:** ``name -> scalar array`` for every name in [`narset_jax.tune.TUNED`][].
    """
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.asarray(params.alpha).dtype
    vals = {n: np.asarray(getattr(params, n), np.float64) for n in TUNED}
    for n, v in vals.items():
        if v.ndim != 0:
            raise ValueError(f"from_params needs scalar params, got {n} with shape {v.shape}")
    raw: dict[str, jax.Array] = {}
    for name, (kind, parent, c) in _KINDS.items():
        v = vals[name]
        if kind == "pos":
            r = _softplus_inv(v - c)
        elif kind == "unit":
            r = _logit((v - _UNIT_EPS) / (c - _UNIT_EPS))
        elif kind == "above_unit":
            p = vals[parent]
            r = _logit(((v - p) / (1 - p) - _UNIT_EPS) / (1 - _UNIT_EPS))
        else:
            r = _softplus_inv(v - vals[parent] - c)
        raw[name] = jnp.asarray(r, dtype)
    return raw


def with_temperature(params: NarsetParams, factor) -> NarsetParams:
    """``params`` with every relaxation temperature ([`narset_jax.tune.TEMPERATURES`][])
    multiplied by ``factor`` (traced or concrete, ``> 0``)."""
    return dataclasses.replace(params, **{n: getattr(params, n) * factor for n in TEMPERATURES})


def anneal_factor(iteration: int, iters: int, final: float) -> float:
    """Geometric annealing of the temperatures: 1 at the first iteration, ``final`` at the
    last (``final = 1`` switches annealing off)."""
    if iters <= 1 or final == 1.0:
        return 1.0
    return float(final ** (iteration / (iters - 1)))


# ---------------------------------------------------------------------------------------
# The loss.


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Static configuration of the loss (hashable: it selects the compiled program).

    **Fields:**

    - ``n_regions``, ``n_steps``: ``N`` regions, ``T`` windows per rollout.
    - ``truncate``: ``None`` for full backpropagation through time, or a window length
      ``W < T``: gradients flow within each window of ``W`` steps only (the forward pass is
      unchanged; see ``docs/tuning.md``).
    - ``checkpoint``: wrap each simulated window in ``jax.checkpoint`` (rematerialise in the
      backward pass), so memory does not grow with ``T`` times the step's residuals.
    - ``dtype``: ``"float32"`` or ``"float64"``.
    """

    n_regions: int
    n_steps: int
    truncate: int | None = None
    checkpoint: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("n_regions", "n_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        t = self.truncate
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
            raise ValueError(f"truncate must be a positive int or None, got {t!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype).type


def stack_scenarios(scenarios: Sequence[sims.Scenario]) -> sims.Scenario:
    """Stack scenarios along a new leading axis (metadata dropped), for ``vmap``."""
    scenarios = [s.without_metadata() for s in scenarios]
    if not scenarios:
        raise ValueError("need at least one scenario")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *scenarios)


def scenario_params(
    params: NarsetParams, scenario: sims.Scenario, budget: str | None = None
) -> NarsetParams:
    """The params a rollout of ``scenario`` runs with: ``params`` with ``budget`` if one is
    given, else with the scenario's recommended budget mode
    (``scenario.recommended_params(params)``), else unchanged.

    This is ``narset simulate``'s rule without ``--budget``: a params file that sets
    ``budget`` fixes it (the CLI passes it as ``budget``); otherwise the scenario decides
    (``spoofing`` recommends the global pool), and a scenario without a recommendation
    keeps ``params.budget``. Training, random search and evaluation all use it, so every
    controller is trained and judged on a scenario under the same budget mode.
    """
    if budget is not None:
        return params.replace(budget=budget)
    return scenario.recommended_params(params)


class BudgetGroup(NamedTuple):
    """The training scenarios that share a budget mode (static, so it selects the compiled
    program): ``params`` (the base params with that mode), ``scenarios`` (stacked to
    ``[S_g]``, metadata dropped) and ``index`` (their positions in the training list)."""

    params: NarsetParams
    scenarios: sims.Scenario
    index: tuple[int, ...]


def budget_groups(
    base: NarsetParams,
    scenarios: Sequence[sims.Scenario],
    budget: str | None = None,
    dtype=None,
) -> list[BudgetGroup]:
    """Split training scenarios into groups of one budget mode each (see
    [`narset_jax.tune.scenario_params`][]), in order of first appearance. Rollouts of
    different modes are different programs and cannot share one ``vmap``; the training
    loss runs one ``vmap`` per group and sums them ([`narset_jax.tune.grouped_loss_and_grad`][]).

    **Arguments:** ``base``: the starting params; ``scenarios``: with their metadata (the
    recommendation is metadata); ``budget``: a mode for every scenario, or ``None``;
    ``dtype``: cast params and scenarios to it (default: leave them).
    """
    if not scenarios:
        raise ValueError("need at least one scenario")
    modes: dict[str, list[int]] = {}
    for i, sc in enumerate(scenarios):
        modes.setdefault(scenario_params(base, sc, budget).budget, []).append(i)
    groups = []
    for mode, index in modes.items():
        params = base.replace(budget=mode)
        stacked = stack_scenarios([scenarios[i] for i in index])
        if dtype is not None:
            params, stacked = params.astype(dtype), stacked.astype(dtype)
        groups.append(BudgetGroup(params=params, scenarios=stacked, index=tuple(index)))
    return groups


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def truncated_scan(chunk: Callable, carry, n_steps: int, window: int):
    """Run ``n_steps`` steps as chunks of ``window`` with gradients truncated at chunk
    starts (truncated backpropagation through time).

    Each chunk starts from ``stop_gradient`` of the carry. The float leaves of the carry
    returned after a chunk are ``end + (prev - stop_gradient(prev))``: the forward value
    is exactly ``end``, and the gradient accumulates every chunk's local derivative, so
    quantities that are sums over steps (and the final state, by telescoping) get the
    truncated-BPTT gradient instead of only the last chunk's. Integer, boolean and key
    leaves pass through. Parameters must be closed over by ``chunk``, not carried: every
    carried leaf is stopped at chunk starts.

    **Arguments:**

    - ``chunk``: ``(carry, n) -> carry``, advancing ``n`` (a Python int) steps.
    - ``carry``: the initial carry (a pytree).
    - ``n_steps``: total steps; ``window``: steps per chunk (the last chunk may be shorter).

    **Returns:** the final carry.
    """

    def one(c, n):
        end = chunk(jax.lax.stop_gradient(c), n)
        return jax.tree.map(
            lambda e, p: e + (p - jax.lax.stop_gradient(p)) if _is_float(e) else e, end, c
        )

    n_full, rest = divmod(n_steps, window)
    if n_full:
        carry, _ = jax.lax.scan(lambda c, _: (one(c, window), None), carry, None, length=n_full)
    if rest:
        carry = one(carry, rest)
    return carry


def rollout_metrics(params: NarsetParams, scenario, key, cfg: TuneConfig) -> sims.Metrics:
    """The [`sims.Metrics`][] of one rollout of the Narset controller (differentiable when
    ``params.hysteresis`` is relaxed). The forward values equal ``sims.rollout``'s."""
    carry = sims.rollout_init(params, scenario, key, cfg.n_regions, dtype=cfg.jdtype)
    if cfg.truncate is None or cfg.truncate >= cfg.n_steps:
        carry, _ = sims.rollout_chunk(
            params, scenario, carry, cfg.n_steps, checkpoint=cfg.checkpoint
        )
    else:
        chunk = lambda c, n: sims.rollout_chunk(  # noqa: E731
            params, scenario, c, n, checkpoint=cfg.checkpoint
        )[0]
        carry = truncated_scan(chunk, carry, cfg.n_steps, cfg.truncate)
    return sims.rollout_metrics(params, scenario, carry)


def batch_loss(raw, base, scenarios, keys, weights, temp_factor, cfg: TuneConfig):
    """The tuning loss: the mean objective over a batch of scenarios and seeds.

    **Arguments:**

    - ``raw``: raw params (see [`narset_jax.tune.to_params`][]).
    - ``base``: [`narset_jax.NarsetParams`][] with the relaxed hysteresis (``"soft"`` or
      ``"straight_through"``).
    - ``scenarios``: [`sims.Scenario`][] stacked to ``[S]`` (see
      [`narset_jax.tune.stack_scenarios`][]).
    - ``keys``: ``[S, B]`` PRNG keys, one rollout each.
    - ``weights``: [`sims.ObjectiveWeights`][].
    - ``temp_factor``: scalar factor on the relaxation temperatures.
    - ``cfg``: [`narset_jax.tune.TuneConfig`][] (static).

    **Returns:** ``(loss, objective [S, B])``.
    """
    params = with_temperature(to_params(raw, base), temp_factor)
    one = lambda sc, k: rollout_metrics(params, sc, k, cfg)  # noqa: E731
    metrics = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, 0))(scenarios, keys)
    obj = sims.objective(metrics, weights)
    return jnp.mean(obj), obj


@partial(jax.jit, static_argnames=("cfg",))
def loss_and_grad(raw, base, scenarios, keys, weights, temp_factor, cfg: TuneConfig):
    """Jitted ``(loss, objective [S, B], grad, grad_norm)`` of
    [`narset_jax.tune.batch_loss`][] with respect to ``raw``. ``grad_norm`` is the global
    norm before clipping."""
    (loss, obj), grad = jax.value_and_grad(batch_loss, has_aux=True)(
        raw, base, scenarios, keys, weights, temp_factor, cfg
    )
    return loss, obj, grad, optax.tree.norm(grad)


@jax.jit
def _combine(weights, losses, grads):
    """``sum_g w_g loss_g``, ``sum_g w_g grad_g`` and the sum's global norm."""
    loss = sum(w * v for w, v in zip(weights, losses))
    grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(weights, gs)), *grads)
    return loss, grad, optax.tree.norm(grad)


def grouped_loss_and_grad(raw, groups: Sequence[BudgetGroup], keys, weights, temp_factor,
                          cfg: TuneConfig):
    """[`narset_jax.tune.loss_and_grad`][] over training scenarios of several budget modes.

    Each [`narset_jax.tune.BudgetGroup`][] is one ``vmap``-ed call on its own scenarios'
    rows of ``keys`` (``[S, B]``, in the training list's order); the losses (and gradients)
    are summed with weights ``S_g / S``, so the loss is the mean objective over all
    ``S * B`` rollouts, as with a single group. With one group this is exactly
    ``loss_and_grad``.

    **Returns:** ``(loss, objective [S, B] (NumPy, training order), grad, grad_norm)``.
    """
    n_sc = keys.shape[0]
    parts = [
        loss_and_grad(raw, g.params, g.scenarios, keys[np.asarray(g.index)], weights,
                      temp_factor, cfg=cfg)
        for g in groups
    ]
    obj = np.empty(keys.shape, np.float64)
    for g, part in zip(groups, parts):
        obj[np.asarray(g.index)] = np.asarray(part[1])
    if len(parts) == 1:
        loss, _, grad, gnorm = parts[0]
        return loss, obj, grad, gnorm
    w = tuple(jnp.asarray(len(g.index) / n_sc, cfg.jdtype) for g in groups)
    loss, grad, gnorm = _combine(w, tuple(p[0] for p in parts), tuple(p[2] for p in parts))
    return loss, obj, grad, gnorm


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


@dataclasses.dataclass
class History:
    """Per-iteration records (plain lists, JSON-ready).

    ``loss``: the surrogate loss at the params before the step; ``grad_norm``: the
    gradient's global norm before clipping; ``temp_factor``; ``finite``: whether the step
    was applied; ``objective``: ``[S]`` mean objective per training scenario; ``seconds``:
    wall time of the iteration (not part of the exact-resume guarantee).
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    temp_factor: list[float] = dataclasses.field(default_factory=list)
    finite: list[bool] = dataclasses.field(default_factory=list)
    objective: list[list[float]] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls(**{f.name: list(data.get(f.name, [])) for f in dataclasses.fields(cls)})


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
) -> tuple[TrainState, dict[str, Any]]:
    """One iteration: a fresh batch, the loss and gradient, one optimiser step.

    **Arguments:** ``groups``: the training scenarios split by budget mode
    ([`narset_jax.tune.budget_groups`][]); the rest as in [`narset_jax.tune.train`][].

    **Returns:** ``(new_state, record)`` with the record's ``loss``, ``grad_norm``,
    ``finite`` and ``objective`` (per scenario, in the training list's order).
    """
    n_sc = sum(len(g.index) for g in groups)
    keys = batch_keys(train_key, state.iteration, n_sc, batch)
    temp = jnp.asarray(temp_factor, cfg.jdtype)
    loss, obj, grad, gnorm = grouped_loss_and_grad(state.raw, groups, keys, weights, temp, cfg)
    raw, opt_state = update(state.raw, state.opt_state, grad)
    finite = bool(jnp.isfinite(gnorm))
    record = {
        "loss": float(loss),
        "grad_norm": float(gnorm),
        "finite": finite,
        "objective": [float(v) for v in np.mean(obj, axis=1)],
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
    state: TrainState | None = None,
    history: History | None = None,
    stop_after: int | None = None,
    callback: Callable[[TrainState, History], None] | None = None,
) -> tuple[TrainState, History]:
    """Tune ``base``'s [`narset_jax.tune.TUNED`][] fields by gradient descent.

    **Arguments:**

    - ``base``: starting params; their hysteresis must be ``"soft"`` or
      ``"straight_through"``.
    - ``scenarios``: the training [`sims.Scenario`][]s (with their metadata: each one's
      rollouts use its recommended budget mode, see
      [`narset_jax.tune.scenario_params`][]).
    - ``iters``: total iterations; ``cfg``: [`narset_jax.tune.TuneConfig`][].
    - ``batch``: seeds per scenario per iteration (``S * batch`` rollouts an iteration).
    - ``seed``: the run's seed (training keys come from its ``STREAM_TRAIN``).
    - ``weights``: [`sims.ObjectiveWeights`][] (default ``sims.DEFAULT_WEIGHTS``).
    - ``learning_rate``, ``clip_norm``: adam's step and the global-norm clip.
    - ``anneal``: final temperature factor (see [`narset_jax.tune.anneal_factor`][]).
    - ``budget``: one budget mode for every scenario, or ``None`` (default) for each
      scenario's recommendation (``base.budget`` where it has none).
    - ``state``, ``history``: resume from these (from a checkpoint).
    - ``stop_after``: stop once this many iterations are done (as if interrupted).
    - ``callback``: called after every iteration with the state and history (the CLI
      checkpoints and draws its progress bar here).

    **Returns:** ``(state, history)``.
    """
    if base.hysteresis not in ("soft", "straight_through"):
        raise ValueError(
            f"tuning needs hysteresis 'soft' or 'straight_through', got {base.hysteresis!r}"
        )
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
        temp = anneal_factor(state.iteration, iters, anneal)
        state, rec = train_step(
            state,
            groups=groups,
            weights=weights,
            train_key=train_key,
            batch=batch,
            cfg=cfg,
            update=update,
            temp_factor=temp,
        )
        history.loss.append(rec["loss"])
        history.grad_norm.append(rec["grad_norm"])
        history.finite.append(rec["finite"])
        history.objective.append(rec["objective"])
        history.temp_factor.append(temp)
        history.seconds.append(time.perf_counter() - t0)
        if callback is not None:
            callback(state, history)
    return state, history


# ---------------------------------------------------------------------------------------
# Hard evaluation, random search, statistics.


def hard(params: NarsetParams) -> NarsetParams:
    """``params`` with the hard hysteresis (what is simulated and deployed)."""
    return params.replace(hysteresis="hard")


def _objectives(params, controller, scenario, keys, n_regions, n_steps, weights, dtype):
    """Objective and metrics of one controller over seeds, one ``sims.rollout`` per seed
    (so every call shares ``sims.rollout``'s compiled program for that controller)."""
    params = params.astype(dtype)
    scenario = scenario.astype(dtype)
    objs, mets = [], []
    for k in keys:
        m = sims.rollout(
            params, scenario, k, n_regions, n_steps, controller=controller, dtype=dtype
        ).metrics
        objs.append(float(sims.objective(m, weights)))
        mets.append(m.to_dict())
    return np.asarray(objs), mets


class SearchResult(NamedTuple):
    """Result of [`narset_jax.tune.random_search`][]: the best ``raw`` and its params,
    every candidate's mean objective, the index of the best, and the rollouts used."""

    raw: dict
    params: NarsetParams
    scores: np.ndarray
    best: int
    rollouts: int


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
) -> SearchResult:
    """Gradient-free baseline: Gaussian random search in the same raw space.

    Candidate 0 is ``base``; candidate ``i > 0`` is ``raw(base) + sigma * z_i``. Every
    candidate is scored with the **hard** controller on the same ``len(scenarios) * batch``
    rollouts (the seeds of training iteration 0: common random numbers, so candidates are
    compared on equal terms), each scenario under the same budget mode as in training
    (``budget``, see [`narset_jax.tune.scenario_params`][]), and the lowest mean objective
    wins. With ``candidates``
    equal to the gradient run's iterations, both methods use exactly the same number of
    rollouts (the gradient's rollouts also pay for a backward pass).

    **Returns:** [`narset_jax.tune.SearchResult`][].
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates <= 0:
        raise ValueError(f"candidates must be a positive int, got {candidates!r}")
    weights = sims.DEFAULT_WEIGHTS if weights is None else weights
    hard_base = hard(base)
    raw0 = from_params(base, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    names = list(TUNED)
    rng_key = jax.random.fold_in(run_keys(seed, STREAM_TRAIN), 2**31 - 1)
    z = np.array(jax.random.normal(rng_key, (candidates, len(names))), np.float64)
    z[0] = 0.0
    keys = batch_keys(run_keys(seed, STREAM_TRAIN), 0, len(scenarios), batch)
    scores = np.zeros(candidates)
    raws = []
    for i in range(candidates):
        raw = {n: raw0[n] + sigma * z[i, j] for j, n in enumerate(names)}
        raws.append(raw)
        params = to_params(raw, hard_base)
        total = []
        for s, sc in enumerate(scenarios):
            o, _ = _objectives(scenario_params(params, sc, budget), "narset", sc, keys[s],
                               n_regions, n_steps, weights, dtype)
            total.append(o)
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
    )


# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile (table to 30 degrees of freedom, then the Cornish-Fisher
    expansion, accurate to 1e-4)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def t_interval(values) -> dict[str, float]:
    """Mean and 95% t-interval of independent samples:
    ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` with the sample standard deviation.

    **Returns:** ``{"mean", "lo", "hi", "sd", "n"}`` (``lo = hi = mean`` when ``n = 1``).
    """
    v = np.asarray(values, np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(np.mean(v))
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sd": 0.0, "n": 1}
    sd = float(np.std(v, ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


REPORT_METRICS = (
    "progress",
    "flap_rate",
    "budget_churn",
    "overdrive_fraction",
    "unsafe_lysis",
    "rollbacks",
    "spoofer_capture",
)


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
) -> dict[str, Any]:
    """Evaluate controllers with the **hard** hysteresis on held-out seeds.

    **Arguments:**

    - ``candidates``: ``label -> (params, controller)``; ``controller`` is one of
      [`sims.CONTROLLERS`][]. Params are switched to ``hysteresis="hard"``.
    - ``scenarios``: ``name -> Scenario`` (with metadata: every candidate, baselines
      included, runs a scenario under its recommended budget mode).
    - ``budget``: one budget mode for every scenario instead, or ``None`` (see
      [`narset_jax.tune.scenario_params`][]).
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
            obj, mets = _objectives(
                params, controller, sc, keys, n_regions, n_steps, weights, dtype
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
