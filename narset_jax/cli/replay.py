"""``narset replay``: re-run a decision log and check every decision bit for bit.

    narset replay DIR [--params FILE] [--allow-partial] [--sign-key FILE] [--json PATH]

Verifies ``DIR/manifest.json`` completely (its digest first, or its HMAC with
``--sign-key``; then every field and how they agree; ``narset_jax.decision_log.reader``),
reads the logged raw inputs, re-runs the controller window by window and compares every
logged column. Exit status 0 when the manifest, every part's sha256 and every decision
match; 1 when the log does not verify (``FAILED``: an edited, forged or inconsistent
manifest) or a decision differs (``MISMATCH``, reported as region, step and field); 2 when
there is no log to verify (missing, or partial without ``--allow-partial``). With
``--params FILE`` the logged inputs are re-decided under other params instead (a what-if):
the report summarises how the decisions change, and the exit status is 0.
"""

from __future__ import annotations

import argparse
import sys

HELP = "re-run a decision log bit for bit, or re-decide it under other params (what-if)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay",
        help=HELP,
        description=HELP + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="decision-log directory")
    p.add_argument("--params", metavar="FILE",
                   help="re-decide under these NarsetParams (TOML or preset) instead of verifying")
    p.add_argument("--allow-partial", action="store_true",
                   help="replay the windows of a log marked partial, or of the journal a "
                        "killed run left")
    p.add_argument("--sign-key", metavar="FILE",
                   help="the HMAC key the log was signed with (an unsigned log then fails)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    p.set_defaults(run=run)
    return p


def _step_fn(log):
    """The controller that wrote the log (``config.controller``; default Narset)."""
    from narset_jax.decision_log import DecisionLogError

    controller = (log.manifest.get("config") or {}).get("controller", "narset")
    if controller in (None, "narset"):
        return None
    from sims.baselines import CONTROLLERS, step_fn

    if controller not in CONTROLLERS:
        raise DecisionLogError(f"{log.path}: unknown controller {controller!r} in the manifest")
    return step_fn(controller)


def run(args) -> int:
    from narset_jax.decision_log import LogVerificationError

    try:
        return _run(args)
    except LogVerificationError as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"narset replay: FAILED: {msg}")
        return 1


def _run(args) -> int:
    from tqdm import tqdm

    from narset_jax.atomic import write_json
    from narset_jax.decision_log import check_json_path, load_key, read_decision_log, replay

    check_json_path(args.json, args.dir, summary_ok=False)
    key = load_key(args.sign_key) if args.sign_key else None
    log = read_decision_log(args.dir, allow_partial=args.allow_partial, key=key)
    if log.manifest.get("dtype") == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    params = None
    if args.params:
        from narset_jax.params import NarsetParams
        from sims.tune.presets import params_file

        params = NarsetParams.from_toml(params_file(args.params))
    total = log.manifest.get("n_windows") or None
    bar = tqdm(total=total, unit="window", desc="replay", disable=args.no_progress,
               file=sys.stderr, leave=False)
    last = [0]

    def tick(done):
        bar.update(done - last[0])
        last[0] = done

    try:
        report = replay(args.dir, params, step_fn=_step_fn(log),
                        allow_partial=args.allow_partial, progress=tick, key=key)
    finally:
        bar.close()
    if args.json:
        write_json(args.json, report.to_dict())
    where = f"{report.n_windows} windows x {report.n_regions} regions"
    partial = " (partial log)" if report.partial else ""
    for note in report.notes:
        print(f"narset replay: note: {note}")
    for f in report.bad_parts:
        print(f"narset replay: {f}: sha256 does not match the manifest (file changed)")
    if report.what_if:
        d = report.diff
        print(
            f"narset replay: what-if over {where}{partial}: "
            f"{report.rows_mismatched} of {report.n_rows} rows change; "
            f"mean |dx_T| {d.get('mean_abs_dx_T', 0):.4f}, mean |dx_E| "
            f"{d.get('mean_abs_dx_E', 0):.4f}, mode agreement {d.get('mode_agreement', 1):.3f}, "
            f"overdrive {d.get('overdrive_old', 0):.3f} -> {d.get('overdrive_new', 0):.3f}, "
            f"lysis tier {d.get('lysis_old', 0):.3f} -> {d.get('lysis_new', 0):.3f}"
        )
        return 1 if report.bad_parts else 0
    if report.first_mismatch is not None:
        region, step, field = report.first_mismatch
        print(
            f"narset replay: MISMATCH at region {region}, step {step}, field {field!r} "
            f"({report.rows_mismatched} rows differ; by field: "
            + ", ".join(f"{k}={v}" for k, v in sorted(report.mismatches.items()))
            + ")"
        )
        return 1
    if report.bad_parts:
        return 1
    print(f"narset replay: OK: {where}{partial}, manifest {report.digest}, every decision "
          "matches bit for bit")
    return 0
