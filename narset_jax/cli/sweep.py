"""``narset sweep``: compile time, throughput and memory of the closed loop against size.

    narset sweep --regions 1e2,1e3,1e4,1e5,1e6 --steps 50 [--devices 1,2,4]
        [--budget global] [--ecology neural] [--json sweep.json] [--plot sweep.png]

Each size runs the controller plus the simulated ecology for ``--steps`` windows in one
jitted ``lax.scan``, sharded over ``--devices`` (a count, or a comma list for a device-count
axis). Multi-process: ``--coordinator HOST:PORT --num-processes P --process-id I`` on every
process; process 0 prints and writes. See ``docs/scaling.md``.
"""

from __future__ import annotations

import argparse
import sys

from narset_jax.errors import UserError

DEFAULT_SIZES = "1e2,1e3,1e4,1e5,1e6"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from narset_jax.cli.simulate import add_ecology_arg
    from narset_jax.distributed import add_device_args
    from sims.ecologies import ECOLOGIES

    p = subparsers.add_parser(
        "sweep",
        help="scaling sweep: compile time, throughput, memory vs regions",
        description=(
            "Measure, for each number of regions, the compile time, the steady-state "
            "throughput (region-windows per second: median of --repeats timed runs after "
            "--warmup, each waiting with block_until_ready) and the memory of the jitted "
            "closed loop (controller + simulator). See docs/scaling.md."
        ),
    )
    p.add_argument("--regions", default=DEFAULT_SIZES, metavar="N1,N2,...",
                   help=f"sizes, e.g. 1e2,1e3 (default {DEFAULT_SIZES})")
    p.add_argument("--steps", type=int, default=50, metavar="T",
                   help="windows per timed call (default 50)")
    p.add_argument("--budget", default="region", choices=("region", "global", "fixed_sum"),
                   help="budget mode (default region)")
    add_ecology_arg(p, ECOLOGIES)
    p.add_argument("--scenario", default="steady",
                   help="shipped scenario name of the ecology or a scenario .toml "
                   "(default steady)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=5, help="timed runs per size (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per size (default 1)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write the throughput plot (PNG or SVG)")
    add_device_args(p, allow_list=True)
    p.set_defaults(run=run)
    return p


def _command(args) -> str:
    """The command line that reproduces this sweep (multi-process flags left out)."""
    parts = ["narset sweep", f"--regions {args.regions}", f"--steps {args.steps}"]
    if args.devices is not None:
        parts.append(f"--devices {args.devices}")
    for flag, value, default in (
        ("--budget", args.budget, "region"),
        ("--ecology", args.ecology, "stylised"),
        ("--scenario", args.scenario, "steady"),
        ("--dtype", args.dtype, "float32"),
        ("--repeats", args.repeats, 5),
        ("--warmup", args.warmup, 1),
        ("--seed", args.seed, 0),
    ):
        if value != default:
            parts.append(f"{flag} {value}")
    if args.num_processes:
        parts.append(f"(x {args.num_processes} processes)")
    return " ".join(parts)


def run(args) -> int:
    from narset_jax.cli.simulate import check_ecology
    from narset_jax.distributed import setup_devices

    check_ecology(args.ecology)
    # Devices and processes first: nothing may touch a JAX backend before this.
    setup = setup_devices(args)
    from sims.sweep import check_sweep_ecology, check_sweep_memory, parse_sizes

    sizes = parse_sizes(args.regions)
    if args.steps <= 0:
        raise UserError(f"--steps must be a positive integer, got {args.steps}")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    check_sweep_memory(sizes, args.dtype, setup.num_processes)  # before any output
    check_sweep_ecology(args.ecology, setup.device_counts, setup.num_processes)
    import jax

    from narset_jax.atomic import write_json
    from sims.ecologies import load_params
    from sims.sweep import run_sweep, sweep_document

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    scenario = load_params(args.ecology, args.scenario)
    main = setup.is_main
    if main:
        print(
            f"narset sweep: sizes {', '.join(f'{n:,d}' for n in sizes)}; {args.steps} windows "
            f"per call; devices per process {', '.join(map(str, setup.device_counts))}; "
            f"{setup.num_processes} process(es); budget {args.budget}; {args.dtype}; "
            + ("" if args.ecology == "stylised" else f"ecology {args.ecology}; ") +
            f"backend {jax.default_backend()}",
            file=sys.stderr,
            flush=True,
        )

    def report(row):
        if main:
            msg = (
                f"  D={row.devices:<3d} N={row.n_regions:>10,d}  compile {row.compile_s:6.2f} s"
                f"  {row.throughput / 1e6:9.2f} M region-windows/s"
            )
            if row.bytes_per_region is not None:
                msg += f"  {row.bytes_per_region:7.0f} B/region"
            print(msg, file=sys.stderr, flush=True)

    rows = run_sweep(
        sizes,
        args.steps,
        device_counts=setup.device_counts,
        budget=args.budget,
        scenario=scenario,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        progress=main and not args.no_progress,
        on_row=report,
        ecology=args.ecology,
    )
    result = sweep_document(
        rows, command=_command(args), sizes=sizes, steps=args.steps, budget=args.budget,
        scenario=scenario.name, dtype=args.dtype, repeats=args.repeats, warmup=args.warmup,
        device_counts=setup.device_counts, processes=setup.num_processes,
        ecology=args.ecology,
    )
    if main and args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    if main and args.plot:
        from narset_jax.plots.sweep import plot_sweep

        plot_sweep(result["rows"], args.plot, title=result["title"])
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
