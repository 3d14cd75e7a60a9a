"""``narset simulate``: run a controller on a simulated ecology and write its decision log.

    narset simulate [--ecology E] --scenario NAME --regions N --steps T --seed S --out DIR
                    [--params FILE] [--controller C] [--budget B] [--json PATH]
                    [--force] [--sign-key FILE]
                    [--devices D] [--coordinator HOST:PORT --num-processes P --process-id I]

Writes to ``DIR``: the decision log (``decisions/part-*.parquet``, one row per region and
window, and ``manifest.json``, written last; see ``narset_jax.decision_log``),
``summary.json`` (the run's metrics and objective, ``docs/simulator.md``), and figures in
``DIR/plots``. ``narset replay DIR`` re-runs the logged decisions bit for bit.

``--ecology`` picks what the controller acts on (``stylised``, the default, or
``neural``); ``--scenario`` then names one of that ecology's scenarios (or a TOML file). The
manifest of a non-default ecology's run records it (and, for ``neural``, the dataset's
SHA-256, generator arguments and mnist1d version); replay needs nothing more, since it
re-runs only the controller on the logged inputs.

``DIR`` is locked for the run (a second writer is refused, naming the first's PID); the
output is staged beside it and replaces an old one only once complete; a ``DIR`` holding
other files is refused unless ``--force``. SIGTERM stops the run as Ctrl-C does (partial
log, exit 143). Figures that fail leave the log and ``summary.json`` complete: one line
says why, exit status 1. See ``docs/reliability.md``.

``--devices D`` shards the regions over ``D`` local devices (per process); with
``--coordinator HOST:PORT --num-processes P --process-id I`` on every process, over all
processes' devices (``jax.distributed``, gloo on CPU). Process 0 prints and writes the
files. The engine, and why a sharded run's log is bitwise a one-device run's, is
[`sims.simulate`][].
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "simulate an ecology of regions under a controller and write the decision log"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from sims.controllers import CONTROLLERS
    from sims.ecologies import ECOLOGIES
    from sims.scenario import SCENARIOS

    p = subparsers.add_parser(
        "simulate",
        help=HELP,
        description=HELP + ". Scenarios: " + ", ".join(SCENARIOS) + " (or a .toml file).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_ecology_arg(p, ECOLOGIES)
    p.add_argument("--scenario", default="steady", metavar="NAME",
                   help="a shipped scenario name of the ecology or a scenario TOML file")
    p.add_argument("--regions", type=count, default=1000, metavar="N",
                   help="number of regions (an integer; 1e6 style accepted)")
    p.add_argument("--steps", type=int, default=150, metavar="T", help="decision windows")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="PRNG seed")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--params", metavar="FILE", help="NarsetParams TOML or a preset (tuned: "
                   "docs/tuning.md's worked example; default: the hand-set defaults)")
    p.add_argument("--controller", default="narset", choices=CONTROLLERS,
                   help="Narset or one of the baselines")
    p.add_argument("--budget", choices=("region", "global", "fixed_sum"),
                   help="budget mode (default: the params file's, else the scenario's "
                        "recommendation, else region)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--chunk", type=int, metavar="K",
                   help="windows per log part (default: about 1M rows per part, at most 64)")
    p.add_argument("--sample-regions", type=int, default=6, metavar="K",
                   help="regions drawn in the intensity plot")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="PATH", help="also write the summary here")
    p.add_argument("--force", action="store_true",
                   help="write into DIR even if it holds files that are not a narset output "
                        "(they are kept)")
    p.add_argument("--sign-key", metavar="FILE",
                   help="HMAC-SHA256-sign the manifest with this key file (replay needs it)")
    from narset_jax.distributed import add_device_args

    add_device_args(p)
    p.set_defaults(run=run)
    return p


def add_ecology_arg(p: argparse.ArgumentParser, ecologies) -> None:
    """``--ecology NAME`` (checked by [`check_ecology`][], so a bad name is one line)."""
    p.add_argument("--ecology", default="stylised", metavar="{" + ",".join(ecologies) + "}",
                   help="the ecology the controller acts on; --scenario names one of its "
                        "scenarios")


def check_ecology(name: str) -> str:
    """``name`` if it is an ecology, else a one-line ``UserError`` naming the valid ones."""
    from narset_jax.errors import UserError
    from sims.ecologies import ECOLOGIES

    if name not in ECOLOGIES:
        raise UserError(f"unknown --ecology {name!r}; valid: {', '.join(ECOLOGIES)}")
    return name


def count(text: str) -> int:
    """An argparse type: an integer, also written ``1e6`` or ``1_000_000``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(value)


def interrupted(command: str, err: KeyboardInterrupt) -> int:
    """One line for a run stopped by SIGINT or SIGTERM (with where its log is); the exit
    status 130 or 143."""
    import sys

    from narset_jax.decision_log import Terminated

    term = isinstance(err, Terminated)
    notes = "; ".join(getattr(err, "__notes__", []))
    what = "terminated (SIGTERM)" if term else "interrupted"
    print(f"narset {command}: {what}" + (f": {notes}" if notes else ""), file=sys.stderr)
    return 143 if term else 130


def _positive(name: str, value: int) -> int:
    from narset_jax.errors import UserError

    if value is None or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value}")
    return value


def run(args) -> int:
    from narset_jax.errors import UserError

    ecology = check_ecology(args.ecology)
    n = _positive("--regions", args.regions)
    steps = _positive("--steps", args.steps)
    if args.chunk is not None:
        _positive("--chunk", args.chunk)
    if args.sample_regions < 0:
        raise UserError(f"--sample-regions must be >= 0, got {args.sample_regions}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    from narset_jax.decision_log import check_json_path, load_key, sigterm_as_interrupt

    check_json_path(args.json, out)
    sign_key = load_key(args.sign_key) if args.sign_key else None

    from narset_jax.distributed import setup_devices

    # Devices and processes before anything touches a JAX backend.
    setup = setup_devices(args)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32

    from sims.ecologies import load_params
    from sims.simulate import default_chunk, resolve_params, simulate
    from sims.tune.presets import params_file
    args.params = params_file(args.params)  # a preset name: its packaged TOML
    scenario = load_params(ecology, args.scenario)
    params = resolve_params(args.params, scenario, args.budget)
    try:
        with sigterm_as_interrupt():
            summary = simulate(
                params,
                scenario,
                n_regions=n,
                n_steps=steps,
                seed=args.seed,
                out=out,
                controller=args.controller,
                ecology=ecology,
                dtype=args.dtype,
                chunk=default_chunk(n, steps, args.chunk),
                sample_regions=args.sample_regions,
                plots=not args.no_plots,
                progress=not args.no_progress,
                params_file=args.params,
                setup=setup,
                force=args.force,
                sign_key=sign_key,
            )
    except KeyboardInterrupt as err:
        return interrupted("simulate", err)
    if not setup.is_main:
        return 0
    from narset_jax.atomic import write_json

    if args.json:
        write_json(args.json, summary)
    m = summary["metrics"]
    eco_label = "" if ecology == "stylised" else f"{ecology} "
    where = f" on {summary['devices']} devices" if summary["devices"] > 1 else ""
    if summary["processes"] > 1:
        where += f", {summary['processes']} processes"
    print(
        f"narset simulate: {eco_label}{scenario.name}, {args.controller}, {n} regions x "
        f"{steps} windows"
        f"{where} in {summary['wall_seconds']:.1f} s; objective {summary['objective']:.3f} "
        f"(progress {m['progress']:.3f}, flap {m['flap_rate']:.2f}, "
        f"rollbacks {m['rollbacks']:.2f}, unsafe lysis {m['unsafe_lysis']:.2f} per 100)"
    )
    print(f"outputs in {out}/: decisions/ (Parquet log), manifest.json, summary.json"
          + (", plots/" if "plots" in summary["outputs"] else ""))
    for name in summary["outputs"].get("plots", []):
        print(f"  {out / name}")
    if "plots_error" in summary:
        import sys

        print(f"narset simulate: error: figures not written ({summary['plots_error']}); the "
              f"log and summary.json in {out} are complete", file=sys.stderr)
        return 1
    return 0
