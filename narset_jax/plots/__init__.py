"""Plotting (matplotlib, Agg backend). Every writer saves atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    from narset_jax.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    plt.close(fig)
    return path
