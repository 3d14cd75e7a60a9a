"""The ``narset decide`` job: run Narset on a real run's telemetry and write the decision log.

The input (a JSONL event log, gzipped or not, a Parquet table, or Esper's own telemetry;
``docs/telemetry.md``) is streamed into windows by [`narset_jax.ingest.open_windows`][],
each window goes through the jitted controller step, and every ``chunk_windows`` windows
of decisions become one part of the decision log written by [`narset_jax.decision_log`][]:
the same log and manifest as ``narset simulate``, so ``narset replay DIR`` verifies it.
``DIR/summary.json`` holds the ingest report: lines, events, bad lines by reason, unknown
regions, out-of-range values, windows, and for Esper telemetry the coverage of the twelve
inputs (``coverage``). ``emit_esper`` also writes every decision as an Esper event
([`narset_jax.esper_emit`][]).

The output is a transaction ([`narset_jax.decision_log.OutputDir`][]): ``out`` is locked
for the run, the new log is staged beside it and replaces the old one only once complete,
so bad input found halfway leaves an old log as it was. ``--on-error stop`` keeps every
window decided before the bad line (a partial log, when ``out`` held no log before).

This is the controller library on real telemetry: it never imports ``sims``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from narset_jax.errors import UserError
from narset_jax.params import NarsetParams

__all__ = ["check_memory", "default_chunk", "run_decide"]


def default_chunk(n_regions: int) -> int:
    """Windows per log part: about 2^18 decision rows, between 1 and 256 windows."""
    return max(1, min(256, (1 << 18) // max(n_regions, 1)))


def check_memory(n_regions: int, dtype: str, chunk: int, lag: int) -> None:
    """Refuse, in one line with the estimate, a region count whose windows and decision
    records cannot fit in this machine's memory (before anything is allocated)."""
    import numpy as np

    from narset_jax.resources import check_fits, closed_loop_bytes

    need = closed_loop_bytes(n_regions, itemsize=np.dtype(dtype).itemsize,
                             record_windows=chunk + lag + 1)
    check_fits(need, f"--regions {n_regions}")


def run_decide(
    events,
    *,
    out: str | os.PathLike,
    params: NarsetParams | str | os.PathLike | None = None,
    on_error: str = "stop",
    n_regions: int | None = None,
    lag: int = 2,
    first_window: int | None = None,
    max_gap: int = 100_000,
    chunk_windows: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    force: bool = False,
    sign_key: bytes | None = None,
    format: str = "auto",
    region: str = "env",
    window_seconds: float | None = None,
    emit_esper: str | os.PathLike | None = None,
) -> dict:
    """Decide every window of the event log ``events`` and write the decision log to
    ``out``; returns the summary (also written to ``out/summary.json``).

    **Arguments** (each as the ``narset decide`` flag of the same name):

    - ``events``: a JSONL event log (``.jsonl``, ``.jsonl.gz``; ``"-"`` for stdin) or a
      Parquet table.
    - ``params``: [`narset_jax.NarsetParams`][], a params TOML file, or ``None`` for the
      defaults.
    - ``on_error``, ``n_regions``, ``lag``, ``first_window``, ``max_gap``, ``progress``:
      as in [`narset_jax.ingest.open_windows`][].
    - ``chunk_windows``: windows per log part (default [`narset_jax.decide.default_chunk`][]).
    - ``dtype``: ``"float32"`` or ``"float64"`` (which turns on ``jax_enable_x64``, else JAX
      silently computes in float32).
    - ``force``: write into ``out`` even if it holds files that are not a narset output
      (they are kept).
    - ``sign_key``: HMAC-sign the manifest with these bytes.
    - ``format``: ``"auto"`` (detects the schema; today's JSONL schema reads exactly as
      before) or ``"esper"`` (Esper's own telemetry: a file, a ``telemetry_*`` directory
      or a directory of them; ``n_regions`` is then the number of envs).
    - ``region``, ``window_seconds``: Esper only: regions ``"env"`` or ``"env,slot"``;
      the window span of a log without inner epochs or batch boundaries.
    - ``emit_esper``: also write each decision as an Esper event to this file (Esper
      input only; written atomically once the log is complete).

    The summary has the settings, the seconds taken, the ingest report (``ingest``) and the
    log's facts (``log``: windows, rows, parts, bytes, first window). Bad input raises
    [`narset_jax.errors.UserError`][]; with ``on_error="stop"`` its message says how many
    windows were decided before the bad line, and where their partial log is.
    """
    if chunk_windows is not None and chunk_windows < 1:
        raise UserError(f"--chunk-windows must be >= 1, got {chunk_windows}")
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    if params is None:
        params = NarsetParams()
    elif not isinstance(params, NarsetParams):
        params = NarsetParams.from_toml(params)

    from narset_jax.decision_log import OutputDir
    from narset_jax.ingest import open_windows

    if n_regions is not None and not isinstance(n_regions, bool) and isinstance(n_regions, int):
        check_memory(n_regions, dtype, chunk_windows or default_chunk(n_regions), lag)
    t0 = time.perf_counter()
    stream = open_windows(
        events,
        n_regions=n_regions,
        lag=lag,
        on_error=on_error,
        max_gap=max_gap,
        first_window=first_window,
        dtype=dtype,
        progress=progress,
        format=format,
        region=region,
        window_seconds=window_seconds,
        params=params,
    )
    esper = stream.report.format == "esper"
    if emit_esper is not None and not esper:
        raise UserError("--emit esper needs Esper telemetry as input (this log is "
                        f"{stream.report.format})")
    n = stream.n_regions
    chunk = chunk_windows or default_chunk(n)
    check_memory(n, dtype, chunk, lag)
    config = {
        "command": "decide",
        "events": os.fspath(events),
        "format": stream.report.format,
        "on_error": on_error,
        "lag": lag,
        "max_gap": max_gap,
        "first_window": first_window,
        "chunk_windows": chunk,
    }
    if esper:
        config.update(region=region, window_seconds=window_seconds)
    with contextlib.ExitStack() as stack:
        emitter = None
        if emit_esper is not None:
            from narset_jax.esper_emit import EsperEmitter

            emitter = stack.enter_context(EsperEmitter(emit_esper, stream.esper))
        with OutputDir(out, force=force) as od:
            log = _decide(stream, params, n, chunk, dtype, od.stage, config, sign_key,
                          emitter)
            log["dir"] = os.fspath(out)
            summary = _summary(events, out, n, dtype, chunk, t0, stream, log)
            if emitter is not None:
                summary["emit"] = {"format": "esper", "file": os.fspath(emit_esper),
                                   "events": emitter.rows}
            from narset_jax.atomic import write_json

            write_json(od.stage / "summary.json", summary)
            od.commit()
    return summary


def _summary(events, out, n, dtype, chunk, t0, stream, log) -> dict:
    summary = {
        "command": "decide",
        "events_file": os.fspath(events),
        "out": os.fspath(out),
        "n_regions": n,
        "dtype": dtype,
        "chunk_windows": chunk,
        "seconds": round(time.perf_counter() - t0, 3),
        "ingest": stream.report.to_dict(),
        "log": log,
    }
    coverage = getattr(stream.report, "coverage", None)
    if coverage is not None:
        summary["coverage"] = coverage
    return summary


def _decide(stream, params, n: int, chunk: int, dtype: str, out: Path, config: dict,
            sign_key: bytes | None = None, emitter=None) -> dict:
    """Run the controller over the stream, writing decisions ``chunk`` windows per part;
    returns log facts.

    Each window goes through ``Narset.step``, the same jitted program that ``replay`` runs,
    so the log replays bit for bit. (A ``lax.scan`` over a chunk compiles to a different
    program, whose float results may differ in the last bit.) Steps are dispatched
    asynchronously: parsing the next window overlaps the previous step, and results are
    fetched once per part. The manifest gets the ingest report (what was read, skipped and
    dropped) and ``first_window`` (decision ``step`` ``s`` is window ``first_window + s``).
    If the stream or a step stops with an error, the windows decided so far are flushed
    first, and an input error's message says how many were kept.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from narset_jax.atomic import WriteError
    from narset_jax.decision_log import DecisionLogError, DecisionLogWriter
    from narset_jax.step import Narset
    from narset_jax.telemetry import BOOL_FIELDS, Telemetry

    ctl = Narset(params)
    state = ctl.init(n, jnp.float32 if dtype == "float32" else jnp.float64)
    np_dtype = np.dtype(dtype)
    pending = []
    pending_w = []
    windows = 0

    def flush(writer):
        # One jitted stack and one transfer per part, not one per column and window.
        stacked = jax.device_get(_stack_jit()(pending).columns())
        writer.write(stacked)
        if emitter is not None:
            emitter.write(pending_w, stacked)
        pending.clear()
        pending_w.clear()

    writer = DecisionLogWriter(out, params=params, n_regions=n, dtype=dtype, config=config,
                               sign_key=sign_key, lock=False)
    with writer:
        try:
            for _w, cols in stream:
                tel = Telemetry(
                    **{k: v.astype(bool if k in BOOL_FIELDS else np_dtype)
                       for k, v in cols.items()}
                )
                state, decision = ctl.step(state, tel)
                pending.append(decision)
                pending_w.append(_w)
                windows += 1
                if len(pending) == chunk:
                    flush(writer)
        except BaseException as err:
            if pending:  # keep every window decided before the stop
                with contextlib.suppress(Exception):
                    flush(writer)
            if (isinstance(err, UserError) and not isinstance(err, (WriteError, DecisionLogError))
                    and len(err.args) == 1 and isinstance(err.args[0], str)):
                kept = writer.n_windows
                said = {0: "no window was decided before it",
                        1: "the window decided before it is kept"}.get(
                    kept, f"the {kept} windows decided before it are kept")
                err.args = (f"{err.args[0]}; stopped there: {said}",)
            raise
        finally:
            writer.extra["first_window"] = stream.report.first_window
            writer.extra["ingest"] = stream.report.to_dict()
        if pending:
            flush(writer)
        if windows == 0:
            raise UserError(f"{stream.report.source}: no windows to decide (no usable events)")
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
