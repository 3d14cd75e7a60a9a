"""The ``narset phase`` job: a stability phase diagram over two parameters, written to disk.

[`sims.phase.phase_grid`][] is the pure grid; [`sims.phase_job.run_phase`][] is everything
around it that the command does: checking the settings, the ``--set`` / ``--compare``
overrides, the markers (default and tuned params), running the main grid and each variant
(with progress bars), and writing ``<name>.json``, ``<name>.csv`` and the figures. Every
file is written atomically after all grids are complete, so an interrupted run leaves no
partial file. See ``docs/phase.md``.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import sims
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims import phase
from sims.ecologies import ECOLOGIES, load_params
from sims.phase import (
    AXES,
    CHUNK_REGIONS,
    CHURN_REF,
    FLAP_REF,
    METRICS,
    Axis,
    axis_coordinate,
    cell_values,
)

__all__ = ["PhaseRun", "check_phase_memory", "run_phase"]


@dataclass
class PhaseRun:
    """The result of [`sims.phase_job.run_phase`][].

    - ``summary``: the run summary (what ``narset phase --json`` writes): settings, timing,
      the thrash range of the main grid and of each variant, the markers with the thrash of
      their nearest cell, and the output paths.
    - ``paths``: the files written, in order: the JSON grid, the CSV, the PNG and the SVG.
    - ``grid``: the main [`sims.phase.PhaseGrid`][].
    - ``compared``: ``(label, overrides, PhaseGrid)`` per ``compare`` variant.
    """

    summary: dict[str, Any]
    paths: list[Path]
    grid: Any
    compared: list[tuple[str, dict, Any]]


def _check_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name must be a plain file stem, got {name!r}")
    return name


def check_phase_memory(x: Axis, y: Axis, *, regions: int, seeds: int, chunks: int | None,
                       itemsize: int = 4, grids: int = 1, available: int | None = None) -> None:
    """Refuse (a one-line ``UserError`` stating the estimate) a grid that cannot fit in
    this machine's memory: one compiled call simulates a chunk of rows (cells x seeds x
    regions at once, chunked as [`sims.phase.phase_grid`][] does) and the host keeps
    every cell's samples of every metric (``grids`` times: the main grid and each
    ``--compare``)."""
    from narset_jax.resources import check_fits, closed_loop_bytes

    nx, ny = x.n, y.n
    if chunks is None:
        per_row = nx * seeds * regions
        chunks = min(ny, max(8, -(-ny * per_row // CHUNK_REGIONS)))
    cells = -(-ny // min(chunks, ny)) * nx  # per compiled call
    device = closed_loop_bytes(regions, itemsize=itemsize, copies=cells * seeds)
    # float64 samples (held about 3 times: parts, concatenation, statistics) and values.
    host = nx * ny * 8 * (seeds * len(METRICS) * 3 + 8) * grids
    check_fits(
        device + host,
        f"a {nx} x {ny} grid x {seeds} seeds x {regions} regions ({cells} cells per call)",
        available=available,
    )


def _check_ecology(ecology: str, axes) -> None:
    """A one-line ``UserError`` for an unknown ecology, or for a scenario axis (a field of
    the stylised scenario) on another ecology, naming the valid axes."""
    if ecology not in ECOLOGIES:
        raise UserError(f"unknown --ecology {ecology!r}; valid: {', '.join(ECOLOGIES)}")
    if ecology == "stylised":
        return
    for axis in axes:
        if axis.info.target != "params":
            valid = ", ".join(n for n, info in AXES.items() if info.target == "params")
            raise UserError(f"axis {axis.name!r} is a field of the stylised scenario; the "
                            f"{ecology} ecology takes params axes only: {valid}")


def _overrides(items, params, axes):
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


def run_phase(
    x: str,
    y: str,
    *,
    out: str | Path,
    name: str = "phase",
    figures: str | Path | None = None,
    scenario: str = "steady",
    regions: int = 256,
    steps: int = 150,
    seeds: int = 2,
    seed: int = 0,
    params_file: str | None = None,
    overrides: Sequence[str] = (),
    compare: Sequence[str] = (),
    controller: str = "narset",
    ecology: str = "stylised",
    chunks: int | None = None,
    flap_ref: float = FLAP_REF,
    churn_ref: float = CHURN_REF,
    float64: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> PhaseRun:
    """Run the phase diagram of ``narset phase`` and write its files; returns a
    [`sims.phase_job.PhaseRun`][].

    **Arguments** (each as the command's flag of the same name):

    - ``x``, ``y``: the axes as ``NAME:LO:HI:N`` (see [`sims.phase.Axis.parse`][]).
    - ``out``: the directory of ``<name>.json`` and ``<name>.csv``; ``figures``: the
      directory of ``<name>.png`` and ``<name>.svg`` (default: ``out``).
    - ``ecology``: one of [`sims.ECOLOGIES`][] (default ``stylised``). Another ecology takes
      the params axes only (the scenario axes are the stylised scenario's fields); it is
      recorded in the grid's config and the summary.
    - ``scenario``: a shipped scenario name of the ecology or a scenario ``.toml``; its
      recommended params are the base params.
    - ``regions``, ``steps``, ``seeds``, ``seed``, ``controller``, ``chunks``,
      ``flap_ref``, ``churn_ref``: as in [`sims.phase.phase_grid`][].
    - ``params_file``: tuned params (TOML) to mark on the diagram.
    - ``overrides``: ``FIELD=VALUE`` changes of the base params for the whole grid.
    - ``compare``: ``FIELD=V[,FIELD=V]`` per variant: the grid is run again with these
      extra changes (the same compiled program) and its thrash boundary is drawn too.
    - ``float64``: simulate in float64 (turns on ``jax_enable_x64``, once every setting has
      been checked).
    - ``log``: called with each progress line (``narset phase`` prints them on stderr);
      ``progress``: show a progress bar (on stderr) per grid.

    Bad settings raise [`narset_jax.errors.UserError`][] before anything is compiled. A
    ``KeyboardInterrupt`` during a grid propagates and leaves no file written.
    """
    from narset_jax.atomic import write_json, write_text
    from narset_jax.plots.phase import plot_phase

    x = Axis.parse(x)
    y = Axis.parse(y)
    name = _check_name(name)
    for flag, value in (("--regions", regions), ("--steps", steps), ("--seeds", seeds)):
        if value <= 0:
            raise UserError(f"{flag} must be a positive int, got {value}")
    if chunks is not None and chunks <= 0:
        raise UserError(f"--chunks must be a positive int, got {chunks}")
    if controller not in sims.CONTROLLERS:
        raise UserError(
            f"unknown --controller {controller!r}; valid: {', '.join(sims.CONTROLLERS)}"
        )
    _check_ecology(ecology, (x, y))
    check_phase_memory(x, y, regions=regions, seeds=seeds, chunks=chunks,
                       itemsize=8 if float64 else 4, grids=1 + len(compare))
    scen = load_params(ecology, scenario)
    defaults = scen.recommended_params(NarsetParams())
    params, changes = _overrides(overrides, defaults, (x, y))
    variants = [(text, *_variant(text, params, (x, y))) for text in compare]
    tuned = NarsetParams.from_toml(params_file) if params_file else None
    for p in (params, *(v[1] for v in variants)):
        cell_values(x, y, p, scen)  # validate before any compilation
    if float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if float64 else jnp.float32

    label = "default params"
    if changes:
        label += " (other fields differ: " + ", ".join(
            f"{k}={float(getattr(defaults, k)):g}" for k in changes) + ")"
    markers = [{"label": label, "x": axis_coordinate(x.name, defaults, scen),
                "y": axis_coordinate(y.name, defaults, scen)}]
    if tuned is not None:
        markers.append({"label": f"tuned ({Path(params_file).name})",
                        "x": axis_coordinate(x.name, tuned, scen),
                        "y": axis_coordinate(y.name, tuned, scen)})

    from tqdm import tqdm

    cells = x.n * y.n
    if log is not None:
        log(
            f"narset phase: {x} x {y} = {cells} cells x {seeds} seeds, "
            f"{regions} regions x {steps} windows each, scenario {scen.name!r}; "
            "compiling once..."
        )

    def run_grid(p, desc):
        bar = None

        def on_progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="cell", desc=desc, file=sys.stderr,
                           disable=not progress)
            bar.update(done - bar.n)

        try:
            # Through the module, so that the grid can be swapped out (tests do).
            return phase.phase_grid(
                x, y, scenario=scen, params=p, n_regions=regions,
                n_steps=steps, n_seeds=seeds, seed=seed,
                controller=controller, ecology=ecology, dtype=dtype, chunks=chunks,
                flap_ref=flap_ref, churn_ref=churn_ref, on_progress=on_progress,
            )
        finally:
            if bar is not None:
                bar.close()

    t0 = time.perf_counter()
    grid = run_grid(params, "narset phase")
    compared = [(text, extra, run_grid(p, f"compare {text}")) for text, p, extra in variants]
    total_s = time.perf_counter() - t0

    out = Path(out)
    fig_dir = Path(figures) if figures else out
    data = grid.to_dict()
    data["markers"] = markers
    data["config"]["scenario_name"] = scen.name
    data["config"]["overrides"] = changes
    if ecology != "stylised":  # the default's files stay as they always were
        data["config"]["ecology"] = ecology
    data["variants"] = [
        {"label": text, "overrides": extra, "thrash": g.to_dict()["metrics"]["thrash"]}
        for text, extra, g in compared
    ]
    json_path = write_json(out / f"{name}.json", data)
    csv_path = write_text(out / f"{name}.csv", _csv_text(grid.rows()))
    images = plot_phase(data, [fig_dir / f"{name}.png", fig_dir / f"{name}.svg"],
                        markers=markers)

    summary = {
        "command": "phase",
        "x": str(x),
        "y": str(y),
        "scenario": scen.name,
        "controller": controller,
        "overrides": changes,
        "regions": regions,
        "steps": steps,
        "seeds": seeds,
        "seed": seed,
        "cells": cells,
        "chunks": grid.config["chunks"],
        "dtype": grid.config["dtype"],
        "device": str(jax.devices()[0].platform),
        "compile_s": grid.compile_s,
        "run_s": grid.run_s,
        "total_s": total_s,
        "region_windows_per_s": cells * seeds * regions * steps / max(grid.run_s, 1e-9),
        "thrash": {**grid.config["thrash"], **_thrash_summary(grid.mean["thrash"])},
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
    if ecology != "stylised":
        summary["ecology"] = ecology
    return PhaseRun(summary=summary, paths=[json_path, csv_path, *images], grid=grid,
                    compared=compared)
