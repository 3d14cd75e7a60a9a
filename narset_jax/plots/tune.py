"""Figures of ``narset tune``: the loss curve and the tuned parameters before and after."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from narset_jax.plots import save_figure

__all__ = ["plot_es_curve", "plot_loss_curve", "plot_params"]


def _objective_axis(ax, random_search, batch: int) -> None:
    """The objective panel's common part: the random search's best so far against the
    same rollout count (``batch`` rollouts per candidate), labels, legend and grid."""
    if random_search is not None and len(random_search):
        rs = np.minimum.accumulate(np.asarray(random_search, float))
        ax.step(np.arange(1, rs.size + 1) * batch, rs, where="post", lw=1.5,
                label="random search: best so far (hard)")
    ax.set_ylabel("objective J (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_loss_curve(
    history: Mapping[str, Sequence],
    path: str | os.PathLike,
    *,
    random_search: Sequence[float] | None = None,
    batch: int = 1,
) -> Path:
    """Loss and gradient norm per iteration.

    **Arguments:**

    - ``history``: ``loss``, ``grad_norm`` and optionally ``temp_factor`` and ``finite``
      lists (see [`sims.tune.History`][]).
    - ``path``: output image (format from the suffix), written atomically.
    - ``random_search``: each candidate's mean objective (hard controller), drawn as the
      best so far against the same rollout count (``batch`` rollouts per candidate, as per
      gradient iteration).

    **Returns:** ``path``.
    """
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"], float)
    gnorm = np.asarray(history["grad_norm"], float)
    it = np.arange(1, loss.size + 1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax1.plot(it * batch, loss, ".-", lw=1, ms=3, label="gradient: surrogate loss (relaxed)")
    if len(loss) >= 5:
        k = max(len(loss) // 10, 2)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(it[k - 1:] * batch, smooth, "-", lw=2, label=f"running mean ({k})")
    _objective_axis(ax1, random_search, batch)
    ax2.semilogy(it * batch, np.maximum(gnorm, 1e-30), ".-", lw=1, ms=3, color="C3")
    finite = np.asarray(history.get("finite", [True] * len(gnorm)), bool)
    if not finite.all():
        ax2.plot(it[~finite] * batch, np.ones((~finite).sum()), "kx", label="skipped (non-finite)")
        ax2.legend(fontsize=8)
    ax2.set_ylabel("gradient norm (before clipping)")
    ax2.set_xlabel("rollouts (iterations x batch)")
    ax2.grid(alpha=0.3, which="both")
    temps = history.get("temp_factor")
    if temps is not None and len(temps) and float(np.min(temps)) < 1:
        ax3 = ax2.twinx()
        ax3.plot(it * batch, temps, "--", color="0.5", lw=1)
        ax3.set_ylabel("temperature factor", color="0.5")
    fig.suptitle("narset tune: training")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_params(
    before: Mapping[str, float],
    after: Mapping[str, float],
    path: str | os.PathLike,
    *,
    random_search: Mapping[str, float] | None = None,
) -> Path:
    """The tuned parameters before and after, as ratios to the starting value (log scale).

    **Arguments:**

    - ``before``, ``after``: ``name -> value`` (the same names).
    - ``path``: output image, written atomically.
    - ``random_search``: the random search's best, drawn beside the tuned values.

    **Returns:** ``path``.
    """
    import matplotlib.pyplot as plt

    names = list(before)
    b = np.array([before[n] for n in names], float)
    a = np.array([after[n] for n in names], float)
    tiny = 1e-12
    ratio = np.maximum(a, tiny) / np.maximum(b, tiny)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.5))
    h = 0.4 if random_search is not None else 0.7
    # Bars start at 1 (no change) and end at the ratio.
    ax.barh(y - (h / 2 if random_search is not None else 0), ratio - 1, left=1, height=h,
            color="C0", label="gradient-tuned")
    if random_search is not None:
        r = np.array([random_search[n] for n in names], float)
        r = np.maximum(r, tiny) / np.maximum(b, tiny)
        ax.barh(y + h / 2, r - 1, left=1, height=h, color="C1", label="random search")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels([f"{n} ({before[n]:.3g} -> {after[n]:.3g})" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("value / starting value (log scale)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x", which="both")
    fig.suptitle("narset tune: parameters before and after")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_es_curve(history: Mapping[str, Sequence], path, *, population: int,
                  random_search=None, batch: int = 1):
    """The ES run's curve (``loss_curve.png`` of ``--method es``): the population's mean
    and best objective per generation, the random search's best so far against the same
    rollout count, and the search distribution's standard deviation.

    ``population``: candidates per generation; ``batch``: rollouts per candidate
    (``S * B``); the x axis counts rollouts.
    **Returns:** ``path``.
    """
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"], float)
    best = np.asarray(history["best"], float)
    x = np.arange(1, loss.size + 1) * population * batch
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax1.plot(x, loss, ".-", lw=1, ms=3, label="ES: population mean (hard)")
    ax1.plot(x, best, ".-", lw=1, ms=3, label="ES: generation's best (hard)")
    _objective_axis(ax1, random_search, batch)
    ax2.plot(x, np.asarray(history["std"], float), ".-", lw=1, ms=3, color="C3")
    ax2.set_ylabel("search s.d. (raw units)")
    ax2.set_xlabel("rollouts (generations x population x batch)")
    ax2.grid(alpha=0.3)
    fig.suptitle("narset tune --method es: training")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
