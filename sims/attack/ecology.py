"""The attacked ecology: the stylised ecology whose spoofers choose what they report.

Every region evolves exactly as in [`sims.ecologies.stylised`][]; the spoofers (the regions
with ``spoof_u < spoofer_fraction``) replace the scenario's naive one-window spikes by fake
telemetry chosen by an [`sims.attack.Attacker`][], a small logistic policy of what a
region can see of itself and of the decisions it receives, within an attack budget.

- **Channels** (``CHANNELS``): fake rollbacks, PPO anomalies, NaN/Inf panics, LSTM health
  (added to the real reading) and loss jumps (the reported loss is multiplied by
  ``1 + 0.05 u``). ``UNITS`` gives what one unit of attack budget buys in each: 1 rollback,
  4 anomalies, 1 NaN/Inf panic, +12 LSTM health (``SPOOF_LSTM``), a 5% loss jump. A naive
  spike of ``spoof_size`` 1 is 3 units (1 rollback, 4 anomalies, LSTM health 12).
- **Policy**: the gate ``a = sigmoid(w . f)`` over the features ``FEATURES`` (a bias; the
  window's ``x_T``, ``x_E`` and authority tiers; the window's phase modulo ``PHASE_PERIOD``
  as a sine and cosine; the region's latent health; last window's gate; its banked budget
  in windows of budget) and the amounts ``softplus(v_c)`` per channel at a full gate. The
  mode and the shared price are not in the ecology's action, so the policy cannot see them
  directly; they show through ``x_T`` and ``x_E``.
- **Budget**: each spoofer earns ``budget`` units per window, may bank them, and never
  spends more than it has: a window's fakes are scaled down to what is left. So the long
  run spend is at most ``budget`` per spoofer per window.
- **Cost beyond the budget**: none is added. A spoofer that fakes instability pays what
  the ecology already charges for Narset's reaction: in repair mode Tamiyo grows it (churn,
  alpha shock, culls when authority drops) and Emrakul sedates it instead of compacting
  its bloat; overdrive is risky. Fakes change only what is reported, never the latent
  state, and the metrics read the latent state.

The ecology's params are an [`sims.attack.AttackSetup`][] (the scenario, the attacker and
the budget: float leaves, so ``jax.grad`` and ``vmap`` reach the attacker through
[`sims.rollout`][] unchanged).
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.telemetry import Telemetry
from sims.ecologies.base import Ecology, Outcome
from sims.ecologies.stylised import SPOOF_LSTM, SimState, init, observe, outcome, sim_transition
from sims.scenario import Scenario, load_scenario

__all__ = [
    "ATTACK",
    "CHANNELS",
    "FEATURES",
    "NAIVE_SPIKE_UNITS",
    "PHASE_PERIOD",
    "UNITS",
    "AttackEcology",
    "AttackSetup",
    "AttackState",
    "Attacker",
    "naive_budget",
    "spoofer_progress",
    "start_attacker",
]

CHANNELS = ("rollbacks", "anomalies", "nonfinite", "lstm_health", "loss")
UNITS = {"rollbacks": 1.0, "anomalies": 4.0, "nonfinite": 1.0, "lstm_health": SPOOF_LSTM,
         "loss": 0.05}
NAIVE_SPIKE_UNITS = 3.0
FEATURES = ("bias", "x_T", "x_E", "tier_T", "tier_E", "phase_sin", "phase_cos", "health",
            "last_gate", "bank")
PHASE_PERIOD = 4


class Attacker(eqx.Module):
    """The spoofers' policy (shared by all of them): ``w`` (``[F]``, the gate's logistic
    weights over ``FEATURES``) and ``v`` (``[C]``, raw amounts per channel: ``softplus(v)``
    budget units at a full gate). Float leaves only, so it is a pytree for ``grad``,
    ``vmap`` and evosax."""

    w: jax.Array
    v: jax.Array

    def amounts(self):
        """Units per channel at a full gate, ``softplus(v)``."""
        return jax.nn.softplus(self.v)

    def describe(self) -> dict[str, Any]:
        """Plain values: the gate weights by feature and the amounts by channel."""
        w = np.asarray(self.w, np.float64)
        a = np.asarray(self.amounts(), np.float64)
        return {"gate_weights": {f: float(x) for f, x in zip(FEATURES, w)},
                "amounts": {c: float(x) for c, x in zip(CHANNELS, a)}}


def start_attacker(rate: float = 0.3 / 1.3, dtype=jnp.float32) -> Attacker:
    """The attacker training starts from: a constant gate ``rate`` (the naive spoofers'
    long-run spike rate at ``spoof_rate`` 0.3, ``0.3 / 1.3``) and the naive spike's mix
    (1 unit each of rollbacks, anomalies and LSTM health, almost nothing else)."""
    w = np.zeros(len(FEATURES))
    w[0] = np.log(rate / (1 - rate))
    v = np.array([0.5413, 0.5413, -5.0, 0.5413, -5.0])  # softplus(0.5413) = 1
    return Attacker(w=jnp.asarray(w, dtype), v=jnp.asarray(v, dtype))


def naive_budget(scenario: Scenario) -> float:
    """What the scenario's naive spoofers spend per window, in attack units: a spike of
    ``NAIVE_SPIKE_UNITS * spoof_size`` at the long-run rate ``r / (1 + r)`` of spikes
    that never come two in a row (``r = spoof_rate``)."""
    r = float(scenario.spoof_rate)
    return NAIVE_SPIKE_UNITS * float(scenario.spoof_size) * r / (1 + r)


class AttackSetup(eqx.Module):
    """The attacked ecology's params: ``scenario`` (a [`sims.Scenario`][]; its
    ``spoof_rate`` is ignored, the naive spikes are replaced), ``attacker`` (an
    [`sims.attack.Attacker`][]) and ``budget`` (attack units per spoofer per window)."""

    scenario: Scenario
    attacker: Attacker
    budget: jax.Array


class AttackState(eqx.Module):
    """The attacked ecology's state: the stylised ``sim`` state ([`sims.SimState`][]), each
    region's banked attack budget ``bank`` and last window's gate ``last`` (``[N]``)."""

    sim: SimState
    bank: jax.Array
    last: jax.Array

    @property
    def region(self):
        """The regions' ids (the rollout names the controller's regions by them)."""
        return self.sim.region

    @property
    def health(self):
        """Latent health (``[N]``)."""
        return self.sim.health


def _features(state: AttackState, action, t, budget):
    dtype = state.bank.dtype
    phase = 2 * np.pi / PHASE_PERIOD * (jnp.asarray(t) % PHASE_PERIOD).astype(dtype)
    zero = jnp.zeros_like(state.bank)
    return (
        zero + 1,
        jnp.asarray(action.x_T).astype(dtype),
        jnp.asarray(action.x_E).astype(dtype),
        jnp.asarray(action.tier_T).astype(dtype),
        jnp.asarray(action.tier_E).astype(dtype),
        zero + jnp.sin(phase),
        zero + jnp.cos(phase),
        state.sim.health,
        state.last,
        state.bank / jnp.maximum(budget, 1e-6),
    )


def attack_transition(setup: AttackSetup, state: AttackState, action, t, *, relax="hard"):
    """One window of the attacked ecology. **Returns:** ``(state, telemetry, events)``."""
    sc = eqx.tree_at(lambda s: s.spoof_rate, setup.scenario,
                     jnp.zeros_like(jnp.asarray(setup.scenario.spoof_rate)))
    sim, tel, ev = sim_transition(sc, state.sim, action, t, relax=relax)
    dtype = state.bank.dtype
    att = jax.tree.map(lambda x: jnp.asarray(x, dtype), setup.attacker)
    budget = jnp.asarray(setup.budget, dtype)
    feats = _features(state, action, t, budget)
    gate = jax.nn.sigmoid(sum(w * f for w, f in zip(att.w, feats)))
    amounts = att.amounts()
    want = gate * jnp.sum(amounts)
    have = state.bank + budget
    scale = jnp.minimum(1, have / jnp.maximum(want, 1e-6))
    spoof = ev.spoofer.astype(dtype)
    units = [gate * scale * spoof * amounts[i] for i in range(len(CHANNELS))]
    spent = sum(units)
    fake = dict(zip(CHANNELS, units))
    tel = _replace_tel(tel, fake)
    ev = ev._replace(spike=ev.spoofer & (spent > 1e-3))
    new = AttackState(sim=sim, bank=spoof * (have - spent), last=gate * spoof)
    return new, tel, ev


def _replace_tel(tel: Telemetry, fake) -> Telemetry:
    return eqx.tree_at(
        lambda x: (x.rollbacks, x.anomalies, x.nonfinite, x.lstm_health, x.loss),
        tel,
        (tel.rollbacks + fake["rollbacks"] * UNITS["rollbacks"],
         tel.anomalies + fake["anomalies"] * UNITS["anomalies"],
         tel.nonfinite + fake["nonfinite"] * UNITS["nonfinite"],
         tel.lstm_health + fake["lstm_health"] * UNITS["lstm_health"],
         tel.loss * (1 + fake["loss"] * UNITS["loss"])),
    )


def spoofer_progress(setup: AttackSetup, state: AttackState):
    """The spoofers' own mean progress ``(L0 - L) / (L0 - 1)`` (0 without spoofers)."""
    s = state.sim
    spoof = (s.spoof_u < jnp.asarray(setup.scenario.spoofer_fraction, s.loss.dtype))
    prog = (s.loss0 - s.loss) / (s.loss0 - 1)
    n = jnp.sum(spoof)
    return jnp.where(n > 0, jnp.sum(jnp.where(spoof, prog, 0)) / jnp.maximum(n, 1), 0)


class AttackEcology(Ecology):
    """The stylised ecology with learned spoofers, as an [`sims.Ecology`][] whose params
    are an [`sims.attack.AttackSetup`][]. Pass the instance ``ATTACK`` as ``ecology=`` to
    [`sims.rollout`][] (it is not a ``--ecology`` name)."""

    name: ClassVar[str] = "attack"
    shardable: ClassVar[bool] = False

    def load_scenario(self, name_or_path) -> AttackSetup:
        if isinstance(name_or_path, AttackSetup):
            return name_or_path
        sc = load_scenario(name_or_path)
        return AttackSetup(scenario=sc, attacker=start_attacker(),
                           budget=jnp.asarray(naive_budget(sc)))

    def prepare(self, params: AttackSetup) -> AttackSetup:
        return eqx.tree_at(lambda p: p.scenario, params, params.scenario.without_metadata())

    def init(self, key, n_regions, params, *, dtype=jnp.float32, region_ids=None):
        sim = init(key, n_regions, params.scenario, dtype, region_ids=region_ids)
        zero = jnp.zeros_like(sim.health)
        return AttackState(sim=sim, bank=zero, last=zero)

    def observe(self, params, state):
        return observe(params.scenario, state.sim)

    def step(self, params, state, action, t, *, relax="hard"):
        return attack_transition(params, state, action, t, relax=relax)

    def outcome(self, params, state) -> Outcome:
        return outcome(params.scenario, state.sim)


ATTACK = AttackEcology()
