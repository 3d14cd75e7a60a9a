"""The sparse projection (``project_budget(..., sparse=...)``, ``budget.project_sparse``):
only the regions whose target is infeasible are gathered, projected and scattered back,
with the dense projection as the fallback when more bind. Every region's result must be the
dense path's bit for bit: alone, under ``vmap`` over the pool, in its gradients, and inside
the sharded closed loop on 1 and 4 devices (where each device's block takes its own
path, sparse or dense, window by window)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import narset_jax.budget as budget
import sims
from narset_jax.budget import project_budget
from narset_jax.params import NarsetParams
from narset_jax.sharding import region_mesh
from sims.sharding import ShardedRollout

N = 2048


def _targets(dtype, seed=0):
    """Mostly feasible targets (as in a steady mesh), plus binding ones, targets within an
    ulp of the budget line, non-finite and huge ones."""
    r = np.random.default_rng(seed)
    t_T = r.uniform(0, 0.7, N).astype(dtype)
    t_E = r.uniform(0, 0.7, N).astype(dtype)
    k = 120
    t_T[:k] = r.uniform(0, 3, k)
    t_E[:k] = r.uniform(0, 3, k)
    t_E[k:2 * k] = (1.5 - t_T[k:2 * k]) + r.choice([-2, -1, 0, 1, 2], k) * np.finfo(dtype).eps
    t_T[2 * k:2 * k + 4] = np.nan
    t_E[2 * k + 4:2 * k + 8] = np.inf
    t_T[2 * k + 8:2 * k + 12] = 1e9
    t_E[2 * k + 12:2 * k + 16] = -3.0
    return t_T, t_E


def _equal(a, b):
    for name, x, y in zip(a._fields, a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


@pytest.mark.parametrize(("dtype", "cost"), [(np.float32, "seed"), (np.float64, "convex")])
def test_sparse_is_the_dense_projection_bit_for_bit(dtype, cost):
    t_T, t_E = _targets(dtype)
    dense = jax.jit(lambda a, b: project_budget(a, b, cost=cost, sparse=None))(t_T, t_E)
    n_bind = int(np.sum(np.asarray(dense.price) > 0))
    assert 100 < n_bind < 400  # the buffers below both overflow and fit
    # 64: more bind, the dense fallback runs; 512: the gathered buffer. Separate programs
    # would be a stronger check; one program keeps the suite's compile count down.
    both = jax.jit(lambda a, b: [project_budget(a, b, cost=cost, sparse=c) for c in (64, 512)])
    for got in both(t_T, t_E):
        _equal(got, dense)


def test_sparse_under_vmap_and_in_tangents():
    t_T, t_E = _targets(np.float64, seed=1)
    pools = jnp.asarray([0.6, 1.5, 2.6])

    def grid(sparse):
        return jax.jit(jax.vmap(lambda p, a, b: project_budget(a, b, pool=p, sparse=sparse),
                                in_axes=(0, None, None)))(pools, t_T, t_E)

    # vmap over the pool: a batched call runs the dense path (a cond with a batched
    # predicate would become a select running both).
    _equal(grid(512), grid(None))
    # Gradients (through the dense path's tangents, whichever path gave the values).
    grad = lambda sparse: jax.jit(jax.grad(  # noqa: E731
        lambda a, b: project_budget(a, b, sparse=sparse).spent.sum()))(t_T, t_E)
    np.testing.assert_array_equal(np.asarray(grad(512)), np.asarray(grad(None)))


def test_first_indices_are_nonzeros():
    r = np.random.default_rng(2)
    first = jax.jit(budget._first_indices, static_argnums=1)  # eager dispatch is slow
    for n, size, share in [(1000, 125, 0.03), (1000, 125, 0.5), (7, 7, 1.0), (5, 2, 0.0)]:
        mask = jnp.asarray(r.uniform(size=n) < share)
        want = jnp.nonzero(mask, size=size, fill_value=n)[0]
        np.testing.assert_array_equal(np.asarray(first(mask, size)),
                                      np.asarray(want))


def test_sparse_auto_and_bad_values(monkeypatch):
    t_T, t_E = _targets(np.float32)
    cap = budget._sparse_capacity
    args = (jnp.zeros(()),) * 4
    assert cap("auto", jnp.zeros(2048), *args) == 2048 // budget._SPARSE_SHARE
    assert cap("auto", jnp.zeros(budget._SPARSE_MIN - 1), *args) is None
    assert cap("auto", jnp.zeros((2, 2048)), *args) is None  # not [N]
    assert cap("auto", jnp.zeros(2048), jnp.zeros(2048), *args[1:]) is None  # per-region B
    assert cap(None, jnp.zeros(2048), *args) is None
    with pytest.raises(ValueError, match="sparse"):
        project_budget(t_T, t_E, sparse=0)


def test_closed_loop_bitwise_across_device_counts_and_paths(monkeypatch):
    """Sharded rollouts whose per-device blocks take the sparse path in some windows and
    the dense fallback in others equal the all-dense run bit for bit, on 1 and 4 devices
    (float32, N = 1002, padded on 4; buffers of half a block)."""
    n, steps = 1002, 3
    sc = sims.load_scenario("crisis")
    params = NarsetParams(pool=1.2, beta=0.8)  # binds in none, then most, of the regions

    def run(devices, sparse):
        if sparse:
            # Small blocks take the sparse path, with a buffer small enough to overflow.
            monkeypatch.setattr(budget, "_SPARSE_MIN", 16)
            monkeypatch.setattr(budget, "_SPARSE_SHARE", 2)
        else:
            monkeypatch.setattr(budget, "_SPARSE_MIN", 1 << 40)
        runner = ShardedRollout(params, n, region_mesh(jax.devices()[:devices]), record=True,
                                dtype=jnp.float32)
        carry, records = runner.chunk(params, sc, runner.init(params, sc, jax.random.key(5)),
                                      steps)
        return runner, jax.tree.leaves((runner.unpad(carry), runner.unpad(records))), records

    _, dense, records = run(1, False)
    # The run mixes both paths: in some windows more regions bind than a buffer holds.
    per_window = (np.asarray(records[0].price) > 0).sum(axis=1)
    assert per_window.min() <= n // 8 and per_window.max() > n // 2
    for devices in (1, 4):
        _, got, _ = run(devices, True)
        assert len(got) == len(dense)
        for x, y in zip(got, dense):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
