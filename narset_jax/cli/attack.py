"""``narset attack``: the job is [`sims.attack.run_attack`][]; see docs/gaslighting.md."""

from __future__ import annotations

import sys


def add_parser(subparsers):
    from sims.attack.job import CLI_FLAGS

    p = subparsers.add_parser(
        "attack", help="train spoofers against Narset, harden Narset, report capture",
        description="Spoofers learn what to fake inside an attack budget; Narset's params "
        "are hardened by min-max training. Writes DIR/hardened.toml, DIR/attack.json and "
        "DIR/capture_vs_budget.png. See docs/gaslighting.md.")
    p.add_argument("--honest", action="append", default=None, metavar="SCENARIO",
                   help="honest scenario to price (repeatable; default steady and crisis)")
    for flag, kind, default, text in CLI_FLAGS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report here")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from narset_jax.atomic import write_json
    from sims.attack.job import run_from_args, summary_line, write_outputs

    report, hardened = run_from_args(
        args, log=lambda msg: print(f"narset attack: {msg}", file=sys.stderr, flush=True))
    for path in write_outputs(report, hardened, args.out):
        print(path)
    print(f"narset attack: {summary_line(report)}", file=sys.stderr)
    if args.json:
        write_json(args.json, report)
    return 0
