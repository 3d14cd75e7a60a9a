"""The tuned fields of ``NarsetParams`` as an unconstrained pytree of raw floats.

The tuned fields are the image of raw values under softplus and sigmoid maps, so every
constraint holds by construction and nothing is clipped after an optimiser step
(``theta_exit < theta_enter`` and ``tau_sedate < tau_lysis`` through positive gaps).
Also here: the relaxation temperatures and their annealing, and the switch to the hard
hysteresis that is simulated and deployed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.params import NarsetParams

__all__ = [
    "TEMPERATURES",
    "TUNED",
    "anneal_factor",
    "from_params",
    "hard",
    "to_params",
    "with_temperature",
]

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

    - ``raw``: ``name -> scalar`` for every name in [`sims.tune.TUNED`][] (a dict
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
    """The raw values that [`sims.tune.to_params`][] maps back to ``params``' tuned
    fields (to float rounding; a value within ``1e-4`` of the end of a unit range, such as
    ``beta = 1``, maps to the nearest reachable value).

    **Arguments:**

    - ``params``: concrete [`narset_jax.NarsetParams`][] (scalar leaves).
    - ``dtype``: the raw arrays' dtype (default: ``params.alpha``'s).

    **Returns:** ``name -> scalar array`` for every name in [`sims.tune.TUNED`][].
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
    """``params`` with every relaxation temperature ([`sims.tune.TEMPERATURES`][])
    multiplied by ``factor`` (traced or concrete, ``> 0``)."""
    return dataclasses.replace(params, **{n: getattr(params, n) * factor for n in TEMPERATURES})


def anneal_factor(iteration: int, iters: int, final: float) -> float:
    """Geometric annealing of the temperatures: 1 at the first iteration, ``final`` at the
    last (``final = 1`` switches annealing off)."""
    if iters <= 1 or final == 1.0:
        return 1.0
    return float(final ** (iteration / (iters - 1)))


def hard(params: NarsetParams) -> NarsetParams:
    """``params`` with the hard hysteresis (what is simulated and deployed)."""
    return params.replace(hysteresis="hard")
