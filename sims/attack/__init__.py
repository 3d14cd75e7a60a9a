"""Learned gaslighting (issue 18): spoofers that learn what to report, and Narset
hardened against them. See ``docs/gaslighting.md``.

- ``ecology``: [`sims.attack.AttackEcology`][], the stylised ecology whose spoofers fake
  telemetry with an [`sims.attack.Attacker`][] policy inside an attack budget; its params
  are an [`sims.attack.AttackSetup`][] pytree, so it runs through [`sims.rollout`][].
- ``train``: best responses of the attacker (gradient through the relaxed loop, then
  evolution strategies on the hard loop).
- ``harden``: min-max hardening of Narset's params against the attacker.
- ``job``: ``narset attack`` (curves over the attack budget, outputs).
"""

from sims.attack.ecology import (
    ATTACK,
    CHANNELS,
    FEATURES,
    NAIVE_SPIKE_UNITS,
    UNITS,
    AttackEcology,
    Attacker,
    AttackSetup,
    AttackState,
    naive_budget,
    spoofer_progress,
    start_attacker,
)
from sims.attack.harden import HARDEN, HardenResult, from_hardening, harden, to_hardening
from sims.attack.job import HONEST, TUNED_PRESET, naive_at_budget, run_attack
from sims.attack.train import (
    AttackConfig,
    BestResponse,
    attack_params,
    best_response,
    es_attack,
    eval_attack,
    eval_keys,
    eval_stylised,
    gradient_attack,
)

__all__ = [
    "ATTACK",
    "CHANNELS",
    "FEATURES",
    "HARDEN",
    "HONEST",
    "NAIVE_SPIKE_UNITS",
    "TUNED_PRESET",
    "HardenResult",
    "from_hardening",
    "harden",
    "naive_at_budget",
    "run_attack",
    "to_hardening",
    "UNITS",
    "AttackConfig",
    "AttackEcology",
    "AttackSetup",
    "AttackState",
    "Attacker",
    "BestResponse",
    "attack_params",
    "best_response",
    "es_attack",
    "eval_attack",
    "eval_keys",
    "eval_stylised",
    "gradient_attack",
    "naive_budget",
    "spoofer_progress",
    "start_attacker",
]
