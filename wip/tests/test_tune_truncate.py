"""Truncated backpropagation (with ``jax.checkpoint`` per window): the forward pass is the
untruncated one, and the gradient is finite and non-zero. A separate file so that its
compilation runs beside ``test_tune.py``'s under ``pytest -n 2 --dist loadfile``."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import sims
from narset_jax import tune
from narset_jax.params import NarsetParams

N, T, W = 8, 10, 5  # two gradient windows of 5 steps


@partial(jax.jit, static_argnames=("cfg",))
def _forward(raw, base, scenarios, keys, weights, temp, cfg):
    return tune.batch_loss(raw, base, scenarios, keys, weights, temp, cfg)


def test_truncated_gradient_keeps_the_forward_pass():
    base = NarsetParams(hysteresis="soft").astype(jnp.float64)
    raw = tune.from_params(base, jnp.float64)
    scenarios = tune.stack_scenarios([sims.load_scenario("crisis")]).astype(jnp.float64)
    keys = tune.batch_keys(tune.run_keys(1, tune.STREAM_TRAIN), 0, 1, 2)
    weights = jax.tree.map(lambda w: jnp.asarray(w, jnp.float64), sims.DEFAULT_WEIGHTS)
    one = jnp.asarray(1.0, jnp.float64)
    cfg_trunc = tune.TuneConfig(N, T, truncate=W, checkpoint=True, dtype="float64")
    cfg_full = tune.TuneConfig(N, T, checkpoint=False, dtype="float64")

    loss, obj, grad, gnorm = tune.loss_and_grad(
        raw, base, scenarios, keys, weights, one, cfg=cfg_trunc
    )
    full_loss, full_obj = _forward(raw, base, scenarios, keys, weights, one, cfg=cfg_full)
    np.testing.assert_allclose(np.asarray(obj), np.asarray(full_obj), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(loss), float(full_loss), rtol=1e-12)
    g = np.array([float(grad[n]) for n in tune.TUNED])
    assert np.all(np.isfinite(g)) and float(gnorm) > 0
    np.testing.assert_allclose(float(gnorm), np.linalg.norm(g), rtol=1e-12)
