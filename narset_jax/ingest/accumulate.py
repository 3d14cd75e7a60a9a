"""One window's aggregation: [`narset_jax.ingest.WindowAccumulator`][] folds a window's
events into ``[N]`` telemetry columns, [`narset_jax.ingest.LevelCarry`][] carries level
readings into windows without one, and ``MISSING_FILL`` fills cells without telemetry.
"""

from __future__ import annotations

import array
import math

import numpy as np

from narset_jax.ingest.schema import (
    K_ANOMALY,
    K_GROWTH,
    K_LOSS,
    K_LSTM,
    K_ROLLBACK,
    K_SEED_COUNTS,
    K_SEED_OP,
    IngestReport,
)
from narset_jax.telemetry import BOOL_FIELDS, TELEMETRY_FIELDS

# Values of a region-window with no telemetry (``valid`` False: the controller holds its
# state, so these only appear in the decision log's raw columns).
MISSING_FILL = {
    "loss": 0.0,
    "rollbacks": 0.0,
    "anomalies": 0.0,
    "nonfinite": 0.0,
    "lstm_health": 0.0,
    "growth_ratio": 1.0,
    "churn": 0.0,
    "alpha_shock": 0.0,
    "active_seeds": 0.0,
    "fossilised_seeds": 0.0,
    "valid": False,
    "boundary": False,
}


class LevelCarry:
    """Per-region last reported level values, carried into windows without a reading.

    ``loss`` starts as NaN (never reported): a region's windows are missing until its first
    loss reading. The others start at neutral values: ``lstm_health`` 0, ``growth_ratio`` 1
    (no fossilised seeds), seed counts 0.
    """

    __slots__ = ("loss", "lstm_health", "growth_ratio", "active_seeds", "fossilised_seeds")

    def __init__(self, n_regions: int):
        self.loss = np.full(n_regions, np.nan)
        self.lstm_health = np.zeros(n_regions)
        self.growth_ratio = np.ones(n_regions)
        self.active_seeds = np.zeros(n_regions)
        self.fossilised_seeds = np.zeros(n_regions)


def _zeros(n: int, code: str = "d") -> array.array:
    return array.array(code, bytes(n * array.array(code).itemsize))


class WindowAccumulator:
    """Running aggregates of one window's events for ``N`` regions.

    See ``docs/telemetry.md`` for the rules: loss is the mean of the finite readings,
    rollbacks/anomalies/churn are counts, ``alpha_shock`` is the sum of ``delta_alpha^2``,
    ``lstm_health`` the maximum, growth ratio and seed counts the last reading, ``boundary``
    any boundary event; each non-finite measurement adds 1 to ``nonfinite``.

    The accumulators are flat ``array.array`` buffers (one scalar update per event costs a
    third of a numpy scalar update); [`finish`][narset_jax.ingest.WindowAccumulator.finish]
    views them as numpy arrays without copying.
    """

    __slots__ = (
        "n",
        "seen",
        "loss_sum",
        "loss_n",
        "loss_bad",
        "rollbacks",
        "anomalies",
        "nonfinite",
        "churn",
        "alpha_shock",
        "lstm",
        "lstm_bad",
        "growth",
        "growth_bad",
        "active",
        "fossilised",
        "boundary",
    )

    def __init__(self, n_regions: int):
        n = self.n = n_regions
        self.seen = _zeros(n, "b")
        self.loss_sum = _zeros(n)
        self.loss_n = _zeros(n, "q")
        self.loss_bad = _zeros(n, "b")
        self.rollbacks = _zeros(n)
        self.anomalies = _zeros(n)
        self.nonfinite = _zeros(n)
        self.churn = _zeros(n)
        self.alpha_shock = _zeros(n)
        self.lstm = array.array("d", [-math.inf]) * n
        self.lstm_bad = _zeros(n, "b")
        self.growth = array.array("d", [math.nan]) * n
        self.growth_bad = _zeros(n, "b")
        self.active = array.array("d", [math.nan]) * n
        self.fossilised = array.array("d", [math.nan]) * n
        self.boundary = _zeros(n, "b")

    def add(self, region: int, kind: int, a: float = 0.0, b: float = 0.0) -> bool:
        """Fold one in-range event in (the fields of an [`narset_jax.ingest.Event`][]).

        **Returns:** ``True`` if the event carried a non-finite measurement.
        """
        r = region
        self.seen[r] = 1
        if kind == K_LOSS:
            if a - a == 0.0:  # finite
                self.loss_sum[r] += a
                self.loss_n[r] += 1
                return False
            self.loss_bad[r] = 1
        elif kind == K_SEED_OP:
            self.churn[r] += 1.0
            if b - b == 0.0:
                self.alpha_shock[r] += b * b
                return False
        elif kind == K_LSTM:
            if a - a == 0.0:
                if a > self.lstm[r]:
                    self.lstm[r] = a
                return False
            self.lstm_bad[r] = 1
        elif kind == K_SEED_COUNTS:
            self.active[r] = a
            self.fossilised[r] = b
            return False
        elif kind == K_GROWTH:
            if a - a == 0.0:
                self.growth[r] = a
                return False
            self.growth_bad[r] = 1
        elif kind == K_ROLLBACK:
            self.rollbacks[r] += 1.0
            if a:
                self.nonfinite[r] += 1.0
            return False
        elif kind == K_ANOMALY:
            self.anomalies[r] += 1.0
            if a:
                self.nonfinite[r] += 1.0
            return False
        else:  # boundary
            self.boundary[r] = 1
            return False
        self.nonfinite[r] += 1.0
        return True

    def finish(self, carry: LevelCarry, report: IngestReport | None = None) -> dict:
        """The window's telemetry columns (float64 / bool ``[N]`` numpy arrays).

        Updates ``carry`` with this window's level readings and ``report``'s cell counts.
        """
        self._as_numpy()
        has_loss = self.loss_n > 0
        mean_loss = np.divide(self.loss_sum, self.loss_n, out=np.zeros(self.n), where=has_loss)
        known_loss = ~np.isnan(carry.loss)
        valid = self.seen & (has_loss | self.loss_bad | known_loss)
        has_lstm = np.isfinite(self.lstm)
        has_growth = ~np.isnan(self.growth)
        has_counts = ~np.isnan(self.active)
        nan = np.nan
        out = {
            "loss": np.where(has_loss, mean_loss, np.where(self.loss_bad, nan, carry.loss)),
            "rollbacks": self.rollbacks,
            "anomalies": self.anomalies,
            "nonfinite": self.nonfinite,
            "lstm_health": np.where(
                has_lstm, self.lstm, np.where(self.lstm_bad, nan, carry.lstm_health)
            ),
            "growth_ratio": np.where(
                has_growth, self.growth, np.where(self.growth_bad, nan, carry.growth_ratio)
            ),
            "churn": self.churn,
            "alpha_shock": self.alpha_shock,
            "active_seeds": np.where(has_counts, self.active, carry.active_seeds),
            "fossilised_seeds": np.where(has_counts, self.fossilised, carry.fossilised_seeds),
            "valid": valid,
            "boundary": self.boundary & valid,
        }
        if report is not None:
            nv = int(valid.sum())
            report.region_windows_valid += nv
            report.region_windows_missing += self.n - nv
            report.region_windows_without_loss += int((self.seen & ~valid).sum())
            report.carried["loss"] += int((valid & ~has_loss & ~self.loss_bad).sum())
            report.carried["lstm_health"] += int((valid & ~has_lstm & ~self.lstm_bad).sum())
            report.carried["growth_ratio"] += int((valid & ~has_growth & ~self.growth_bad).sum())
            nc = int((valid & ~has_counts).sum())
            report.carried["active_seeds"] += nc
            report.carried["fossilised_seeds"] += nc
        carry.loss = np.where(has_loss, mean_loss, carry.loss)
        carry.lstm_health = np.where(has_lstm, self.lstm, carry.lstm_health)
        carry.growth_ratio = np.where(has_growth, self.growth, carry.growth_ratio)
        carry.active_seeds = np.where(has_counts, self.active, carry.active_seeds)
        carry.fossilised_seeds = np.where(has_counts, self.fossilised, carry.fossilised_seeds)
        for k in TELEMETRY_FIELDS:  # cells without telemetry take the fixed fill
            if k != "valid":
                out[k] = np.where(valid, out[k], MISSING_FILL[k])
        return out

    def _as_numpy(self) -> None:
        for name in self.__slots__[1:]:
            buf = getattr(self, name)
            if isinstance(buf, array.array):
                arr = np.frombuffer(buf, dtype=buf.typecode)
                setattr(self, name, arr.astype(bool) if buf.typecode == "b" else arr)


def missing_window(n: int) -> dict:
    """An all-missing window: every telemetry column of ``n`` regions at ``MISSING_FILL``."""
    return {
        k: np.full(n, MISSING_FILL[k], bool if k in BOOL_FIELDS else np.float64)
        for k in TELEMETRY_FIELDS
    }
