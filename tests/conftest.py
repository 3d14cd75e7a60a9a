"""Test configuration.

* Four host CPU devices, so sharding is exercised on every run (must be set before JAX
  is imported anywhere).
* float64 enabled for the whole session: tests that check float32 behaviour pass float32
  arrays explicitly, which also checks that the library never silently promotes.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Hand out fresh, deterministic PRNG keys."""
    state = {"key": jax.random.key(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey
