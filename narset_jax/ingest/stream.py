"""The window stream: [`narset_jax.ingest.EventWindows`][] (what readers return) and the
open-window buffer behind it (lag, late events, gaps), shared by the JSONL and Parquet
readers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from narset_jax.ingest.accumulate import LevelCarry, WindowAccumulator, missing_window
from narset_jax.ingest.schema import IngestReport, Malformed
from narset_jax.telemetry import BOOL_FIELDS, FLOAT_FIELDS, TELEMETRY_FIELDS, Telemetry


class EventWindows:
    """A stream of telemetry windows from an event log or a Parquet table.

    Iterating yields ``(window, columns)``: the window id and a dict of the twelve
    telemetry fields as ``[N]`` numpy arrays (float64 and bool), in increasing window
    order with no gaps (windows without events come out all-missing). Built by
    [`narset_jax.ingest.open_windows`][]; ``report`` fills in as the stream is read.

    Values that would overflow the stream's ``dtype`` (``open_windows(dtype=...)``, or the
    ``dtype`` of [`chunks`][narset_jax.ingest.EventWindows.chunks] when called before the
    first window is read) are counted as out of range, so the columns cast to that dtype
    without an overflow.
    """

    def __init__(
        self,
        windows: Iterator[tuple[int, dict]],
        n_regions: int,
        report: IngestReport,
        stream: WindowStream | None = None,
    ):
        self._windows = windows
        self._stream = stream
        self.n_regions = n_regions
        self.report = report

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return self._windows

    def chunks(self, size: int, dtype=np.float32) -> Iterator[tuple[int, Telemetry]]:
        """Batches of up to ``size`` consecutive windows as ``[T, N]`` telemetry.

        **Returns:** an iterator of ``(first_window, telemetry)`` where ``telemetry`` is a
        [`narset_jax.Telemetry`][] of numpy arrays (numeric fields in ``dtype``; ``valid``
        and ``boundary`` bool).
        """
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        if self._stream is not None and self.report.windows == 0:
            self._stream.set_dtype(dtype)  # nothing read yet: check values against it
        batch: list[dict] = []
        first = None
        for w, cols in self:
            if first is None:
                first = w
            batch.append(cols)
            if len(batch) == size:
                yield first, _stack(batch, dtype, self.report, first)
                batch, first = [], None
        if batch:
            yield first, _stack(batch, dtype, self.report, first)


def _stack(batch: list[dict], dtype, report: IngestReport, first: int) -> Telemetry:
    out = {}
    for k in TELEMETRY_FIELDS:
        x = np.stack([cols[k] for cols in batch])
        if k not in BOOL_FIELDS:
            # Windows read before ``chunks`` chose a narrower dtype: clip, never overflow.
            clip_overflow(x, np.dtype(dtype), report, k, f"{report.source}: windows {first}+")
        out[k] = x.astype(bool if k in BOOL_FIELDS else dtype, copy=False)
    return Telemetry(**out)


def clip_overflow(x: np.ndarray, dtype: np.dtype, report: IngestReport, field: str,
                  where: str) -> None:
    """Count the finite values of ``x`` beyond ``dtype``'s largest value as out of range
    (``field``) and clip them to it, in place, so that ``x`` casts to ``dtype`` without
    an overflow."""
    if not np.issubdtype(dtype, np.floating) or np.finfo(dtype).bits >= 64:
        return  # float64 columns hold every finite float64
    vmax = float(np.finfo(dtype).max)
    with np.errstate(invalid="ignore"):
        big = np.isfinite(x) & (np.abs(x) > vmax)
    n = int(big.sum())
    if n:
        first = float(x[big].ravel()[0])
        report.count_out_of_range(
            field, where, f"{field} = {first!r} overflows {dtype.name} ({n} cells; clipped "
            f"to +-{vmax:.8g})", n,
        )
        np.clip(x, -vmax, vmax, out=x, where=big)


class WindowStream:
    """The open-window buffer shared by the JSONL and Parquet readers: windows close
    ``lag`` windows behind the newest, in order, gaps filled with missing windows."""

    def __init__(self, n, lag, max_gap, first_window, report, source, dtype="float32"):
        self.n, self.lag, self.max_gap = n, lag, max_gap
        self.report, self.source = report, source
        self.open: dict[int, Any] = {}  # window -> WindowAccumulator or Parquet columns
        self.next_emit: int | None = first_window
        self.newest = -1
        self.last_window = np.full(n, -1, np.int64)
        self.carry = LevelCarry(n)
        self.set_dtype(dtype)

    def set_dtype(self, dtype) -> None:
        """The dtype the windows will be cast to: a finite value beyond its largest value
        (``vmax``; ``sqrt(vmax)`` for ``delta_alpha``, squared into ``alpha_shock``) is
        out of range. Set it before the first line is read."""
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        self.vmax = float(np.finfo(self.dtype).max)
        self.bmax = self.vmax**0.5

    def check(self, region: int, window: int) -> None:
        """Raise ``Malformed`` if ``window`` goes backwards for ``region`` or is late."""
        last = self.last_window[region]
        if window < last:
            raise Malformed(
                "window_backwards", f"region {region} window {window} after window {last}"
            )
        self.check_late(region, window)

    def check_late(self, region: int, window: int) -> None:
        """Raise ``Malformed`` if ``window`` was already closed."""
        if self.next_emit is not None and window < self.next_emit:
            raise Malformed(
                "late_event",
                f"region {region} window {window} arrived after that window was closed "
                f"(lag {self.lag}; a larger lag allows more skew between regions)",
            )

    def too_far(self, window: int) -> bool:
        base = self.newest if self.newest >= 0 else self.next_emit
        return base is not None and window > base + self.max_gap

    def advance(self, window: int) -> Iterator[tuple[int, dict]]:
        """Note that ``window`` was seen; yield the windows it closes."""
        if window > self.newest:
            self.newest = window
            yield from self.flush(window - self.lag)

    def flush(self, upto: int) -> Iterator[tuple[int, dict]]:
        """Close and yield every window ``<= upto``, in order, gaps included."""
        if self.next_emit is None:
            if not self.open:
                return
            self.next_emit = min(self.open)
        while self.next_emit <= upto:
            w = self.next_emit
            acc = self.open.pop(w, None)
            cols = self.close(acc, w)
            self.next_emit = w + 1
            if self.report.first_window is None:
                self.report.first_window = w
            self.report.windows += 1
            self.report.last_window = w
            yield w, cols

    def close(self, acc, window: int | None = None) -> dict:
        if acc is None:
            self.report.region_windows_missing += self.n
            return missing_window(self.n)
        where = f"{self.source}: window {window}"
        if isinstance(acc, WindowAccumulator):
            # Each event's values were checked as read; only a sum of squares can overflow.
            cols = acc.finish(self.carry, self.report)
            clip_overflow(cols["alpha_shock"], self.dtype, self.report, "alpha_shock", where)
            return cols
        nv = int(acc["valid"].sum())  # a Parquet window
        self.report.region_windows_valid += nv
        self.report.region_windows_missing += self.n - nv
        for k in FLOAT_FIELDS:
            clip_overflow(acc[k], self.dtype, self.report, k, where)
        return acc

    def finish(self) -> Iterator[tuple[int, dict]]:
        yield from self.flush(self.newest)
