"""The stylised ecology (``stylised``): each region is a Kasmina cell with latent state,
driven by the intensities Narset gives its Tamiyo (growth, repair) and Emrakul (probe,
sedation, lysis).

Everything is elementwise over ``[N]`` arrays (structure of arrays) and pure. Random draws
come from a counter-based hash of each region's own key words (``sims._rng``), so a region's
trajectory depends only on its id, the seed, the scenario and the decisions it receives,
never on which other regions are simulated beside it. The equations are in
``docs/simulator.md``; this module follows them line by line.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from narset_jax.hysteresis import gate
from narset_jax.telemetry import Telemetry
from sims._rng import key_words, normal, step_base, stream, uniform_pair
from sims.checks import check_dtype, check_n_regions
from sims.ecologies.base import Ecology, Outcome
from sims.scenario import SCENARIOS, Scenario, load_scenario

__all__ = [
    "STYLISED",
    "Action",
    "Events",
    "SimState",
    "Stylised",
    "init",
    "observe",
    "outcome",
    "sim_step",
    "sim_transition",
]

# Temperatures of the relaxed event and threshold gates (used when ``relax`` is "soft" or
# "straight_through"; the "hard" forward pass never sees them).
EVENT_TEMP = 0.05  # on probability minus uniform draw
HEALTH_TEMP = 0.05  # on health units
COUNT_TEMP = 0.25  # on the consecutive-panic counter
# The governor's rule: roll back after this many consecutive panics.
PANICS_TO_ROLLBACK = 3
# Windows where a spoofer fakes a spike report the LSTM reading at least this high.
SPOOF_LSTM = 12.0
# Initial seeds of every region.
ACTIVE0 = 2.0
FOSSIL0 = 4.0
# Trait streams use this window counter (never reached by a simulation).
_TRAIT_WINDOW = 0xFFFFFFFF


class SimState(eqx.Module):
    """Per-region simulator state: a pytree of ``[N]`` arrays.

    **Identity and randomness:** ``region`` (int32 ids), ``k0``, ``k1`` (the region's uint32
    key words, from ``fold_in(key, region)``), ``g0``, ``g1`` (the run's global key words,
    the same in every region; they drive the correlated shock waves).

    **Traits** (drawn once, see ``docs/simulator.md``): ``lr``, ``fragility``,
    ``noise_mult``, ``scale`` (loss scale), ``bloat_prop``, ``spoof_u`` (a region is a
    spoofer when ``spoof_u < spoofer_fraction``), ``pos`` (position on the region ring),
    ``loss0`` (initial latent loss).

    **Latent state:** ``health`` in [0, 1]; ``loss`` (latent, in units where the loss floor
    is 1); ``cap`` (useful capacity); ``bloat`` (dead mass); ``active``, ``fossil`` (seeds);
    ``stress`` (shock stress); ``panic`` (consecutive panics); ``prev_x_T``, ``prev_x_E``
    (last window's intensities); ``outage``, ``burst`` (telemetry missing / corrupted);
    ``spiked`` (a spoofer faked a spike last window: spikes never come two in a row).
    """

    region: jax.Array
    k0: jax.Array
    k1: jax.Array
    g0: jax.Array
    g1: jax.Array
    lr: jax.Array
    fragility: jax.Array
    noise_mult: jax.Array
    scale: jax.Array
    bloat_prop: jax.Array
    spoof_u: jax.Array
    pos: jax.Array
    loss0: jax.Array
    health: jax.Array
    loss: jax.Array
    cap: jax.Array
    bloat: jax.Array
    active: jax.Array
    fossil: jax.Array
    stress: jax.Array
    panic: jax.Array
    prev_x_T: jax.Array
    prev_x_E: jax.Array
    outage: jax.Array
    burst: jax.Array
    spiked: jax.Array

    @property
    def n_regions(self) -> int:
        return self.health.shape[-1]


class Action(NamedTuple):
    """What the simulator reads from a decision: intensities and authority tiers.

    A [`narset_jax.Decision`][] works as is. Tiers may be floats in [0, 2] (relaxed tiers
    for gradients; see [`sims.rollout`][]): ``clip(tier, 0, 1)`` is the reversible
    authority and ``clip(tier - 1, 0, 1)`` the irreversible one.
    """

    x_T: Any
    x_E: Any
    tier_T: Any
    tier_E: Any


class Events(NamedTuple):
    """What happened in one window, beyond the telemetry (all ``[N]``, floats unless noted).

    - ``lysis``: Emrakul had (and used) lysis authority.
    - ``unsafe``: lysis while the region was unstable (health below ``health_safe``).
    - ``panic``, ``rollback``: governor panics and rollbacks (real, not spoofed).
    - ``hit``: a shock hit the region (bool).
    - ``spike``: a spoofer faked a spike this window (bool).
    - ``spoofer``: the region is a spoofer (bool).
    - ``health``, ``loss``: latent health and loss after the window.
    """

    lysis: jax.Array
    unsafe: jax.Array
    panic: jax.Array
    rollback: jax.Array
    hit: jax.Array
    spike: jax.Array
    spoofer: jax.Array
    health: jax.Array
    loss: jax.Array


def _l_star(cap):
    """Achievable latent loss with capacity ``cap``: ``1 + 1 / (1 + cap)``."""
    return 1 + 1 / (1 + cap)


def init(key, n_regions: int, scenario: Scenario, dtype=jnp.float32, *, region_ids=None):
    """A fresh ecology of ``n_regions`` regions.

    **Arguments:**

    - ``key``: a PRNG key. Region ``r``'s key words are ``fold_in(k_regions, r)`` with
      ``k_regions, k_global = split(key)``.
    - ``n_regions``: ``N > 0`` (static).
    - ``scenario``: a [`sims.Scenario`][] (float leaves may be traced, e.g. under ``vmap``).
    - ``dtype``: ``jnp.float32`` or ``jnp.float64``.
    - ``region_ids``: optional ``[N]`` ids (default ``0 .. N-1``); a region's traits and
      draws depend only on its id, so a subset of ids reproduces those regions exactly.

    **Returns:** a [`sims.SimState`][].
    """
    n = check_n_regions(n_regions)
    dtype = check_dtype(dtype)
    if region_ids is None:
        ids = jnp.arange(n, dtype=jnp.int32)
    else:
        ids = jnp.asarray(region_ids).astype(jnp.int32)
        if ids.shape != (n,):
            raise ValueError(f"region_ids must have shape ({n},), got {ids.shape}")
    sc = scenario.astype(dtype)
    k_reg, k_glob = jax.random.split(key)
    k0, k1 = key_words(k_reg, ids)
    g0, g1 = key_words(k_glob, jnp.zeros((1,), jnp.int32))
    g0 = jnp.broadcast_to(g0, (n,))
    g1 = jnp.broadcast_to(g1, (n,))
    base = step_base(k0, k1, _TRAIT_WINDOW)
    z = [normal(stream(base, i), dtype) for i in range(6)]
    spoof_u, pos = uniform_pair(stream(base, 6), dtype)
    lr = jnp.minimum(sc.lr * jnp.exp(sc.spread_lr * z[0]), 1)
    fragility = sc.fragility * jnp.exp(sc.spread_fragility * z[1])
    noise_mult = jnp.exp(sc.spread_noise * z[2])
    scale = jnp.exp(sc.spread_scale * z[3])
    bloat_prop = jnp.exp(sc.spread_bloat * z[4])
    health = jnp.clip(sc.health0 + sc.spread_health * z[5], 0.05, 1)
    ones = jnp.ones((n,), dtype)
    fossil = FOSSIL0 * ones
    cap = sc.seed_cap * fossil
    bloat = sc.seed_bloat * bloat_prop * fossil
    loss = _l_star(cap) + sc.gap0
    zeros = jnp.zeros((n,), dtype)
    false = jnp.zeros((n,), bool)
    return SimState(
        region=ids,
        k0=k0,
        k1=k1,
        g0=g0,
        g1=g1,
        lr=lr,
        fragility=fragility,
        noise_mult=noise_mult,
        scale=scale,
        bloat_prop=bloat_prop,
        spoof_u=spoof_u,
        pos=pos,
        loss0=loss,
        health=health,
        loss=loss,
        cap=cap,
        bloat=bloat,
        active=ACTIVE0 * ones,
        fossil=fossil,
        stress=zeros,
        panic=zeros,
        prev_x_T=zeros,
        prev_x_E=zeros,
        outage=false,
        burst=false,
        spiked=false,
    )


def observe(scenario: Scenario, state: SimState) -> Telemetry:
    """Noise-free telemetry of the current latent state, with no events: what the
    controller sees before the first window. Valid, at a boundary."""
    dtype = state.health.dtype
    sc = scenario.astype(dtype)
    zeros = jnp.zeros_like(state.health)
    unhealthy = (1 - state.health) ** 2
    return Telemetry(
        loss=state.scale * state.loss,
        rollbacks=zeros,
        anomalies=zeros,
        nonfinite=zeros,
        lstm_health=sc.lstm_base + sc.lstm_gain * unhealthy,
        growth_ratio=1 + state.cap + state.bloat,
        churn=zeros,
        alpha_shock=zeros,
        active_seeds=state.active,
        fossilised_seeds=state.fossil,
        valid=jnp.ones_like(state.outage),
        boundary=jnp.ones_like(state.outage),
    )


def _event(p, u, relax):
    """``u < p`` for a uniform draw ``u``; relaxed to ``sigmoid((p - u) / T)``."""
    return gate(p - u, EVENT_TEMP, relax)


def sim_transition(
    scenario: Scenario, state: SimState, decision, t, *, relax: str = "hard"
) -> tuple[SimState, Telemetry, Events]:
    """One window of every region, with its events. See [`sims.sim_step`][].

    **Returns:** ``(new_state, telemetry, events)``.
    """
    s = state
    dtype = s.health.dtype
    sc = scenario.astype(dtype)
    x_T = jnp.asarray(decision.x_T).astype(dtype)
    x_E = jnp.asarray(decision.x_E).astype(dtype)
    tier_T = jnp.asarray(decision.tier_T).astype(dtype)
    tier_E = jnp.asarray(decision.tier_E).astype(dtype)
    grow_ok = jnp.clip(tier_T, 0, 1)
    fossilise_ok = jnp.clip(tier_T - 1, 0, 1)
    sedate_ok = jnp.clip(tier_E, 0, 1)
    lysis_ok = jnp.clip(tier_E - 1, 0, 1)

    # Random draws: nine hashes per region after its window base (four normals, nine
    # uniforms), and one from the run's global words for the wave.
    base = step_base(s.k0, s.k1, t)
    z_loss = normal(stream(base, 0), dtype)
    z_lstm = normal(stream(base, 1), dtype)
    z_churn = normal(stream(base, 2), dtype)
    z_health = normal(stream(base, 3), dtype)
    u_panic, u_anom1 = uniform_pair(stream(base, 4), dtype)
    u_anom2, u_nan = uniform_pair(stream(base, 5), dtype)
    u_shock, u_spoof = uniform_pair(stream(base, 6), dtype)
    u_drop, u_burst = uniform_pair(stream(base, 7), dtype)
    u_boundary, _ = uniform_pair(stream(base, 8), dtype)
    u_wave, u_center = uniform_pair(stream(step_base(s.g0, s.g1, t), 0), dtype)

    # Shocks: independent hits plus correlated waves over an arc of the region ring.
    indep = u_shock < sc.shock_rate * (1 - sc.shock_corr)
    q_wave = jnp.minimum(sc.shock_rate * sc.shock_corr / sc.wave_width, 1)
    arc = jnp.abs(s.pos - u_center)
    arc = jnp.minimum(arc, 1 - arc)
    hit = indep | ((u_wave < q_wave) & (arc < 0.5 * sc.wave_width))
    stress = s.stress * sc.stress_decay + sc.shock_size * hit.astype(dtype)

    # Tamiyo: germinate, fossilise; seeds in training are culled when authority drops.
    h = s.health
    germ = sc.germ_rate * x_T * grow_ok
    cull = s.active * jnp.minimum(sc.cull_gain * jnp.maximum(s.prev_x_T - x_T, 0), 1)
    foss = sc.foss_rate * s.active * fossilise_ok * jnp.minimum(x_T, 1)
    over = jnp.maximum(x_T - 1, 0) + jnp.maximum(x_E - 1, 0)
    # Emrakul: probing is free, sedation stabilises, lysis compacts bloat.
    sedation = sedate_ok * jnp.minimum(x_E, 1)
    compact = lysis_ok * jnp.minimum(sc.lysis_rate * x_E, 1)
    unstable = gate(sc.health_safe - h, HEALTH_TEMP, relax)
    unsafe = lysis_ok * unstable
    alpha_shock = sc.alpha_per_op * (germ + foss) + sc.alpha_per_cull * cull
    thrash = germ * lysis_ok * x_E

    # Health.
    deficit = jnp.maximum(sc.health_eq - h, 0)
    damage = s.fragility * (
        sc.stress_damage * stress
        + sc.alpha_damage * alpha_shock
        + sc.thrash_damage * thrash
        + sc.overdrive_damage * over
    ) + sc.lysis_damage * unsafe * jnp.minimum(x_E, 1)
    health = (
        h
        + sc.recover_rate * (sc.health_eq - h)
        + sc.repair_gain * grow_ok * x_T * deficit * deficit
        + sc.sedate_gain * sedation * (1 - h)
        - damage
        + sc.process_noise * z_health
    )
    health = jnp.clip(health, 0, 1)

    # Learning: towards the capacity's loss, slowed by ill health and rent.
    growth_ratio = 1 + s.cap + s.bloat
    rent = jnp.minimum(0.5 * jnp.log1p(growth_ratio), 1.5)
    dead = s.bloat / growth_ratio
    eff = h * h * (1 - sc.rent_drag * (rent * (1 / 1.5))) * (1 - sc.bloat_drag * dead)
    gap = jnp.maximum(s.loss - _l_star(s.cap), 0)
    loss = (
        s.loss
        - s.lr * eff * gap / (1 + gap * (1 / sc.gap_sat))
        + sc.diverge * jnp.maximum(sc.health_diverge - h, 0)
    )
    cap = s.cap + sc.seed_cap * foss
    bloat = s.bloat * (1 - compact) + sc.seed_bloat * s.bloat_prop * foss
    active = s.active + germ - foss - cull
    fossil = s.fossil + foss

    # Governor: panics; three consecutive panics roll the region back.
    unhealthy = (1 - h) ** 2
    p_panic = jnp.clip(
        sc.panic_base
        + sc.panic_gain * unhealthy
        + sc.overdrive_panic * over
        + sc.unsafe_panic * unsafe,
        0,
        1,
    )
    panic = _event(p_panic, u_panic, relax)
    count = panic * (s.panic + 1)
    rollback = gate(count - (PANICS_TO_ROLLBACK - 0.5), COUNT_TEMP, relax)
    count = count * (1 - rollback)
    loss = loss + sc.rollback_cost * rollback
    health = health + rollback * sc.rollback_restore * (sc.health_eq - health)
    active = active * (1 - 0.5 * rollback)
    # PPO anomalies (two updates per window) and NaN/Inf panics.
    p_anom = jnp.clip(
        sc.anomaly_base
        + sc.anomaly_gain * unhealthy
        + sc.anomaly_stress * stress
        + sc.overdrive_anomaly * over,
        0,
        1,
    )
    anomalies = _event(p_anom, u_anom1, relax) + _event(p_anom, u_anom2, relax)
    nonfinite = panic * (u_nan < sc.nan_share).astype(dtype)

    # Readings.
    rel = sc.noise * s.noise_mult
    ops = germ + cull + foss + 2 * lysis_ok * x_E
    loss_obs = s.scale * loss * (1 + rel * z_loss)
    lstm = (sc.lstm_base + sc.lstm_gain * (1 - health) ** 2) * jnp.maximum(1 + rel * z_lstm, 0)
    churn = ops * jnp.maximum(1 + rel * z_churn, 0)
    rollbacks_obs = rollback
    anomalies_obs = anomalies
    # Spoofers fake one-window spikes.
    spoofer = s.spoof_u < sc.spoofer_fraction
    spike = spoofer & (u_spoof < sc.spoof_rate) & ~s.spiked
    fake = sc.spoof_size * spike.astype(dtype)
    rollbacks_obs = rollbacks_obs + fake
    anomalies_obs = anomalies_obs + 4 * fake
    lstm = jnp.where(spike, jnp.maximum(lstm, SPOOF_LSTM * sc.spoof_size), lstm)
    # Missing windows and NaN/Inf bursts.
    outage = jnp.where(s.outage, u_drop < sc.dropout_persist, u_drop < sc.dropout_rate)
    burst = jnp.where(s.burst, u_burst < sc.nan_persist, u_burst < sc.nan_rate)
    loss_obs = jnp.where(burst, jnp.nan, loss_obs)
    lstm = jnp.where(burst, jnp.inf, lstm)
    boundary = (count < 0.5) & (u_boundary < sc.boundary_rate)

    telemetry = Telemetry(
        loss=loss_obs,
        rollbacks=rollbacks_obs,
        anomalies=anomalies_obs,
        nonfinite=nonfinite,
        lstm_health=lstm,
        growth_ratio=1 + cap + bloat,
        churn=churn,
        alpha_shock=alpha_shock,
        active_seeds=active,
        fossilised_seeds=fossil,
        valid=~outage,
        boundary=boundary,
    )
    new_state = SimState(
        region=s.region,
        k0=s.k0,
        k1=s.k1,
        g0=s.g0,
        g1=s.g1,
        lr=s.lr,
        fragility=s.fragility,
        noise_mult=s.noise_mult,
        scale=s.scale,
        bloat_prop=s.bloat_prop,
        spoof_u=s.spoof_u,
        pos=s.pos,
        loss0=s.loss0,
        health=health,
        loss=loss,
        cap=cap,
        bloat=bloat,
        active=active,
        fossil=fossil,
        stress=stress,
        panic=count,
        prev_x_T=x_T,
        prev_x_E=x_E,
        outage=outage,
        burst=burst,
        spiked=spike,
    )
    events = Events(
        lysis=lysis_ok,
        unsafe=unsafe,
        panic=panic,
        rollback=rollback,
        hit=hit,
        spike=spike,
        spoofer=spoofer,
        health=health,
        loss=loss,
    )
    return new_state, telemetry, events


def sim_step(
    scenario: Scenario, state: SimState, decision, t, *, relax: str = "hard"
) -> tuple[SimState, Telemetry]:
    """One window of every region under the given decision. Pure and elementwise.

    **Arguments:**

    - ``scenario``: a [`sims.Scenario`][].
    - ``state``: the [`sims.SimState`][].
    - ``decision``: anything with ``x_T``, ``x_E``, ``tier_T``, ``tier_E`` (``[N]``): a
      [`narset_jax.Decision`][] or an [`sims.Action`][].
    - ``t``: the window index (an int or int32 scalar); it keys the window's random draws.
    - ``relax``: ``"hard"`` (default), ``"soft"`` or ``"straight_through"``: how random
      events (panics, anomalies), the rollback rule and the "unstable" test are gated.
      ``"soft"`` replaces each ``u < p`` by ``sigmoid((p - u) / T)`` so that gradients flow
      through event probabilities; ``"straight_through"`` keeps the hard forward pass.

    **Returns:** ``(new_state, telemetry)``: the window's [`narset_jax.Telemetry`][], which
    the controller reads at the next window.
    """
    new_state, telemetry, _ = sim_transition(scenario, state, decision, t, relax=relax)
    return new_state, telemetry


def outcome(scenario: Scenario, state: SimState) -> Outcome:
    """What the metrics read at the end of a run: mean progress ``(L0 - L) / (L0 - 1)``,
    mean growth ratio ``1 + cap + bloat``, and the spoofer mask."""
    dtype = state.health.dtype
    return Outcome(
        progress=jnp.mean((state.loss0 - state.loss) / (state.loss0 - 1)),
        growth_ratio=jnp.mean(1 + state.cap + state.bloat),
        spoofer=state.spoof_u < scenario.astype(dtype).spoofer_fraction,
    )


class Stylised(Ecology):
    """The stylised ecology as an [`sims.Ecology`][]: its params are a
    [`sims.Scenario`][]; ``init``, ``observe`` and ``step`` are [`sims.init`][],
    [`sims.observe`][] and [`sims.sim_transition`][]."""

    name: ClassVar[str] = "stylised"
    scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    # SimState fields that no window changes (ids, key words, traits).
    constant_fields: ClassVar[tuple[str, ...]] = (
        "region", "k0", "k1", "g0", "g1", "lr", "fragility", "noise_mult", "scale",
        "bloat_prop", "spoof_u", "pos", "loss0",
    )
    metric_fields: ClassVar[tuple[str, ...]] = ("loss0", "loss", "cap", "bloat", "spoof_u")

    def load_scenario(self, name_or_path) -> Scenario:
        return load_scenario(name_or_path)

    def prepare(self, params: Scenario) -> Scenario:
        return params.without_metadata()

    def init(self, key, n_regions, params, *, dtype=jnp.float32, region_ids=None):
        return init(key, n_regions, params, dtype, region_ids=region_ids)

    def observe(self, params, state):
        return observe(params, state)

    def step(self, params, state, action, t, *, relax="hard"):
        return sim_transition(params, state, action, t, relax=relax)

    def outcome(self, params, state) -> Outcome:
        return outcome(params, state)


STYLISED = Stylised()
