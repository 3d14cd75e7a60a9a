"""Gradients of the soft and straight-through variants (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scripted_telemetry import N, T, scripted

from narset_jax.hysteresis import init_hysteresis, update_mode
from narset_jax.params import NarsetParams
from narset_jax.step import init_state, narset_rollout

TEL = scripted()


# ---------------------------------------------------------------------------------------
# Gradients of the soft variant against central finite differences.

SOFT = NarsetParams(hysteresis="soft", temp_need=0.1, temp_dwell=0.5, pool=1.25)
W = jnp.asarray(np.random.default_rng(7).uniform(0.5, 1.5, (3, T, N)))


@jax.jit
@jax.value_and_grad
def objective(params):
    _, d = narset_rollout(params, init_state(N, jnp.float64), TEL)
    return jnp.sum(W[0] * d.x_T + W[1] * d.x_E + W[2] * d.spent)


@jax.jit
def max_price(params):
    return jnp.max(narset_rollout(params, init_state(N, jnp.float64), TEL)[1].price)


GRAD_FIELDS = (
    "alpha",
    "beta",
    "pool",
    "theta_enter",
    "theta_exit",
    "k_enter",
    "k_exit",
    "temp_need",
    "temp_dwell",
    "rate_loss",
    "rate_trend",
    "rate_rollbacks",
    "rate_anomalies",
    "rate_nonfinite",
    "rate_lstm_health",
    "rate_growth_ratio",
    "rate_churn",
    "rate_alpha_shock",
    "rate_active_seeds",
    "rate_fossilised_seeds",
    "persist_decay",
    "scale_anomalies",
    "plateau_eps",
    "gain_T_crisis",
    "gain_E_consol",
)


def test_soft_gradients_match_central_differences():
    assert float(max_price(SOFT)) > 0  # the budget binds, so alpha and pool matter
    value, grads = objective(SOFT)
    assert np.isfinite(float(value))
    worst = 0.0
    for name in GRAD_FIELDS:
        v = float(getattr(SOFT, name))
        h = 1e-5 * max(1.0, abs(v))
        up, _ = objective(SOFT.replace(**{name: v + h}))
        down, _ = objective(SOFT.replace(**{name: v - h}))
        fd = float(up - down) / (2 * h)
        g = float(getattr(grads, name))
        assert abs(fd) > 1e-4, (name, fd)  # the parameter matters in this scenario
        assert abs(g - fd) <= 1e-4 * abs(fd), (name, g, fd)
        worst = max(worst, abs(g - fd) / abs(fd))
    print(f"worst relative error {worst:.1e}")


# ---------------------------------------------------------------------------------------
# Straight-through: the hard forward pass, soft gradients (checked on the stage itself).


def _modes(variant):
    need = jnp.asarray(np.random.default_rng(3).uniform(0, 0.7, (60, 4)))

    def run(theta_enter):
        p = NarsetParams(hysteresis=variant, theta_enter=theta_enter).astype(jnp.float64)

        def body(s, n):
            s = update_mode(p, s, n, jnp.ones(n.shape, bool), variant)
            return s, s.mode

        return jax.lax.scan(body, init_hysteresis(4, jnp.float64), need)[1]

    return run


@pytest.mark.parametrize("variant", ["hard", "straight_through"])
def test_straight_through_is_hard_forward_soft_backward(variant):
    run = _modes(variant)
    hard = _modes("hard")(0.4)
    modes = run(0.4)
    np.testing.assert_array_equal(modes, hard)
    assert set(np.unique(np.asarray(modes))) == {0.0, 1.0}
    grad = jax.grad(lambda th: jnp.sum(run(th) * jnp.arange(60.0)[:, None]))(0.4)
    if variant == "hard":
        assert float(grad) == 0.0
    else:
        assert np.isfinite(float(grad)) and float(grad) != 0.0


# ---------------------------------------------------------------------------------------
# Saturating: the soft gates, the mode pushed to {0, 1} every window (checked on the stage).


def test_saturating_mode_gradients_match_central_differences():
    """d/d theta_enter, theta_exit, k_enter, k_exit and temp_need of a weighted sum of the
    saturating mode over 60 windows, against central differences in float64."""
    need = jnp.asarray(np.random.default_rng(3).uniform(0, 0.7, (60, 4)))
    w = jnp.arange(60.0)[:, None]
    base = NarsetParams(hysteresis="saturating", temp_need=0.1, temp_dwell=0.5)
    fields = ("theta_enter", "theta_exit", "k_enter", "k_exit", "temp_need")

    @jax.jit
    @jax.value_and_grad
    def f(x):
        p = base.replace(**dict(zip(fields, x))).astype(jnp.float64)

        def body(s, n):
            s = update_mode(p, s, n, jnp.ones(n.shape, bool), "saturating")
            return s, s.mode

        modes = jax.lax.scan(body, init_hysteresis(4, jnp.float64), need)[1]
        return jnp.sum(modes * w)

    x0 = jnp.asarray([float(getattr(base, n)) for n in fields], jnp.float64)
    _, g = f(x0)
    for i, name in enumerate(fields):
        h = 1e-6
        fd = (float(f(x0.at[i].add(h))[0]) - float(f(x0.at[i].add(-h))[0])) / (2 * h)
        assert abs(fd) > 1e-3, (name, fd)
        assert abs(float(g[i]) - fd) <= 1e-4 * abs(fd), (name, float(g[i]), fd)
