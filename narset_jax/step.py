"""One decision window over many regions: the stages composed, and the jitted step.

    sanitise -> smooth -> scores -> mode (hysteresis) -> policy targets -> inertia
             -> projection -> authority -> decision record

[`narset_jax.step.narset_step`][] is the pure function (params, state, telemetry) ->
(state, decision); simulators call it inside ``lax.scan`` and ``vmap`` it over params.
[`narset_jax.Narset`][] wraps it with a cached ``jax.jit``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from narset_jax.authority import authority
from narset_jax.budget_mode import project_budget_mode
from narset_jax.cost import overdrive_cost
from narset_jax.hysteresis import HysteresisState, init_hysteresis, update_mode
from narset_jax.params import NarsetParams
from narset_jax.policy import inertia, targets
from narset_jax.signals import SignalState, init_signals, scores, smooth
from narset_jax.telemetry import TELEMETRY_FIELDS, Telemetry, sanitise

__all__ = [
    "DECISION_COLUMNS",
    "Decision",
    "Narset",
    "NarsetState",
    "init_state",
    "narset_rollout",
    "narset_rollout_jit",
    "narset_step",
    "narset_step_jit",
]

_SMOOTHED = (
    "ewma_loss",
    "trend",
    "plateau",
    "ewma_rollbacks",
    "ewma_anomalies",
    "ewma_nonfinite",
    "ewma_lstm_health",
    "ewma_growth_ratio",
    "ewma_churn",
    "ewma_alpha_shock",
    "ewma_active_seeds",
    "ewma_fossilised_seeds",
)


class NarsetState(eqx.Module):
    """Per-region controller state: a pytree of ``[N]`` arrays and nothing else.

    **Fields:**

    - ``region``: region ids (``int32``), carried so that shards and subsets keep their ids.
    - ``step``: windows processed so far (``int32``).
    - ``staleness``: consecutive missing windows (``int32``; 0 after a valid one).
    - ``signals``: [`narset_jax.signals.SignalState`][] (EWMAs, persistence memory, trend,
      plateau).
    - ``hysteresis``: [`narset_jax.hysteresis.HysteresisState`][] (mode and counters).
    - ``target_T``, ``target_E``: the targets after inertia (what the budget projects).
    """

    region: jax.Array
    step: jax.Array
    staleness: jax.Array
    signals: SignalState
    hysteresis: HysteresisState
    target_T: jax.Array
    target_E: jax.Array

    @property
    def dtype(self):
        """The float dtype of the state."""
        return self.target_T.dtype

    @property
    def n_regions(self) -> int:
        """Number of regions ``N``."""
        return self.target_T.shape[-1]


def init_state(n_regions: int, dtype=jnp.float32, *, region_ids=None) -> NarsetState:
    """A fresh state: every region in consolidation, nothing seen yet.

    **Arguments:**

    - ``n_regions``: ``N > 0``.
    - ``dtype``: ``jnp.float32`` or ``jnp.float64``.
    - ``region_ids``: optional ``[N]`` integer ids (default ``0 .. N-1``).

    **Returns:** a [`narset_jax.NarsetState`][].
    """
    if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions <= 0:
        raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if region_ids is None:
        region = jnp.arange(n_regions, dtype=jnp.int32)
    else:
        region = jnp.asarray(region_ids).astype(jnp.int32)
        if region.shape != (n_regions,):
            raise ValueError(f"region_ids must have shape ({n_regions},), got {region.shape}")
    zi = jnp.zeros((n_regions,), jnp.int32)
    zf = jnp.zeros((n_regions,), dtype)
    return NarsetState(
        region=region,
        step=zi,
        staleness=zi,
        signals=init_signals(n_regions, dtype),
        hysteresis=init_hysteresis(n_regions, dtype),
        target_T=zf,
        target_E=zf,
    )


class Decision(eqx.Module):
    """The decision record of one window: one row per region (every field ``[N]``).

    **Allocation:** ``region``, ``step`` (``int32``); ``x_T``, ``x_E``; ``cost_T``,
    ``cost_E`` (``c(x)``); ``spent``; ``overdrive_T``, ``overdrive_E`` (``x > 1``);
    ``price`` (the budget's shadow price; for the global pool the shared scalar, repeated).

    **Mode and authority:** ``mode`` (``int32``: 0 consolidation, 1 repair); ``mode_weight``
    (the hysteresis state, a weight in [0, 1] for the soft variant); ``tier_T``, ``tier_E``
    (``int32``: 0 probe, 1 sedation / germination, 2 lysis and compaction / fossilisation);
    the limits ``max_ops_T``, ``max_ops_E`` (``int32``), ``action_freq_T``, ``action_freq_E``,
    ``cost_mult_T``, ``cost_mult_E``.

    **Why:** the scores ``progress``, ``stability``, ``efficiency`` and ``need``; the
    targets after inertia ``target_T``, ``target_E``; the smoothed inputs (``ewma_<field>``,
    ``trend``, ``plateau``); the dwell counters ``enter_count``, ``exit_count``;
    ``staleness`` and ``n_nonfinite`` (``int32``).

    **Replay:** ``raw``, the telemetry as given (cast to the state dtype), so that a log
    can be fed back through the controller bit for bit.

    Use [`narset_jax.Decision.columns`][] for a flat table.
    """

    region: jax.Array
    step: jax.Array
    x_T: jax.Array
    x_E: jax.Array
    cost_T: jax.Array
    cost_E: jax.Array
    spent: jax.Array
    overdrive_T: jax.Array
    overdrive_E: jax.Array
    mode: jax.Array
    tier_T: jax.Array
    tier_E: jax.Array
    price: jax.Array
    progress: jax.Array
    stability: jax.Array
    efficiency: jax.Array
    need: jax.Array
    mode_weight: jax.Array
    target_T: jax.Array
    target_E: jax.Array
    max_ops_T: jax.Array
    max_ops_E: jax.Array
    action_freq_T: jax.Array
    action_freq_E: jax.Array
    cost_mult_T: jax.Array
    cost_mult_E: jax.Array
    staleness: jax.Array
    n_nonfinite: jax.Array
    ewma_loss: jax.Array
    trend: jax.Array
    plateau: jax.Array
    ewma_rollbacks: jax.Array
    ewma_anomalies: jax.Array
    ewma_nonfinite: jax.Array
    ewma_lstm_health: jax.Array
    ewma_growth_ratio: jax.Array
    ewma_churn: jax.Array
    ewma_alpha_shock: jax.Array
    ewma_active_seeds: jax.Array
    ewma_fossilised_seeds: jax.Array
    enter_count: jax.Array
    exit_count: jax.Array
    raw: Telemetry

    @staticmethod
    def column_names() -> tuple[str, ...]:
        """Flat column names: the decision fields, then the raw inputs under their
        [`narset_jax.Telemetry`][] names."""
        return DECISION_COLUMNS

    def columns(self) -> dict[str, Any]:
        """Flat ``name -> array`` table (each ``[N]``, or ``[T, N]`` for a rollout)."""
        out = {name: getattr(self, name) for name in _DECISION_FIELDS}
        for name in TELEMETRY_FIELDS:
            out[name] = getattr(self.raw, name)
        return out


_DECISION_FIELDS = tuple(f for f in Decision.__dataclass_fields__ if f != "raw")
DECISION_COLUMNS = _DECISION_FIELDS + TELEMETRY_FIELDS


def _project(params: NarsetParams, t_T, t_E):
    """The budget stage: returns ``(x_T, x_E, spent, price)``, price per region
    ([`narset_jax.budget_mode.project_budget_mode`][])."""
    return project_budget_mode(params, t_T, t_E)


def narset_step(
    params: NarsetParams, state: NarsetState, telemetry: Telemetry
) -> tuple[NarsetState, Decision]:
    """One decision window for all regions. Pure; jit, vmap and scan it freely.

    **Arguments:**

    - ``params``: [`narset_jax.NarsetParams`][]. Its leaves are cast to the state dtype, so
      float32 state gives float32 decisions.
    - ``state``: [`narset_jax.NarsetState`][] of ``[N]`` arrays.
    - ``telemetry``: [`narset_jax.Telemetry`][] of ``[N]`` arrays (any float dtype; NaN and
      Inf are sanitised).

    **Returns:** ``(new_state, decision)``; see [`narset_jax.Decision`][].
    """
    dtype = state.target_T.dtype
    variant = params.hysteresis
    p = params.astype(dtype)
    # Sanitise, smooth, score.
    clean = sanitise(telemetry, dtype)
    valid = clean.valid
    sig = smooth(p, state.signals, clean, variant)
    sc = scores(p, sig)
    # Mode, targets, inertia.
    hyst = update_mode(p, state.hysteresis, sc.need, valid, variant)
    t_T, t_E = targets(p, hyst.mode, sc)
    tgt_T, tgt_E = inertia(p.beta, state.target_T, state.target_E, t_T, t_E, valid)
    # Budget, authority.
    x_T, x_E, spent, price = _project(p, tgt_T, tgt_E)
    auth = authority(p, x_T, x_E, clean.boundary)
    staleness = jnp.where(valid, 0, state.staleness + 1)
    new_state = NarsetState(
        region=state.region,
        step=state.step + 1,
        staleness=staleness,
        signals=sig,
        hysteresis=hyst,
        target_T=tgt_T,
        target_E=tgt_E,
    )
    decision = Decision(
        region=state.region,
        step=state.step,
        x_T=x_T,
        x_E=x_E,
        cost_T=overdrive_cost(x_T, p.alpha, p.cost),
        cost_E=overdrive_cost(x_E, p.alpha, p.cost),
        spent=spent,
        overdrive_T=x_T > 1,
        overdrive_E=x_E > 1,
        mode=(hyst.mode >= 0.5).astype(jnp.int32),
        tier_T=auth.tier_T,
        tier_E=auth.tier_E,
        price=price,
        progress=sc.progress,
        stability=sc.stability,
        efficiency=sc.efficiency,
        need=sc.need,
        mode_weight=hyst.mode,
        target_T=tgt_T,
        target_E=tgt_E,
        max_ops_T=auth.max_ops_T,
        max_ops_E=auth.max_ops_E,
        action_freq_T=auth.action_freq_T,
        action_freq_E=auth.action_freq_E,
        cost_mult_T=auth.cost_mult_T,
        cost_mult_E=auth.cost_mult_E,
        staleness=staleness,
        n_nonfinite=clean.n_nonfinite,
        **{name: getattr(sig, name) for name in _SMOOTHED},
        enter_count=hyst.enter_count,
        exit_count=hyst.exit_count,
        raw=clean.raw,
    )
    return new_state, decision


def narset_rollout(
    params: NarsetParams,
    state: NarsetState,
    telemetry: Telemetry,
    *,
    checkpoint: bool = False,
) -> tuple[NarsetState, Decision]:
    """Run [`narset_jax.step.narset_step`][] over a leading time axis with ``lax.scan``.

    **Arguments:**

    - ``params``, ``state``: as for the step.
    - ``telemetry``: [`narset_jax.Telemetry`][] of ``[T, N]`` arrays.
    - ``checkpoint``: wrap the step in ``jax.checkpoint`` (rematerialise in the backward
      pass), which keeps memory flat when differentiating long rollouts.

    **Returns:** ``(final_state, decisions)`` with every decision field ``[T, N]``.
    """
    body = lambda s, tel: narset_step(params, s, tel)  # noqa: E731
    if checkpoint:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, state, telemetry)


# The jitted forms [`narset_jax.Narset`][] calls (public so that a caller can inspect their
# compilation caches: new params values must not retrace).
narset_step_jit = jax.jit(narset_step)
narset_rollout_jit = jax.jit(narset_rollout, static_argnames=("checkpoint",))


class Narset:
    """The controller: params plus jitted ``init`` / ``step``.

    A light wrapper: state is explicit (``init`` then ``step``), and the params are passed
    to one cached jitted function as a traced argument, so the step compiles once per
    shape, dtype and static config, not once per params value.

    ```python
    ctl = Narset(NarsetParams())
    state = ctl.init(1024)
    state, decision = ctl.step(state, Telemetry.calm(1024))
    ```
    """

    __slots__ = ("params",)

    def __init__(self, params: NarsetParams | None = None):
        if params is None:
            params = NarsetParams()
        if not isinstance(params, NarsetParams):
            raise TypeError(f"Narset needs NarsetParams, got {type(params).__name__}")
        self.params = params

    def __repr__(self) -> str:
        return f"Narset({self.params!r})"

    def init(self, n_regions: int, dtype=jnp.float32, *, region_ids=None) -> NarsetState:
        """A fresh [`narset_jax.NarsetState`][] for ``n_regions`` regions."""
        return init_state(n_regions, dtype, region_ids=region_ids)

    def step(self, state: NarsetState, telemetry: Telemetry) -> tuple[NarsetState, Decision]:
        """One jitted decision window; see [`narset_jax.step.narset_step`][]."""
        return narset_step_jit(self.params, state, telemetry)

    def rollout(
        self, state: NarsetState, telemetry: Telemetry, *, checkpoint: bool = False
    ) -> tuple[NarsetState, Decision]:
        """A jitted ``lax.scan`` of windows over ``[T, N]`` telemetry."""
        return narset_rollout_jit(self.params, state, telemetry, checkpoint=checkpoint)
