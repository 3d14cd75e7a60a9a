"""Heatmaps of a stability phase diagram, with the thrash boundary and parameter markers.

Draws from the plain-data form of a grid ([`sims.phase.PhaseGrid.to_dict`][], also
what ``narset phase`` writes as JSON), so a saved grid can be drawn again without rerunning:

    python -m narset_jax.plots.phase --grid out/phase/phase.json --out out/phase/phase.png
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Panels, in order: the indicator, its two parts, then the consequences.
PANELS = (
    "thrash",
    "flap_rate",
    "budget_churn",
    "progress",
    "overdrive_fraction",
    "unsafe_lysis",
    "spoofer_capture",
    "thrash_std",
)
_CMAPS = {"progress": "viridis", "spoofer_capture": "RdBu_r"}
_MARKERS = ("*", "P", "X", "D")
_MARKER_COLOURS = ("white", "#00e5ff", "#ffd400", "#ff66cc")


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges for pcolormesh from evenly spaced centres."""
    step = values[1] - values[0]
    return np.concatenate([values - step / 2, values[-1:] + step / 2])


def _array(block) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in block], float)


def plot_phase(
    grid: Mapping[str, Any],
    paths: Sequence[str | os.PathLike],
    *,
    markers: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> list[Path]:
    """Draw a phase diagram and save it to every path in ``paths`` (format by suffix,
    e.g. ``.png`` and ``.svg``), each atomically.

    Eight panels share the axes: the thrash indicator (diverging colours, centred on the
    boundary value 1), flap rate, budget churn, progress, overdrive fraction, unsafe lysis,
    spoofer capture (rollbacks instead when there are no spoofers), and the standard
    deviation of thrash over seeds. Every panel carries the thrash = 1 contour (the
    boundary) and the markers. The thrash panel also carries the boundary of every
    comparison run in ``grid["variants"]`` (``{"label", "thrash": {"mean"}}``).

    **Arguments:**

    - ``grid``: a grid in plain-data form (``PhaseGrid.to_dict()`` or its JSON).
    - ``paths``: output images.
    - ``markers``: ``{"label", "x", "y"}`` points (e.g. the default and tuned params);
      one outside the axes is listed in the legend as "(outside)".
    - ``title``: the figure title (default: the scenario and run sizes).

    **Returns:** the written paths.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from narset_jax.plots import save_figure

    x, y = grid["x"], grid["y"]
    xs, ys = np.asarray(x["values"], float), np.asarray(y["values"], float)
    xe, ye = _edges(xs), _edges(ys)
    metrics = grid["metrics"]
    cfg = grid.get("config", {})
    thrash = _array(metrics["thrash"]["mean"])
    boundary = bool(np.nanmin(thrash) < 1 < np.nanmax(thrash))

    panels = list(PANELS)
    capture = _array(metrics["spoofer_capture"]["mean"])
    if "rollbacks" in metrics and not np.any(np.abs(np.nan_to_num(capture)) > 0):
        panels[panels.index("spoofer_capture")] = "rollbacks"  # no spoofers: nothing to show

    handles: list = []
    labels: list = []
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.6), constrained_layout=True)
    for ax, panel in zip(axes.ravel(), panels):
        if panel == "thrash_std":
            data = _array(metrics["thrash"]["std"])
            name, unit = "thrash s.d. over seeds", "same units as thrash"
        else:
            data = _array(metrics[panel]["mean"])
            name, unit = metrics[panel]["label"], metrics[panel]["unit"]
        if panel == "thrash":
            hi = max(float(np.nanmax(data)), 1.05)
            lo = min(float(np.nanmin(data)), 0.95)
            norm = TwoSlopeNorm(vmin=lo, vcenter=1.0, vmax=hi)
            mesh = ax.pcolormesh(xe, ye, data, cmap="coolwarm", norm=norm)
        elif panel == "spoofer_capture":
            lim = max(float(np.nanmax(np.abs(data))), 1e-6)
            mesh = ax.pcolormesh(xe, ye, data, cmap=_CMAPS[panel], vmin=-lim, vmax=lim)
        else:
            mesh = ax.pcolormesh(xe, ye, data, cmap=_CMAPS.get(panel, "magma"))
        cbar = fig.colorbar(mesh, ax=ax, shrink=0.92)
        cbar.set_label(unit)
        if boundary:
            ax.contour(xs, ys, thrash, levels=[1.0], colors="black", linewidths=1.8,
                       linestyles="-" if panel == "thrash" else "--")
        ax.set_title(name + (" (mean over seeds)" if panel != "thrash_std" else ""))
        ax.set_xlabel(f"{x['label']} [{x['unit']}]")
        ax.set_ylabel(f"{y['label']} [{y['unit']}]")
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        for i, m in enumerate(markers):
            inside = xe[0] <= m["x"] <= xe[-1] and ye[0] <= m["y"] <= ye[-1]
            label = f"{m['label']} ({m['x']:.3g}, {m['y']:.3g})" + ("" if inside else " (outside)")
            ax.plot([m["x"]], [m["y"]], _MARKERS[i % len(_MARKERS)], ms=13, mec="black",
                    mfc=_MARKER_COLOURS[i % len(_MARKER_COLOURS)], label=label, clip_on=True)
        if panel == "thrash":
            handles, labels = ax.get_legend_handles_labels()
            handles, labels = list(handles), list(labels)
            if boundary and grid.get("variants"):
                from matplotlib.lines import Line2D

                handles.append(Line2D([], [], color="black", linewidth=1.8))
                labels.append("thrash = 1 (the heatmap's params)")
            for i, v in enumerate(grid.get("variants", ())):
                h, label = _variant_boundary(ax, xs, ys, v, i)
                handles.append(h)
                labels.append(label)
    if handles:
        wide = max(len(label) for label in labels) > 60
        fig.legend(handles, labels, loc="outside lower center", fontsize=10, frameon=False,
                   ncols=min(len(handles), 2 if wide else 3))
    th = cfg.get("thrash", {})
    if title is None:
        scen = cfg.get("scenario", {}).get("name", "?")
        title = (
            f"Narset phase diagram: {x['name']} x {y['name']}, scenario {scen!r}, "
            f"{cfg.get('regions', '?')} regions x {cfg.get('steps', '?')} windows x "
            f"{cfg.get('seeds', '?')} seeds per cell, controller {cfg.get('controller', '?')!r}"
        )
        if cfg.get("overrides"):
            title += "\nbase params: defaults with " + ", ".join(
                f"{k} = {v:g}" for k, v in cfg["overrides"].items()
            )
    sub = (
        f"thrash = (flap_rate / {th.get('flap_ref', '?'):g} + budget_churn / "
        f"{th.get('churn_ref', '?'):g}) / 2; black line: thrash = 1"
        if th else "black line: thrash = 1"
    )
    if not boundary:
        side = "above" if np.nanmin(thrash) >= 1 else "below"
        sub += f" (no boundary in range: every cell is {side} 1)"
    fig.suptitle(f"{title}\n{sub}", fontsize=12)
    written = []
    for i, path in enumerate(paths):
        # save_figure closes the figure, so only the last save may close it.
        if i < len(paths) - 1:
            written.append(_save_keep_open(fig, path))
            fig.set_layout_engine("none")  # the layout is done: later formats reuse it
        else:
            written.append(save_figure(fig, path, dpi=110))
    return written


_VARIANT_STYLES = (
    ("#00a651", "-"),
    ("#ff7f0e", "--"),
    ("#9400d3", "-."),
    ("#000000", ":"),
    ("#00bcd4", (0, (6, 2, 1, 2, 1, 2))),
    ("#8b4513", (0, (1, 1))),
)


def _variant_boundary(ax, xs, ys, variant, i):
    """Draw one comparison's thrash = 1 contour; return its legend handle and label."""
    from matplotlib.lines import Line2D

    colour, style = _VARIANT_STYLES[i % len(_VARIANT_STYLES)]
    t = _array(variant["thrash"]["mean"])
    label = "thrash = 1 with " + ", ".join(part.strip() for part in variant["label"].split(","))
    if np.nanmin(t) < 1 < np.nanmax(t):
        ax.contour(xs, ys, t, levels=[1.0], colors=[colour], linewidths=2.2, linestyles=style)
    else:
        side = "above" if np.nanmin(t) >= 1 else "below"
        label += f" (none: all {side}, {np.nanmin(t):.2f}..{np.nanmax(t):.2f})"
    return Line2D([], [], color=colour, linestyle=style, linewidth=2.2), label


def _save_keep_open(fig, path) -> Path:
    from narset_jax.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Draw a saved phase grid (the JSON of narset phase).")
    p.add_argument("--grid", required=True, help="grid JSON written by narset phase")
    p.add_argument("--out", required=True, nargs="+", help="image path(s): .png, .svg")
    args = p.parse_args(argv)
    with open(args.grid) as fh:
        grid = json.load(fh)
    for path in plot_phase(grid, args.out, markers=grid.get("markers", ())):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
