"""Hardening Narset against the attacker: min-max training by alternating best responses.

Narset's side searches a small raw space (``HARDEN``): the three hardening fields of
[`narset_jax.NarsetParams`][] (``corroborate``, ``persistence``, ``rise_cap``), the
instability scales ``scale_rollbacks``, ``scale_anomalies``, ``scale_nonfinite``, the
persistence filter's memory ``persist_decay`` and the repair gains ``gain_T_crisis`` and
``gain_T_repair`` (how much claimed need buys). Every other field stays at the given
params' value. Its objective, lower is better, is the mean of

- the worst [`sims.objective`][] (which charges ``20 x`` the spoofers' capture) on the
  attacked spoofing scenario over every attacker found so far, and
- the mean objective on the honest scenarios (no spoofers),

all on the hard loop, optimised by SNES ([`sims.tune.es.evolve`][]). A round is: the
attacker's best response to the current params ([`sims.attack.best_response`][]), then
Narset's ES step against all attackers so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax.params import NarsetParams
from sims.attack.ecology import Attacker, AttackSetup
from sims.attack.train import (
    AttackConfig,
    BestResponse,
    attack_params,
    attack_rollout,
    best_response,
    prepared_setup,
    train_keys,
)
from sims.tune.es import evolve

__all__ = ["HARDEN", "HardenResult", "from_hardening", "harden", "to_hardening"]

# name -> (kind, scale): "unit" c sigmoid(r); "pos" c + softplus(r); "log" base exp(r).
_KINDS: dict[str, tuple[str, float]] = {
    "corroborate": ("unit", 1.0),
    "persistence": ("unit", 0.95),
    "rise_cap": ("pos", 0.01),
    "persist_decay": ("unit", 0.95),
    "scale_rollbacks": ("log", 0.0),
    "scale_anomalies": ("log", 0.0),
    "scale_nonfinite": ("log", 0.0),
    "gain_T_crisis": ("log", 0.0),
    "gain_T_repair": ("log", 0.0),
}
HARDEN: tuple[str, ...] = tuple(_KINDS)
"""The fields hardening moves (see the module docstring)."""

# Where an off field starts: in the middle of its range (ES moves locally), the cap where
# it binds only on fast rises (a naive spike adds ~2 to the index in one window).
_START_OFF = {"corroborate": 0.5, "persistence": 0.3, "rise_cap": 1.0}


def to_hardening(raw, base: NarsetParams) -> NarsetParams:
    """``base`` with the ``HARDEN`` fields set from raw values (``name -> scalar``, maybe
    traced). ``log`` fields are ``base``'s value times ``exp(raw)``."""
    out = {}
    for name, (kind, c) in _KINDS.items():
        r = jnp.asarray(raw[name])
        if kind == "unit":
            out[name] = c * jax.nn.sigmoid(r)
        elif kind == "pos":
            out[name] = c + jax.nn.softplus(r)
        else:
            out[name] = getattr(base, name) * jnp.exp(r)
    return dataclasses.replace(base, **out)


def from_hardening(params: NarsetParams) -> dict[str, jax.Array]:
    """Raw values that ``to_hardening(raw, params)`` maps back to ``params`` (fields that
    are off start at ``_START_OFF``: the search starts near off, not at it)."""
    raw = {}
    for name, (kind, c) in _KINDS.items():
        v = float(getattr(params, name))
        if name in _START_OFF and v == 0.0:
            v = _START_OFF[name]
        if kind == "unit":
            q = min(max(v / c, 1e-4), 1 - 1e-4)
            r = np.log(q) - np.log1p(-q)
        elif kind == "pos":
            y = max(v - c, 1e-6)
            r = y + np.log(-np.expm1(-y))
        else:
            r = 0.0
        raw[name] = jnp.asarray(r, jnp.float32)
    return raw


@partial(jax.jit, static_argnames=("shape",))
def _narset_population_attacked(pop_params, setup, keys, shape):
    def one(p, k):
        return sims.objective(attack_rollout(p, setup, k, shape)[0])
    return jax.vmap(lambda p: jax.vmap(lambda k: one(p, k))(keys))(pop_params)


@partial(jax.jit, static_argnames=("n", "t"))
def _narset_population_honest(pop_params, scenario, keys, n, t):
    def one(p, k):
        return sims.objective(sims.rollout(p, scenario, k, n, t).metrics)
    return jax.vmap(lambda p: jax.vmap(lambda k: one(p, k))(keys))(pop_params)


def hardening_objective(params: NarsetParams, setup: AttackSetup,
                        attackers: Sequence[Attacker], honest: Sequence[sims.Scenario],
                        cfg: AttackConfig, *, seed: int = 0):
    """The ES objective of Narset's side: ``(population, generation) -> [P]`` (see the
    module docstring); common random numbers within a generation."""
    dt = cfg.jdtype
    s0 = prepared_setup(setup, dt)
    setups = [eqx.tree_at(lambda s: s.attacker, s0, jax.tree.map(lambda x: jnp.asarray(x, dt),
                                                                   a)) for a in attackers]
    hon = [h.without_metadata().astype(dt) for h in honest]

    def objective(pop, g):
        keys = train_keys(seed, 30_000 + g, cfg.batch)
        cand = jax.vmap(lambda r: to_hardening(r, params))(
            {k: jnp.asarray(v, dt) for k, v in pop.items()})
        att_p = attack_params(cand).replace(hysteresis="hard").astype(dt)
        worst = None
        for s in setups:
            j = np.asarray(_narset_population_attacked(att_p, s, keys, cfg.shape())).mean(1)
            worst = j if worst is None else np.maximum(worst, j)
        hj = []
        for h in hon:
            hp = h_params(cand, h).astype(dt)
            hj.append(np.asarray(_narset_population_honest(hp, h, keys, cfg.n_regions,
                                                           cfg.n_steps)).mean(1))
        honest_j = np.mean(hj, axis=0) if hj else 0.0
        return 0.5 * (worst + honest_j)

    return objective


def h_params(params: NarsetParams, scenario: sims.Scenario) -> NarsetParams:
    """The hard params an honest scenario runs with (its recommended budget mode)."""
    return scenario.recommended_params(params).replace(hysteresis="hard")


@dataclasses.dataclass
class HardenResult:
    """``params`` (the hardened params), ``rounds`` (per round: the attacker's best
    response summary and Narset's ES curve) and ``attackers`` (every attacker found)."""

    params: NarsetParams
    rounds: list[dict[str, Any]]
    attackers: list[Attacker]
    responses: list[BestResponse]


def harden(params: NarsetParams, setup: AttackSetup, honest: Sequence[sims.Scenario],
           cfg: AttackConfig, *, rounds: int = 2, generations: int = 4, population: int = 8,
           sigma: float = 0.5, seed: int = 0, log=None) -> HardenResult:
    """Min-max hardening: ``rounds`` rounds of (attacker best response to the current
    params, warm-started from the last attacker; then ``generations`` SNES generations of
    Narset's ``HARDEN`` fields against every attacker so far and the honest scenarios).

    **Returns:** a [`sims.attack.harden.HardenResult`][]. The hardened params keep every
    field outside ``HARDEN`` (budget mode and hysteresis included) from ``params``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    current = params
    attackers: list[Attacker] = [setup.attacker]
    responses: list[BestResponse] = []
    history = []
    for r in range(rounds):
        warm = eqx.tree_at(lambda s: s.attacker, setup, attackers[-1])
        br = best_response(current, warm, cfg, seed=seed + 100 * (r + 1))
        attackers.append(br.attacker)
        responses.append(br)
        obj = hardening_objective(current, setup, attackers, honest, cfg, seed=seed + r)
        state, hist = evolve(obj, from_hardening(current), generations=generations,
                             population=population, sigma=sigma, seed=seed + r)
        raw = {k: jnp.asarray(v, jnp.float32) for k, v in state.raw.items()}
        current = _concrete(to_hardening(raw, current))
        history.append({"round": r, "attacker": br.summary(), "narset_es_loss": hist.loss,
                        "params": {n: float(getattr(current, n)) for n in HARDEN}})
        if log is not None:
            log(f"round {r}: attacker capture {float(np.mean(br.capture)):.4f} "
                f"({br.source}); narset J {hist.loss[0]:.3f} -> {hist.loss[-1]:.3f}")
    return HardenResult(params=current, rounds=history, attackers=attackers,
                        responses=responses)


def _concrete(params: NarsetParams) -> NarsetParams:
    """Validated params with plain float leaves (rebuilt through ``from_dict``)."""
    data = params.to_dict()
    data.update({n: float(getattr(params, n)) for n in HARDEN})
    return NarsetParams.from_dict(data)
