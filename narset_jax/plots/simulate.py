"""Figures of a simulated run (``narset simulate``): intensities and spend of sample
regions, the mesh's mean trajectories, and the histogram of mode switches per region."""

from __future__ import annotations

import numpy as np

from narset_jax.plots import save_figure

__all__ = ["plot_ecology", "plot_sample_regions", "plot_switch_histogram"]


def plot_sample_regions(path, steps, x_T, x_E, spent, mode, region_ids, *, pool=None,
                        title=""):
    """Intensities and spend over time for a few regions, repair windows shaded.

    **Arguments:** ``steps`` ``[T]``; ``x_T``, ``x_E``, ``spent``, ``mode`` ``[T, K]``;
    ``region_ids`` ``[K]``; ``pool`` draws the per-region budget line.
    """
    import matplotlib.pyplot as plt

    steps = np.asarray(steps)
    k = len(region_ids)
    fig, axes = plt.subplots(k, 1, figsize=(9, 1.7 * k + 0.8), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        m = np.asarray(mode)[:, i] >= 0.5
        if m.any():
            ax.fill_between(steps, 0, 1, where=m, transform=ax.get_xaxis_transform(),
                            color="#f4d6d2", step="mid", lw=0,
                            label="repair mode" if i == 0 else None)
        ax.plot(steps, np.asarray(x_T)[:, i], color="#b03a2e", lw=1.2,
                label="x_T (Tamiyo)" if i == 0 else None)
        ax.plot(steps, np.asarray(x_E)[:, i], color="#1f4e79", lw=1.2,
                label="x_E (Emrakul)" if i == 0 else None)
        ax.plot(steps, np.asarray(spent)[:, i], color="#555555", lw=0.9, ls="--",
                label="spent" if i == 0 else None)
        if pool is not None:
            ax.axhline(pool, color="#999999", lw=0.7, ls=":")
        ax.axhline(1.0, color="#cccccc", lw=0.6)
        ax.set_ylabel(f"region {int(region_ids[i])}", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("window")
    fig.legend(loc="upper right", fontsize=8, ncol=4)
    fig.suptitle(title or "Intensities and spend of sample regions", fontsize=10, x=0.02,
                 ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, path, dpi=110)


def plot_ecology(path, steps, series: dict, *, title=""):
    """Mesh means over time: one panel per entry of ``series`` (name -> ``[T]``)."""
    import matplotlib.pyplot as plt

    steps = np.asarray(steps)
    names = list(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.5 * len(names) + 0.8), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.plot(steps, np.asarray(series[name]), color="#1f4e79", lw=1.2)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("window")
    fig.suptitle(title or "Mesh means per window", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, path, dpi=110)


def plot_switch_histogram(path, switches, *, n_steps=None, title=""):
    """Histogram of mode switches per region over the run."""
    import matplotlib.pyplot as plt

    s = np.rint(np.asarray(switches, dtype=float)).astype(int)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    top = int(s.max()) if s.size else 0
    ax.hist(s, bins=np.arange(-0.5, top + 1.5, 1), color="#1f4e79", rwidth=0.85)
    ax.set_xlabel("mode switches per region" + (f" over {n_steps} windows" if n_steps else ""))
    ax.set_ylabel("regions")
    mean = float(s.mean()) if s.size else 0.0
    ax.set_title(title or f"Mode switches (mean {mean:.2f} per region)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
