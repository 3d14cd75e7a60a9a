"""The sharded rollout on the neural ecology, whose state puts the regions first
(``[N, ...]`` leaves, ``Neural.region_axis == 0``): its state is split along axis 0, its
params (the dataset) replicated, and a run over 2 of the 4 host devices (conftest) equals
the single-device one. ``N = 3`` is not a multiple of 2: the per-region path pads to 4.

Tiny sizes: the neural ecology trains real networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sims
from narset_jax.params import NarsetParams
from narset_jax.sharding import AXIS, region_mesh
from sims.ecologies.neural import Neural, load_neural_scenario
from sims.sharding import rollout_runner, sharded_rollout

ECO = Neural(hidden=16, n_slots=4, steps=4, batch=16)
N, T = 3, 3
KEY = jax.random.key(5)


@pytest.fixture(scope="module")
def scenario():
    return load_neural_scenario("crisis", num_samples=1000, n_val=128)


@pytest.fixture(scope="module")
def runs(scenario):
    p = NarsetParams()
    one = sims.rollout(p, scenario, KEY, N, T, ecology=ECO, record=True, dtype=jnp.float32)
    mesh = region_mesh(jax.devices()[:2])
    two = sharded_rollout(p, scenario, KEY, N, T, mesh=mesh, ecology=ECO, record=True,
                          dtype=jnp.float32)
    return one, two


def test_neural_is_shardable_with_regions_first():
    assert Neural.shardable and Neural.region_axis == 0
    assert sims.ecologies.Ecology.region_axis == -1


def test_state_sharded_along_axis_0_and_dataset_replicated(scenario):
    runner = rollout_runner(NarsetParams(), N, region_mesh(jax.devices()[:2]), ecology=ECO,
                            dtype=jnp.float32)
    assert runner.path == "shard_map" and runner.n_padded == 4
    carry = runner.init(NarsetParams(), scenario, KEY)
    for x in jax.tree.leaves(carry.sim):
        assert x.shape[0] == 4 and x.sharding.spec[0] == AXIS, x.shape
    for x in jax.tree.leaves((carry.ctl, carry.telemetry, carry.acc)):
        if x.ndim:
            assert x.shape[-1] == 4 and x.sharding.spec[-1] == AXIS
    specs = jax.tree.leaves(runner._specs(carry, 4).sim, is_leaf=lambda s: isinstance(s, P))
    assert specs and all(s == P(AXIS) for s in specs)
    # to_host drops the padding region along each leaf's region axis; from_host puts it back.
    host = runner.to_host(carry)
    assert all(np.shape(x)[0] == N for x in jax.tree.leaves(host.sim))
    assert host.telemetry.loss.shape == (N,)
    back = runner.from_host(host)
    for x, y in zip(jax.tree.leaves(back.sim), jax.tree.leaves(carry.sim), strict=True):
        assert x.shape == y.shape and x.sharding.spec[0] == AXIS
        np.testing.assert_array_equal(np.asarray(x)[:N], np.asarray(y)[:N])


def test_sharded_neural_rollout_equals_one_device(runs):
    one, two = runs
    assert jax.tree.structure(one) == jax.tree.structure(two)
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert one.metrics.to_dict() == two.metrics.to_dict()
