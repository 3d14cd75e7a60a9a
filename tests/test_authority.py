"""The authority stage (``narset_jax/authority.py``): blast-radius tiers (irreversible work
only at a safe boundary) and the limits each intensity implies."""

import jax.numpy as jnp
import numpy as np

from narset_jax.authority import authority, limits, tier
from narset_jax.params import NarsetParams

F64 = jnp.float64


def test_tier_ladder():
    x = jnp.array([0.0, 0.19, 0.2, 0.49, 0.5, 0.5, 3.0, 3.0], F64)
    boundary = jnp.array([True, True, True, True, True, False, True, False])
    t = tier(x, 0.2, 0.5, boundary)
    assert t.dtype == jnp.int32
    np.testing.assert_array_equal(t, [0, 0, 1, 1, 2, 1, 2, 1])


def test_irreversible_tier_only_at_a_boundary_and_above_its_threshold():
    x = jnp.linspace(0, 2, 81, dtype=F64)
    for boundary in (True, False):
        b = jnp.full(x.shape, boundary)
        t = np.asarray(tier(x, 0.2, 0.5, b))
        np.testing.assert_array_equal(t == 2, (np.asarray(x) >= 0.5) & boundary)
        np.testing.assert_array_equal(t >= 1, np.asarray(x) >= 0.2)


def test_each_agent_has_its_own_ladder():
    p = NarsetParams(
        tau_sedate=0.1, tau_lysis=0.3, tau_germinate=0.4, tau_fossilise=0.8
    ).astype(F64)
    x = jnp.array([0.05, 0.2, 0.35, 0.6, 1.0], F64)
    a = authority(p, x, x, jnp.ones(5, bool))
    np.testing.assert_array_equal(a.tier_E, [0, 1, 2, 2, 2])  # Emrakul: sedation, lysis
    np.testing.assert_array_equal(a.tier_T, [0, 0, 0, 1, 2])  # Tamiyo: germinate, fossilise
    a = authority(p, x, x, jnp.zeros(5, bool))
    np.testing.assert_array_equal(a.tier_E, [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(a.tier_T, [0, 0, 0, 1, 1])


def test_limits_of_an_intensity():
    x = jnp.array([0.0, 0.05, 0.26, 1.0, 1.8], F64)
    ops, freq, mult = limits(x, 4.0, 10.0)
    assert ops.dtype == jnp.int32
    np.testing.assert_array_equal(ops, [0, 0, 1, 4, 7])  # floor(4 x)
    np.testing.assert_array_equal(freq, [0.0, 0.05, 0.26, 1.0, 1.0])  # min(x, 1)
    # min(1 / x, cost_mult_max): capped when starved (no division by zero), 1 at nominal,
    # below 1 in overdrive.
    np.testing.assert_allclose(mult, [10.0, 10.0, 1 / 0.26, 1.0, 1 / 1.8], rtol=1e-15)


def test_authority_limits_follow_each_agents_own_intensity():
    p = NarsetParams(ops_nominal=3.0, cost_mult_max=5.0).astype(F64)
    x_T, x_E = jnp.array([0.0, 1.5], F64), jnp.array([1.0, 0.5], F64)
    a = authority(p, x_T, x_E, jnp.ones(2, bool))
    np.testing.assert_array_equal(a.max_ops_T, [0, 4])
    np.testing.assert_array_equal(a.max_ops_E, [3, 1])
    np.testing.assert_array_equal(a.action_freq_T, [0.0, 1.0])
    np.testing.assert_array_equal(a.action_freq_E, [1.0, 0.5])
    np.testing.assert_allclose(a.cost_mult_T, [5.0, 1 / 1.5], rtol=1e-15)
    np.testing.assert_allclose(a.cost_mult_E, [1.0, 2.0], rtol=1e-15)
