"""``narset audit``: rank a decision log's regions by how likely they are to be gaming the
budget, with the evidence for each; precision and recall against the ground truth a
simulated run records. The job is [`narset_jax.audit.audit_log`][]; method, calibration and
measurements: ``docs/gaslighting.md`` (Audit).

    narset audit DIR [--fpr A] [--top K] [--json PATH] [--allow-partial] [--sign-key FILE]
"""

from __future__ import annotations

import argparse

HELP = "rank a decision log's regions by how likely they are to be gaming the budget"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from narset_jax.audit import DEFAULT_FPR

    p = subparsers.add_parser("audit", help=HELP, description=HELP + " (docs/gaslighting.md).",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="decision-log directory (simulate or decide)")
    p.add_argument("--fpr", type=float, default=DEFAULT_FPR, metavar="A",
                   help="false-positive rate the flagging threshold is set for, in (0, 1)")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="regions printed with their evidence (--json holds all)")
    p.add_argument("--allow-partial", action="store_true", help="audit a log marked partial")
    p.add_argument("--sign-key", metavar="FILE", help="the HMAC key the log was signed with")
    p.add_argument("--json", metavar="PATH", help="write the ranking and evidence as JSON here")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from narset_jax.atomic import write_json
    from narset_jax.audit import audit_log, lines
    from narset_jax.decision_log import check_json_path, load_key
    from narset_jax.errors import UserError

    if not 0 < args.fpr < 1 or args.top < 0:
        raise UserError(f"--fpr must be in (0, 1) and --top >= 0; got {args.fpr}, {args.top}")
    check_json_path(args.json, args.dir, summary_ok=False)
    key = load_key(args.sign_key) if args.sign_key else None
    report = audit_log(args.dir, fpr=args.fpr, allow_partial=args.allow_partial, key=key)
    if args.json:
        write_json(args.json, report.to_dict())
    print("\n".join(lines(report, args.top)))
    return 0
