"""``narset phase``: a stability phase diagram over two parameters.

    narset phase --x beta:0.02:1:40 --y gap:0:0.5:40 --scenario steady \\
        --regions 256 --steps 150 --seeds 2 --out out/phase [--json summary.json]

Writes ``<out>/<name>.json`` and ``<out>/<name>.csv`` (the grid: mean and s.d. over seeds of
every metric per cell) and ``<name>.png`` / ``<name>.svg`` (the heatmaps; in ``--figures``
if given, else in ``<out>``). ``--set`` changes the base params of the grid; each
``--compare`` reruns the grid with further changes (the same compiled program) and adds its
thrash boundary to the figure and its thrash grid to the JSON. Every file is written
atomically after all grids are complete, so an interrupted run leaves no partial file. See
``docs/phase.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from narset_jax.errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    p.add_argument("--scenario", default="steady",
                   help="shipped scenario name or a scenario .toml (default: steady)")
    p.add_argument("--regions", type=int, default=256, help="regions R per cell (default 256)")
    p.add_argument("--steps", type=int, default=150, help="windows T per cell (default 150)")
    p.add_argument("--seeds", type=int, default=2, help="seeds S per cell (default 2)")
    p.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    p.add_argument("--out", required=True, help="output directory for the grid (and images)")
    p.add_argument("--name", default="phase", help="file stem of the outputs (default phase)")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="write the PNG/SVG here instead of --out")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="tuned params (TOML) to mark on the diagram")
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


def _check_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name must be a plain file stem, got {name!r}")
    return name


def _overrides(items, params, axes):
    from sims.phase import AXES

    changes = {}
    for item in items:
        field, sep, value = item.partition("=")
        field = field.strip()
        if not sep:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. beta=0.8")
        if field not in params.tunable_names():
            raise UserError(f"--set {item!r}: unknown NarsetParams field {field!r}")
        for axis in axes:
            if field in AXES[axis.name].fields:
                raise UserError(f"--set {field} conflicts with axis {axis.name!r}, which sets it")
        try:
            changes[field] = float(value)
        except ValueError:
            raise UserError(f"--set {item!r}: VALUE must be a number") from None
    try:
        return (params.replace(**changes) if changes else params), changes
    except ValueError as err:
        raise UserError(f"--set: {err}") from None


def _variant(text, params, axes):
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise UserError(f"--compare {text!r}: expected FIELD=VALUE[,FIELD=VALUE...]")
    try:
        return _overrides(items, params, axes)
    except UserError as err:
        raise UserError(f"--compare {text!r}: {str(err).removeprefix('--set: ')}") from None


def _csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # repr of a Python float round-trips; numpy scalars are converted first.
        writer.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def _thrash_summary(thrash) -> dict:
    return {
        "min": float(thrash.min()),
        "max": float(thrash.max()),
        "boundary_in_range": bool(thrash.min() < 1 < thrash.max()),
        "share_at_or_above": float((thrash >= 1).mean()),
    }


def _nearest(grid, mx: float, my: float) -> float | None:
    import numpy as np

    xs, ys = grid.x.values, grid.y.values
    step_x, step_y = xs[1] - xs[0], ys[1] - ys[0]
    if not (xs[0] - step_x / 2 <= mx <= xs[-1] + step_x / 2):
        return None
    if not (ys[0] - step_y / 2 <= my <= ys[-1] + step_y / 2):
        return None
    ix, iy = int(np.abs(xs - mx).argmin()), int(np.abs(ys - my).argmin())
    return float(grid.mean["thrash"][iy, ix])


def run(args) -> int:
    import jax
    import jax.numpy as jnp

    import sims
    from narset_jax.atomic import write_json, write_text
    from narset_jax.params import NarsetParams
    from narset_jax.plots.phase import plot_phase
    from sims.phase import Axis, axis_coordinate, cell_values, phase_grid

    x = Axis.parse(args.x)
    y = Axis.parse(args.y)
    name = _check_name(args.name)
    for flag, value in (("--regions", args.regions), ("--steps", args.steps),
                        ("--seeds", args.seeds)):
        if value <= 0:
            raise UserError(f"{flag} must be a positive int, got {value}")
    if args.chunks is not None and args.chunks <= 0:
        raise UserError(f"--chunks must be a positive int, got {args.chunks}")
    if args.controller not in sims.CONTROLLERS:
        raise UserError(
            f"unknown --controller {args.controller!r}; valid: {', '.join(sims.CONTROLLERS)}"
        )
    scenario = sims.load_scenario(args.scenario)
    defaults = scenario.recommended_params(NarsetParams())
    params, changes = _overrides(args.set, defaults, (x, y))
    variants = [(text, *_variant(text, params, (x, y))) for text in args.compare]
    tuned = NarsetParams.from_toml(args.params) if args.params else None
    for p in (params, *(v[1] for v in variants)):
        cell_values(x, y, p, scenario)  # validate before any compilation
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    chunks = args.chunks

    label = "default params"
    if changes:
        label += " (other fields differ: " + ", ".join(
            f"{k}={float(getattr(defaults, k)):g}" for k in changes) + ")"
    markers = [{"label": label, "x": axis_coordinate(x.name, defaults, scenario),
                "y": axis_coordinate(y.name, defaults, scenario)}]
    if tuned is not None:
        markers.append({"label": f"tuned ({Path(args.params).name})",
                        "x": axis_coordinate(x.name, tuned, scenario),
                        "y": axis_coordinate(y.name, tuned, scenario)})

    from tqdm import tqdm

    cells = x.n * y.n
    print(
        f"narset phase: {x} x {y} = {cells} cells x {args.seeds} seeds, "
        f"{args.regions} regions x {args.steps} windows each, scenario {scenario.name!r}; "
        "compiling once...",
        file=sys.stderr,
        flush=True,
    )

    def run_grid(p, desc):
        bar = None

        def on_progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="cell", desc=desc, file=sys.stderr)
            bar.update(done - bar.n)

        try:
            return phase_grid(
                x, y, scenario=scenario, params=p, n_regions=args.regions,
                n_steps=args.steps, n_seeds=args.seeds, seed=args.seed,
                controller=args.controller, dtype=dtype, chunks=chunks,
                flap_ref=args.flap_ref, churn_ref=args.churn_ref, on_progress=on_progress,
            )
        finally:
            if bar is not None:
                bar.close()

    t0 = time.perf_counter()
    grid = run_grid(params, "narset phase")
    compared = [(text, extra, run_grid(p, f"compare {text}")) for text, p, extra in variants]
    total_s = time.perf_counter() - t0

    out = Path(args.out)
    fig_dir = Path(args.figures) if args.figures else out
    data = grid.to_dict()
    data["markers"] = markers
    data["config"]["scenario_name"] = scenario.name
    data["config"]["overrides"] = changes
    data["variants"] = [
        {"label": text, "overrides": extra, "thrash": g.to_dict()["metrics"]["thrash"]}
        for text, extra, g in compared
    ]
    json_path = write_json(out / f"{name}.json", data)
    csv_path = write_text(out / f"{name}.csv", _csv_text(grid.rows()))
    images = plot_phase(data, [fig_dir / f"{name}.png", fig_dir / f"{name}.svg"],
                        markers=markers)

    thrash = grid.mean["thrash"]
    print(
        f"narset phase: {cells} cells in {grid.run_s:.1f} s (+ {grid.compile_s:.1f} s compile); "
        f"thrash {thrash.min():.3g}..{thrash.max():.3g}, "
        f"{(thrash >= 1).mean():.0%} of cells at or above the boundary",
        file=sys.stderr,
    )
    for text, _, g in compared:
        t = g.mean["thrash"]
        print(f"narset phase: compare {text}: thrash {t.min():.3g}..{t.max():.3g}, "
              f"{(t >= 1).mean():.0%} of cells at or above the boundary", file=sys.stderr)
    for path in (json_path, csv_path, *images):
        print(path)
    if args.json:
        summary = {
            "command": "phase",
            "x": str(x),
            "y": str(y),
            "scenario": scenario.name,
            "controller": args.controller,
            "overrides": changes,
            "regions": args.regions,
            "steps": args.steps,
            "seeds": args.seeds,
            "seed": args.seed,
            "cells": cells,
            "chunks": grid.config["chunks"],
            "dtype": grid.config["dtype"],
            "device": str(jax.devices()[0].platform),
            "compile_s": grid.compile_s,
            "run_s": grid.run_s,
            "total_s": total_s,
            "region_windows_per_s": cells * args.seeds * args.regions * args.steps
            / max(grid.run_s, 1e-9),
            "thrash": {**grid.config["thrash"], **_thrash_summary(thrash)},
            "markers": [{**m, "thrash_nearest_cell": _nearest(grid, m["x"], m["y"])}
                        for m in markers],
            "variants": [
                {"label": text, "overrides": extra, "run_s": g.run_s,
                 "compile_s": g.compile_s, **_thrash_summary(g.mean["thrash"])}
                for text, extra, g in compared
            ],
            "outputs": {"json": str(json_path), "csv": str(csv_path),
                        "png": str(images[0]), "svg": str(images[1])},
        }
        write_json(args.json, summary)
    return 0
