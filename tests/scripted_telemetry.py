"""Scripted telemetry shared by the controller tests (not a test module)."""

import jax.numpy as jnp
import numpy as np

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
