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
from narset_jax.telemetry import BOOL_FIELDS, TELEMETRY_FIELDS, Telemetry


class EventWindows:
    """A stream of telemetry windows from an event log or a Parquet table.

    Iterating yields ``(window, columns)``: the window id and a dict of the twelve
    telemetry fields as ``[N]`` numpy arrays (float64 and bool), in increasing window
    order with no gaps (windows without events come out all-missing). Built by
    [`narset_jax.ingest.open_windows`][]; ``report`` fills in as the stream is read.
    """

    def __init__(self, windows: Iterator[tuple[int, dict]], n_regions: int, report: IngestReport):
        self._windows = windows
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
        batch: list[dict] = []
        first = None
        for w, cols in self:
            if first is None:
                first = w
            batch.append(cols)
            if len(batch) == size:
                yield first, _stack(batch, dtype)
                batch, first = [], None
        if batch:
            yield first, _stack(batch, dtype)


def _stack(batch: list[dict], dtype) -> Telemetry:
    out = {}
    for k in TELEMETRY_FIELDS:
        kind = bool if k in BOOL_FIELDS else dtype
        out[k] = np.stack([cols[k] for cols in batch]).astype(kind, copy=False)
    return Telemetry(**out)


class WindowStream:
    """The open-window buffer shared by the JSONL and Parquet readers: windows close
    ``lag`` windows behind the newest, in order, gaps filled with missing windows."""

    def __init__(self, n, lag, max_gap, first_window, report, source):
        self.n, self.lag, self.max_gap = n, lag, max_gap
        self.report, self.source = report, source
        self.open: dict[int, Any] = {}  # window -> WindowAccumulator or Parquet columns
        self.next_emit: int | None = first_window
        self.newest = -1
        self.last_window = np.full(n, -1, np.int64)
        self.carry = LevelCarry(n)

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
            cols = self.close(acc)
            self.next_emit = w + 1
            if self.report.first_window is None:
                self.report.first_window = w
            self.report.windows += 1
            self.report.last_window = w
            yield w, cols

    def close(self, acc) -> dict:
        if acc is None:
            self.report.region_windows_missing += self.n
            return missing_window(self.n)
        if isinstance(acc, WindowAccumulator):
            return acc.finish(self.carry, self.report)
        nv = int(acc["valid"].sum())  # a Parquet window
        self.report.region_windows_valid += nv
        self.report.region_windows_missing += self.n - nv
        return acc

    def finish(self) -> Iterator[tuple[int, dict]]:
        yield from self.flush(self.newest)
