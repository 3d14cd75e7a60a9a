"""Figure of the budget's feasible set, with arrows from targets to their projections.

    python -m narset_jax.plots.budget --out docs/figures/feasible_set.png
"""

from __future__ import annotations

import argparse

import numpy as np


def plot_feasible_set(path, *, pool=1.5, alpha=2.0):
    """Draw the feasible sets of both cost models side by side, the seed cost's
    non-convex dent at ``x = 1``, and where a grid of targets projects.

    **Arguments:**

    - ``path``: output image (PNG or SVG by suffix), written atomically.
    - ``pool``, ``alpha``: the budget and overdrive curvature.
    """
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    import narset_jax as nj
    from narset_jax.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    grid = np.linspace(0, 2.2, 401)
    XT, XE = np.meshgrid(grid, grid)
    tt = np.array([0.3, 1.0, 1.6, 2.0, 2.1, 1.9, 1.3, 0.2, 0.9, 1.5, 1.15])
    te = np.array([1.9, 2.0, 1.7, 1.2, 0.5, 0.05, 0.95, 1.2, 1.05, 0.4, 1.15])
    for ax, cost in zip(axes, ("seed", "convex")):
        spent = np.asarray(
            nj.overdrive_cost(jnp.asarray(XT), alpha, cost)
            + nj.overdrive_cost(jnp.asarray(XE), alpha, cost)
        )
        ax.contourf(XT, XE, spent <= pool, levels=[0.5, 1.5], colors=["#cfe3f6"])
        ax.contour(XT, XE, spent, levels=[pool], colors=["#1f4e79"], linewidths=2)
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        r = nj.project_budget(jnp.asarray(tt), jnp.asarray(te), pool=pool, alpha=alpha, cost=cost)
        xt, xe = np.asarray(r.x_T), np.asarray(r.x_E)
        for a, b, c, d in zip(tt, te, xt, xe):
            ax.annotate("", (c, d), (a, b), arrowprops=dict(arrowstyle="->", color="#b03a2e"))
        ax.plot(tt, te, "o", color="#b03a2e", ms=4, label="target")
        ax.plot(xt, xe, "s", color="#1f4e79", ms=4, label="projection")
        ax.set_title(
            f"{cost!r} cost: c(x_T) + c(x_E) <= {pool:g}, alpha = {alpha:g}"
            + ("\n(non-convex: slope of c drops from 1 to 0 at x = 1)" if cost == "seed" else "")
        )
        ax.set_xlabel("x_T (Tamiyo intensity; > 1 is overdrive)")
        ax.set_ylabel("x_E (Emrakul intensity)")
        ax.set_xlim(0, 2.2)
        ax.set_ylim(0, 2.2)
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
    return save_figure(fig, path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot the budget's feasible set.")
    p.add_argument("--out", default="docs/figures/feasible_set.png")
    p.add_argument("--pool", type=float, default=1.5)
    p.add_argument("--alpha", type=float, default=2.0)
    args = p.parse_args(argv)
    print(plot_feasible_set(args.out, pool=args.pool, alpha=args.alpha))


if __name__ == "__main__":
    main()
