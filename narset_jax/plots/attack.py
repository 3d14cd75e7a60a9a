"""Figures of ``narset attack``: spoofer capture against the attack budget."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.plots import save_figure

__all__ = ["plot_capture_curves"]


def plot_capture_curves(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Capture (share of the global pool's spend above the spoofers' share of regions)
    against the attack budget, naive spoofers dashed and the learned attacker solid, one
    colour per params set, with 95% intervals over seeds as bands.

    **Arguments:** ``report``: the JSON of ``narset attack`` (``budgets``, ``sets`` with
    ``curve.naive`` and ``curve.learned`` lists of ``{mean, lo, hi}``; sets without a
    ``curve`` are skipped); ``path``: the
    image (format from the suffix), written atomically. **Returns:** ``path``."""
    import matplotlib.pyplot as plt

    x = np.asarray(report["budgets"], float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = [(n, r) for n, r in report["sets"].items() if "curve" in r]
    for i, (name, res) in enumerate(curves):
        for kind, style in (("learned", "-o"), ("naive", "--s")):
            pts = res["curve"][kind]
            mean = np.array([p["mean"] for p in pts])
            lo = np.array([p["lo"] for p in pts])
            hi = np.array([p["hi"] for p in pts])
            ax.plot(x, mean, style, color=f"C{i}", ms=4, label=f"{name}: {kind}")
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    ax.axvline(report["naive_budget"], color="0.6", lw=1, ls=":",
               label="naive spoofers' spend")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("attack budget (fake units per spoofer per window)")
    ax.set_ylabel("spoofer capture (share of spend above fair share)")
    ax.set_title(f"narset attack: {report['scenario']}, {report['regions']} regions, "
                 f"{report['steps']} windows, {report['eval_seeds']} seeds (95% CI)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
