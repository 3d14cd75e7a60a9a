"""The signals stage (``narset_jax/signals.py``): EWMAs, the persistence filter, the loss
trend and plateau, missing and non-finite readings, and the scores."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narset_jax.params import NarsetParams
from narset_jax.signals import SignalState, init_signals, scores, smooth
from narset_jax.telemetry import Telemetry, sanitise

N = 4
F64 = jnp.float64
P = NarsetParams().astype(F64)


def window(**fields):
    return sanitise(Telemetry.calm(N, F64, **fields), F64)


def run(windows, variant="hard", params=P):
    """The signal state after each window."""
    state = init_signals(N, F64)
    out = []
    for w in windows:
        state = smooth(params, state, w, variant)
        out.append(state)
    return out


def with_fields(**values):
    base = init_signals(N, F64)
    fields = {k: getattr(base, k) for k in SignalState.__dataclass_fields__}
    fields.update({k: jnp.asarray(v, F64) for k, v in values.items()})
    return SignalState(**fields)


def col(states, name, region):
    return np.array([float(getattr(s, name)[region]) for s in states])


def test_efficiency_ewma_starts_at_the_first_valid_window():
    rate_churn, rate_growth = float(P.rate_churn), float(P.rate_growth_ratio)
    missing = window(churn=100.0, growth_ratio=50.0, valid=False)
    states = run([missing, window(churn=3.0, growth_ratio=2.0),
                  window(churn=5.0, growth_ratio=4.0)])
    np.testing.assert_array_equal(states[0].n_valid, 0)
    np.testing.assert_array_equal(states[0].ewma_churn, 0)  # nothing absorbed yet
    np.testing.assert_array_equal(states[1].ewma_churn, 3.0)
    np.testing.assert_array_equal(states[1].ewma_growth_ratio, 2.0)
    np.testing.assert_allclose(states[2].ewma_churn, 3.0 + rate_churn * 2.0, rtol=1e-15)
    np.testing.assert_allclose(states[2].ewma_growth_ratio, 2.0 + rate_growth * 2.0, rtol=1e-15)
    np.testing.assert_array_equal(states[2].n_valid, 2)


def test_persistence_filter_ignores_a_one_window_spike():
    spike = window(rollbacks=5.0)
    calm = window()
    states = run([calm, calm, spike, calm, calm])
    # The spike never reaches the EWMA; it only fills the filter's memory, which decays.
    np.testing.assert_array_equal(col(states, "ewma_rollbacks", 0), 0.0)
    decay = float(P.persist_decay)
    np.testing.assert_allclose(col(states, "mem_rollbacks", 0), [0, 0, 5, 5 * decay, 5 * decay**2])


def test_persistence_filter_admits_a_repeated_or_recurring_spike():
    rate, decay = float(P.rate_rollbacks), float(P.persist_decay)
    calm, spike = window(), window(rollbacks=5.0)
    twice = run([calm, spike, spike])
    assert float(twice[1].ewma_rollbacks[0]) == 0.0
    np.testing.assert_allclose(twice[2].ewma_rollbacks, rate * 5.0)
    # A spike that recurs within the memory is admitted, scaled by persist_decay.
    recurring = run([calm, spike, calm, spike])
    np.testing.assert_allclose(recurring[3].ewma_rollbacks, rate * decay * 5.0)


def test_loss_trend_is_the_ewma_of_the_clipped_relative_improvement():
    rate_loss, rate_trend = float(P.rate_loss), float(P.rate_trend)
    first = window(loss=[1.0, 1.0, 1.0, -2.0])
    second = window(loss=[0.5, 1000.0, 1.0, -1.0])
    s1, s2 = run([first, second])
    np.testing.assert_array_equal(s1.trend, 0)  # the first reading has no trend
    np.testing.assert_array_equal(s1.ewma_loss, [1.0, 1.0, 1.0, -2.0])
    np.testing.assert_array_equal(s1.n_loss, 1)
    prev = np.array([1.0, 1.0, 1.0, -2.0])
    smoothed = prev + rate_loss * (np.array([0.5, 1000.0, 1.0, -1.0]) - prev)
    rel = np.clip((prev - smoothed) / np.abs(prev), -1, 1)
    assert rel[1] == -1 and rel[0] > 0 and rel[3] < 0  # improving, clipped, worse
    np.testing.assert_allclose(s2.ewma_loss, smoothed, rtol=1e-15)
    np.testing.assert_allclose(s2.trend, rate_trend * rel, rtol=1e-12)


def test_plateau_counts_stalled_windows_up_to_the_window_and_resets():
    T = 14
    # Region 0: a flat loss. Region 1: falling 20 % a window (trend above plateau_eps).
    loss = lambda t: np.array([1.0, 0.8**t, 1.0, 1.0])  # noqa: E731
    states = run([window(loss=loss(t)) for t in range(T)])
    cap = float(P.plateau_window)
    np.testing.assert_array_equal(col(states, "plateau", 0), np.minimum(np.arange(1, T + 1), cap))
    assert col(states, "plateau", 1)[0] == 1  # no trend yet at the first reading
    assert np.all(col(states, "plateau", 1)[1:] == 0)
    assert np.all(col(states, "trend", 1)[1:] > float(P.plateau_eps))
    # The soft variant leaks: a fraction of a window, never a whole one.
    soft = run([window(loss=loss(t)) for t in range(3)], variant="soft")
    assert 0 < float(soft[0].plateau[0]) < 1
    assert 0 < float(soft[2].plateau[0]) < 3


def test_a_missing_window_holds_every_signal():
    rng = np.random.default_rng(0)
    windows = [
        window(loss=1 + rng.random(N), rollbacks=rng.poisson(1.0, N), churn=rng.random(N))
        for _ in range(3)
    ]
    before = run(windows)[-1]
    gone = window(loss=50.0, rollbacks=9.0, lstm_health=40.0, churn=7.0, valid=False)
    after = smooth(P, before, gone, "hard")
    chex.assert_trees_all_equal(after, before)


def test_a_non_finite_reading_holds_only_its_own_signal():
    calm = [window(loss=1.0, lstm_health=2.0) for t in range(3)]  # a plateau of 3
    before = run(calm)[-1]
    bad = window(loss=[np.nan, 0.5, 0.5, 0.5], lstm_health=[2.0, np.inf, 2.0, 2.0], churn=3.0)
    after = smooth(P, before, bad, "hard")
    for name in ("ewma_loss", "trend", "plateau", "n_loss"):
        assert float(getattr(after, name)[0]) == float(getattr(before, name)[0]), name
        assert float(getattr(after, name)[2]) != float(getattr(before, name)[2]), name
    for name in ("ewma_lstm_health", "mem_lstm_health"):
        assert float(getattr(after, name)[1]) == float(getattr(before, name)[1]), name
    # The rest of the window is absorbed, in both regions.
    np.testing.assert_array_equal(after.n_valid, before.n_valid + 1)
    assert np.all(np.asarray(after.ewma_churn) > np.asarray(before.ewma_churn))
    # ... and the bad reading itself counts as an anomaly.
    assert float(after.mem_anomalies[0]) == 1.0 and float(after.mem_anomalies[2]) == 0.0


def test_scores_follow_their_formulas():
    p = P
    s = with_fields(
        ewma_rollbacks=[0.25, 0, 0, 0],
        ewma_anomalies=[1.0, 0, 0, 0],
        ewma_lstm_health=[7.5, 1.0, 12.0, 0],
        trend=[0.01, 1.0, -0.5, 0],
        plateau=[5.0, 0, 10.0, 0],
        ewma_growth_ratio=[2.0, 5.0, 40.0, 0],
        ewma_churn=[4.0, 0, 0, 0],
        ewma_alpha_shock=[0.1, 0, 0, 0],
        ewma_active_seeds=[2.0, 0, 0, 0],
        ewma_fossilised_seeds=[2.0, 0, 0, 0],
    )
    sc = scores(p, s)
    # I = 0.25/0.25 + 1/1 + 0 + (7.5 - 5) / (10 - 5) = 2.5; LSTM past critical adds 1.4.
    inst = np.array([2.5, 0.0, 1.4, 0.0])
    np.testing.assert_allclose(sc.stability, 1 / (1 + inst), rtol=1e-15)
    np.testing.assert_allclose(sc.need, inst / (1 + inst), rtol=1e-15)
    np.testing.assert_allclose(sc.need + sc.stability, 1, rtol=1e-15)
    # progress = (clip(trend / 0.02, 0, 1) + 1 - plateau / 10) / 2.
    np.testing.assert_allclose(sc.progress, [0.5, 1.0, 0.0, 0.5], rtol=1e-15)
    # Efficiency: rent 0 at green, 1 at red and beyond; churn, shock and active share 1/2.
    # Weights 0.4 (rent) and 0.2 (churn, shock, active share).
    np.testing.assert_allclose(sc.efficiency, [3 * 0.2 * 0.5, 0.4, 0.4, 0.0], rtol=1e-12)
    for name in ("progress", "stability", "efficiency", "need"):
        v = np.asarray(getattr(sc, name))
        assert np.all((v >= 0) & (v <= 1)), name


def test_scores_of_a_fresh_state_are_calm():
    sc = scores(P, init_signals(N, F64))
    np.testing.assert_array_equal(sc.stability, 1)
    np.testing.assert_array_equal(sc.need, 0)
    np.testing.assert_array_equal(sc.progress, 0.5)
    np.testing.assert_array_equal(sc.efficiency, 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_smooth_keeps_the_state_dtype_under_jit(dtype):
    p = NarsetParams().astype(dtype)
    clean = sanitise(Telemetry.crisis(N, F64), dtype)
    state = jax.jit(smooth, static_argnums=3)(p, init_signals(N, dtype), clean, "hard")
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype == dtype
