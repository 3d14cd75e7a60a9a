"""Esper's seed lifecycle, as stage codes per slot (``[K]`` int32 per region).

The codes and the transitions restate Esper's ``src/esper/leyline/stages.py``
(tachyon-beep/esper-lite; read, not copied)::

    DORMANT -> GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED
    GERMINATED | TRAINING | BLENDING | HOLDING -> PRUNED -> EMBARGOED -> RESETTING -> DORMANT
    HOLDING -> BLENDING (Esper's scheduled prune path)

One addition, which Esper does not have: ``FOSSILIZED -> PRUNED``, used only by Emrakul's
lysis (compaction of a fossilised seed that no longer earns its parameters). Esper treats
FOSSILIZED as terminal; Narset's Emrakul is the agent that may undo growth.

A transition is applied only where the table allows it (``apply``), so no rule can move a
slot along an edge that is not listed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "BLENDED",
    "BLENDING",
    "DORMANT",
    "EMBARGOED",
    "FOSSILIZED",
    "GERMINATED",
    "HOLDING",
    "LIVE",
    "N_STAGES",
    "PRUNED",
    "RESETTING",
    "STAGE_NAMES",
    "TRAINING",
    "UNKNOWN",
    "VALID_TRANSITIONS",
    "apply",
    "effective_alpha",
    "in_stages",
]

UNKNOWN = 0
DORMANT = 1
GERMINATED = 2
TRAINING = 3
BLENDING = 4
# 5 is unused, as in Esper (it was SHADOWING there).
HOLDING = 6
FOSSILIZED = 7
PRUNED = 8
EMBARGOED = 9
RESETTING = 10
N_STAGES = 11

STAGE_NAMES = {
    UNKNOWN: "UNKNOWN", DORMANT: "DORMANT", GERMINATED: "GERMINATED", TRAINING: "TRAINING",
    BLENDING: "BLENDING", HOLDING: "HOLDING", FOSSILIZED: "FOSSILIZED", PRUNED: "PRUNED",
    EMBARGOED: "EMBARGOED", RESETTING: "RESETTING",
}

VALID_TRANSITIONS: dict[int, tuple[int, ...]] = {
    UNKNOWN: (DORMANT,),
    DORMANT: (GERMINATED,),
    GERMINATED: (TRAINING, PRUNED),
    TRAINING: (BLENDING, PRUNED),
    BLENDING: (HOLDING, PRUNED),
    HOLDING: (FOSSILIZED, BLENDING, PRUNED),
    FOSSILIZED: (PRUNED,),  # Narset's addition: Emrakul's lysis
    PRUNED: (EMBARGOED,),
    EMBARGOED: (RESETTING,),
    RESETTING: (DORMANT,),
}

_TABLE = np.zeros((N_STAGES, N_STAGES), bool)
for _src, _dsts in VALID_TRANSITIONS.items():
    _TABLE[_src, list(_dsts)] = True

# Slots whose seed has parameters (they train, and count as active or fossilised).
LIVE = (GERMINATED, TRAINING, BLENDING, HOLDING, FOSSILIZED)
# Slots whose seed is blended into the host's forward pass (alpha > 0 possible).
BLENDED = (BLENDING, HOLDING, FOSSILIZED)
# Active (not yet fossilised) seeds, as the telemetry counts them.
ACTIVE = (GERMINATED, TRAINING, BLENDING, HOLDING)


def in_stages(stage, stages) -> jnp.ndarray:
    """``stage`` is one of ``stages`` (elementwise bool)."""
    out = jnp.zeros(jnp.shape(stage), bool)
    for s in stages:
        out = out | (stage == s)
    return out


def apply(stage, target, want):
    """Move ``stage`` to ``target`` where ``want`` and the edge is listed; else keep it."""
    ok = jnp.asarray(_TABLE)[stage, target]
    return jnp.where(want & ok, target, stage)


def effective_alpha(stage, alpha, sedated):
    """The blend weight the forward pass uses: ``alpha`` for blended, unsedated seeds
    (FOSSILIZED is 1), else 0."""
    a = jnp.where(stage == FOSSILIZED, jnp.ones_like(alpha), alpha)
    return jnp.where(in_stages(stage, BLENDED) & ~sedated, a, jnp.zeros_like(alpha))
