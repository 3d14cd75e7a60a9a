"""vmap over params, and rollouts against the step (float64)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scripted_telemetry import N, T, scripted

from narset_jax.params import NarsetParams, stack_params
from narset_jax.step import Narset, init_state, narset_step

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
