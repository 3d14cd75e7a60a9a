"""The audit's numbers: pure NumPy functions of ``[T, N]`` arrays (windows by regions),
no I/O. The method and its reasons are in ``docs/gaslighting.md`` (section Audit).

1. ``instability``: each window's *reported* instability in the controller's own units,
   ``I = rollbacks / scale_rollbacks + anomalies / scale_anomalies + nonfinite /
   scale_nonfinite + max(lstm - lstm_warn, 0) / (lstm_critical - lstm_warn)``, from the
   raw inputs (one unit alone halves Narset's stability score). A window that is missing
   or has a non-finite loss or stability reading is left out (NaN).
2. ``transient_excess``: the part of ``I_t`` that its neighbourhood does not share,
   ``e_t = max_w max(0, I_t - median(I_{t-w..t+w}))`` for ``w`` in ``(1, 2)``. Genuine
   instability comes from a slowly changing state (health, a shock that takes windows to
   heal) and is still there a window later; a report that the windows around it do not
   corroborate costs the reporter nothing.
3. ``statistic``: per region, ``u = log(mean_t e_t + 1 / T_r)`` (``T_r`` its windows
   with data: the floor is one unit of instability once in the run, the rate's
   resolution). Rates of honest regions vary multiplicatively with how fragile they are,
   hence the log.
4. ``robust_z``: ``z = (u - median u) / (1.4826 MAD u)`` over regions: the empirical null
   is the mesh itself, which is valid while fewer than half of the regions game it. A
   region is flagged when ``z > Phi^-1(1 - fpr)``: if honest regions' ``u`` are about
   normal, each honest region is flagged with probability ``fpr``.

Secondary evidence (reported per region, not in the score; why is in the docs):
``evidence``.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import numpy as np

__all__ = [
    "SCALE_FIELDS",
    "WINDOWS",
    "evidence",
    "instability",
    "p_value",
    "precision_recall",
    "robust_z",
    "statistic",
    "threshold",
    "transient_excess",
]

# The controller params that give the instability index its units.
SCALE_FIELDS = ("scale_rollbacks", "scale_anomalies", "scale_nonfinite", "lstm_warn",
                "lstm_critical")
# Neighbourhood half-widths: a report counts as transient if the median of the windows
# within one, or within two, of it is lower (spikes of one or two windows, or every other
# window).
WINDOWS = (1, 2)
MAD_TO_SD = 1.4826


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def instability(rollbacks, anomalies, nonfinite, lstm_health, loss, valid,
                scales: dict[str, float]) -> np.ndarray:
    """``[T, N]`` reported instability per window in the controller's units; NaN where a
    window is missing or a loss or stability reading is not finite."""
    r, a, n, h, lo = (_f(x) for x in (rollbacks, anomalies, nonfinite, lstm_health, loss))
    span = scales["lstm_critical"] - scales["lstm_warn"]
    ok = np.asarray(valid, dtype=bool) & np.isfinite(r) & np.isfinite(a) & np.isfinite(n)
    ok &= np.isfinite(h) & np.isfinite(lo)
    with np.errstate(invalid="ignore", over="ignore"):
        i = (r / scales["scale_rollbacks"] + a / scales["scale_anomalies"]
             + n / scales["scale_nonfinite"] + np.maximum(h - scales["lstm_warn"], 0) / span)
    return np.where(ok, np.maximum(i, 0), np.nan)


def _rolling_nanmedian(x: np.ndarray, w: int) -> np.ndarray:
    """Median of ``x[t-w .. t+w]`` along axis 0, ignoring NaN (and the ends)."""
    t, n = x.shape
    pad = np.full((t + 2 * w, n), np.nan)
    pad[w:w + t] = x
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * w + 1, axis=0)
    with warnings.catch_warnings():  # all-NaN neighbourhoods give NaN, as they should
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(win, axis=-1)


def transient_excess(i: np.ndarray, windows=WINDOWS) -> np.ndarray:
    """``[T, N]``: the part of each window's instability that the median of its
    neighbourhood (``+-w`` windows, for each ``w`` in ``windows``) does not share; 0 where
    the window has no data."""
    out = np.zeros_like(i)
    for w in windows:
        ex = i - _rolling_nanmedian(i, w)
        out = np.maximum(out, np.where(np.isfinite(ex), ex, 0))
    return out


def statistic(excess: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per region ``(u, n_windows)``: ``u = log(mean e + 1 / T_r)`` over the ``T_r``
    windows with data (``u`` is NaN for a region with none)."""
    have = np.isfinite(i)
    t_r = have.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(have, excess, 0).sum(axis=0) / t_r
        u = np.log(rate + 1.0 / t_r)
    return np.where(t_r > 0, u, np.nan), t_r


def robust_z(u: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(z, centre, scale)``: ``(u - median) / (1.4826 MAD)`` over the finite entries
    (NaN stays NaN). A zero MAD (more than half the regions alike) falls back to 1.2533
    times the mean absolute deviation from the median; if that is zero too, nobody
    deviates and every ``z`` is 0."""
    fin = u[np.isfinite(u)]
    if fin.size == 0:
        return np.full_like(u, np.nan), math.nan, math.nan
    centre = float(np.median(fin))
    dev = np.abs(fin - centre)
    scale = MAD_TO_SD * float(np.median(dev))
    if scale <= 0:
        scale = math.sqrt(math.pi / 2) * float(np.mean(dev))
    if scale <= 0:
        return np.where(np.isfinite(u), 0.0, np.nan), centre, 0.0
    return (u - centre) / scale, centre, scale


def threshold(fpr: float) -> float:
    """The z above which a region is flagged: ``Phi^-1(1 - fpr)``."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return NormalDist().inv_cdf(1 - fpr)


def p_value(z: np.ndarray) -> np.ndarray:
    """One-sided normal tail ``1 - Phi(z)`` (NaN stays NaN)."""
    from math import erfc

    return np.array([0.5 * erfc(v / math.sqrt(2)) if np.isfinite(v) else math.nan
                     for v in np.ravel(z)]).reshape(np.shape(z))


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation over rows where both are finite (NaN if either
    does not vary)."""
    m = np.isfinite(a) & np.isfinite(b)
    k = m.sum(axis=0)
    a = np.where(m, a, 0.0)
    b = np.where(m, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = a.sum(axis=0) / k
        mb = b.sum(axis=0) / k
        da = np.where(m, a - ma, 0.0)
        db = np.where(m, b - mb, 0.0)
        num = (da * db).sum(axis=0)
        den = np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
        r = num / den
    return np.where((k > 2) & (den > 0), r, np.nan)


def evidence(i: np.ndarray, excess: np.ndarray, loss, spent, price, mode_weight
             ) -> dict[str, np.ndarray]:
    """Per-region facts an auditor reads beside the score (all ``[N]`` floats, NaN where
    they cannot be computed):

    - ``instability``: mean reported instability per window (controller units);
    - ``transient_rate``: mean transient excess per window (what the score is built on);
    - ``transient_share``: the share of its instability that is transient;
    - ``spike_windows``: windows whose transient excess is at least one unit;
    - ``spikes_in_a_row``: the share of those followed by another (0: never two in a row);
    - ``loss_corroboration``: correlation of the transient excess with the loss change
      around it (``log L[t+1] - log L[t-1]``); instability that shows in the loss is
      positive;
    - ``mesh_correlation``: correlation of its instability with the mesh's mean (shock
      waves hit many regions at once);
    - ``contested_correlation``: correlation of its transient excess with the global
      pool's price (NaN when the price never moves: the pool was never contested);
    - ``spend_ratio``: its mean spend over the median region's;
    - ``repair_share``: its mean repair-mode weight;
    - ``progress``: its relative loss improvement over the run minus the median region's
      (budget taken without progress: ``spend_ratio > 1`` with ``progress < 0``).
    """
    t, n = i.shape
    have = np.isfinite(i)
    with np.errstate(invalid="ignore", divide="ignore"):
        inst = np.where(have, i, 0).sum(axis=0) / have.sum(axis=0)
        rate = np.where(have, excess, 0).sum(axis=0) / have.sum(axis=0)
        total = np.where(have, i, 0).sum(axis=0)
        share = np.where(total > 0, np.where(have, excess, 0).sum(axis=0) / total, np.nan)
    spike = excess >= 1.0
    n_spike = spike.sum(axis=0)
    in_row = (spike[:-1] & spike[1:]).sum(axis=0) if t > 1 else np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_share = np.where(n_spike > 0, in_row / n_spike, np.nan)
    lo = _f(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        logl = np.where(np.isfinite(lo) & (lo > 0), np.log(lo), np.nan)
    dl = np.full_like(logl, np.nan)
    if t > 2:
        dl[1:-1] = logl[2:] - logl[:-2]
    ex = np.where(have, excess, np.nan)
    others = np.nanmean(np.where(have, i, np.nan), axis=1, keepdims=True) if n else i
    mesh = _corr(i, np.broadcast_to(others, i.shape))
    pr = _f(price)
    moves = np.isfinite(pr).any() and np.nanmax(pr) > np.nanmin(pr)
    contested = _corr(ex, pr) if moves else np.full(n, np.nan)
    sp = _f(spent).mean(axis=0)
    med_sp = np.nanmedian(sp) if n else np.nan
    spend_ratio = sp / med_sp if med_sp > 0 else np.full(n, np.nan)
    first = np.array([_first_finite(logl[:, r]) for r in range(n)])
    last = np.array([_first_finite(logl[::-1, r]) for r in range(n)])
    prog = first - last
    prog = prog - np.nanmedian(prog) if np.isfinite(prog).any() else prog
    return {
        "instability": inst,
        "transient_rate": rate,
        "transient_share": share,
        "spike_windows": n_spike.astype(np.float64),
        "spikes_in_a_row": row_share,
        "loss_corroboration": _corr(ex, dl),
        "mesh_correlation": mesh,
        "contested_correlation": contested,
        "spend_ratio": spend_ratio,
        "repair_share": _f(mode_weight).mean(axis=0),
        "progress": prog,
    }


def _first_finite(x: np.ndarray) -> float:
    idx = np.flatnonzero(np.isfinite(x))
    return float(x[idx[0]]) if idx.size else math.nan


def precision_recall(score: np.ndarray, truth: np.ndarray, flagged: np.ndarray) -> dict:
    """Against the ground truth: precision and recall of the top ``k`` regions by score
    (``k`` the true number of spoofers; with that ``k`` they are equal), and of the
    flagged set; the false-positive rate among honest regions. Top-``k`` entries are
    ``None`` without spoofers."""
    truth = np.asarray(truth, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    k = int(truth.sum())
    honest = int((~truth).sum())
    out: dict = {"n_spoofers": k, "n_honest": honest}
    if k:
        order = np.argsort(-np.where(np.isfinite(score), score, -np.inf), kind="stable")
        hit = int(truth[order[:k]].sum())
        out["precision"] = hit / k
        out["recall"] = hit / k
    else:
        out["precision"] = out["recall"] = None
    tp = int((flagged & truth).sum())
    out["flagged_precision"] = tp / int(flagged.sum()) if flagged.any() else None
    out["flagged_recall"] = tp / k if k else None
    out["false_positives"] = int((flagged & ~truth).sum())
    out["false_positive_rate"] = out["false_positives"] / honest if honest else None
    return out
