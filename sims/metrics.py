"""Per-run metrics, their per-region accumulators, and the objective that combines them.

Definitions (each a scalar mean over regions; "per 100" means per region per 100 windows):

- ``progress``: the share of each region's initial reducible loss that was closed,
  ``(L_0 - L_T) / (L_0 - 1)`` on the latent loss (floor 1), averaged; rollbacks count
  against it. Can be negative.
- ``flap_rate``: mode switches per 100, ``sum_t |m_t - m_{t-1}|`` on the mode weight ``m``
  (exactly the switch count for hard hysteresis; the total variation of the soft mode for
  relaxed runs, so it has gradients).
- ``budget_churn``: ``sum_t |x_T,t - x_T,t-1| + |x_E,t - x_E,t-1|`` per 100 (intensities
  start at 0).
- ``overdrive_fraction``: share of region-windows with ``x_T > 1`` or ``x_E > 1``
  (relaxed runs: a sigmoid of ``max(x_T, x_E) - 1``).
- ``unsafe_lysis``: lysis done while the region was unstable (latent health below
  ``health_safe``), per 100.
- ``rollbacks``: governor rollbacks (three consecutive panics), per 100.
- ``spoofer_capture``: spoofers' share of all spend minus their share of regions (0 when
  there are none): budget captured above their fair share.
- ``utilisation``: spend over what the budget allows (``pool`` per region and window; 1 in
  fixed-sum mode).

Extras: ``health`` (mean latent health), ``repair_share`` (mean mode weight), ``mean_x_T``,
``mean_x_E``, ``lysis`` and ``panics`` (per 100), ``growth_ratio`` (mean at the end),
``missing`` (share of windows without telemetry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_WEIGHTS",
    "METRIC_NAMES",
    "Accum",
    "Metrics",
    "ObjectiveWeights",
    "init_accum",
    "metrics_from",
    "objective",
]

METRIC_NAMES = (
    "progress",
    "flap_rate",
    "budget_churn",
    "overdrive_fraction",
    "unsafe_lysis",
    "rollbacks",
    "spoofer_capture",
    "utilisation",
    "health",
    "repair_share",
    "mean_x_T",
    "mean_x_E",
    "lysis",
    "panics",
    "growth_ratio",
    "missing",
)


class Metrics(eqx.Module):
    """Scalar metrics of a run (see the module docstring for definitions). Under ``vmap``
    every field gains the batch axes."""

    progress: jax.Array
    flap_rate: jax.Array
    budget_churn: jax.Array
    overdrive_fraction: jax.Array
    unsafe_lysis: jax.Array
    rollbacks: jax.Array
    spoofer_capture: jax.Array
    utilisation: jax.Array
    health: jax.Array
    repair_share: jax.Array
    mean_x_T: jax.Array
    mean_x_E: jax.Array
    lysis: jax.Array
    panics: jax.Array
    growth_ratio: jax.Array
    missing: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """``name -> float`` (or nested lists for batched metrics)."""
        out = {}
        for name in METRIC_NAMES:
            v = jax.device_get(getattr(self, name))
            out[name] = v.tolist() if hasattr(v, "tolist") else float(v)
        return out


class Accum(eqx.Module):
    """Per-region running sums (``[N]``) and the number of windows ``n`` (scalar), with
    the previous window's mode and intensities (``prev_*``) that switches and budget churn
    are measured against (0 before the first window)."""

    n: jax.Array
    switches: jax.Array
    churn: jax.Array
    overdrive: jax.Array
    unsafe: jax.Array
    rollbacks: jax.Array
    panics: jax.Array
    lysis: jax.Array
    spend: jax.Array
    health: jax.Array
    mode: jax.Array
    x_T: jax.Array
    x_E: jax.Array
    missing: jax.Array
    prev_mode: jax.Array
    prev_x_T: jax.Array
    prev_x_E: jax.Array


def init_accum(n_regions: int, dtype) -> Accum:
    z = jnp.zeros((n_regions,), dtype)
    fields = {k: z for k in Accum.__dataclass_fields__ if k != "n"}
    return Accum(n=jnp.zeros((), jnp.int32), **fields)


def metrics_from(acc: Accum, outcome, pool) -> Metrics:
    """Metrics from the accumulators and the ecology's end-of-run outcome.

    **Arguments:**

    - ``acc``: the rollout's accumulators.
    - ``outcome``: an ``Outcome`` (``progress``, ``growth_ratio``, ``spoofer``) as the
      ecology's ``outcome`` method reports it.
    - ``pool``: spend a region may make per window (``params.pool``; 1 for fixed sum).
    """
    dtype = acc.churn.dtype
    n = jnp.maximum(acc.n, 1).astype(dtype)
    per100 = 100 / n
    mean = jnp.mean
    progress = outcome.progress
    total_spend = jnp.sum(acc.spend)
    spoof = outcome.spoofer.astype(dtype)
    n_spoof = jnp.sum(spoof)
    share = jnp.sum(acc.spend * spoof) / jnp.maximum(total_spend, jnp.finfo(dtype).tiny)
    capture = jnp.where(n_spoof > 0, share - mean(spoof), 0)
    n_regions = acc.spend.shape[-1]
    return Metrics(
        progress=progress,
        flap_rate=mean(acc.switches) * per100,
        budget_churn=mean(acc.churn) * per100,
        overdrive_fraction=mean(acc.overdrive) / n,
        unsafe_lysis=mean(acc.unsafe) * per100,
        rollbacks=mean(acc.rollbacks) * per100,
        spoofer_capture=capture,
        utilisation=total_spend / (jnp.asarray(pool, dtype) * n * n_regions),
        health=mean(acc.health) / n,
        repair_share=mean(acc.mode) / n,
        mean_x_T=mean(acc.x_T) / n,
        mean_x_E=mean(acc.x_E) / n,
        lysis=mean(acc.lysis) * per100,
        panics=mean(acc.panics) * per100,
        growth_ratio=outcome.growth_ratio,
        missing=mean(acc.missing) / n,
    )


def _weight(v):
    """Numbers become float64 numpy scalars (no device work at import); arrays and tracers
    pass through, so weights can be vmapped."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return np.asarray(float(v))
    return v


class ObjectiveWeights(eqx.Module):
    """Weights of [`sims.objective`][] (float leaves, so they can be vmapped too).

    The objective is a cost, lower is better:

        J = - progress * w_progress + sum_k w_k * metric_k

    over ``flap_rate``, ``budget_churn``, ``overdrive_fraction``, ``unsafe_lysis``,
    ``rollbacks``, ``spoofer_capture`` and ``utilisation``. Defaults and their reasons are
    in ``docs/simulator.md`` ("The objective").
    """

    progress: jax.Array = eqx.field(default=10.0, converter=_weight)
    flap_rate: jax.Array = eqx.field(default=0.25, converter=_weight)
    budget_churn: jax.Array = eqx.field(default=0.1, converter=_weight)
    overdrive_fraction: jax.Array = eqx.field(default=1.0, converter=_weight)
    unsafe_lysis: jax.Array = eqx.field(default=2.0, converter=_weight)
    rollbacks: jax.Array = eqx.field(default=2.0, converter=_weight)
    spoofer_capture: jax.Array = eqx.field(default=20.0, converter=_weight)
    utilisation: jax.Array = eqx.field(default=0.0, converter=_weight)

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


DEFAULT_WEIGHTS = ObjectiveWeights()
_PENALTIES = (
    "flap_rate",
    "budget_churn",
    "overdrive_fraction",
    "unsafe_lysis",
    "rollbacks",
    "spoofer_capture",
    "utilisation",
)


def objective(metrics: Metrics | Mapping[str, Any], weights=None):
    """The scalar cost combining a run's metrics (lower is better).

    **Arguments:**

    - ``metrics``: [`sims.Metrics`][] (or a mapping with the same names).
    - ``weights``: [`sims.ObjectiveWeights`][], a mapping of some of its names to values
      (the rest default), or ``None`` for [`sims.DEFAULT_WEIGHTS`][].

    **Returns:** ``-w_progress * progress + sum_k w_k * metric_k``; batched metrics give a
    batched result. Differentiable wherever the metrics are.
    """
    if weights is None:
        weights = DEFAULT_WEIGHTS
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(ObjectiveWeights.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown objective weight(s): {', '.join(unknown)}")
        weights = ObjectiveWeights(**weights)
    get = (lambda k: metrics[k]) if isinstance(metrics, Mapping) else (
        lambda k: getattr(metrics, k)
    )
    progress = jnp.asarray(get("progress"))
    total = -jnp.asarray(weights.progress).astype(progress.dtype) * progress
    for k in _PENALTIES:
        total = total + jnp.asarray(getattr(weights, k)).astype(progress.dtype) * get(k)
    return total
