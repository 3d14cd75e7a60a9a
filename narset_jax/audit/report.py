"""Auditing a decision log: read it (verified, as replay reads it), score every region
([`narset_jax.audit.score`][]), rank, flag, and compare with the ground truth when the
log has one ([`narset_jax.decision_log.read_truth`][])."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from narset_jax.audit import score as sc

__all__ = ["DEFAULT_FPR", "AuditReport", "audit_arrays", "audit_log", "describe", "lines"]

DEFAULT_FPR = 0.01
# Raw inputs and decisions the audit reads from the log.
COLUMNS = ("region", "loss", "rollbacks", "anomalies", "nonfinite", "lstm_health", "valid",
           "spent", "price", "mode_weight")
# Below this many regions the mesh is too small to be its own null: scores, no flags.
MIN_REGIONS = 10


@dataclass
class AuditReport:
    """The audit of one log: ``regions`` ranked by ``z`` (most suspicious first), each a
    dict of its id, rank, ``z``, ``p``, ``flagged`` and its evidence; ``truth`` (precision,
    recall, false-positive rate: [`narset_jax.audit.score.precision_recall`][]) or ``None``
    without ground truth; ``notes`` say what the reader should know."""

    path: str
    source: str
    n_regions: int
    n_windows: int
    fpr: float
    threshold: float
    centre: float
    scale: float
    regions: list[dict[str, Any]]
    truth: dict[str, Any] | None
    truth_source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return [r for r in self.regions if r["flagged"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "log": self.path,
            "source": self.source,
            "n_regions": self.n_regions,
            "n_windows": self.n_windows,
            "method": "robust z of log transient instability (docs/gaslighting.md, Audit)",
            "fpr": self.fpr,
            "threshold_z": self.threshold,
            "null_centre": self.centre,
            "null_scale": self.scale,
            "n_flagged": len(self.flagged),
            "expected_false_flags": self.fpr * self.n_regions,
            "ground_truth": self.truth is not None,
            "truth_source": self.truth_source,
            "precision": None if self.truth is None else self.truth["precision"],
            "recall": None if self.truth is None else self.truth["recall"],
            "truth": self.truth,
            "notes": self.notes,
            "regions": self.regions,
        }


def _clean(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def audit_arrays(cols: dict[str, np.ndarray], scales: dict[str, float], *,
                 fpr: float = DEFAULT_FPR, truth=None) -> dict[str, Any]:
    """Score ``[T, N]`` columns (``COLUMNS``; ``region`` may be ``[N]``). Returns ``z``,
    ``p``, ``flagged``, ``order`` (most suspicious first), ``evidence``, ``centre``,
    ``scale``, ``threshold`` and, with ``truth`` (``[N]`` bool), ``truth`` metrics."""
    zc = sc.threshold(fpr)
    i = sc.instability(cols["rollbacks"], cols["anomalies"], cols["nonfinite"],
                       cols["lstm_health"], cols["loss"], cols["valid"], scales)
    e = sc.transient_excess(i)
    u, _ = sc.statistic(e, i)
    z, centre, scale = sc.robust_z(u)
    n = i.shape[1]
    flagged = np.isfinite(z) & (z > zc) & (n >= MIN_REGIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ev = sc.evidence(i, e, cols["loss"], cols["spent"], cols["price"], cols["mode_weight"])
    order = np.argsort(-np.where(np.isfinite(z), z, -np.inf), kind="stable")
    out = {"z": z, "p": sc.p_value(z), "flagged": flagged, "order": order, "evidence": ev,
           "centre": centre, "scale": scale, "threshold": zc}
    if truth is not None:
        out["truth"] = sc.precision_recall(z, truth, flagged)
    return out


def _read_columns(log) -> dict[str, np.ndarray]:
    from narset_jax.decision_log import DecisionLogError

    missing = [c for c in COLUMNS if c not in log.column_names]
    if missing:
        raise DecisionLogError(f"{log.path}: the log has no column {missing[0]!r} (the audit "
                               "reads the raw inputs and decisions of narset simulate/decide)")
    n = log.n_regions
    chunks: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    for _, table in log.iter_parts():
        for c in COLUMNS:
            chunks[c].append(table.column(c).to_numpy(zero_copy_only=False).reshape(-1, n))
    if not chunks["region"]:
        raise DecisionLogError(f"{log.path}: the log has no windows to audit")
    return {c: np.concatenate(v) for c, v in chunks.items()}


def _scales(log) -> dict[str, float]:
    params = log.params()
    if params is None:
        from narset_jax.params import NarsetParams

        params = NarsetParams()
    return {k: float(getattr(params, k)) for k in sc.SCALE_FIELDS}


def audit_log(path: str | os.PathLike, *, fpr: float = DEFAULT_FPR,
              allow_partial: bool = False, key: bytes | None = None) -> AuditReport:
    """Audit the decision log in ``path`` (from ``narset simulate`` or ``narset decide``).

    The manifest is verified as ``narset replay`` verifies it, and every part's sha256;
    the ground truth, if the directory has one, must belong to this log. ``fpr``: the
    false-positive rate the flagging threshold is set for. ``key``: the log's HMAC key.

    **Raises:** [`narset_jax.decision_log.DecisionLogError`][] (one line naming the
    file) for a missing, partial (without ``allow_partial``), edited or unreadable log.
    """
    from narset_jax.decision_log import LogVerificationError, read_decision_log, read_truth

    sc.threshold(fpr)  # a bad fpr fails before any reading
    log = read_decision_log(path, allow_partial=allow_partial, key=key)
    bad = log.bad_parts()
    if bad:
        raise LogVerificationError(f"{log.path / bad[0]}: sha256 does not match the manifest "
                                   f"({len(bad)} part(s) changed)")
    truth = read_truth(log, key=key)
    cols = _read_columns(log)
    n_windows, n = cols["loss"].shape
    ids = cols["region"][0].astype(np.int64)
    spoofer = None
    notes = list(log.notes)
    if truth is not None:
        pos = {int(r): j for j, r in enumerate(truth.regions)}
        if set(pos) != set(ids.tolist()):
            raise LogVerificationError(f"{log.path}: the ground truth's regions are not the "
                                       "log's")
        spoofer = truth.spoofer[[pos[int(r)] for r in ids]]
    else:
        notes.append("no ground truth in this log (only narset simulate records which "
                     "regions spoof): no precision or recall")
    if n < MIN_REGIONS:
        notes.append(f"{n} regions: too few for the mesh to be its own null "
                     f"(at least {MIN_REGIONS}); ranked, nobody flagged")
    res = audit_arrays(cols, _scales(log), fpr=fpr, truth=spoofer)
    ev = res["evidence"]
    regions = []
    for rank, j in enumerate(res["order"], start=1):
        entry: dict[str, Any] = {
            "region": int(ids[j]),
            "rank": rank,
            "z": _clean(res["z"][j]),
            "p": _clean(res["p"][j]),
            "flagged": bool(res["flagged"][j]),
        }
        if spoofer is not None:
            entry["spoofer"] = bool(spoofer[j])
        entry["evidence"] = {k: _clean(v[j]) for k, v in ev.items()}
        regions.append(entry)
    config = log.manifest.get("config") or {}
    source = str(config.get("command") or ("decide" if "ingest" in log.manifest else
                                           "unknown"))
    return AuditReport(
        path=str(log.path), source=source, n_regions=n, n_windows=n_windows, fpr=fpr,
        threshold=res["threshold"], centre=_clean(res["centre"]), scale=_clean(res["scale"]),
        regions=regions, truth=res.get("truth"),
        truth_source=None if truth is None else truth.meta.get("source"), notes=notes,
    )


def describe(entry: dict[str, Any]) -> str:
    """One line of evidence for a ranked region."""
    ev = entry["evidence"]

    def num(k, fmt):
        v = ev.get(k)
        return "n/a" if v is None else format(v, fmt)

    share = ev.get("transient_share")
    share = "n/a" if share is None else f"{100 * share:.0f}%"
    z = "n/a" if entry["z"] is None else f"{entry['z']:.1f}"
    p = "n/a" if entry["p"] is None else f"{entry['p']:.1g}"
    parts = [
        f"z {z} (p {p})",
        f"transient instability {num('transient_rate', '.2f')}/window ({share} of its "
        f"{num('instability', '.2f')})",
        f"{num('spike_windows', '.0f')} spike windows ({num('spikes_in_a_row', '.0%')} "
        "followed by another)",
        f"vs loss r={num('loss_corroboration', '+.2f')}",
        f"vs mesh r={num('mesh_correlation', '+.2f')}",
    ]
    if ev.get("contested_correlation") is not None:
        parts.append(f"vs price r={num('contested_correlation', '+.2f')}")
    parts.append(f"spend {num('spend_ratio', '.2f')}x median, progress "
                 f"{num('progress', '+.3f')} vs median")
    return ", ".join(parts)


def lines(report: AuditReport, top: int = 10) -> list[str]:
    """What ``narset audit`` prints: notes, the count flagged, the ``top`` regions with
    their evidence, and the ground truth's verdict (or that there is none)."""
    out = [f"narset audit: note: {note}" for note in report.notes]
    out.append(
        f"narset audit: {report.n_regions} regions x {report.n_windows} windows "
        f"({report.source} log); {len(report.flagged)} flagged at z > {report.threshold:.2f} "
        f"(fpr {report.fpr:g}: about {report.fpr * report.n_regions:.1f} honest regions "
        "flagged by chance)")
    for entry in report.regions[:top]:
        mark = "FLAGGED" if entry["flagged"] else "       "
        if "spoofer" in entry:
            mark += " [spoofer]" if entry["spoofer"] else " [honest]"
        out.append(f"  #{entry['rank']:<3d} region {entry['region']:<6d} {mark} "
                   f"{describe(entry)}")
    t = report.truth
    if t is None:
        out.append("narset audit: no ground truth: precision and recall not computed")
    elif t["n_spoofers"]:
        fp = t["flagged_precision"]
        out.append(
            f"narset audit: ground truth ({report.truth_source}): {t['n_spoofers']} spoofers; "
            f"top-{t['n_spoofers']} precision {t['precision']:.2f}, recall {t['recall']:.2f}; "
            f"flagged precision {'n/a' if fp is None else format(fp, '.2f')}, recall "
            f"{t['flagged_recall']:.2f}; false-positive rate {t['false_positive_rate']:.3f} "
            f"({t['false_positives']} honest flagged)")
    else:
        out.append(
            f"narset audit: ground truth ({report.truth_source}): no spoofers; false-positive "
            f"rate {t['false_positive_rate']:.3f} ({t['false_positives']} of {t['n_honest']} "
            "flagged)")
    return out
