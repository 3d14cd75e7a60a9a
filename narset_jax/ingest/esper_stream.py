"""Esper events -> Narset windows: the region layout (``env`` or ``env,slot``), the
window an event belongs to (batch and inner epoch, batch, or time span; events without
an epoch placed by timestamp), and one window's aggregation into the twelve ``[N]``
telemetry columns. [`narset_jax.ingest.esper_stream.EsperStream`][] is fed parsed events
in file (or arrival) order by the file reader and by the online API alike, so both build
the same windows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from narset_jax.ingest.accumulate import MISSING_FILL
from narset_jax.ingest.esper_coverage import Coverage, carried_inputs
from narset_jax.ingest.esper_schema import (
    EPOCH,
    R_ACC,
    R_ANOMALY,
    R_BATCH_END,
    R_CHURN,
    R_GROWTH,
    R_LOSS,
    R_LSTM,
    R_NONFINITE,
    R_ROLLBACK,
    R_SEEDS,
    R_SHOCK,
    R_STAGE,
    EsperEvent,
    format_timestamp,
)
from narset_jax.ingest.schema import Malformed
from narset_jax.ingest.stream import WindowStream, clip_overflow
from narset_jax.telemetry import TELEMETRY_FIELDS

WINDOWINGS = ("epoch", "batch", "time")
UNITS = ("env", "env,slot")
_SLOT_RC = re.compile(r"r(\d+)c(\d+)$")
_DROP = -1  # an event counted as out of range: not folded


def slot_order(slot: str) -> tuple:
    """Sort key of a slot id: ``r{row}c{col}`` by row and column, other names after, by
    name."""
    m = _SLOT_RC.match(slot)
    return (0, int(m[1]), int(m[2]), "") if m else (1, 0, 0, slot)


class RegionLayout:
    """Esper's units as Narset regions: ``unit="env"``, region ``e`` is env ``e``;
    ``unit="env,slot"``, region ``e * S + j`` is slot ``slots[j]`` of env ``e``."""

    def __init__(self, n_envs: int, slots=(), unit: str = "env"):
        if unit not in UNITS:
            raise ValueError(f"region must be one of {', '.join(UNITS)}, got {unit!r}")
        self.unit, self.n_envs = unit, int(n_envs)
        self.slots = sorted(set(slots), key=slot_order)
        if unit == "env,slot" and not self.slots:
            raise ValueError("--region env,slot needs slot ids (the log names none)")
        self.slot_index = {s: j for j, s in enumerate(self.slots)}
        s = len(self.slots) if unit == "env,slot" else 1
        self.n = self.n_envs * s
        self.env_of = np.repeat(np.arange(self.n_envs), s)

    def region(self, env: int, slot: str | None) -> int | None:
        """The region of a slot-level reading, ``None`` for a slot not in the layout."""
        if self.unit == "env":
            return env
        j = self.slot_index.get(slot)
        return None if j is None else env * len(self.slots) + j

    def label(self, region: int) -> tuple[int, str | None]:
        """``(env_id, slot_id)`` of a region (``slot_id`` ``None`` for ``unit="env"``)."""
        if self.unit == "env":
            return region, None
        s = len(self.slots)
        return region // s, self.slots[region % s]

    def to_dict(self) -> dict:
        return {"unit": self.unit, "n_envs": self.n_envs, "slots": list(self.slots),
                "n_regions": self.n}


class EsperWindow:
    """One window's running aggregates (per env, per region and global)."""

    def __init__(self, n_envs: int, n: int, start: float, batch: int, inner: int | None,
                 batch_start: bool):
        e = n_envs
        self.start = self.end = start
        self.batch, self.inner, self.batch_start = batch, inner, batch_start
        self.seen = np.zeros(e, bool)
        self.loss_sum = np.zeros(e)
        self.loss_n = np.zeros(e)
        self.loss_bad = np.zeros(e, bool)
        self.validated = np.zeros(e, bool)
        self.rollbacks = np.zeros(e)
        self.rolled_back = np.zeros(e, bool)
        self.nonfinite = np.zeros(e)
        self.growth = np.full(e, np.nan)
        self.growth_bad = np.zeros(e, bool)
        self.shock = np.zeros(e)
        self.shock_seen = np.zeros(e, bool)
        self.churn = np.zeros(n)
        self.anomalies = 0.0
        self.nonfinite_all = 0.0
        self.lstm = -np.inf
        self.lstm_bad = False
        self.batch_end = False
        self.ops: list = []  # seed stage changes and snapshots, in arrival order


class EsperStream(WindowStream):
    """The window stream of Esper events (see the module docstring).

    **Arguments** (besides those of ``WindowStream``): ``layout`` (a
    [`narset_jax.ingest.esper_stream.RegionLayout`][]); ``windowing`` (``"epoch"``,
    ``"batch"`` or ``"time"``); ``span`` (inner epochs per batch) and ``first_epoch``
    (the first inner epoch) for ``"epoch"``; ``window_seconds`` for ``"time"``;
    ``carried`` (input -> whether the log carries it; ``None`` decides from what has been
    read so far); ``loss_from`` (``"val_loss"``, ``"accuracy"`` or ``None``: which
    readings are the loss, see [`narset_jax.ingest.esper_coverage.loss_source`][]);
    ``fills`` (the neutral values of never-carried inputs); ``coverage``.
    """

    def __init__(self, layout: RegionLayout, *, windowing: str, span: int | None = None,
                 first_epoch: int = 1, window_seconds: float | None = None, lag: int = 2,
                 max_gap: int = 100_000, first_window: int | None = None, report=None,
                 source: str = "events", dtype="float32", carried: dict | None = None,
                 loss_from: str | None = "val_loss", fills: dict,
                 coverage: Coverage | None = None):
        if windowing not in WINDOWINGS:
            raise ValueError(f"windowing must be one of {', '.join(WINDOWINGS)}, got "
                             f"{windowing!r}")
        if windowing == "time" and not (window_seconds and window_seconds > 0):
            raise ValueError("time windows need window_seconds > 0 (--window-seconds)")
        super().__init__(layout.n, lag, max_gap, first_window, report, source, dtype)
        self.layout, self.windowing = layout, windowing
        self.span, self.first_epoch, self.window_seconds = span, first_epoch, window_seconds
        self.carried_fixed, self.fills, self.loss_from = carried, fills, loss_from
        self.coverage = coverage or Coverage()
        self.starts: dict[int, float] = {}
        self.pending: list = []
        self.batch = -1
        self.env_last: dict[int, int] = {}
        self.ended = True  # the first anchor starts batch 0
        self.t0: float | None = None
        self.meta: dict[int, tuple] = {}  # closed window -> (batch, inner epoch, end ts)
        self.last_end: float | None = None
        e = layout.n_envs
        self.loss_carry = np.full(e, np.nan)
        self.growth_carry = np.ones(e)
        self.lstm_carry = 0.0
        self.seeds: dict[tuple[int, str], int] = {}
        self.group: str | None = None

    # ---- which window --------------------------------------------------------------

    def new_run(self) -> None:
        """The next events are a new run (the next file of a directory): a new batch."""
        self.ended = True
        self.env_last = {}

    def feed(self, ev: EsperEvent, where: str) -> Iterator[tuple[int, dict]]:
        """Fold one parsed event in; yield the windows it closes. Raises ``Malformed``
        (``late_event``) for an event older than every open window."""
        self.coverage.event(ev.etype, ev.status)
        if ev.group is not None and self.group is None:
            self.group = ev.group
        if ev.status != "used":
            return
        w = self._window(ev, where)
        if w is None:
            self.pending.append(ev)  # before the first window: folded into it
            return
        if w == _DROP:
            return
        acc = self.open[w]
        if self.pending:
            pending, self.pending = self.pending, []
            for p in pending:
                self._fold(acc, p, where)
        self._fold(acc, ev, where)
        acc.end = max(acc.end, ev.ts)
        if any(r.code == R_BATCH_END for r in ev.readings):
            self.ended = True
        yield from self.advance(w)

    def _window(self, ev: EsperEvent, where: str) -> int | None:
        if self.windowing == "epoch":
            if ev.etype == EPOCH:
                return self._anchor(ev, where)
            return self._place(ev, where)
        if self.windowing == "batch":
            if not self.open and self.next_emit is None:
                return self._open(self.batch + 1, ev.ts, None, True, where, new_batch=True)
            if ev.env is not None and self.ended:
                return self._open(self.batch + 1, ev.ts, None, True, where, new_batch=True)
            return self._place(ev, where)
        if self.t0 is None:
            self.t0 = ev.ts
        d = ev.ts - self.t0
        if d < 0:
            raise Malformed("late_event", f"{ev.etype} at {format_timestamp(ev.ts)} is before "
                            f"the first event ({format_timestamp(self.t0)})")
        w = int(d // self.window_seconds)
        if w in self.open:
            return w
        return self._open(w, self.t0 + w * self.window_seconds, None, False, where)

    def _anchor(self, ev: EsperEvent, where: str) -> int | None:
        e, env = ev.inner_epoch, ev.env
        if self.span is None:
            raise Malformed("missing_field", "epoch windows need the inner epochs per batch "
                            "(TRAINING_STARTED.max_epochs, or epochs_per_batch=)")
        if not self.first_epoch <= e < self.first_epoch + self.span:
            self.report.count_out_of_range(
                "inner_epoch", where, f"inner epoch {e} outside {self.first_epoch}.."
                f"{self.first_epoch + self.span - 1} (epochs per batch)")
            return _DROP
        new = self.ended or (env in self.env_last and e <= self.env_last[env])
        if new:
            self.batch += 1
            self.env_last = {}
            self.ended = False
        self.env_last[env] = e
        w = self.batch * self.span + (e - self.first_epoch)
        if w in self.open:
            self.starts[w] = min(self.starts[w], ev.ts)
            return w
        return self._open(w, ev.ts, e, new, where)

    def _open(self, w: int, start: float, inner, batch_start: bool, where: str, *,
              new_batch: bool = False) -> int | None:
        if self.next_emit is not None and w < self.next_emit:
            raise Malformed("late_event", f"window {w} arrived after it was closed (lag "
                            f"{self.lag}; a larger --lag allows more skew)")
        if self.too_far(w):
            self.report.count_out_of_range(
                "window", where, f"window {w} is more than {self.max_gap} windows past the "
                f"newest")
            return _DROP
        if new_batch:
            self.batch += 1
            self.ended = False
        batch = w if self.windowing == "batch" else (
            self.batch if self.windowing == "epoch" else -1)
        self.open[w] = EsperWindow(self.layout.n_envs, self.n, start, batch, inner, batch_start)
        self.starts[w] = start
        return w

    def _place(self, ev: EsperEvent, where: str) -> int | None:
        """The open window in force at the event's timestamp: the latest one that started
        at or before it."""
        if not self.open:
            return None
        best = None
        for w, s in self.starts.items():
            if s <= ev.ts and (best is None or w > best):
                best = w
        if best is None:
            oldest = min(self.open)
            if self.report.windows == 0:
                return oldest  # before the first window: it belongs to the first
            raise Malformed(
                "late_event", f"{ev.etype} at {format_timestamp(ev.ts)} is older than every "
                f"open window (window {oldest} starts at "
                f"{format_timestamp(self.starts[oldest])}; a larger --lag allows more skew)")
        return best

    # ---- folding -------------------------------------------------------------------

    def _fold(self, acc: EsperWindow, ev: EsperEvent, where: str) -> None:
        cov, rep, layout = self.coverage, self.report, self.layout
        et = ev.etype
        for r in ev.readings:
            code, env, v = r.code, r.env, r.value
            cov.codes[code] = cov.codes.get(code, 0) + 1
            if env is not None and not 0 <= env < layout.n_envs:
                rep.count_unknown_region(env)
                rep.note(f"{where}: unknown env {env} (n_envs = {layout.n_envs})")
                continue
            if code == R_LOSS or code == R_ACC:
                if code != (R_LOSS if self.loss_from == "val_loss" else
                            R_ACC if self.loss_from == "accuracy" else -1):
                    continue
                if code == R_ACC and v == v and not 0.0 <= v <= 100.0:
                    rep.count_out_of_range("accuracy", where, f"accuracy {v!r} outside 0..100")
                    continue
                if code == R_ACC:
                    v = 1.0 - v / 100.0
                if not self._finite_ok("loss", v, where):
                    continue
                acc.seen[env] = True
                cov.source("loss", et)
                if v - v == 0.0:
                    acc.loss_sum[env] += v
                    acc.loss_n[env] += 1
                    acc.validated[env] |= code == R_LOSS
                else:
                    acc.loss_bad[env] = True
                    acc.nonfinite[env] += 1
                    rep.nonfinite_values += 1
                    cov.source("nonfinite", et)
            elif code == R_ROLLBACK:
                acc.seen[env] = True
                acc.rollbacks[env] += 1
                acc.rolled_back[env] = True
                cov.source("rollbacks", et)
                if v:
                    acc.nonfinite[env] += 1
                    cov.source("nonfinite", et)
            elif code == R_ANOMALY:
                acc.anomalies += 1
                cov.source("anomalies", et)
                if v:
                    acc.nonfinite_all += 1
                    cov.source("nonfinite", et)
            elif code == R_NONFINITE:
                acc.nonfinite_all += v
                cov.source("nonfinite", et)
            elif code == R_LSTM:
                if v == v and v < 0:
                    rep.count_out_of_range("h_rms", where, f"lstm_h_rms = {v!r} < 0")
                    continue
                if not self._finite_ok("h_rms", v, where):
                    continue
                cov.source("lstm_health", et)
                if v - v == 0.0:
                    acc.lstm = max(acc.lstm, v)
                else:
                    acc.lstm_bad = True
                    acc.nonfinite_all += 1
                    rep.nonfinite_values += 1
            elif code == R_GROWTH:
                if v == v and v < 1:
                    rep.count_out_of_range("growth_ratio", where, f"growth ratio {v!r} < 1")
                    continue
                if not self._finite_ok("growth_ratio", v, where):
                    continue
                acc.seen[env] = True
                cov.source("growth_ratio", et)
                if v - v == 0.0:
                    acc.growth[env] = v
                else:
                    acc.growth_bad[env] = True
                    acc.nonfinite[env] += 1
                    rep.nonfinite_values += 1
            elif code == R_SHOCK:
                if v == v and v < 0:
                    rep.count_out_of_range("alpha_shock", where, "alpha_shock penalty is "
                                           "positive (a penalty is <= 0)")
                    continue
                if not self._finite_ok("alpha_shock", v, where):
                    continue
                acc.seen[env] = True
                cov.source("alpha_shock", et)
                if v - v == 0.0:
                    acc.shock[env] += v
                    acc.shock_seen[env] = True
                else:
                    acc.nonfinite[env] += 1
                    rep.nonfinite_values += 1
            elif code == R_STAGE or code == R_CHURN:
                region = layout.region(env, r.slot)
                if region is None:
                    rep.count_unknown_region(f"{env}/{r.slot}")
                    rep.note(f"{where}: unknown slot {r.slot!r} of env {env}")
                    continue
                acc.seen[env] = True
                if code == R_STAGE:
                    acc.ops.append((env, r.slot, v))
                    cov.source("active_seeds", et)
                    cov.source("fossilised_seeds", et)
                else:
                    acc.churn[region] += v
                    cov.source("churn", et)
            elif code == R_SEEDS:
                acc.seen[env] = True
                acc.ops.append((env, None, v))
                cov.source("active_seeds", et)
                cov.source("fossilised_seeds", et)
            elif code == R_BATCH_END:
                acc.batch_end = True
                cov.source("boundary", et)
        rep.events += 1

    def _finite_ok(self, field: str, v: float, where: str) -> bool:
        if v - v == 0.0 and abs(v) > self.vmax:
            self.report.count_out_of_range(
                field, where, f"{field} = {v!r} overflows {self.dtype.name} (max "
                f"{self.vmax:.8g})")
            return False
        return True

    def carried(self) -> dict:
        if self.carried_fixed is not None:
            return self.carried_fixed
        return carried_inputs(self.coverage.codes, self.coverage.types)

    # ---- closing -------------------------------------------------------------------

    def close(self, acc, window: int | None = None) -> dict:
        self.starts.pop(window, None)
        if acc is None:
            cols = super().close(None, window)
            self.meta[window] = self._meta_missing(window)
            return cols
        cols = self._finish(acc)
        clip_overflow(cols["alpha_shock"], self.dtype, self.report, "alpha_shock",
                      f"{self.source}: window {window}")
        self.meta[window] = (acc.batch, acc.inner, acc.end)
        self.last_end = acc.end
        return cols

    def _meta_missing(self, w: int) -> tuple:
        end = self.last_end
        if self.windowing == "epoch" and self.span:
            return (w // self.span, w % self.span + self.first_epoch, end)
        if self.windowing == "time" and self.t0 is not None:
            return (-1, None, self.t0 + (w + 1) * self.window_seconds)
        return (w if self.windowing == "batch" else -1, None, end)

    def _seed_counts(self, acc: EsperWindow) -> tuple[np.ndarray, np.ndarray]:
        if acc.batch_start:
            self.seeds.clear()  # Esper rebuilds its envs every batch
        table = self.seeds
        for env, slot, v in acc.ops:
            if slot is None:  # a snapshot of every seed of the env
                for key in [k for k in table if k[0] == env]:
                    del table[key]
                for s, cls in v.items():
                    table[(env, s)] = cls
            else:
                table[(env, slot)] = v
        act, fos = np.zeros(self.n), np.zeros(self.n)
        for (env, slot), cls in table.items():
            r = self.layout.region(env, slot)
            if r is None or not cls:
                continue
            (act if cls == 1 else fos)[r] += 1
        return act, fos

    def _finish(self, acc: EsperWindow) -> dict:
        eor = self.layout.env_of
        has_loss = acc.loss_n > 0
        mean = np.divide(acc.loss_sum, acc.loss_n, out=np.zeros_like(acc.loss_sum),
                         where=has_loss)
        env_loss = np.where(has_loss, mean, np.where(acc.loss_bad, np.nan, self.loss_carry))
        known = ~np.isnan(self.loss_carry)
        env_valid = acc.seen & (has_loss | acc.loss_bad | known)
        valid = env_valid[eor]
        has_lstm = acc.lstm > -np.inf
        lstm = acc.lstm if has_lstm else (np.nan if acc.lstm_bad else self.lstm_carry)
        has_growth = ~np.isnan(acc.growth)
        growth = np.where(has_growth, acc.growth,
                          np.where(acc.growth_bad, np.nan, self.growth_carry))
        act, fos = self._seed_counts(acc)
        boundary = ((acc.validated | acc.batch_end) & ~acc.rolled_back)[eor] & valid
        cols = {
            "loss": env_loss[eor],
            "rollbacks": acc.rollbacks[eor],
            "anomalies": np.full(self.n, acc.anomalies),
            "nonfinite": acc.nonfinite[eor] + acc.nonfinite_all,
            "lstm_health": np.full(self.n, lstm),
            "growth_ratio": growth[eor],
            "churn": acc.churn,
            "alpha_shock": acc.shock[eor],
            "active_seeds": act,
            "fossilised_seeds": fos,
            "valid": valid,
            "boundary": boundary,
        }
        carried = self.carried()
        for k, v in self.fills.items():
            if not carried.get(k):
                cols[k] = np.where(valid, v, cols[k]) if k != "boundary" else valid & bool(v)
        self._count(acc, valid, env_valid, has_loss, has_lstm, has_growth, carried)
        self.loss_carry = np.where(has_loss, mean, self.loss_carry)
        self.growth_carry = np.where(has_growth, acc.growth, self.growth_carry)
        if has_lstm:
            self.lstm_carry = float(acc.lstm)
        for k in TELEMETRY_FIELDS:
            if k != "valid":
                cols[k] = np.where(valid, cols[k], MISSING_FILL[k])
        return cols

    def _count(self, acc, valid, env_valid, has_loss, has_lstm, has_growth, carried) -> None:
        eor, rep, m = self.layout.env_of, self.report, self.coverage.measured
        nv = int(valid.sum())
        rep.region_windows_valid += nv
        rep.region_windows_missing += self.n - nv
        rep.region_windows_without_loss += int((acc.seen & ~env_valid)[eor].sum())
        read_loss = (has_loss | acc.loss_bad)[eor] & valid
        m["valid"] += nv
        m["loss"] += int(read_loss.sum())
        rep.carried["loss"] += nv - int(read_loss.sum())
        lstm_read = has_lstm or acc.lstm_bad
        m["lstm_health"] += nv if (lstm_read and carried.get("lstm_health")) else 0
        rep.carried["lstm_health"] += 0 if lstm_read else nv
        g = ((has_growth | acc.growth_bad)[eor] & valid).sum()
        m["growth_ratio"] += int(g) if carried.get("growth_ratio") else 0
        rep.carried["growth_ratio"] += nv - int(g)
        m["alpha_shock"] += int((acc.shock_seen[eor] & valid).sum()) \
            if carried.get("alpha_shock") else 0
        for k in ("rollbacks", "anomalies", "nonfinite", "churn", "active_seeds",
                  "fossilised_seeds", "boundary"):
            if carried.get(k):
                m[k] += nv
