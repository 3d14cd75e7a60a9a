"""JSONL event logs (optionally gzipped): the line source and the reader that folds lines
into windows (``jsonl_windows``, the hot loop behind [`narset_jax.ingest.open_windows`][]).
"""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

from narset_jax.ingest.accumulate import WindowAccumulator
from narset_jax.ingest.schema import (
    RANGED_KINDS,
    IngestError,
    Malformed,
    decode_line,
    fast_decode,
    out_of_range,
    parse_fields,
)
from narset_jax.ingest.stream import WindowStream


def open_binary(path: str, fmt: str) -> tuple[BinaryIO, BinaryIO]:
    """``(lines, raw)``: the decoded line source and the raw file (for byte progress).
    ``path`` ``"-"`` is stdin; ``fmt`` ``"jsonl.gz"`` decompresses."""
    if path == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if fmt == "jsonl.gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def jsonl_windows(
    fh: BinaryIO,
    stream: WindowStream,
    on_error: str,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, dict]]:
    """The windows of a JSONL line source ``fh``, through ``stream``."""
    # The hot loop: about 1e6 lines per few seconds. Locals stand in for attribute look-ups.
    report, source, n = stream.report, stream.source, stream.n
    skip = on_error == "skip"
    last_window = [-1] * n  # per region
    open_windows = stream.open
    newest = stream.newest
    events = nonfinite = 0
    lineno = 0
    for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno is read after the loop
        if progress is not None:
            progress(len(raw))
        try:
            try:
                region, window, kind, a, b = parse_fields(fast_decode(raw))
            except (ValueError, TypeError):
                if not raw.strip():
                    continue
                region, window, kind, a, b = parse_fields(decode_line(raw))
            if not 0 <= region < n:
                report.count_unknown_region(region)
                report.note(f"{source}:{lineno}: unknown region {region} (n_regions = {n})")
                continue
            if window < last_window[region]:
                raise Malformed(
                    "window_backwards",
                    f"region {region} window {window} after window {last_window[region]}",
                )
            acc = open_windows.get(window)
            if acc is None:
                stream.check_late(region, window)
                if stream.too_far(window):
                    report.count_out_of_range(
                        "window",
                        f"{source}:{lineno}",
                        f"window {window} is more than {stream.max_gap} windows past window "
                        f"{max(stream.newest, stream.next_emit or 0)}",
                    )
                    continue
            last_window[region] = window
            if kind in RANGED_KINDS:
                bad = out_of_range(kind, a, b)
                if bad is not None:
                    report.count_out_of_range(bad[0], f"{source}:{lineno}", bad[1])
                    continue
        except Malformed as m:
            if not skip:
                raise IngestError(source, lineno, m.reason, m.detail) from None
            report.bad_lines += 1
            report.bad_by_reason[m.reason] += 1
            report.note(f"{source}:{lineno}: {m.reason.replace('_', ' ')}: {m.detail}")
            continue
        if acc is None:
            acc = open_windows[window] = WindowAccumulator(n)
        if acc.add(region, kind, a, b):
            nonfinite += 1
        events += 1
        if window > newest:
            newest = window
            report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
            yield from stream.advance(window)
    report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
    yield from stream.finish()
