"""Every emitted allocation is feasible, in every budget mode and cost model, including on
adversarial telemetry (NaN, Inf, huge values, missing windows)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narset_jax.budget import overdrive_cost
from narset_jax.params import NarsetParams
from narset_jax.step import Narset
from narset_jax.telemetry import FLOAT_FIELDS, Telemetry

N, T = 8, 40
EPS32 = float(np.finfo(np.float32).eps)


def random_windows(seed, T=T, n=N):
    rng = np.random.default_rng(seed)
    windows = []
    for t in range(T):
        crisis = (t // 8) % 2 == 1
        f = {
            "loss": 1.0 + 0.1 * rng.standard_normal(n),
            "rollbacks": rng.poisson(0.8 if crisis else 0.05, n),
            "anomalies": rng.poisson(4.0 if crisis else 0.3, n),
            "nonfinite": rng.poisson(0.5 if crisis else 0.0, n),
            "lstm_health": rng.uniform(0.5, 15.0 if crisis else 4.0, n),
            "growth_ratio": rng.uniform(1.0, 12.0, n),
            "churn": rng.poisson(3.0, n),
            "alpha_shock": rng.exponential(0.1, n),
            "active_seeds": rng.integers(0, 10, n),
            "fossilised_seeds": rng.integers(0, 30, n),
            "valid": rng.uniform(size=n) > 0.1,
            "boundary": rng.uniform(size=n) > 0.5,
        }
        windows.append(Telemetry.filled(n, jnp.float32, **f))
    return windows


def check_feasible(params, d, n=N):
    x_T, x_E = np.asarray(d.x_T), np.asarray(d.x_E)
    assert np.all(np.isfinite(x_T)) and np.all(np.isfinite(x_E))
    assert np.all(x_T >= 0) and np.all(x_E >= 0)
    if params.budget == "fixed_sum":
        np.testing.assert_allclose(x_T + x_E, 1.0, atol=2 * EPS32)
        return
    spent = np.asarray(overdrive_cost(d.x_T, params.alpha, params.cost)) + np.asarray(
        overdrive_cost(d.x_E, params.alpha, params.cost)
    )
    pool = np.float32(params.pool)
    if params.budget == "region":
        assert np.all(spent <= pool * (1 + 4 * EPS32)), spent.max()
    else:
        assert spent.sum() <= pool * n * (1 + 4 * n * EPS32), spent.sum()


CONFIGS = [
    NarsetParams(cost="convex"),
    NarsetParams(budget="global"),
    NarsetParams(budget="global", cost="convex"),
    NarsetParams(budget="fixed_sum"),
]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: f"{p.budget}-{p.cost}")
def test_every_window_feasible(params):
    ctl = Narset(params)
    state = ctl.init(N)
    bound = 0
    for tel in random_windows(0):
        state, d = ctl.step(state, tel)
        check_feasible(params, d)
        if params.budget == "region":
            bound += int(np.sum(np.asarray(d.price) > 0))
        elif params.budget == "global":
            bound += int(np.asarray(d.price)[0] > 0)
            assert np.all(np.asarray(d.price) == np.asarray(d.price)[0])
    if params.budget != "fixed_sum":
        assert bound > 0  # the budget binds in some windows


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(-2.0, 20.0, width=32),
)


@st.composite
def telemetry_sequences(draw, steps=6):
    vals = draw(hnp.arrays(np.float32, (steps, len(FLOAT_FIELDS), N), elements=finite_or_not))
    flags = draw(hnp.arrays(np.bool_, (steps, 2, N)))
    return [
        Telemetry(
            **dict(zip(FLOAT_FIELDS, vals[t], strict=True)), valid=flags[t, 0], boundary=flags[t, 1]
        )
        for t in range(steps)
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows=telemetry_sequences())
def test_adversarial_telemetry_feasible_and_finite(windows):
    params = NarsetParams()
    ctl = Narset(params)
    state = ctl.init(N)
    for tel in windows:
        state, d = ctl.step(state, tel)
        check_feasible(params, d)
        for leaf in jax.tree.leaves(state):
            assert np.all(np.isfinite(np.asarray(leaf)))
        tier_E = np.asarray(d.tier_E)
        lysis_ok = (
            (np.asarray(d.x_E) >= np.float32(params.tau_lysis))
            & np.asarray(tel.boundary)
            & np.asarray(tel.valid)
        )
        assert np.all(~(tier_E == 2) | lysis_ok)
