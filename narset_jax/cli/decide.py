"""``narset decide``: run Narset on a real run's telemetry and write the decision log.

    narset decide --events FILE [--params FILE] [--on-error stop|skip] --out DIR [--json PATH]

The input (a JSONL event log, gzipped or not, or a Parquet table; ``docs/telemetry.md``) is
streamed into windows, each window goes through the jitted controller step, and every
``--chunk-windows`` windows of decisions become one part of the decision log written by
``narset_jax.decision_log``: the same log and manifest as ``narset simulate``, so ``narset
replay DIR`` verifies it. ``DIR/summary.json`` (and ``--json PATH``) holds the ingest report:
lines, events, bad lines by reason, unknown regions, out-of-range values, windows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

HELP = "run Narset on real training telemetry (JSONL event log or Parquet) and log decisions"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "decide",
        help=HELP,
        description=HELP + ". The log replays with 'narset replay DIR'; see docs/telemetry.md.",
    )
    p.add_argument(
        "--events",
        required=True,
        metavar="FILE",
        help="JSONL event log (.jsonl, .jsonl.gz; '-' for stdin) or Parquet table",
    )
    p.add_argument("--params", metavar="FILE", help="NarsetParams TOML (default: defaults)")
    p.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="on a malformed line: stop with its line number (default), or skip it and "
        "count it in summary.json",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="decision log directory")
    p.add_argument("--json", metavar="PATH", help="also write the summary here")
    p.add_argument(
        "--regions",
        type=int,
        metavar="N",
        help="number of regions (default: largest region id + 1); larger ids are counted",
    )
    p.add_argument(
        "--lag",
        type=int,
        default=2,
        help="windows kept open: window w closes once an event of window >= w + lag is read "
        "(default: 2)",
    )
    p.add_argument(
        "--first-window", type=int, metavar="W", help="first window (default: first seen)"
    )
    p.add_argument(
        "--max-gap",
        type=int,
        default=100_000,
        metavar="G",
        help="an event more than G windows past the newest is counted as out of range "
        "(default: 100000)",
    )
    p.add_argument(
        "--chunk-windows",
        type=int,
        metavar="T",
        help="windows per decision-log part (default: about 2^18 / N, at most 256)",
    )
    p.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="default: float32"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def default_chunk(n_regions: int) -> int:
    """Windows per log part: about 2^18 decision rows, between 1 and 256 windows."""
    return max(1, min(256, (1 << 18) // max(n_regions, 1)))


def run(args) -> int:
    from narset_jax.errors import UserError
    from narset_jax.ingest import open_windows
    from narset_jax.params import NarsetParams

    if args.chunk_windows is not None and args.chunk_windows < 1:
        raise UserError(f"--chunk-windows must be >= 1, got {args.chunk_windows}")
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    params = NarsetParams.from_toml(args.params) if args.params else NarsetParams()
    t0 = time.perf_counter()
    stream = open_windows(
        args.events,
        n_regions=args.regions,
        lag=args.lag,
        on_error=args.on_error,
        max_gap=args.max_gap,
        first_window=args.first_window,
        progress=not args.no_progress,
    )
    n = stream.n_regions
    chunk = args.chunk_windows or default_chunk(n)
    out = Path(args.out)
    config = {
        "command": "decide",
        "events": os.fspath(args.events),
        "format": stream.report.format,
        "on_error": args.on_error,
        "lag": args.lag,
        "max_gap": args.max_gap,
        "first_window": args.first_window,
        "chunk_windows": chunk,
    }
    with contextlib.suppress(FileNotFoundError):
        (out / "summary.json").unlink()  # never leave a stale summary beside a new log
    log = _decide(stream, params, n, chunk, args.dtype, out, config)
    report = stream.report
    summary = {
        "command": "decide",
        "events_file": os.fspath(args.events),
        "out": os.fspath(args.out),
        "n_regions": n,
        "dtype": args.dtype,
        "chunk_windows": chunk,
        "seconds": round(time.perf_counter() - t0, 3),
        "ingest": report.to_dict(),
        "log": log,
    }
    _write_summaries(summary, out, args.json)
    skipped = f", {report.bad_lines} bad lines skipped" if report.bad_lines else ""
    dropped = report.unknown_region + sum(report.out_of_range.values())
    dropped = f", {dropped} events with unknown region or out-of-range value" if dropped else ""
    print(
        f"narset decide: {report.windows} windows x {n} regions from {report.events} events"
        f"{skipped}{dropped} -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _decide(stream, params, n: int, chunk: int, dtype: str, out: Path, config: dict) -> dict:
    """Run the controller over the stream, writing decisions ``chunk`` windows per part;
    returns log facts.

    Each window goes through ``Narset.step``, the same jitted program that ``replay`` runs,
    so the log replays bit for bit. (A ``lax.scan`` over a chunk compiles to a different
    program, whose float results may differ in the last bit.) Steps are dispatched
    asynchronously: parsing the next window overlaps the previous step, and results are
    fetched once per part. The manifest gets the ingest report (what was read, skipped and
    dropped) and ``first_window`` (decision ``step`` ``s`` is window ``first_window + s``).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from narset_jax.decision_log import DecisionLogWriter
    from narset_jax.errors import UserError
    from narset_jax.step import Narset
    from narset_jax.telemetry import BOOL_FIELDS, Telemetry

    ctl = Narset(params)
    state = ctl.init(n, jnp.float32 if dtype == "float32" else jnp.float64)
    np_dtype = np.dtype(dtype)
    pending = []
    windows = 0

    def flush(writer):
        # One jitted stack and one transfer per part, not one per column and window.
        stacked = jax.device_get(_stack_jit()(pending).columns())
        writer.write(stacked)
        pending.clear()

    writer = DecisionLogWriter(out, params=params, n_regions=n, dtype=dtype, config=config)
    with writer:
        for _w, cols in stream:
            tel = Telemetry(
                **{k: v.astype(bool if k in BOOL_FIELDS else np_dtype) for k, v in cols.items()}
            )
            state, decision = ctl.step(state, tel)
            pending.append(decision)
            windows += 1
            if len(pending) == chunk:
                flush(writer)
        if pending:
            flush(writer)
        if windows == 0:
            raise UserError(f"{stream.report.source}: no windows to decide (no usable events)")
        writer.extra["first_window"] = stream.report.first_window
        writer.extra["ingest"] = stream.report.to_dict()
    manifest = writer.manifest
    return {
        "dir": os.fspath(out),
        "windows": windows,
        "rows": windows * n,
        "parts": len(manifest["parts"]),
        "bytes": sum(p["bytes"] for p in manifest["parts"]),
        "first_window": stream.report.first_window,
    }


_STACK = []


def _stack_jit():
    """``jit`` of stacking a list of decisions along a new leading (window) axis."""
    if not _STACK:
        import jax
        import jax.numpy as jnp

        _STACK.append(jax.jit(lambda ds: jax.tree.map(lambda *xs: jnp.stack(xs), *ds)))
    return _STACK[0]


def _write_summaries(summary: dict, out: Path, json_path: str | None) -> None:
    from narset_jax.atomic import write_json

    write_json(out / "summary.json", summary)
    if json_path:
        write_json(json_path, summary)
