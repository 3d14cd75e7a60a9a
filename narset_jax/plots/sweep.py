"""Figure of a scaling sweep: throughput against regions (log axes), one line per device
count, with compile time and memory per region beside it.

    python -m narset_jax.plots.sweep sweep.json --out sweep.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

__all__ = ["plot_sweep"]


def plot_sweep(rows: Sequence[Mapping], path, *, title: str | None = None):
    """Draw throughput (region-windows per second) against ``N`` on log-log axes, one line
    per device count (dashed: per CPU-second of the process, the steadier figure on a shared
    machine), plus compile time and bytes per region.

    **Arguments:**

    - ``rows``: sweep rows as dicts (``sims.sweep.rows_as_dicts`` or the ``rows``
      of ``narset sweep --json``).
    - ``path``: output image (PNG or SVG by suffix), written atomically.
    - ``title``: figure title.
    """
    import matplotlib.pyplot as plt

    from narset_jax.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    ax_t, ax_c, ax_m = axes
    for d in sorted({r["devices"] for r in rows}):
        sub = sorted((r for r in rows if r["devices"] == d), key=lambda r: r["n_regions"])
        n = [r["n_regions"] for r in sub]
        label = f"{d} device{'s' if d > 1 else ''}"
        line = ax_t.plot(n, [r["throughput"] for r in sub], "o-", label=f"{label} (wall)")
        cpu = [(r["n_regions"], r["n_regions"] * r["steps"] / r["cpu_seconds"])
               for r in sub if r.get("cpu_seconds")]
        if cpu:
            ax_t.plot(*zip(*cpu), "s--", color=line[0].get_color(), alpha=0.6,
                      label=f"{label} (per CPU-second)")
        ax_c.plot(n, [r["compile_s"] for r in sub], "o-", label=label)
        mem = [(r["n_regions"], r["bytes_per_region"]) for r in sub if r.get("bytes_per_region")]
        if mem:
            ax_m.plot(*zip(*mem), "o-", label=label)
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xlabel("regions N")
    ax_t.set_ylabel("region-windows per second (median)")
    ax_t.set_title("steady-state throughput")
    ax_t.grid(True, which="both", alpha=0.3)
    ax_c.set_xscale("log")
    ax_c.set_xlabel("regions N")
    ax_c.set_ylabel("seconds")
    ax_c.set_title("trace + compile")
    ax_c.grid(True, which="both", alpha=0.3)
    ax_m.set_xscale("log")
    ax_m.set_xlabel("regions N")
    ax_m.set_ylabel("bytes per region (XLA: args + outputs + temps)")
    ax_m.set_title("memory per region")
    ax_m.grid(True, which="both", alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot a narset sweep JSON.")
    p.add_argument("json", help="output of narset sweep --json")
    p.add_argument("--out", required=True, help="image path (.png or .svg)")
    args = p.parse_args(argv)
    with open(args.json) as fh:
        data = json.load(fh)
    plot_sweep(data["rows"], args.out, title=data.get("title"))


if __name__ == "__main__":  # pragma: no cover
    main()
