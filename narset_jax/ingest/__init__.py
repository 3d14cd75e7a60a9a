"""Ingest: real training telemetry (JSONL event logs or Parquet tables) -> Telemetry windows.

The event schema, one example per kind and how each event feeds the signals are in
``docs/telemetry.md``. In short, each JSONL line is one event with ``region`` (int),
``window`` (int) and ``kind``:

=====================  =============================================  ===========================
kind                   extra fields                                   feeds
=====================  =============================================  ===========================
``loss``               ``value``                                      ``loss`` (window mean)
``governor_rollback``  ``panic_reason``: nan | lobotomy | divergence  ``rollbacks`` (+ nonfinite)
``ppo_anomaly``        ``anomaly``: ratio_explosion | ratio_collapse  ``anomalies`` (+ nonfinite)
                       | value_collapse | numerical_instability
``lstm_health``        ``h_rms``                                      ``lstm_health`` (window max)
``seed_op``            ``op``: germinate | prune | fossilise |        ``churn``, ``alpha_shock``
                       set_alpha (with ``delta_alpha``)
``seed_counts``        ``active``, ``fossilised``                     the seed counts (last)
``growth_ratio``       ``value``                                      ``growth_ratio`` (last)
``boundary``           none                                           ``boundary``
=====================  =============================================  ===========================

Streaming model: the file is read line by line and aggregated into per-window numpy
accumulators (``[N]`` arrays), so memory is ``O(N * (lag + 1))``, not ``O(events)``. Lines
need not be sorted by window, but each region's windows must not go backwards, and the
file must be roughly in window order: window ``w`` is closed once an event of window
``>= w + lag`` has been read (or the file ends). An event for a closed window is an error
(``late_event``); raise ``lag`` to allow more skew between regions.

Malformed lines (not JSON, nested too deeply, unknown kind, missing field, wrong type,
window going backwards for its region, late event) raise
[`narset_jax.ingest.IngestError`][] naming the file and line (``on_error="stop"``), or are
skipped and counted (``on_error="skip"``). Events for an unknown region id and
out-of-range values (a value that would overflow the ``dtype`` the windows are cast to
included) are never silently dropped: they are counted in the
[`narset_jax.ingest.IngestReport`][]. A ``.jsonl.gz`` that is cut short or has bad data
inside or after its gzip stream raises an ``IngestError`` (reason ``truncated_gzip`` or
``corrupt_gzip``) naming the line after the last complete one, with either ``on_error``:
the windows closed before it have already been yielded.

Modules: ``schema`` (event kinds, reasons, one event's parsing, the error and the report),
``accumulate`` (one window's aggregates, carried levels, the missing-window fill),
``stream`` (the lag/late/gap window stream), ``jsonl`` and ``parquet`` (the two readers);
Esper's own telemetry: ``esper_schema`` (its envelope and event types), ``esper_stream``
(regions and windows), ``esper_coverage`` (which inputs a log carries; the coverage
report) and ``esper`` (files and directories; the online feed). This module opens a file
and picks the reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from narset_jax.errors import UserError
from narset_jax.ingest.accumulate import MISSING_FILL, LevelCarry, WindowAccumulator
from narset_jax.ingest.esper import EsperFeed, EsperReport, looks_like_esper, open_esper_windows
from narset_jax.ingest.jsonl import GZIP_ERRORS, jsonl_windows, open_binary
from narset_jax.ingest.parquet import check_parquet_columns, parquet_n_regions, parquet_windows
from narset_jax.ingest.schema import (
    ANOMALIES,
    EVENT_KINDS,
    K_ANOMALY,  # noqa: F401 - the kind indices, importable here as before
    K_BOUNDARY,  # noqa: F401
    K_GROWTH,  # noqa: F401
    K_LOSS,  # noqa: F401
    K_LSTM,  # noqa: F401
    K_ROLLBACK,  # noqa: F401
    K_SEED_COUNTS,  # noqa: F401
    K_SEED_OP,  # noqa: F401
    OPS,
    PANIC_REASONS,
    REASONS,
    Event,
    IngestError,
    IngestReport,
    Malformed,
    decode_line,
    fast_decode,
    parse_event,
    parse_fields,
)
from narset_jax.ingest.stream import EventWindows, WindowStream

__all__ = [
    "ANOMALIES",
    "EVENT_KINDS",
    "FORMATS",
    "EsperFeed",
    "EsperReport",
    "MAX_REGIONS",
    "MISSING_FILL",
    "OPS",
    "PANIC_REASONS",
    "REASONS",
    "Event",
    "EventWindows",
    "IngestError",
    "IngestReport",
    "LevelCarry",
    "WindowAccumulator",
    "detect_format",
    "open_windows",
    "parse_event",
    "scan_jsonl_regions",
]

# Largest number of regions inferred from a file without ``n_regions`` (DESIGN.md §1's top
# of range); a larger region id is almost surely a typo that would allocate gigabytes.
MAX_REGIONS = 10_000_000

# ``open_windows(format=...)``: ``"auto"`` detects the format; ``"esper"`` reads Esper's own
# telemetry (``narset_jax.ingest.esper``).
FORMATS = ("auto", "esper")


def detect_format(path: str | os.PathLike) -> str:
    """``"parquet"`` (magic bytes ``PAR1``), ``"jsonl.gz"`` (gzip) or ``"jsonl"``."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    return "jsonl"


def scan_jsonl_regions(path: str | os.PathLike) -> tuple[int, int | None]:
    """Largest region id among well-formed events, and its line (a first, cheap pass).

    A gzip stream cut short or corrupt ends the pass quietly: the reading pass reports it,
    after the windows before it.

    **Returns:** ``(max_region, line)``, ``(-1, None)`` when there is no valid event.
    """
    path = os.fspath(path)
    fh, raw = open_binary(path, detect_format(path))
    best, where = -1, None
    try:
        for lineno, line in enumerate(fh, 1):
            try:
                try:
                    region = parse_fields(fast_decode(line))[0]
                except (ValueError, RecursionError):
                    region = parse_fields(decode_line(line))[0]
            except Malformed:
                continue
            if region > best:
                best, where = region, lineno
    except GZIP_ERRORS:
        pass
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), path) from None
        raise
    finally:
        raw.close()
    return best, where


def open_windows(
    path: str | os.PathLike,
    *,
    n_regions: int | None = None,
    lag: int = 2,
    on_error: str = "stop",
    max_gap: int = 100_000,
    first_window: int | None = None,
    progress: bool = False,
    batch_rows: int = 65_536,
    dtype="float32",
    format: str = "auto",
    region: str = "env",
    window_seconds: float | None = None,
    params=None,
) -> EventWindows:
    """Open a JSONL event log (optionally gzipped), a Parquet table or Esper's own
    telemetry as a window stream.

    **Arguments:**

    - ``path``: the file; ``"-"`` reads JSONL from stdin (then ``n_regions`` is required).
    - ``n_regions``: ``N``. Default: the largest region id plus one. For JSONL that takes a
      first pass over the file; for Parquet it comes from the row-group statistics.
    - ``lag``: windows kept open behind the newest one seen (>= 1); window ``w`` is closed
      when an event of window ``>= w + lag`` arrives. ``lag=1`` needs a file sorted by
      window.
    - ``on_error``: ``"stop"`` raises [`narset_jax.ingest.IngestError`][] at the first
      malformed line; ``"skip"`` skips and counts it in the report.
    - ``max_gap``: an event more than this many windows past the newest one is counted as
      out of range (guards against a stray huge window id creating millions of empty
      windows).
    - ``first_window``: the first window emitted. Default: the smallest window among the
      events read before the first window closes, so the controller's ``step`` ``s`` is
      window ``first_window + s`` (recorded in the report).
    - ``progress``: show a tqdm progress bar (bytes of JSONL, rows of Parquet) on stderr.
    - ``batch_rows``: Parquet rows per record batch.
    - ``dtype``: the dtype the windows will be cast to (``"float32"``, the controller's
      default, or ``"float64"``). A finite value beyond its largest value is counted as
      out of range (the JSONL event is dropped; a Parquet cell, or a window's
      ``alpha_shock`` sum, is clipped to it), so the cast never overflows.
      [`narset_jax.ingest.EventWindows.chunks`][] sets it to its own ``dtype``.
    - ``format``: ``"auto"`` (Parquet by its magic bytes; Esper telemetry, a directory or a
      file whose first line is an Esper event envelope, by ``narset_jax.ingest.esper``;
      else the JSONL schema above) or ``"esper"``.
    - ``region``, ``window_seconds``, ``params``: Esper telemetry only (regions ``"env"``
      or ``"env,slot"``; the window span of a log without epochs or batch boundaries;
      the params whose neutral values stand in for inputs the log never carries). For
      Esper telemetry ``n_regions`` is the number of envs.

    **Returns:** an [`narset_jax.ingest.EventWindows`][]; its ``report`` is complete once it
    has been iterated to the end.

    **Raises:** ``UserError`` for an unreadable file or a bad ``n_regions``;
    ``IngestError`` (while iterating) for malformed input with ``on_error="stop"``.
    """
    _check_on_error(on_error)
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
        raise UserError(f"lag must be an integer >= 1, got {lag!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 1:
        raise UserError(f"max_gap must be an integer >= 1, got {max_gap!r}")
    if n_regions is not None and (
        isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1
    ):
        raise UserError(f"n_regions must be a positive integer, got {n_regions!r}")
    if first_window is not None and (not isinstance(first_window, int) or first_window < 0):
        raise UserError(f"first_window must be a non-negative integer, got {first_window!r}")
    if format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    source = os.fspath(path)
    if format == "esper" or (format == "auto" and source != "-" and os.path.isdir(source)):
        return _open_esper(source, n_regions, lag, on_error, max_gap, first_window, progress,
                           dtype, region, window_seconds, params)
    if source == "-":
        if n_regions is None:
            raise UserError("reading events from stdin needs the number of regions (--regions)")
        fmt = "jsonl"
    else:
        if not os.path.isfile(source):
            raise UserError(f"{source}: no such file")
        fmt = detect_format(source)
        if format == "auto" and fmt != "parquet" and looks_like_esper(source):
            return _open_esper(source, n_regions, lag, on_error, max_gap, first_window,
                               progress, dtype, region, window_seconds, params)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise UserError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise UserError(f"dtype must be float32 or float64, got {dtype}")
    report = IngestReport(source=source, format="parquet" if fmt == "parquet" else "jsonl")
    report.lag = lag

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(source)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            raise UserError(f"{source}: unreadable Parquet: {err}") from None
        check_parquet_columns(pf, source)
        if n_regions is None:
            n_regions = parquet_n_regions(pf)
            if n_regions < 1:
                raise UserError(f"{source}: no rows with a region id >= 0")
            _check_inferred(n_regions, f"{source}: largest region id {n_regions - 1}")
        report.n_regions = n_regions
        stream = WindowStream(n_regions, lag, max_gap, first_window, report, source, dtype)
        bar = _bar(progress, pf.metadata.num_rows, "rows", source)
        gen = parquet_windows(pf, stream, on_error, batch_rows, bar)
        return EventWindows(_closing(gen, bar, None), n_regions, report, stream)

    if n_regions is None:
        top, line = scan_jsonl_regions(source)
        if top < 0:
            raise UserError(f"{source}: no well-formed event with a region id >= 0")
        n_regions = top + 1
        _check_inferred(n_regions, f"{source}:{line}: region id {top}")
    report.n_regions = n_regions
    try:
        fh, raw = open_binary(source, fmt)
    except OSError as err:
        raise UserError(f"{source}: cannot read: {err.strerror or err}") from None
    total = os.path.getsize(source) if source != "-" else None
    bar = _bar(progress, total, "B", source)
    update = None
    if bar is not None:
        if fmt == "jsonl.gz":
            pos = [0]

            def update(_n, raw=raw, pos=pos, bar=bar):
                now = raw.tell()
                bar.update(now - pos[0])
                pos[0] = now
        else:
            update = bar.update
    stream = WindowStream(n_regions, lag, max_gap, first_window, report, source, dtype)
    gen = jsonl_windows(fh, stream, on_error, update)
    return EventWindows(
        _closing(gen, bar, raw if source != "-" else None), n_regions, report, stream
    )


def _open_esper(source, n_regions, lag, on_error, max_gap, first_window, progress, dtype,
                region, window_seconds, params) -> EventWindows:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise UserError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise UserError(f"dtype must be float32 or float64, got {dtype}")
    bar = (lambda total: _bar(True, total, "B", source)) if progress else None
    return open_esper_windows(
        source, n_regions=n_regions, lag=lag, on_error=on_error, max_gap=max_gap,
        first_window=first_window, progress=bar, dtype=dtype, region=region,
        window_seconds=window_seconds, params=params,
    )


def _check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")


def _check_inferred(n: int, what: str) -> None:
    if n > MAX_REGIONS:
        raise UserError(
            f"{what} implies {n} regions (more than {MAX_REGIONS}); pass the number of "
            "regions explicitly (--regions) and the larger ids are counted as unknown"
        )


def _bar(progress: bool, total, unit: str, source: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit == "B",
        desc=os.path.basename(source) or source,
        disable=None,
        mininterval=0.5,
    )


def _closing(gen: Iterator, bar, raw) -> Iterator:
    try:
        yield from gen
    finally:
        if bar is not None:
            bar.close()
        if raw is not None:
            raw.close()
