"""vmap over params, and rollouts against the step (float64)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.params import NarsetParams, stack_params
from narset_jax.step import Narset, init_state, narset_step
from narset_jax.telemetry import Telemetry

N, T = 3, 30


def scripted(seed=0):
    """Noisy telemetry with a crisis in the middle; float64, ``[T, N]``."""
    rng = np.random.default_rng(seed)
    windows = []
    for t in range(T):
        crisis = 8 <= t < 16
        windows.append(
            Telemetry.filled(
                N,
                jnp.float64,
                loss=1.0 - 0.01 * t + 0.02 * rng.standard_normal(N),
                rollbacks=rng.uniform(0, 0.6, N) * (1 + 2 * crisis),
                anomalies=rng.uniform(0, 2, N) * (1 + 2 * crisis),
                nonfinite=rng.uniform(0, 0.3, N) * crisis,
                lstm_health=rng.uniform(2, 8, N) + 5 * crisis,
                growth_ratio=rng.uniform(1, 6, N),
                churn=rng.uniform(0, 8, N),
                alpha_shock=rng.uniform(0, 0.2, N),
                active_seeds=rng.uniform(0, 8, N),
                fossilised_seeds=rng.uniform(0, 8, N),
                boundary=rng.uniform(size=N) > 0.5,
                valid=rng.uniform(size=N) > 0.1,
            )
        )
    return Telemetry.stack(windows)


TEL = scripted()


def window(t):
    return jax.tree.map(lambda x: x[t], TEL)


def stack(decisions):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *decisions)


def test_vmap_over_params_matches_each_config_alone():
    configs = [
        NarsetParams(),
        NarsetParams(alpha=3.0, beta=0.7, pool=1.2),
        NarsetParams(theta_enter=0.3, theta_exit=0.1, k_enter=1.0, k_exit=2.0),
        NarsetParams(rate_anomalies=0.9, gain_T_crisis=2.0, tau_lysis=0.3),
    ]
    stacked = stack_params(configs)
    batched_step = jax.jit(jax.vmap(narset_step, in_axes=(0, 0, None)))
    states = jax.tree.map(lambda x: jnp.stack([x] * len(configs)), init_state(N, jnp.float64))
    batched = []
    for t in range(T):
        states, d = batched_step(stacked, states, window(t))
        batched.append(d)
    batched = stack(batched)  # [T, K, N]
    for k, p in enumerate(configs):
        ctl, state, alone = Narset(p), init_state(N, jnp.float64), []
        for t in range(T):
            state, d = ctl.step(state, window(t))
            alone.append(d)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, k=k: x[:, k], batched), stack(alone), rtol=1e-12, atol=1e-12
        )
    # The configs really differ.
    assert len({float(x) for x in batched.x_T[-1, :, 0]}) == len(configs)


def test_rollout_matches_step_by_step():
    p = NarsetParams(pool=1.2)
    state = init_state(N, jnp.float64)
    end, decisions = Narset(p).rollout(state, TEL)
    steps = []
    for t in range(T):
        state, d = Narset(p).step(state, window(t))
        steps.append(d)
    chex.assert_trees_all_close(decisions, stack(steps), rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(end, state, rtol=1e-12, atol=1e-12)
    assert decisions.x_T.shape == (T, N)
