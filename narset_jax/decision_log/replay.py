"""Replay: [`narset_jax.decision_log.replay`][] feeds a log's raw inputs back through the
controller and compares every decision bit for bit (or, with other params, summarises how
the decisions would differ).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from narset_jax.decision_log.reader import DecisionLogError, read_decision_log


@dataclass
class ReplayReport:
    """The result of [`narset_jax.decision_log.replay`][].

    **Fields:**

    - ``first_mismatch``: ``(region, step, field)`` of the first decision that differs
      (in window order, then region order, then column order), or ``None``.
    - ``mismatches``: column -> number of rows where it differs.
    - ``rows_mismatched``: rows with at least one differing column.
    - ``bad_parts``: parts whose sha256 does not match the manifest (file tampering).
    - ``n_windows``, ``n_regions``, ``n_rows``: what was replayed.
    - ``partial``: the log is marked partial.
    - ``what_if``: decisions were re-made with params other than the logged ones.
    - ``diff``: for a what-if, summary statistics of the differences (mean ``|dx_T|``,
      ``|dx_E|``, ``|dspent|``, mode agreement, overdrive and lysis shares old vs new).
    - ``log``: the directory.
    - ``status``: the manifest's status (``complete``, ``partial``, ``writing``).
    - ``digest``: what vouched for the manifest (``sha256``, ``hmac-sha256 (key id ...)``,
      ``no digest (format 1)``).
    - ``notes``: facts to show that do not fail the replay (a format-1 log, part files
      beyond a killed writer's journal).
    """

    first_mismatch: tuple[int, int, str] | None
    mismatches: dict[str, int]
    rows_mismatched: int
    bad_parts: list[str]
    n_windows: int
    n_regions: int
    n_rows: int
    partial: bool
    what_if: bool
    log: str
    diff: dict[str, float] = field(default_factory=dict)
    status: str = "complete"
    digest: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every part's hash and every decision matched."""
        return not self.bad_parts and self.first_mismatch is None

    def to_dict(self) -> dict[str, Any]:
        fm = self.first_mismatch
        return {
            "ok": self.ok,
            "first_mismatch": None
            if fm is None
            else {"region": fm[0], "step": fm[1], "field": fm[2]},
            "mismatches": self.mismatches,
            "rows_mismatched": self.rows_mismatched,
            "bad_parts": self.bad_parts,
            "n_windows": self.n_windows,
            "n_regions": self.n_regions,
            "n_rows": self.n_rows,
            "partial": self.partial,
            "what_if": self.what_if,
            "diff": self.diff,
            "log": self.log,
            "status": self.status,
            "digest": self.digest,
            "notes": self.notes,
        }


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise bit equality (NaN equals NaN of the same bits; floats compared as
    integers of their width)."""
    if a.dtype != b.dtype:
        b = b.astype(a.dtype)
    if np.issubdtype(a.dtype, np.floating):
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        return a.view(width) == b.view(width)
    return a == b


_DIFF_FIELDS = ("x_T", "x_E", "spent")
_JITTED: dict[int, tuple[Callable, Callable]] = {}


def jitted_step(step_fn: Callable | None = None) -> Callable:
    """``jax.jit`` of a step function ``(params, state, telemetry) -> (state, decision)``
    (default [`narset_jax.step.narset_step`][]), cached per function.

    Writers that want [`narset_jax.decision_log.replay`][] to reproduce their decisions bit
    for bit should make them with this, one window per call: XLA on CPU may contract
    multiply-adds into FMAs differently when the same step is compiled inside a larger
    program (a ``lax.scan`` with other work, a masked rollout), which changes last bits.
    """
    import jax

    from narset_jax.step import narset_step

    fn = narset_step if step_fn is None else step_fn
    hit = _JITTED.get(id(fn))
    if hit is None or hit[0] is not fn:
        hit = (fn, jax.jit(fn))
        _JITTED[id(fn)] = hit
    return hit[1]


def replay(
    path: str | os.PathLike,
    params=None,
    *,
    step_fn: Callable | None = None,
    allow_partial: bool = False,
    progress: Callable[[int], None] | None = None,
    key: bytes | None = None,
) -> ReplayReport:
    """Re-run the controller on a log's raw inputs, window by window, and compare.

    Each window's raw telemetry columns are fed, in the logged region order, to the step
    (starting from a fresh [`narset_jax.NarsetState`][] with the logged region ids), and
    every logged column is compared with the re-made decision bit for bit.

    **Arguments:**

    - ``path``: the log directory.
    - ``params``: ``None`` to verify with the logged params; other
      [`narset_jax.NarsetParams`][] re-decide the same inputs (a what-if: the report's
      ``diff`` summarises the changes, and mismatches are expected).
    - ``step_fn``: ``(params, state, telemetry) -> (state, decision)``; default
      [`narset_jax.step.narset_step`][]. Logs of other controllers (e.g. the simulator's
      baselines) need theirs.
    - ``allow_partial``: replay a partial log (the windows it has).
    - ``progress``: called with the number of windows done after each window.
    - ``key``: the HMAC key the log was signed with, if it was
      ([`narset_jax.decision_log.read_decision_log`][]).

    **Returns:** a [`narset_jax.decision_log.ReplayReport`][].

    **Raises:** [`narset_jax.decision_log.DecisionLogError`][] for a missing, partial (unless
    allowed) or unreadable log, or one without params when none are given;
    [`narset_jax.decision_log.LogVerificationError`][] for a manifest that does not verify
    (edited, forged, inconsistent) or a part that disagrees with it.
    """
    import jax.numpy as jnp

    from narset_jax.step import init_state
    from narset_jax.telemetry import BOOL_FIELDS, TELEMETRY_FIELDS, Telemetry

    log = read_decision_log(path, allow_partial=allow_partial, key=key)
    logged = log.params()
    what_if = params is not None
    if params is None:
        if logged is None:
            raise DecisionLogError(f"{log.path}: the manifest has no params; pass params")
        params = logged
    missing = [k for k in TELEMETRY_FIELDS + ("region",) if k not in log.column_names]
    if missing:
        raise DecisionLogError(
            f"{log.path}: cannot replay: the log lacks column(s) {', '.join(missing)}"
        )
    dtype = jnp.dtype(log.manifest.get("dtype") or "float32")
    step = jitted_step(step_fn)
    n = log.n_regions
    bad_parts = log.bad_parts()
    counts: dict[str, int] = {}
    first = None
    rows_bad = 0
    windows = 0
    state = None
    region_ids = None
    sums = {f"mean_abs_d{k}": 0.0 for k in _DIFF_FIELDS}
    agree = {"mode_agreement": 0.0, "overdrive_old": 0.0, "overdrive_new": 0.0,
             "lysis_old": 0.0, "lysis_new": 0.0}
    for row in log.iter_windows():
        if state is None:
            region_ids = row["region"]
            state = init_state(n, dtype, region_ids=region_ids)
        elif not np.array_equal(row["region"], region_ids):
            raise DecisionLogError(f"{log.path}: region order changes at window {windows}")
        tel = Telemetry(
            **{
                k: jnp.asarray(row[k], bool if k in BOOL_FIELDS else dtype)
                for k in TELEMETRY_FIELDS
            }
        )
        state, decision = step(params, state, tel)
        new = {k: np.asarray(v) for k, v in decision.columns().items()}
        any_bad = np.zeros(n, bool)
        first_here = None
        for name in log.column_names:
            if name not in new:
                continue
            same = _same(row[name], new[name])
            if not same.all():
                bad = ~same
                counts[name] = counts.get(name, 0) + int(bad.sum())
                any_bad |= bad
                idx = int(np.argmax(bad))
                if first_here is None or idx < first_here[0]:
                    first_here = (idx, name)
        if first is None and first_here is not None:
            idx, name = first_here
            first = (int(region_ids[idx]), int(row["step"][idx]), name)
        rows_bad += int(any_bad.sum())
        if what_if:
            for k in _DIFF_FIELDS:
                sums[f"mean_abs_d{k}"] += float(np.abs(new[k] - row[k]).mean())
            agree["mode_agreement"] += float((new["mode"] == row["mode"]).mean())
            agree["overdrive_old"] += float((row["overdrive_T"] | row["overdrive_E"]).mean())
            agree["overdrive_new"] += float((new["overdrive_T"] | new["overdrive_E"]).mean())
            agree["lysis_old"] += float((row["tier_E"] == 2).mean())
            agree["lysis_new"] += float((new["tier_E"] == 2).mean())
        windows += 1
        if progress is not None:
            progress(windows)
    diff = {}
    if what_if and windows:
        diff = {k: v / windows for k, v in {**sums, **agree}.items()}
    return ReplayReport(
        first_mismatch=first,
        mismatches=counts,
        rows_mismatched=rows_bad,
        bad_parts=bad_parts,
        n_windows=windows,
        n_regions=n,
        n_rows=windows * n,
        partial=not log.complete,
        what_if=what_if,
        log=str(log.path),
        diff=diff,
        status=log.status,
        digest=log.digest,
        notes=list(log.notes),
    )
