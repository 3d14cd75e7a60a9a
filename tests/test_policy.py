"""The policy stage (``narset_jax/policy.py``): targets from mode and scores, and inertia
on the targets."""

import jax.numpy as jnp
import numpy as np

from narset_jax.params import NarsetParams
from narset_jax.policy import inertia, targets
from narset_jax.signals import Scores

F64 = jnp.float64
P = NarsetParams().astype(F64)


def scores(progress, stability, efficiency):
    s = jnp.asarray(stability, F64)
    return Scores(
        progress=jnp.asarray(progress, F64),
        stability=s,
        efficiency=jnp.asarray(efficiency, F64),
        need=1 - s,
    )


def g(name):
    return float(getattr(P, name))


def test_repair_targets():
    s = scores([0.5, 0.5, 0.5], [1.0, 0.6, 0.1], [0.2, 0.2, 0.9])
    t_T, t_E = targets(P, jnp.ones(3, F64), s)
    need = 1 - np.array([1.0, 0.6, 0.1])
    np.testing.assert_allclose(t_T, g("gain_T_repair") + g("gain_T_crisis") * need, rtol=1e-15)
    np.testing.assert_allclose(t_E, np.array([1.0, 0.6, 0.1]) * g("gain_E_repair"), rtol=1e-15)


def test_consolidation_targets():
    progress, stability, efficiency = [0.0, 1.0, 0.5], [1.0, 0.8, 0.5], [0.0, 0.5, 1.0]
    s = scores(progress, stability, efficiency)
    t_T, t_E = targets(P, jnp.zeros(3, F64), s)
    p, S, F = (np.array(v) for v in (progress, stability, efficiency))
    want_T = g("gain_T_consol") + g("gain_T_progress") * p - g("gain_T_efficiency") * F
    want_E = S * (g("gain_E_consol") + g("gain_E_efficiency") * F)
    np.testing.assert_allclose(t_T, want_T, rtol=1e-15)
    np.testing.assert_allclose(t_E, want_E, rtol=1e-15)


def test_tamiyo_target_is_clipped_at_zero():
    params = P.replace(gain_T_efficiency=2.0)
    s = scores([0.0, 0.0], [1.0, 1.0], [1.0, 0.1])
    t_T, _ = targets(params, jnp.zeros(2, F64), s)
    np.testing.assert_array_equal(t_T, [0.0, g("gain_T_consol") - 0.2])


def test_a_soft_mode_mixes_the_two_policies():
    s = scores([0.3] * 3, [0.7] * 3, [0.4] * 3)
    mode = jnp.array([0.0, 0.25, 1.0], F64)
    t_T, t_E = (np.asarray(v) for v in targets(P, mode, s))
    np.testing.assert_allclose(t_T[1], 0.75 * t_T[0] + 0.25 * t_T[2], rtol=1e-14)
    np.testing.assert_allclose(t_E[1], 0.75 * t_E[0] + 0.25 * t_E[2], rtol=1e-14)


def test_emrakul_target_shrinks_with_stability_and_no_rule_zeroes_it():
    stability = jnp.linspace(0, 1, 11, dtype=F64)
    for mode in (0.0, 1.0):
        _, t_E = targets(P, jnp.full(11, mode, F64), scores(0.5, stability, 0.5))
        t_E = np.asarray(t_E)
        assert t_E[0] == 0 and np.all(t_E[1:] > 0)
        assert np.all(np.diff(t_E) > 0)


def test_targets_are_never_negative():
    rng = np.random.default_rng(0)
    n = 200
    s = scores(rng.random(n), rng.random(n), rng.random(n))
    params = P.replace(gain_T_efficiency=3.0, gain_T_progress=0.0)
    t_T, t_E = targets(params, jnp.asarray(rng.random(n), F64), s)
    assert np.all(np.asarray(t_T) >= 0) and np.all(np.asarray(t_E) >= 0)
    assert np.any(np.asarray(t_T) == 0)  # the clip was needed


def test_inertia_is_an_ewma_that_holds_when_told():
    prev_T, prev_E = jnp.array([0.0, 1.0, 2.0], F64), jnp.array([1.0, 0.0, 0.5], F64)
    t_T, t_E = jnp.array([1.0, 1.0, 0.0], F64), jnp.array([0.0, 1.0, 0.5], F64)
    update = jnp.array([True, True, False])
    T, E = inertia(0.3, prev_T, prev_E, t_T, t_E, update)
    np.testing.assert_allclose(T, [0.3, 1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(E, [0.7, 0.3, 0.5], rtol=1e-15)
    # beta = 1: no inertia.
    T, E = inertia(1.0, prev_T, prev_E, t_T, t_E, jnp.ones(3, bool))
    np.testing.assert_array_equal(T, t_T)
    np.testing.assert_array_equal(E, t_E)


def test_inertia_ramps_up_from_zero_over_about_one_over_beta_windows():
    beta = g("beta")
    T = E = jnp.zeros(1, F64)
    target = jnp.ones(1, F64)
    for _ in range(10):
        T, E = inertia(P.beta, T, E, target, 0.5 * target, jnp.ones(1, bool))
    np.testing.assert_allclose(T, 1 - (1 - beta) ** 10, rtol=1e-13)
    np.testing.assert_allclose(E, 0.5 * (1 - (1 - beta) ** 10), rtol=1e-13)
