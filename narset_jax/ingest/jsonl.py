"""JSONL event logs (optionally gzipped): the line source and the reader that folds lines
into windows (``jsonl_windows``, the hot loop behind [`narset_jax.ingest.open_windows`][]).
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from narset_jax.ingest.accumulate import WindowAccumulator
from narset_jax.ingest.schema import (
    RANGED_KINDS,
    IngestError,
    Malformed,
    decode_line,
    fast_decode,
    out_of_range,
    overflow,
    parse_fields,
)
from narset_jax.ingest.stream import WindowStream


def open_binary(path: str, fmt: str) -> tuple[Iterable[bytes], BinaryIO]:
    """``(lines, raw)``: the line source and the raw file (for byte progress).
    ``path`` ``"-"`` is stdin; ``fmt`` ``"jsonl.gz"`` decompresses."""
    if path == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if fmt == "jsonl.gz":
        return gzip_lines(gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def gzip_lines(gz: gzip.GzipFile, size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a gzip stream, each ending in ``\n`` (the last one maybe not).

    Reads with ``read1``, so every line decompressed before a fault (a stream cut short,
    junk after it) is yielded before the fault's exception; a buffered reader would drop
    up to a buffer of them. An incomplete last line before a fault is dropped."""
    pending = b""
    while True:
        chunk = gz.read1(size)
        if not chunk:
            break
        lines = chunk.split(b"\n")
        lines[0] = pending + lines[0]
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


# What reading a gzip stream raises when it is cut short or corrupt.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def read_error(source: str, lineno: int, err: BaseException) -> Exception:
    """The one-line error for a line source that fails after ``lineno`` complete lines:
    an ``IngestError`` for a truncated or corrupt gzip stream, else an ``OSError`` naming
    ``source``."""
    last = f"the last complete line is {lineno}" if lineno else "no complete line was read"
    if isinstance(err, EOFError):
        return IngestError(
            source, lineno + 1, "truncated_gzip",
            f"the compressed stream ends before its end marker (the file is cut short); {last}",
        )
    if isinstance(err, GZIP_ERRORS):
        what = str(err).splitlines()[0] if str(err) else type(err).__name__
        return IngestError(
            source, lineno + 1, "corrupt_gzip",
            f"{what} (bad data inside or after the gzip stream); {last}",
        )
    if isinstance(err, OSError) and err.filename is None:
        return OSError(err.errno, err.strerror or str(err), source)
    return err


def jsonl_windows(
    fh: Iterable[bytes],
    stream: WindowStream,
    on_error: str,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, dict]]:
    """The windows of a JSONL line source ``fh``, through ``stream``.

    A gzip stream cut short or corrupt raises an ``IngestError`` naming the line after the
    last complete one (with either ``on_error``: the rest of the file cannot be read); the
    windows closed before it have been yielded. Another read failure raises an ``OSError``
    naming the file."""
    # The hot loop: about 1e6 lines per few seconds. Locals stand in for attribute look-ups.
    report, source, n = stream.report, stream.source, stream.n
    skip = on_error == "skip"
    last_window = [-1] * n  # per region
    open_windows = stream.open
    newest = stream.newest
    vmax, bmax = stream.vmax, stream.bmax  # beyond these a value overflows the dtype
    low_a, low_b = -vmax, -bmax
    dtype = stream.dtype.name
    events = nonfinite = 0
    lineno = 0
    try:  # costs nothing per line; catches what reading the next line raises
        for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno is read after the loop
            if progress is not None:
                progress(len(raw))
            try:
                try:
                    region, window, kind, a, b = parse_fields(fast_decode(raw))
                except (ValueError, TypeError, RecursionError):
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
                            f"window {window} is more than {stream.max_gap} windows past "
                            f"window {max(stream.newest, stream.next_emit or 0)}",
                        )
                        continue
                last_window[region] = window
                if kind in RANGED_KINDS:
                    bad = out_of_range(kind, a, b)
                    if bad is not None:
                        report.count_out_of_range(bad[0], f"{source}:{lineno}", bad[1])
                        continue
                if a > vmax or a < low_a or b > bmax or b < low_b:  # or non-finite
                    bad = overflow(kind, a, b, vmax, dtype)
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
    except (*GZIP_ERRORS, OSError) as err:
        report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
        raise read_error(source, lineno, err) from None
    report.events, report.nonfinite_values, report.lines = events, nonfinite, lineno
    yield from stream.finish()
