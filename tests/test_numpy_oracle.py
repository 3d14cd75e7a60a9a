"""The NumPy closed loop (``sims/numpy_twin.py``) against ``sims.rollout``:
window by window, float64, small N, in scenarios that exercise shocks, NaN bursts,
dropouts and spoofers, for the per-region and the global pool."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.params import NarsetParams
from sims import numpy_twin as ref

N, T = 48, 12
KEY = jax.random.key(11)
# The oracle's scenario: every kind of event, often.
SCENARIO = dict(
    base="crisis",
    spoofer_fraction=0.2,
    dropout_rate=0.1,
    dropout_persist=0.3,
    nan_rate=0.1,
    nan_persist=0.2,
    shock_corr=0.5,
)


@pytest.fixture(scope="module")
def scenario():
    return sims.Scenario.from_dict(SCENARIO)


def _numpy_run(params, scenario):
    init = jax.jit(
        lambda k: sims.rollout_init(params, scenario.without_metadata(), k, N,
                                    dtype=jnp.float64)
    )(KEY)
    carry = ref.from_jax(init)
    records = []
    for _ in range(T):
        carry = ref.window(params, scenario, carry)
        records.append(carry.last)
    return carry, records


@pytest.mark.parametrize("budget", ["region", "global"])
def test_numpy_matches_jax_window_by_window(scenario, budget):
    # A small pool and fast inertia, so that budgets bind within the run.
    params = NarsetParams(budget=budget, pool=0.6, beta=0.8)
    jx = sims.rollout(params, scenario, KEY, N, T, dtype=jnp.float64, record=True)
    carry, records = _numpy_run(params, scenario)
    tol = dict(rtol=1e-9, atol=1e-9)
    for t, (d, tel, ev) in enumerate(records):
        for name in ("x_T", "x_E", "spent", "price", "need", "target_T", "target_E"):
            np.testing.assert_allclose(
                getattr(d, name), np.asarray(getattr(jx.decisions, name)[t]), **tol,
                err_msg=f"window {t}: decision.{name}",
            )
        for name in ("mode", "tier_T", "tier_E"):
            np.testing.assert_array_equal(
                getattr(d, name), np.asarray(getattr(jx.decisions, name)[t]),
                err_msg=f"window {t}: decision.{name}",
            )
        for name in vars(tel):
            np.testing.assert_allclose(
                getattr(tel, name), np.asarray(getattr(jx.telemetry, name)[t]), **tol,
                err_msg=f"window {t}: telemetry.{name}",
            )
        for name in ev._fields:
            np.testing.assert_allclose(
                getattr(ev, name), np.asarray(getattr(jx.events, name)[t]), **tol,
                err_msg=f"window {t}: events.{name}",
            )
    for name, value in vars(carry.sim).items():
        np.testing.assert_allclose(
            value, np.asarray(getattr(jx.final.sim, name)), **tol, err_msg=f"sim.{name}"
        )
    got = ref.metrics(params, scenario, carry)
    for name, value in jx.metrics.to_dict().items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    # The scenario really exercised the hard parts.
    tel = jx.telemetry
    assert np.isnan(np.asarray(tel.loss)).any() and (~np.asarray(tel.valid)).any()
    assert np.asarray(jx.events.spike).any() and np.asarray(jx.events.panic).any()
    assert np.asarray(jx.decisions.price).max() > 0


def test_per_region_loop_equals_vectorised(scenario):
    """The per-region Python loop of the step benchmark computes the same thing."""
    params = NarsetParams()
    init = jax.jit(
        lambda k: sims.rollout_init(params, scenario.without_metadata(), k, 6,
                                    dtype=jnp.float64)
    )(KEY)
    whole = ref.from_jax(init)
    parts = [ref.take(whole, slice(i, i + 1)) for i in range(6)]
    for _ in range(3):
        whole = ref.window(params, scenario, whole)
        parts = [ref.window(params, scenario, c) for c in parts]
    for i, c in enumerate(parts):
        for name, value in vars(c.sim).items():
            np.testing.assert_array_equal(value, getattr(whole.sim, name)[i : i + 1], name)


def _leaves(tree):
    """Array leaves of the twin's nested namespaces, tuples and pytrees."""
    if isinstance(tree, SimpleNamespace):
        tree = list(vars(tree).values())
    if isinstance(tree, list) or (isinstance(tree, tuple) and not hasattr(tree, "_fields")):
        return [leaf for v in tree for leaf in _leaves(v)]
    return jax.tree.leaves(tree)


@pytest.mark.parametrize("budget", ["region", "global", "fixed_sum"])
def test_the_twin_runs_in_numpy_only(scenario, budget):
    """Every stage, in every module it spans, is twinned: nothing falls back to JAX (which
    would still agree with JAX, and make the NumPy baseline of the step benchmark a JAX
    one)."""
    params = NarsetParams(budget=budget)
    init = jax.jit(
        lambda k: sims.rollout_init(params, scenario.without_metadata(), k, 8,
                                    dtype=jnp.float64)
    )(KEY)
    carry = ref.window(params, scenario, ref.from_jax(init))
    leaves = _leaves((carry.sim, carry.ctl, carry.acc, carry.last))
    assert len(leaves) > 100
    for leaf in leaves:
        assert isinstance(leaf, np.ndarray | np.generic), type(leaf)
