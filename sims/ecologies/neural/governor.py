"""Esper's governor (DESIGN.md section 4), for one region per call.

- It checks the validation loss once per window (Esper: once per epoch).
- It panics at once on a NaN/Inf loss, and *rolls back at once* on it.
- Divergence: loss > 12, and > mean + 6 sigma, and > 3x the mean, over a history of the
  last 20 good windows' losses holding at least 10 samples. A divergent window is a panic;
  three consecutive panics roll the region back.
- A rollback restores the region's last good snapshot (network, optimiser state, slots),
  prunes every live experimental seed (GERMINATED to HOLDING: PRUNED, then the embargo;
  parameters freed), as Esper's ``execute_rollback`` does (fossils are committed memory
  and are kept), and clears the panic count. Good windows (no panic) append their loss to
  the history and become the new snapshot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["DIVERGE_ABS", "HISTORY", "MIN_SAMPLES", "PANICS_TO_ROLLBACK", "Verdict", "judge",
           "push"]

HISTORY = 20
MIN_SAMPLES = 10
DIVERGE_ABS = 12.0
DIVERGE_SIGMA = 6.0
DIVERGE_MULT = 3.0
PANICS_TO_ROLLBACK = 3


class Verdict(NamedTuple):
    """The governor's verdict on one region's window."""

    nonfinite: jnp.ndarray
    divergent: jnp.ndarray
    panic: jnp.ndarray
    rollback: jnp.ndarray
    count: jnp.ndarray


def judge(loss, hist, hist_n, count) -> Verdict:
    """The governor's verdict on a window's validation ``loss``.

    ``hist`` ``[20]``: past good losses (ring buffer; the first ``min(hist_n, 20)`` are
    filled), ``count``: consecutive panics so far (int32).
    """
    dtype = hist.dtype
    n = jnp.minimum(hist_n, HISTORY)
    filled = jnp.arange(HISTORY) < n
    nf = jnp.maximum(n, 1).astype(dtype)
    mean = jnp.sum(jnp.where(filled, hist, 0)) / nf
    var = jnp.sum(jnp.where(filled, (hist - mean) ** 2, 0)) / nf
    sigma = jnp.sqrt(var)
    nonfinite = ~jnp.isfinite(loss)
    divergent = (
        (n >= MIN_SAMPLES)
        & (loss > DIVERGE_ABS)
        & (loss > mean + DIVERGE_SIGMA * sigma)
        & (loss > DIVERGE_MULT * mean)
        & ~nonfinite
    )
    panic = nonfinite | divergent
    new_count = jnp.where(panic, count + 1, 0)
    rollback = nonfinite | (new_count >= PANICS_TO_ROLLBACK)
    new_count = jnp.where(rollback, 0, new_count)
    return Verdict(nonfinite, divergent, panic, rollback, new_count)


def push(hist, hist_n, loss, good):
    """Append ``loss`` to the ring buffer where ``good``."""
    i = hist_n % HISTORY
    hist = jnp.where(good & (jnp.arange(HISTORY) == i), loss, hist)
    return hist, hist_n + good.astype(hist_n.dtype)
