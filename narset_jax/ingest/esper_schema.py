"""Esper's telemetry as Nissa's ``FileOutput`` writes it: the envelope, the event types
Narset reads, and one event's parsing into an [`narset_jax.ingest.esper_schema.EsperEvent`][]
of *readings* (what the event says about which Narset input, for which env or slot).

The mapping (Esper field -> Narset input, and what is approximated) is in
``docs/telemetry.md``, section "Esper telemetry". Both schemas are read: today's, and the
one of logs written before late December 2025 (``SEED_CULLED`` instead of ``SEED_PRUNED``,
``data.from`` / ``data.to`` instead of ``from_stage`` / ``to_stage``, no ``group_id``,
seed events with a null ``epoch``, ``REWARD_COMPUTED`` instead of reward components in
``ANALYTICS_SNAPSHOT``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import NamedTuple

from narset_jax.ingest.schema import Malformed, json_type

# The keys of one event line (``esper.nissa.output._telemetry_event_to_dict``).
ENVELOPE = ("event_id", "event_type", "timestamp", "seed_id", "slot_id", "epoch", "group_id",
            "message", "data", "severity")

EPOCH = "EPOCH_COMPLETED"
ROLLBACK = "GOVERNOR_ROLLBACK"
PPO = "PPO_UPDATE_COMPLETED"
BATCH = "BATCH_EPOCH_COMPLETED"
SNAPSHOT = "ANALYTICS_SNAPSHOT"
STARTED = "TRAINING_STARTED"
OUTCOME = "EPISODE_OUTCOME"
REWARD = "REWARD_COMPUTED"  # older logs: the per-step reward breakdown
ANOMALY_TYPES = {
    "RATIO_EXPLOSION_DETECTED": "ratio_explosion",
    "RATIO_COLLAPSE_DETECTED": "ratio_collapse",
    "VALUE_COLLAPSE_DETECTED": "value_collapse",
    "NUMERICAL_INSTABILITY_DETECTED": "numerical_instability",
}
SEED_TYPES = ("SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_FOSSILIZED", "SEED_PRUNED",
              "SEED_CULLED")
TREND_TYPES = ("PLATEAU_DETECTED", "DEGRADATION_DETECTED", "IMPROVEMENT_DETECTED")
BATCH_END_TYPES = (PPO, BATCH)

# Every event type of Esper's ``TelemetryEventType`` (snapshot of 2026-06-21) and of older
# logs. A type outside this set is counted as unknown; a known type Narset does not read
# is counted as ignored. Neither is an error.
KNOWN_TYPES = frozenset((
    *SEED_TYPES, "SEED_GATE_EVALUATED", EPOCH, BATCH, "PHASE_PROFILE_COMPLETED", *TREND_TYPES,
    "TAMIYO_INITIATED", "GRADIENT_ANOMALY", "PERFORMANCE_DEGRADATION", PPO, "MEMORY_WARNING",
    "REWARD_HACKING_SUSPECTED", *ANOMALY_TYPES, "GRADIENT_PATHOLOGY_DETECTED", ROLLBACK,
    "MORPHOLOGY_CAUSAL_LOG", "TOPOLOGY_MANIFEST_RECORDED", STARTED, "CHECKPOINT_LOADED",
    "COUNTERFACTUAL_MATRIX_COMPUTED", SNAPSHOT, OUTCOME, "ALLOCATOR_STATS",
    # older logs
    REWARD, "ISOLATION_VIOLATION", "GOVERNOR_PANIC", "GOVERNOR_SNAPSHOT", "CHECKPOINT_SAVED",
    "COUNTERFACTUAL_COMPUTED",
))

# Seed stages (``esper.leyline.stages.SeedStage``; PROBATIONARY and CULLED are the older
# names of HOLDING and PRUNED) -> 0 no seed, 1 active, 2 fossilised.
STAGE_CLASS = {
    "DORMANT": 0, "PRUNED": 0, "CULLED": 0, "EMBARGOED": 0, "RESETTING": 0, "UNKNOWN": 0,
    "GERMINATED": 1, "TRAINING": 1, "BLENDING": 1, "HOLDING": 1, "PROBATIONARY": 1,
    "SHADOWING": 1, "FOSSILIZED": 2,
}
# A stage change into one of these is a structural edit (churn). Into FOSSILIZED or
# PRUNED/CULLED it is not counted: those have their own event, counted instead; the
# cleanup stages (EMBARGOED, RESETTING, DORMANT) follow a prune on their own.
CHURN_STAGES = frozenset(("TRAINING", "BLENDING", "HOLDING", "PROBATIONARY", "SHADOWING"))

# Esper's ``ContributionRewardConfig.alpha_shock_coef``: the reward's alpha shock is
# ``max(-coef * sum(delta alpha^2), -cap)``, so ``sum(delta alpha^2) = -alpha_shock / coef``
# (exact below the cap).
ALPHA_SHOCK_COEF = 0.1958
# An old GOVERNOR_ROLLBACK follow-up: the same rollback's state-dict warning, not a second one.
KEY_MISMATCH = "State Dict Key Mismatch"

# Reading codes.
(R_LOSS, R_ACC, R_ROLLBACK, R_ANOMALY, R_NONFINITE, R_LSTM, R_GROWTH, R_SHOCK, R_STAGE,
 R_CHURN, R_SEEDS, R_BATCH_END) = range(12)
READING_NAMES = ("val_loss", "accuracy", "rollback", "anomaly", "nonfinite", "lstm_h_rms",
                 "growth_ratio", "alpha_shock", "seed_stage", "churn", "seeds_snapshot",
                 "batch_end")


class Reading(NamedTuple):
    """One thing an event says: ``code`` (``R_*``), the env it concerns (``None``: global,
    every region), the slot (``None``: the whole env) and the value (a float; the stage
    class for ``R_STAGE``; ``{slot: stage class}`` for ``R_SEEDS``)."""

    code: int
    env: int | None
    slot: str | None
    value: object


class EsperEvent(NamedTuple):
    """One parsed Esper event.

    ``etype`` (the ``event_type`` string), ``ts`` (POSIX seconds, UTC), ``epoch`` (the
    envelope's, often ``None``), ``env`` (``data.env_id`` of a per-env event, else
    ``None``), ``inner_epoch`` (``EPOCH_COMPLETED`` only), ``group`` (``group_id``),
    ``readings`` (a tuple of [`narset_jax.ingest.esper_schema.Reading`][]), ``status``
    (``"used"``, ``"ignored"`` for a known type Narset does not read, or ``"unknown"``)
    and ``info`` (``TRAINING_STARTED``'s ``n_envs``, ``max_epochs``, ``slot_ids``).
    """

    etype: str
    ts: float
    epoch: int | None = None
    env: int | None = None
    inner_epoch: int | None = None
    group: str | None = None
    readings: tuple = ()
    status: str = "used"
    info: dict | None = None


def is_esper_envelope(obj) -> bool:
    """Whether a decoded JSON line looks like an Esper event (``event_type`` and
    ``timestamp``, and not the own schema's ``kind``)."""
    return type(obj) is dict and "event_type" in obj and "timestamp" in obj and "kind" not in obj


def parse_timestamp(v) -> float:
    """ISO-8601 (``datetime.isoformat()``, UTC; a naive one is read as UTC) -> POSIX
    seconds."""
    if type(v) is not str:
        raise Malformed("wrong_type", f"'timestamp' must be an ISO-8601 string, got {json_type(v)}")
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise Malformed("wrong_type", f"'timestamp' is not ISO-8601: {json_type(v)}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def format_timestamp(ts: float) -> str:
    """POSIX seconds -> ISO-8601 in UTC, as Esper writes it (``+00:00``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _int(obj: dict, key: str, where: str, *, required: bool = True) -> int | None:
    v = obj.get(key)
    if v is None:
        if required:
            why = "is null" if key in obj else "is missing"
            raise Malformed("missing_field", f"{where} needs '{key}' (it {why})")
        return None
    if type(v) is int:
        return v
    if type(v) is float and v.is_integer():
        return int(v)
    raise Malformed("wrong_type", f"{where}: '{key}' must be an integer, got {json_type(v)}")


def _num(obj: dict, key: str, where: str, *, required: bool = True) -> float | None:
    v = obj.get(key)
    if v is None:
        if required:
            why = "is null" if key in obj else "is missing"
            raise Malformed("missing_field", f"{where} needs '{key}' (it {why})")
        return None
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise Malformed("wrong_type", f"{where}: '{key}' must be a number, got {json_type(v)}")


def _str(obj: dict, key: str, where: str, *, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise Malformed("missing_field", f"{where} needs '{key}'")
        return None
    if type(v) is not str:
        raise Malformed("wrong_type", f"{where}: '{key}' must be a string, got {json_type(v)}")
    return v


def _data(obj: dict, etype: str, *, required: bool = True) -> dict:
    d = obj.get("data")
    if type(d) is dict:
        return d
    if d is None and not required:
        return {}
    if d is None:
        raise Malformed("missing_field", f"{etype} needs 'data'")
    raise Malformed("wrong_type", f"{etype}: 'data' must be an object, got {json_type(d)}")


def _slot(obj: dict, d: dict, etype: str) -> str:
    s = obj.get("slot_id")
    if s is None:
        s = d.get("slot_id")
    if s is None:
        raise Malformed("missing_field", f"{etype} needs 'slot_id' (envelope or data)")
    if type(s) is not str:
        raise Malformed("wrong_type", f"{etype}: 'slot_id' must be a string, got {json_type(s)}")
    return s


def _stage(name, etype: str) -> int:
    if type(name) is not str:
        raise Malformed("wrong_type", f"{etype}: a stage must be a string, got {json_type(name)}")
    return STAGE_CLASS.get(name, 1)  # an unknown stage name is a seed that exists


def _seeds(d: dict, etype: str) -> dict | None:
    """``EPOCH_COMPLETED.data.seeds`` -> ``{slot: stage class}`` (``None`` if absent)."""
    seeds = d.get("seeds")
    if seeds is None:
        return None
    if type(seeds) is not dict:
        raise Malformed("wrong_type", f"{etype}: 'seeds' must be an object, got {json_type(seeds)}")
    out = {}
    for slot, s in seeds.items():
        stage = s.get("stage", "UNKNOWN") if type(s) is dict else s
        out[slot] = _stage(stage, etype)
    return out


def _epoch_completed(obj, d, etype):
    env = _int(d, "env_id", etype)
    inner = _int(d, "inner_epoch", etype, required=False)
    if inner is None:
        inner = _int(obj, "epoch", etype)
    loss = _num(d, "val_loss", etype)
    out = [Reading(R_LOSS, env, None, loss)]
    acc = _num(d, "val_accuracy", etype, required=False)
    if acc is not None:
        out.append(Reading(R_ACC, env, None, acc))
    seeds = _seeds(d, etype)
    if seeds is not None:
        out.append(Reading(R_SEEDS, env, None, seeds))
    return env, inner, out


def _rollback(obj, d, etype):
    env = _int(d, "env_id", etype)
    if d.get("reason") == KEY_MISMATCH:
        return env, None, []
    reason = d.get("panic_reason")
    if reason is not None and type(reason) is not str:
        raise Malformed("wrong_type", f"{etype}: 'panic_reason' must be a string, got "
                        f"{json_type(reason)}")
    return env, None, [Reading(R_ROLLBACK, env, None, 1.0 if reason == "governor_nan" else 0.0)]


def _anomaly(obj, d, etype):
    nonfinite = 1.0 if ANOMALY_TYPES[etype] == "numerical_instability" else 0.0
    return None, None, [Reading(R_ANOMALY, None, None, nonfinite)]


def _ppo(obj, d, etype):
    out = [Reading(R_BATCH_END, None, None, 1.0)]
    h = _num(d, "lstm_h_rms", etype, required=False)
    if h is not None:
        out.append(Reading(R_LSTM, None, None, h))
    if d.get("lstm_has_nan") is True or d.get("lstm_has_inf") is True:
        out.append(Reading(R_NONFINITE, None, None, 1.0))
    return None, None, out


def _batch(obj, d, etype):
    out = [Reading(R_BATCH_END, None, None, 1.0)]
    accs = d.get("env_accuracies")
    if accs is not None:
        if type(accs) is not list:
            raise Malformed("wrong_type", f"{etype}: 'env_accuracies' must be an array, got "
                            f"{json_type(accs)}")
        for env, a in enumerate(accs):
            if type(a) not in (int, float):
                raise Malformed("wrong_type", f"{etype}: 'env_accuracies[{env}]' must be a "
                                f"number, got {json_type(a)}")
            out.append(Reading(R_ACC, env, None, float(a)))
    return None, None, out


def _seed_event(obj, d, etype):
    env = _int(d, "env_id", etype)
    slot = _slot(obj, d, etype)
    if etype == "SEED_GERMINATED":
        return env, None, [Reading(R_STAGE, env, slot, 1), Reading(R_CHURN, env, slot, 1.0)]
    if etype == "SEED_FOSSILIZED":
        return env, None, [Reading(R_STAGE, env, slot, 2), Reading(R_CHURN, env, slot, 1.0)]
    if etype in ("SEED_PRUNED", "SEED_CULLED"):
        return env, None, [Reading(R_STAGE, env, slot, 0), Reading(R_CHURN, env, slot, 1.0)]
    to = d.get("to_stage", d.get("to"))  # SEED_STAGE_CHANGED (older logs: 'to')
    if to is None:
        raise Malformed("missing_field", f"{etype} needs 'to_stage' (older logs: 'to')")
    out = [Reading(R_STAGE, env, slot, _stage(to, etype))]
    if to in CHURN_STAGES:
        out.append(Reading(R_CHURN, env, slot, 1.0))
    return env, None, out


def _rewards(env: int, rc: dict, where: str, out: list) -> None:
    g = _num(rc, "growth_ratio", where, required=False)
    if g is not None:
        out.append(Reading(R_GROWTH, env, None, 1.0 + g))
    acc = _num(rc, "val_acc", where, required=False)
    if acc is not None:
        out.append(Reading(R_ACC, env, None, acc))


def _snapshot(obj, d, etype):
    kind = d.get("kind")
    if kind != "last_action":
        return None, None, None  # another kind: ignored
    env = _int(d, "env_id", f"{etype} last_action")
    out = []
    rc = d.get("reward_components")
    shock = None
    if rc is not None:
        if type(rc) is not dict:
            raise Malformed("wrong_type", f"{etype}: 'reward_components' must be an object, "
                            f"got {json_type(rc)}")
        _rewards(env, rc, f"{etype} reward_components", out)
        shock = _num(rc, "alpha_shock", f"{etype} reward_components", required=False)
    if shock is None:
        shock = _num(d, "alpha_shock", etype, required=False)
    if shock is not None:
        out.append(Reading(R_SHOCK, env, None, -shock / ALPHA_SHOCK_COEF))
    if d.get("action_name") == "SET_ALPHA_TARGET" and d.get("action_success") is True:
        slot = d.get("slot_id")
        if type(slot) is str:
            out.append(Reading(R_CHURN, env, slot, 1.0))
    return env, None, out


def _reward_computed(obj, d, etype):
    env = _int(d, "env_id", etype)
    out = []
    _rewards(env, d, etype, out)
    return env, None, out


def _outcome(obj, d, etype):
    env = _int(d, "env_id", etype)
    ratio = _num(d, "param_ratio", etype, required=False)
    return env, None, ([Reading(R_GROWTH, env, None, ratio)] if ratio is not None else [])


def _trend(obj, d, etype):
    return None, None, []  # counted; Narset computes its own trend from the loss


_PARSERS = {
    EPOCH: _epoch_completed,
    ROLLBACK: _rollback,
    **dict.fromkeys(ANOMALY_TYPES, _anomaly),
    PPO: _ppo,
    BATCH: _batch,
    **dict.fromkeys(SEED_TYPES, _seed_event),
    SNAPSHOT: _snapshot,
    REWARD: _reward_computed,
    OUTCOME: _outcome,
    **dict.fromkeys(TREND_TYPES, _trend),
}
_NEEDS_DATA = frozenset((EPOCH, ROLLBACK, *SEED_TYPES, OUTCOME, REWARD))


def _started(d: dict) -> dict:
    info = {}
    for key in ("n_envs", "max_epochs"):
        v = d.get(key)
        if type(v) is int and v > 0:
            info[key] = v
    slots = d.get("slot_ids")
    if type(slots) is list and all(type(s) is str for s in slots):
        info["slot_ids"] = list(slots)
    return info


def parse_esper(obj) -> EsperEvent:
    """Type-check one decoded Esper event and read what it says.

    **Returns:** an [`narset_jax.ingest.esper_schema.EsperEvent`][] (``status`` tells
    whether Narset reads the type).

    **Raises:** ``Malformed`` (``missing_field``, ``wrong_type``) naming the field.
    """
    if type(obj) is not dict:
        raise Malformed("wrong_type", f"an event must be a JSON object, got {json_type(obj)}")
    etype = obj.get("event_type")
    if etype is None:
        raise Malformed("missing_field", "an Esper event needs 'event_type'")
    if type(etype) is not str:
        raise Malformed("wrong_type", f"'event_type' must be a string, got {json_type(etype)}")
    if "timestamp" not in obj:
        raise Malformed("missing_field", f"{etype} needs 'timestamp'")
    ts = parse_timestamp(obj["timestamp"])
    epoch = _int(obj, "epoch", etype, required=False)
    group = obj.get("group_id")
    group = group if type(group) is str else None
    parser = _PARSERS.get(etype)
    if parser is None:
        status = "ignored" if etype in KNOWN_TYPES else "unknown"
        info = _started(_data(obj, etype, required=False)) if etype == STARTED else None
        return EsperEvent(etype, ts, epoch, group=group, status=status, info=info)
    d = _data(obj, etype, required=etype in _NEEDS_DATA)
    env, inner, readings = parser(obj, d, etype)
    if readings is None:
        return EsperEvent(etype, ts, epoch, env, group=group, status="ignored")
    return EsperEvent(etype, ts, epoch, env, inner, group, tuple(readings))


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
