"""``narset phase``: a stability phase diagram over two parameters.

    narset phase --x beta:0.02:1:40 --y gap:0:0.5:40 --scenario steady \\
        --regions 256 --steps 150 --seeds 2 --out out/phase [--json summary.json]

Writes ``<out>/<name>.json`` and ``<out>/<name>.csv`` (the grid: mean and s.d. over seeds of
every metric per cell) and ``<name>.png`` / ``<name>.svg`` (the heatmaps; in ``--figures``
if given, else in ``<out>``). ``--set`` changes the base params of the grid; each
``--compare`` reruns the grid with further changes (the same compiled program) and adds its
thrash boundary to the figure and its thrash grid to the JSON. ``--ecology neural`` runs the
neural ecology's scenarios, on the params axes only. The job is
[`sims.phase_job.run_phase`][]; see ``docs/phase.md``.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    from narset_jax.cli.simulate import add_ecology_arg
    from sims.ecologies import ECOLOGIES
    from sims.phase import AXIS_NAMES, CHURN_REF, FLAP_REF

    p = subparsers.add_parser(
        "phase",
        help="stability phase diagram over two parameters",
        description=(
            "Run the closed loop (controller + simulated ecology) on every cell of a 2-D "
            "grid and draw where the controller is calm and where it thrashes. "
            f"Axes: {', '.join(AXIS_NAMES)}. See docs/phase.md."
        ),
    )
    p.add_argument("--x", required=True, metavar="NAME:LO:HI:N",
                   help="x axis, e.g. beta:0.02:1:40 (N >= 2 values from LO to HI)")
    p.add_argument("--y", required=True, metavar="NAME:LO:HI:N", help="y axis, e.g. gap:0:0.5:40")
    add_ecology_arg(p, ECOLOGIES)
    p.add_argument("--scenario", default="steady",
                   help="shipped scenario name of the ecology or a scenario .toml "
                   "(default: steady)")
    p.add_argument("--regions", type=int, default=256, help="regions R per cell (default 256)")
    p.add_argument("--steps", type=int, default=150, help="windows T per cell (default 150)")
    p.add_argument("--seeds", type=int, default=2, help="seeds S per cell (default 2)")
    p.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    p.add_argument("--out", required=True, help="output directory for the grid (and images)")
    p.add_argument("--name", default="phase", help="file stem of the outputs (default phase)")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="write the PNG/SVG here instead of --out")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="tuned params (TOML, or a preset: tuned) to mark on the diagram")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a base NarsetParams field for the whole grid (repeatable), "
                   "e.g. --set beta=0.8")
    p.add_argument("--compare", action="append", default=[], metavar="FIELD=V[,FIELD=V]",
                   help="also run the grid with these extra changes and draw its thrash "
                   "boundary over the main one (repeatable; same compiled program)")
    p.add_argument("--controller", default="narset", help="controller (default narset)")
    p.add_argument("--chunks", type=int, default=None,
                   help="row chunks, each the same compiled call (default: min(rows, 8), "
                   "more if a chunk would simulate over 2^21 regions)")
    p.add_argument("--flap-ref", type=float, default=FLAP_REF,
                   help=f"thrash reference for flap rate (default {FLAP_REF:g})")
    p.add_argument("--churn-ref", type=float, default=CHURN_REF,
                   help=f"thrash reference for budget churn (default {CHURN_REF:g})")
    p.add_argument("--float64", action="store_true", help="simulate in float64")
    p.add_argument("--json", default=None, metavar="PATH", help="write a summary as JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from narset_jax.atomic import write_json
    from sims.phase_job import run_phase
    from sims.tune.presets import params_file
    args.params = params_file(args.params)  # a preset name: its packaged TOML

    result = run_phase(
        args.x, args.y, out=args.out, name=args.name, figures=args.figures,
        scenario=args.scenario, regions=args.regions, steps=args.steps, seeds=args.seeds,
        seed=args.seed, params_file=args.params, overrides=args.set, compare=args.compare,
        controller=args.controller, ecology=args.ecology, chunks=args.chunks,
        flap_ref=args.flap_ref, churn_ref=args.churn_ref, float64=args.float64,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    summary = result.summary
    t = summary["thrash"]
    print(
        f"narset phase: {summary['cells']} cells in {summary['run_s']:.1f} s "
        f"(+ {summary['compile_s']:.1f} s compile); thrash {t['min']:.3g}..{t['max']:.3g}, "
        f"{t['share_at_or_above']:.0%} of cells at or above the boundary",
        file=sys.stderr,
    )
    for v in summary["variants"]:
        print(f"narset phase: compare {v['label']}: thrash {v['min']:.3g}..{v['max']:.3g}, "
              f"{v['share_at_or_above']:.0%} of cells at or above the boundary", file=sys.stderr)
    for path in result.paths:
        print(path)
    if args.json:
        write_json(args.json, summary)
    return 0
