"""Coverage of the twelve inputs by an Esper log: which inputs the log carries at all
(``carried_inputs``), the values that stand in for the ones it never carries
(``neutral_fills``), and the report of how many region-windows had a real measurement of
each input and from which event type ([`narset_jax.ingest.esper_coverage.Coverage`][]).

Why a never-measured input gets a *neutral* value rather than a calm zero, and what the
controller then does, is in ``docs/telemetry.md`` ("Inputs the log never carries").
"""

from __future__ import annotations

import math

from narset_jax.ingest.esper_schema import (
    BATCH_END_TYPES,
    EPOCH,
    PPO,
    R_ACC,
    R_ANOMALY,
    R_BATCH_END,
    R_CHURN,
    R_GROWTH,
    R_LOSS,
    R_LSTM,
    R_ROLLBACK,
    R_SEEDS,
    R_SHOCK,
    R_STAGE,
)
from narset_jax.telemetry import TELEMETRY_FIELDS

# Inputs whose zero in a window is itself a measurement once the log carries them.
COUNTS = ("rollbacks", "anomalies", "nonfinite", "churn")


def carried_inputs(codes: dict, types: dict) -> dict[str, bool]:
    """Which of the twelve inputs a log carries, from the readings it holds (``codes``:
    reading code -> count) and its event types (``types``: type -> count).

    A count (rollbacks, anomalies, churn) is carried when its events occur, or when the
    log shows that the channel that would have written them was live: rollbacks when the
    governor's per-epoch validation is logged (``EPOCH_COMPLETED``), anomalies when PPO
    updates are (``PPO_UPDATE_COMPLETED``), churn and seed counts when seed lifecycle
    events or ``EPOCH_COMPLETED.seeds`` snapshots are. ``loss`` is carried by
    ``EPOCH_COMPLETED.val_loss`` or, in a log without it, by an accuracy (see
    ``loss_source``).
    """
    c = lambda *k: any(codes.get(x, 0) for x in k)  # noqa: E731
    t = lambda *k: any(types.get(x, 0) for x in k)  # noqa: E731
    out = {
        "loss": loss_source(codes) is not None,
        "rollbacks": c(R_ROLLBACK) or t(EPOCH),
        "anomalies": c(R_ANOMALY) or t(PPO),
        "lstm_health": c(R_LSTM),
        "growth_ratio": c(R_GROWTH),
        "churn": c(R_CHURN, R_SEEDS, R_STAGE),
        "alpha_shock": c(R_SHOCK),
        "active_seeds": c(R_STAGE, R_SEEDS),
        "fossilised_seeds": c(R_STAGE, R_SEEDS),
        "boundary": t(EPOCH) or c(R_BATCH_END) or t(*BATCH_END_TYPES),
    }
    out["nonfinite"] = out["loss"] or out["rollbacks"] or out["anomalies"]
    out["valid"] = out["loss"]
    return {k: bool(out[k]) for k in TELEMETRY_FIELDS}


def loss_source(codes: dict) -> str | None:
    """``"val_loss"`` (``EPOCH_COMPLETED``), ``"accuracy"`` (no ``val_loss`` anywhere in the
    log, but accuracies: the error rate ``1 - accuracy / 100`` stands in) or ``None``."""
    if codes.get(R_LOSS, 0):
        return "val_loss"
    if codes.get(R_ACC, 0):
        return "accuracy"
    return None


def _rent(g: float) -> float:
    return min(0.5 * math.log1p(g), 1.5)


def neutral_fills(params=None) -> dict[str, float | bool]:
    """The value of each input that a log never carries: the one that leaves its term of
    the scores neutral under ``params`` (default: the defaults).

    - stability inputs (rollbacks, anomalies, nonfinite, LSTM health): 0 (LSTM: below
      ``lstm_warn``). The instability index is a *sum* of evidence, so an unknown term
      adds nothing and ``S`` rests on the measured terms.
    - efficiency inputs: the value whose term of the *weighted mean* ``F`` is 1/2, "no
      evidence either way": growth ratio where the rent is halfway between its green and
      red values, churn ``churn_ref``, alpha shock ``shock_ref``, one active and one
      fossilised seed.
    - ``boundary``: ``False`` (irreversible work is never authorised on unknown ground).
    """
    if params is None:
        from narset_jax.params import NarsetParams

        params = NarsetParams()
    f = lambda name: float(getattr(params, name))  # noqa: E731
    mid = 0.5 * (_rent(f("growth_green")) + _rent(f("growth_red")))
    return {
        "rollbacks": 0.0,
        "anomalies": 0.0,
        "nonfinite": 0.0,
        "lstm_health": 0.0,
        "growth_ratio": math.expm1(2.0 * mid),
        "churn": f("churn_ref"),
        "alpha_shock": f("shock_ref"),
        "active_seeds": 1.0,
        "fossilised_seeds": 1.0,
        "boundary": False,
    }


_TREATED = {
    "loss": "no loss: every region-window is missing (valid = false), so the controller "
            "holds its initial state",
    "valid": "no loss: every region-window is missing",
    "boundary": "never a boundary (irreversible work is not authorised)",
}


class Coverage:
    """Running counts for the coverage report (``summary.json``'s ``coverage``)."""

    def __init__(self):
        self.measured = dict.fromkeys(TELEMETRY_FIELDS, 0)
        self.sources = {k: {} for k in TELEMETRY_FIELDS}
        self.types: dict[str, int] = {}
        self.ignored: dict[str, int] = {}
        self.unknown: dict[str, int] = {}
        self.codes: dict[int, int] = {}

    def source(self, field: str, etype: str, n: int = 1) -> None:
        s = self.sources[field]
        s[etype] = s.get(etype, 0) + n

    def event(self, etype: str, status: str) -> None:
        table = {"used": self.types, "ignored": self.ignored, "unknown": self.unknown}[status]
        table[etype] = table.get(etype, 0) + 1

    def report(self, carried: dict, fills: dict, loss_from: str | None, total: int) -> dict:
        """The coverage dict: per input its status, measured region-windows, sources and,
        for a never-measured one, what stands in for it."""
        inputs = {}
        for k in TELEMETRY_FIELDS:
            entry = {"measured_region_windows": int(self.measured[k]),
                     "sources": dict(sorted(self.sources[k].items()))}
            if carried.get(k):
                entry["status"] = "measured"
            else:
                entry["status"] = "never_measured"
                if k in fills:
                    v = fills[k]
                    entry["fill"] = v
                    entry["treated_as"] = _TREATED.get(k) or (
                        f"unknown: filled with {v:.6g} (neutral: its score term is "
                        + ("0)" if k in ("rollbacks", "anomalies", "nonfinite", "lstm_health")
                           else "1/2)"))
                else:
                    entry["treated_as"] = _TREATED[k]
            inputs[k] = entry
        return {
            "region_windows": int(total),
            "valid_region_windows": int(self.measured["valid"]),
            "loss_source": {"val_loss": "EPOCH_COMPLETED.val_loss",
                            "accuracy": "1 - accuracy/100 (no val_loss in the log)"}.get(
                                loss_from or "", None),
            "never_measured": [k for k in TELEMETRY_FIELDS if not carried.get(k)],
            "inputs": inputs,
            "event_types": dict(sorted(self.types.items())),
            "ignored_event_types": dict(sorted(self.ignored.items())),
            "unknown_event_types": dict(sorted(self.unknown.items())),
        }


def format_coverage(cov: dict) -> list[str]:
    """The coverage report as lines for stderr."""
    lines = [f"coverage: {cov['valid_region_windows']} of {cov['region_windows']} "
             "region-windows valid; region-windows with a real measurement, by input:"]
    for k, e in cov["inputs"].items():
        src = ", ".join(f"{t} {n}" for t, n in e["sources"].items()) or "-"
        if e["status"] == "never_measured":
            lines.append(f"  {k:<17}never measured: {e['treated_as']}")
        else:
            lines.append(f"  {k:<17}{e['measured_region_windows']:>9}  from {src}")
    if cov.get("unknown_event_types"):
        n = sum(cov["unknown_event_types"].values())
        lines.append(f"  unknown event types ({n} events, not used): "
                     + ", ".join(cov["unknown_event_types"]))
    return lines
