"""``narset decide``: run Narset on a real run's telemetry and write the decision log.

    narset decide --events FILE [--params FILE] [--on-error stop|skip] --out DIR [--json PATH]
                  [--force] [--sign-key FILE] [--format auto|esper] [--region env|env,slot]
                  [--window-seconds S] [--emit esper FILE]

The input (a JSONL event log, gzipped or not, a Parquet table, or Esper's own telemetry: a
file, a ``telemetry_*`` directory or a directory of them; ``docs/telemetry.md``) is
streamed into windows, each window goes through the jitted controller step, and every
``--chunk-windows`` windows of decisions become one part of the decision log written by
``narset_jax.decision_log``: the same log and manifest as ``narset simulate``, so ``narset
replay DIR`` verifies it. ``DIR/summary.json`` (and ``--json PATH``) holds the ingest report:
lines, events, bad lines by reason, unknown regions, out-of-range values, windows; for
Esper telemetry also the coverage of the twelve inputs, printed on stderr too. ``--emit
esper FILE`` writes every decision back as an Esper event. The job is
[`narset_jax.decide.run_decide`][].

``DIR`` is locked for the run, and the new log replaces an old one only once complete (bad
input found halfway leaves the old log as it was); a ``DIR`` holding other files is
refused unless ``--force``. ``--on-error stop`` keeps the windows decided before the bad
line and says how many. SIGTERM stops the run as Ctrl-C does (exit 143). See
``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import sys

from narset_jax.cli.simulate import count
from narset_jax.errors import UserError

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
        help="JSONL event log (.jsonl, .jsonl.gz; '-' for stdin) or Parquet table, or "
        "Esper telemetry (events.jsonl, a telemetry_* directory or a directory of them)",
    )
    p.add_argument("--params", metavar="FILE",
                   help="NarsetParams TOML or a preset name (tuned; default: defaults)")
    p.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="on a malformed line: stop with its line number (default), or skip it and "
        "count it in summary.json",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="decision log directory")
    p.add_argument("--json", metavar="PATH", help="also write the summary here")
    p.add_argument("--force", action="store_true",
                   help="write into DIR even if it holds files that are not a narset output "
                        "(they are kept)")
    p.add_argument("--sign-key", metavar="FILE",
                   help="HMAC-SHA256-sign the manifest with this key file (replay needs it)")
    p.add_argument(
        "--regions",
        type=count,
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
    p.add_argument(
        "--format",
        choices=("auto", "esper"),
        default="auto",
        help="auto (default): Parquet, Esper's own telemetry (a directory, or lines with "
        "event_type/timestamp) or the JSONL event schema; esper: Esper's telemetry",
    )
    p.add_argument(
        "--region",
        choices=("env", "env,slot"),
        default="env",
        help="Esper input: one region per env (default) or per env and slot",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        metavar="S",
        help="Esper input without inner epochs or batch boundaries: windows of S seconds",
    )
    p.add_argument(
        "--emit",
        nargs=2,
        metavar=("FORMAT", "FILE"),
        help="also write each decision to FILE as an event: FORMAT esper (Esper's envelope, "
        "event_type NARSET_ALLOCATION; Esper input only)",
    )
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from narset_jax.atomic import write_json
    from narset_jax.cli.simulate import interrupted
    from narset_jax.decide import run_decide
    from narset_jax.decision_log import check_json_path, load_key, sigterm_as_interrupt

    check_json_path(args.json, args.out)
    emit = None
    if args.emit:
        fmt, emit = args.emit
        if fmt != "esper":
            raise UserError(f"--emit: unknown format {fmt!r} (known: esper)")
        check_emit_path(emit, args.out)
    sign_key = load_key(args.sign_key) if args.sign_key else None
    if args.params:  # a preset name (tuned): its packaged TOML
        from sims.tune.presets import params_file
        args.params = params_file(args.params)
    try:
        with sigterm_as_interrupt():
            summary = run_decide(
                args.events,
                out=args.out,
                params=args.params or None,
                on_error=args.on_error,
                n_regions=args.regions,
                lag=args.lag,
                first_window=args.first_window,
                max_gap=args.max_gap,
                chunk_windows=args.chunk_windows,
                dtype=args.dtype,
                progress=not args.no_progress,
                force=args.force,
                sign_key=sign_key,
                format=args.format,
                region=args.region,
                window_seconds=args.window_seconds,
                emit_esper=emit,
            )
    except KeyboardInterrupt as err:
        return interrupted("decide", err)
    if args.json:
        write_json(args.json, summary)
    report = summary["ingest"]
    skipped = f", {report['bad_lines']} bad lines skipped" if report["bad_lines"] else ""
    dropped = report["unknown_region"] + sum(report["out_of_range"].values())
    dropped = f", {dropped} events with unknown region or out-of-range value" if dropped else ""
    print(
        f"narset decide: {report['windows']} windows x {summary['n_regions']} regions from "
        f"{report['events']} events{skipped}{dropped} -> {args.out}",
        file=sys.stderr,
    )
    if "coverage" in summary:
        from narset_jax.ingest.esper_coverage import format_coverage

        for line in format_coverage(summary["coverage"]):
            print(f"narset decide: {line}", file=sys.stderr)
    if "emit" in summary:
        print(f"narset decide: {summary['emit']['events']} decisions as Esper events -> "
              f"{summary['emit']['file']}", file=sys.stderr)
    return 0


def check_emit_path(path: str, out: str) -> None:
    """Refuse an ``--emit`` file inside the output directory (it would be replaced with
    the directory) or equal to it."""
    import os

    p, o = os.path.abspath(path), os.path.abspath(out)
    if os.path.isdir(p):
        raise UserError(f"--emit {path}: is a directory (--emit names a file)")
    if p == o or p.startswith(o.rstrip(os.sep) + os.sep):
        raise UserError(f"--emit {path}: must not be inside --out {out} (the directory is "
                        "replaced as a whole)")
