"""Training the attacker: best responses to given Narset params.

The attacker maximises the spoofers' **gain**: their capture (share of the global pool's
spend above their share of regions, [`sims.Metrics`][]'s ``spoofer_capture``) plus
``progress_weight`` times their own mean progress. It is trained two ways, as the tuner
trains Narset (``docs/tuning.md``):

- **gradient** through the relaxed closed loop (``"straight_through"`` by default: the hard
  loop forward, the relaxations' derivatives backward), adam on the attacker's pytree, a
  fresh batch of seeds each iteration;
- **evolution strategies** (evosax's SNES through [`sims.tune.es.evolve`][]) on the hard
  loop, starting from the gradient's result, the population in one vmapped call.

A best response is the best of the start, the gradient's result and the ES's result,
judged on the hard loop on held-out seeds ([`sims.attack.best_response`][]).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sims
from narset_jax.params import NarsetParams
from sims.attack.ecology import ATTACK, Attacker, AttackSetup, spoofer_progress
from sims.tune.es import evolve
from sims.tune.training import STREAM_EVAL, STREAM_TRAIN, run_keys

__all__ = [
    "AttackConfig",
    "BestResponse",
    "attack_params",
    "attack_rollout",
    "best_response",
    "eval_attack",
    "eval_stylised",
    "eval_keys",
    "gradient_attack",
    "es_attack",
    "prepared_setup",
    "train_keys",
]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Static settings of attack rollouts and of a best response (hashable).

    ``n_regions``, ``n_steps``: rollout size; ``dtype``; ``relax``: the gradient's
    relaxation (``"soft"`` or ``"straight_through"``); ``progress_weight``: weight of the
    spoofers' own progress in their gain; ``grad_iters``, ``learning_rate``: adam on the
    attacker; ``es_generations``, ``population``, ``sigma``: SNES after the gradient;
    ``batch``: seeds per iteration or generation; ``eval_seeds``: held-out seeds that pick
    the best response and measure capture."""

    n_regions: int = 64
    n_steps: int = 60
    dtype: str = "float32"
    relax: str = "straight_through"
    progress_weight: float = 0.0
    grad_iters: int = 12
    learning_rate: float = 0.3
    es_generations: int = 4
    population: int = 8
    sigma: float = 0.5
    batch: int = 4
    eval_seeds: int = 8

    def __post_init__(self):
        for name in ("n_regions", "n_steps", "batch", "eval_seeds", "population"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("grad_iters", "es_generations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.relax not in ("soft", "straight_through"):
            raise ValueError(f"relax must be 'soft' or 'straight_through', got {self.relax!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype).type

    def shape(self) -> tuple[int, int, str]:
        """What selects the compiled rollouts: ``(n_regions, n_steps, dtype)``."""
        return (self.n_regions, self.n_steps, self.dtype)


def attack_params(params: NarsetParams) -> NarsetParams:
    """The params an attack runs under: ``params`` with the global pool (the spoofing
    scenario's recommendation: regions compete for one budget)."""
    return params.replace(budget="global")


def eval_keys(seed: int, n: int):
    """``n`` held-out keys of ``seed`` (its evaluation stream, disjoint from training)."""
    return jax.random.split(run_keys(seed, STREAM_EVAL), n)


def _gain(metrics, sprog, progress_weight):
    return metrics.spoofer_capture + progress_weight * sprog


def attack_rollout(params, setup, key, shape, checkpoint=False):
    """One rollout of the attacked ecology: ``(metrics, spoofers' progress)``; ``shape``
    is [`sims.attack.AttackConfig.shape`][]."""
    n, t, dtype = shape
    carry = sims.rollout_init(params, setup, key, n, dtype=jnp.dtype(dtype).type,
                              ecology=ATTACK)
    carry, _ = sims.rollout_chunk(params, setup, carry, t, ecology=ATTACK,
                                  checkpoint=checkpoint)
    metrics = sims.rollout_metrics(params, setup, carry, ecology=ATTACK)
    return metrics, spoofer_progress(setup, carry.sim)


@partial(jax.jit, static_argnames=("shape",))
def _eval_attack(params, setup, keys, shape):
    def one(k):
        m, sp = attack_rollout(params, setup, k, shape)
        return {"capture": m.spoofer_capture, "progress": m.progress, "spoofer_progress": sp,
                "objective": sims.objective(m)}
    return jax.vmap(one)(keys)


@partial(jax.jit, static_argnames=("shape",))
def _attacker_population(params, setup, pop, keys, shape, progress_weight):
    def one(att, k):
        m, sp = attack_rollout(params, eqx.tree_at(lambda s: s.attacker, setup, att), k, shape)
        return _gain(m, sp, progress_weight)
    return jax.vmap(lambda a: jax.vmap(lambda k: one(a, k))(keys))(pop)


@partial(jax.jit, static_argnames=("shape",))
def _attacker_loss_grad(attacker, params, setup, keys, shape, progress_weight):
    def loss(att):
        s = eqx.tree_at(lambda x: x.attacker, setup, att)
        def one(k):
            m, sp = attack_rollout(params, s, k, shape, checkpoint=True)
            return _gain(m, sp, progress_weight)
        return -jnp.mean(jax.vmap(one)(keys))
    return jax.value_and_grad(loss)(attacker)


def prepared_setup(setup: AttackSetup, dtype) -> AttackSetup:
    """``setup`` without scenario metadata, cast to ``dtype`` (what jitted code takes)."""
    setup = ATTACK.prepare(setup)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), setup)


def eval_attack(params: NarsetParams, setup: AttackSetup, keys, cfg: AttackConfig
                ) -> dict[str, np.ndarray]:
    """The hard loop under the attacker, one rollout per key (global pool).

    **Returns:** ``capture``, ``progress`` (all regions), ``spoofer_progress`` and
    ``objective`` ([`sims.objective`][]), each ``[len(keys)]``."""
    p = attack_params(params).replace(hysteresis="hard").astype(cfg.jdtype)
    out = _eval_attack(p, prepared_setup(setup, cfg.jdtype), keys, cfg.shape())
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


@partial(jax.jit, static_argnames=("n", "t"))
def _eval_stylised(params, scenario, keys, n, t):
    def one(k):
        m = sims.rollout(params, scenario, k, n, t).metrics
        return {"capture": m.spoofer_capture, "progress": m.progress,
                "objective": sims.objective(m)}
    return jax.vmap(one)(keys)


def eval_stylised(params: NarsetParams, scenario: sims.Scenario, keys, cfg: AttackConfig
                  ) -> dict[str, np.ndarray]:
    """The hard loop on a stylised scenario (naive spoofers, or none) under its
    recommended budget mode; ``capture``, ``progress``, ``objective`` per key."""
    p = scenario.recommended_params(params).replace(hysteresis="hard").astype(cfg.jdtype)
    sc = scenario.without_metadata().astype(cfg.jdtype)
    out = _eval_stylised(p, sc, keys, cfg.n_regions, cfg.n_steps)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def train_keys(seed: int, i: int, batch: int):
    """``batch`` training keys of iteration ``i`` of ``seed``'s training stream."""
    return jax.random.split(jax.random.fold_in(run_keys(seed, STREAM_TRAIN), i), batch)


def gradient_attack(params: NarsetParams, setup: AttackSetup, cfg: AttackConfig, *,
                    seed: int = 0) -> tuple[Attacker, list[float]]:
    """Adam on the attacker through the relaxed loop: ``cfg.grad_iters`` iterations of
    ``cfg.batch`` fresh seeds. **Returns:** ``(attacker, gains)``, the relaxed batch gain
    of each iteration."""
    p = attack_params(params).replace(hysteresis=cfg.relax).astype(cfg.jdtype)
    s = prepared_setup(setup, cfg.jdtype)
    att = s.attacker
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(cfg.learning_rate))
    state = opt.init(att)
    gains = []
    pw = jnp.asarray(cfg.progress_weight, cfg.jdtype)
    for i in range(cfg.grad_iters):
        loss, grad = _attacker_loss_grad(att, p, s, train_keys(seed, i, cfg.batch),
                                         cfg.shape(), pw)
        grad = jax.tree.map(lambda g: jnp.nan_to_num(g), grad)
        updates, state = opt.update(grad, state, att)
        att = optax.apply_updates(att, updates)
        gains.append(-float(loss))
    return att, gains


def es_attack(params: NarsetParams, setup: AttackSetup, cfg: AttackConfig, *,
              seed: int = 0) -> tuple[Attacker, list[float]]:
    """SNES on the hard loop from ``setup.attacker``: ``cfg.es_generations`` generations
    of ``cfg.population`` candidates, each scored on the same ``cfg.batch`` fresh seeds.
    **Returns:** ``(attacker, gains)``, the population's mean gain per generation."""
    p = attack_params(params).replace(hysteresis="hard").astype(cfg.jdtype)
    s = prepared_setup(setup, cfg.jdtype)
    pw = jnp.asarray(cfg.progress_weight, cfg.jdtype)
    offset = 10_000  # ES seeds are not the gradient's

    def objective(pop, g):
        att = Attacker(w=jnp.asarray(pop["w"], cfg.jdtype), v=jnp.asarray(pop["v"], cfg.jdtype))
        keys = train_keys(seed, offset + g, cfg.batch)
        return -np.asarray(_attacker_population(p, s, att, keys, cfg.shape(), pw))

    raw0 = {"w": s.attacker.w, "v": s.attacker.v}
    if cfg.es_generations == 0:
        return s.attacker, []
    state, hist = evolve(objective, raw0, generations=cfg.es_generations,
                         population=cfg.population, sigma=cfg.sigma, seed=seed)
    att = Attacker(w=jnp.asarray(state.raw["w"], cfg.jdtype),
                   v=jnp.asarray(state.raw["v"], cfg.jdtype))
    return att, [-v for v in hist.loss]


@dataclasses.dataclass
class BestResponse:
    """A trained attacker and how it was found: ``attacker``; ``capture`` (its held-out
    hard captures, one per evaluation seed); ``source`` (``"start"``, ``"gradient"`` or
    ``"es"``: which candidate won on the held-out seeds); ``candidates`` (each
    candidate's mean held-out gain); ``grad_gains``, ``es_gains`` (training curves)."""

    attacker: Attacker
    capture: np.ndarray
    eval: dict[str, np.ndarray]
    source: str
    candidates: dict[str, float]
    grad_gains: list[float]
    es_gains: list[float]

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "candidates": self.candidates,
                "capture_mean": float(np.mean(self.capture)),
                "grad_gains": self.grad_gains, "es_gains": self.es_gains,
                "attacker": self.attacker.describe()}


def best_response(params: NarsetParams, setup: AttackSetup, cfg: AttackConfig, *,
                  seed: int = 0, keys=None) -> BestResponse:
    """The attacker's best response to ``params``: gradient from ``setup.attacker``, then
    ES from the gradient's result; the winner on held-out seeds (``keys``, default
    ``cfg.eval_seeds`` keys of ``seed``'s evaluation stream) among the start, the gradient's
    and the ES's attackers."""
    keys = eval_keys(seed, cfg.eval_seeds) if keys is None else keys
    g_att, g_gains = gradient_attack(params, setup, cfg, seed=seed)
    g_setup = eqx.tree_at(lambda s: s.attacker, setup, g_att)
    e_att, e_gains = es_attack(params, g_setup, cfg, seed=seed)
    cands = {"start": setup.attacker, "gradient": g_att, "es": e_att}
    # Pick on fresh training seeds, report on the held-out ones (no winner's curse).
    pick = train_keys(seed, 20_000, cfg.eval_seeds)
    gain = {}
    for name, att in cands.items():
        e = eval_attack(params, eqx.tree_at(lambda s: s.attacker, setup, att), pick, cfg)
        gain[name] = float(np.mean(e["capture"] + cfg.progress_weight * e["spoofer_progress"]))
    best = max(gain, key=lambda n: gain[n])
    ev = eval_attack(params, eqx.tree_at(lambda s: s.attacker, setup, cands[best]), keys, cfg)
    return BestResponse(attacker=cands[best], capture=ev["capture"], eval=ev, source=best,
                        candidates=gain, grad_gains=g_gains, es_gains=e_gains)
