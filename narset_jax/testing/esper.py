"""Synthetic Esper telemetry, written from the facts of ``docs/telemetry.md`` ("Esper
telemetry"): the event lines a Nissa ``FileOutput`` writes for a run of ``n_envs``
parallel envs with seed slots, in today's schema or the one of logs written before late
December 2025. No Esper code is used or needed.

The default run has the features the Esper ingest must handle:

- several envs and slots, over two batches (inner epochs restart at 1; envs rebuilt);
- a divergence in one env of the second batch: its loss climbs past 12 for three
  epochs, the governor rolls it back (``GOVERNOR_ROLLBACK`` ``governor_divergence``, a
  null ``epoch``), the loss then goes NaN for four epochs with a ``governor_nan`` rollback
  each, then it recovers;
- one global PPO ratio explosion (``RATIO_EXPLOSION_DETECTED``, no env) in the first batch;
- a gap: every event of one epoch is dropped (the hub's queue was full), and one env's
  ``EPOCH_COMPLETED`` of another epoch;
- seed lifecycles (germinate, train, blend, hold, fossilise or prune);
- an event type Esper does not have (counted as unknown) and some Narset ignores.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

__all__ = ["CURRENT_SLOTS", "OLD_SLOTS", "esper_events", "esper_lines", "write_esper_log"]

CURRENT_SLOTS = ("r0c0", "r0c1", "r1c0")
OLD_SLOTS = ("block1_post", "block2_post", "block3_post")
ALPHA_SHOCK_COEF = 0.1958  # Esper's reward coefficient (see narset_jax.ingest.esper_schema)


def esper_events(
    *,
    schema: str = "current",
    n_envs: int = 4,
    slots: tuple[str, ...] | None = None,
    epochs: int = 12,
    batches: int = 2,
    crisis: tuple[int, int] | None = (2, 1),
    explosion_batch: int | None = 0,
    drop_epoch: tuple[int, int] | None = (1, 3),
    drop_env_epoch: tuple[int, int, int] | None = (0, 4, 1),
    epoch_completed: bool = True,
    lstm: bool | None = None,
    seed: int = 0,
    start: str = "2026-03-01T09:00:00+00:00",
) -> list[dict]:
    """The events of one synthetic run, in emission order, as dicts with Nissa's keys.

    **Arguments:**

    - ``schema``: ``"current"`` or ``"old"`` (``SEED_CULLED``, ``data.from``/``to``, no
      ``group_id``, null seed epochs, ``REWARD_COMPUTED`` rewards, no LSTM health).
    - ``n_envs``, ``slots`` (default ``CURRENT_SLOTS`` or ``OLD_SLOTS``), ``epochs`` (inner
      epochs per batch), ``batches``.
    - ``crisis``: ``(env, batch)`` of the divergence, or ``None``.
    - ``explosion_batch``: the batch whose PPO update reports a ratio explosion, or ``None``.
    - ``drop_epoch``: ``(batch, inner epoch)`` whose events are all dropped, or ``None``.
    - ``drop_env_epoch``: ``(batch, inner epoch, env)`` whose ``EPOCH_COMPLETED`` is
      dropped, or ``None``.
    - ``epoch_completed``: ``False`` writes no ``EPOCH_COMPLETED`` and no
      ``GOVERNOR_ROLLBACK`` (as some older logs), so only accuracies measure progress.
    - ``lstm``: write ``lstm_h_rms`` in PPO updates (default: the current schema only).
    """
    old = schema == "old"
    if schema not in ("current", "old"):
        raise ValueError(f"schema must be 'current' or 'old', got {schema!r}")
    slots = tuple(slots or (OLD_SLOTS if old else CURRENT_SLOTS))
    lstm = (not old) if lstm is None else lstm
    rng = np.random.default_rng(seed)
    t0 = datetime.fromisoformat(start)
    out: list[dict] = []
    counter = [0]

    def ev(etype, t, data, *, epoch=None, slot=None, seed_id=None, severity="info",
           message=""):
        counter[0] += 1
        e = {
            "event_id": str(uuid.UUID(int=counter[0] + (seed << 64))),
            "event_type": etype,
            "timestamp": (t0 + timedelta(seconds=t)).astimezone(UTC).isoformat(),
            "seed_id": seed_id,
            "slot_id": slot,
            "epoch": epoch,
        }
        if not old:
            e["group_id"] = "A"
        e.update(message=message, data=data, severity=severity)
        out.append(e)

    ev("TRAINING_STARTED", 0.0, {
        "n_envs": n_envs, "max_epochs": epochs, "max_batches": batches, "task": "cifar_baseline",
        "host_params": 100_000, "slot_ids": list(slots), "seed": seed,
        "n_episodes": n_envs * batches, "lr": 3e-4, "clip_ratio": 0.2, "entropy_coef": 0.01,
        "param_budget": 500_000, "policy_device": "cpu", "env_devices": ["cpu"] * n_envs,
        "reward_mode": "shaped",
    })
    ev("NARSET_UNKNOWN_PROBE", 0.5, {"note": "a type Esper does not have"})
    period = 10.0
    for b in range(batches):
        stages = {(k, s): "DORMANT" for k in range(n_envs) for s in slots}
        alpha = {(k, s): 0.0 for k in range(n_envs) for s in slots}
        fossil_params = dict.fromkeys(range(n_envs), 0)
        nan_epochs = set()
        for e in range(1, epochs + 1):
            t = (b * (epochs + 2) + e) * period
            drop = drop_epoch == (b, e)
            mark = len(out)
            losses = {}
            for k in range(n_envs):
                loss = 2.3 * math.exp(-0.18 * e) + 0.35 + 0.02 * float(rng.standard_normal())
                if crisis == (k, b):
                    if 5 <= e <= 7:
                        loss = [14.0, 25.0, 40.0][e - 5]
                    elif 8 <= e <= 11:
                        loss = float("nan")
                        nan_epochs.add(e)
                losses[k] = loss
                acc = 0.0 if loss != loss else max(0.0, min(100.0, 100.0 * (1 - loss / 3.0)))
                if epoch_completed and drop_env_epoch != (b, e, k):
                    data = {"env_id": k, "val_accuracy": acc, "val_loss": loss,
                            "inner_epoch": e, "train_loss": loss * 0.9,
                            "train_accuracy": acc + 1.0, "host_grad_norm": 1.0,
                            "seeds": {s: {"stage": stages[(k, s)], "alpha": alpha[(k, s)]}
                                      for s in slots if stages[(k, s)] != "DORMANT"}}
                    if not old:
                        data.update(episode_idx=b * n_envs + k, observation_stats=None)
                    ev("EPOCH_COMPLETED", t + 0.1 * k, data, epoch=e)
            for k in range(n_envs):
                ta = t + 5.0 + 0.2 * k
                _seed_steps(ev, old, k, b, e, ta, slots, stages, alpha, fossil_params, n_envs)
                if crisis == (k, b) and epoch_completed and (e == 7 or e in nan_epochs):
                    reason = "governor_divergence" if e == 7 else "governor_nan"
                    data = {"env_id": k, "device": "cpu", "reason": "Structural Collapse",
                            "loss_at_panic": losses[k], "loss_threshold": 12.0,
                            "consecutive_panics": 3 if e == 7 else 1}
                    if not old:
                        data.update(episode_idx=b * n_envs + k, panic_reason=reason)
                    ev("GOVERNOR_ROLLBACK", ta + 0.05, data, severity="critical",
                       message="Critical instability detected - rollback complete")
                    if old:
                        ev("GOVERNOR_ROLLBACK", ta + 0.06, {
                            "env_id": k, "device": "cpu", "reason": "State Dict Key Mismatch",
                            "missing_keys": ["seed_slots.r0c0.seed.w"], "unexpected_keys": []},
                            severity="warning",
                            message="Rollback load_state_dict had key mismatches")
                    for s in slots:
                        if stages[(k, s)] not in ("DORMANT", "FOSSILIZED"):
                            _prune(ev, old, k, b, s, ta + 0.07, stages, alpha, "governor")
                growth = fossil_params[k] / 100_000
                shock = -ALPHA_SHOCK_COEF * sum(
                    0.25 for s in slots if stages[(k, s)] == "BLENDING")
                acc = 0.0 if losses[k] != losses[k] else max(0.0, 100.0 * (1 - losses[k] / 3))
                comps = {"base_acc_delta": 0.1, "compute_rent": -0.5 * math.log1p(growth),
                         "growth_ratio": growth, "val_acc": acc, "epoch": e,
                         "total_reward": 0.1}
                if old:
                    ev("REWARD_COMPUTED", ta + 0.1, {"env_id": k, "episode": b * n_envs + k,
                                                     **comps}, epoch=e)
                else:
                    comps["alpha_shock"] = shock
                    ev("ANALYTICS_SNAPSHOT", ta + 0.1, {
                        "kind": "last_action", "env_id": k, "episode_idx": b * n_envs + k,
                        "action_name": "SET_ALPHA_TARGET" if e == 6 else "WAIT",
                        "slot_id": slots[0], "action_success": True,
                        "reward_components": comps, "total_reward": 0.1},
                        epoch=e, severity="debug", message="Last action")
            if e == 3:
                ev("SEED_GATE_EVALUATED", t + 8.0, {"env_id": 0, "slot_id": slots[0]},
                   slot=slots[0])
            if drop:
                del out[mark:]
        _batch_end(ev, old, b, n_envs, epochs, (b * (epochs + 2) + epochs + 1) * period,
                   explosion_batch == b, lstm, fossil_params, rng, epoch_completed)
    return out


def _seed_steps(ev, old, k, b, e, t, slots, stages, alpha, fossil_params, n_envs):
    """The seed lifecycle of env ``k`` at inner epoch ``e``: slot 0 germinates at epoch 2,
    trains, blends at 4, holds at 6 and is fossilised at 8 (even envs) or pruned (odd);
    slot 1 germinates at 5 and is still training at the end."""
    plan = {(slots[0], 2): "GERMINATED", (slots[0], 3): "TRAINING", (slots[0], 4): "BLENDING",
            (slots[0], 6): "HOLDING", (slots[0], 8): "END"}
    if len(slots) > 1:
        plan.update({(slots[1], 5): "GERMINATED", (slots[1], 6): "TRAINING"})
    for s in slots:
        step = plan.get((s, e))
        if step is None or (step != "GERMINATED" and stages[(k, s)] == "DORMANT"):
            continue
        if step == "GERMINATED":
            data = {"slot_id": s, "env_id": k, "blueprint_id": "conv_light", "params": 20_000,
                    "alpha": 0.0}
            if not old:
                data.update(episode_idx=b * n_envs + k, alpha_curve="LINEAR")
            ev("SEED_GERMINATED", t, data, epoch=None if old else b + 1, slot=s,
               seed_id=f"seed-{b}-{k}-{s}")
            stages[(k, s)] = "GERMINATED"
        elif step == "END":
            if k % 2 == 0:
                _stage(ev, old, k, b, s, t, stages, "FOSSILIZED")
                data = {"slot_id": s, "env_id": k, "blueprint_id": "conv_light",
                        "improvement": 1.5, "params_added": 20_000}
                if not old:
                    data["episode_idx"] = b * n_envs + k
                ev("SEED_FOSSILIZED", t + 0.01, data, epoch=None if old else b + 1, slot=s)
                stages[(k, s)] = "FOSSILIZED"
                alpha[(k, s)] = 1.0
                fossil_params[k] += 20_000
            else:
                _prune(ev, old, k, b, s, t, stages, alpha, "policy")
        else:
            name = "PROBATIONARY" if old and step == "HOLDING" else step
            _stage(ev, old, k, b, s, t, stages, name)
            if step == "BLENDING":
                alpha[(k, s)] = 0.5


def _stage(ev, old, k, b, s, t, stages, to):
    frm = stages[(k, s)]
    data = ({"from": frm, "to": to, "env_id": k, "device": "cpu"} if old else
            {"slot_id": s, "env_id": k, "from_stage": frm, "to_stage": to,
             "episode_idx": b * 4 + k, "alpha_curve": "LINEAR"})
    ev("SEED_STAGE_CHANGED", t, data, epoch=None if old else b + 1, slot=s)
    stages[(k, s)] = to


def _prune(ev, old, k, b, s, t, stages, alpha, initiator):
    to = "CULLED" if old else "PRUNED"
    _stage(ev, old, k, b, s, t, stages, to)
    if old:
        ev("SEED_CULLED", t + 0.01, {"reason": initiator, "env_id": k, "device": "cpu",
                                     "improvement": -0.5}, slot=s)
    else:
        ev("SEED_PRUNED", t + 0.01, {"slot_id": s, "env_id": k, "reason": initiator,
                                     "episode_idx": b * 4 + k, "initiator": initiator},
           epoch=b + 1, slot=s)
    stages[(k, s)] = to
    alpha[(k, s)] = 0.0


def _batch_end(ev, old, b, n_envs, epochs, t, explosion, lstm, fossil_params, rng, with_epochs):
    done = n_envs * (b + 1)
    ppo = {"policy_loss": -0.01, "value_loss": 0.4, "entropy": 1.2, "grad_norm": 0.9,
           "kl_divergence": 0.01, "clip_fraction": 0.1, "nan_grad_count": 0}
    if lstm:
        ppo.update(lstm_h_rms=1.5 + 0.1 * b, lstm_has_nan=False, lstm_has_inf=False)
    ev("PPO_UPDATE_COMPLETED", t, ppo, epoch=done)
    if explosion:
        data = {"episode": done, "batch": b + 1, "inner_epoch": epochs,
                "total_episodes": n_envs * 10, "detail": "ratio_max=7.2 > 5.0"}
        if not old:
            data["anomaly_type"] = "ratio_explosion"
        ev("RATIO_EXPLOSION_DETECTED", t + 0.5, data, epoch=done, severity="warning")
    ev("MEMORY_WARNING", t + 0.6, {"gpu_utilization": 0.91})
    accs = [float(100 * (1 - (2.3 * math.exp(-0.18 * epochs) + 0.35) / 3.0))
            + 0.1 * float(rng.standard_normal()) for _ in range(n_envs)]
    if b > 0:
        ev("PLATEAU_DETECTED", t + 0.7, {"batch_idx": b + 1, "episodes_completed": done,
                                         "rolling_delta": 0.1, "rolling_avg_accuracy": 70.0,
                                         "prev_rolling_avg_accuracy": 69.9})
    ev("BATCH_EPOCH_COMPLETED", t + 1.0, {
        "episodes_completed": done, "batch_idx": b + 1, "avg_accuracy": sum(accs) / n_envs,
        "avg_reward": 1.0, "total_episodes": n_envs * 10, "n_envs": n_envs,
        "rolling_accuracy": 70.0, "env_accuracies": accs}, epoch=done)
    if not old:
        for k in range(n_envs):
            ev("EPISODE_OUTCOME", t + 1.1 + 0.01 * k, {
                "env_id": k, "episode_idx": b * n_envs + k, "final_accuracy": accs[k],
                "param_ratio": 1.0 + fossil_params[k] / 100_000,
                "num_fossilized": fossil_params[k] // 20_000, "num_contributing_fossilized": 0,
                "episode_reward": 1.0, "stability_score": 0.9, "reward_mode": "shaped",
                "episode_length": epochs, "outcome_type": "timeout", "germinate_count": 2,
                "prune_count": 0, "fossilize_count": 1})


def esper_lines(events: list[dict]) -> list[str]:
    """The events as JSON lines, as Nissa writes them (``json.dumps(..., default=str)``,
    so a NaN is the token ``NaN``)."""
    return [json.dumps(e, default=str) for e in events]


def write_esper_log(base: str | os.PathLike, events: list[dict], *, name: str | None = None
                    ) -> Path:
    """Write ``events`` as ``base/telemetry_<start>/events.jsonl`` (a ``DirectoryOutput``
    run directory) and return the file's path."""
    if name is None:
        first = datetime.fromisoformat(events[0]["timestamp"]) if events else datetime.now(UTC)
        name = f"telemetry_{first.strftime('%Y-%m-%d_%H%M%S')}"
    run = Path(base) / name
    run.mkdir(parents=True, exist_ok=True)
    path = run / "events.jsonl"
    path.write_text("".join(line + "\n" for line in esper_lines(events)))
    return path
