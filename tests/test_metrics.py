"""Run metrics and the objective (``sims/metrics.py``): the accumulators, each metric's
definition from the accumulators and the ecology's outcome, and the objective's weights."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from sims.metrics import METRIC_NAMES, ObjectiveWeights, init_accum, metrics_from, objective

N = 4
F64 = jnp.float64
PENALTIES = ("flap_rate", "budget_churn", "overdrive_fraction", "unsafe_lysis", "rollbacks",
             "spoofer_capture", "utilisation")


def accum(n, **sums):
    acc = init_accum(N, F64)
    acc = eqx.tree_at(lambda a: a.n, acc, jnp.asarray(n, jnp.int32))
    for name, value in sums.items():
        acc = eqx.tree_at(lambda a, name=name: getattr(a, name), acc, jnp.asarray(value, F64))
    return acc


def outcome(progress=0.5, growth_ratio=1.5, spoofer=(False,) * N):
    return sims.Outcome(progress=jnp.asarray(progress, F64),
                        growth_ratio=jnp.asarray(growth_ratio, F64),
                        spoofer=jnp.asarray(spoofer, bool))


def test_init_accum_is_zero():
    acc = init_accum(N, F64)
    assert acc.n.shape == () and acc.n.dtype == jnp.int32 and int(acc.n) == 0
    for name in acc.__dataclass_fields__:
        if name != "n":
            leaf = getattr(acc, name)
            assert leaf.shape == (N,) and leaf.dtype == F64, name
            np.testing.assert_array_equal(leaf, 0, err_msg=name)


def test_metric_names_are_the_metrics_fields_in_order():
    assert tuple(sims.Metrics.__dataclass_fields__) == METRIC_NAMES
    m = metrics_from(accum(1), outcome(), 1.0)
    assert tuple(m.to_dict()) == METRIC_NAMES


def test_each_metric_follows_its_definition():
    n = 50
    acc = accum(
        n,
        switches=[2.0, 0, 0, 2.0],
        churn=[1.0, 3.0, 0, 0],
        overdrive=[10.0, 0, 0, 30.0],
        unsafe=[1.0, 0, 0, 0],
        rollbacks=[0, 2.0, 0, 0],
        panics=[4.0, 4.0, 0, 0],
        lysis=[3.0, 1.0, 0, 0],
        spend=[30.0, 30.0, 15.0, 0.0],
        health=[40.0, 45.0, 50.0, 25.0],
        mode=[10.0, 0, 0, 30.0],
        x_T=[50.0, 25.0, 0, 0],
        x_E=[0, 25.0, 50.0, 0],
        missing=[0, 0, 10.0, 10.0],
    )
    m = metrics_from(acc, outcome(0.25, 1.75, [True, False, False, False]), 1.5)
    per100 = 100 / n
    expected = {
        "progress": 0.25,  # the ecology's to measure
        "flap_rate": 1.0 * per100,
        "budget_churn": 1.0 * per100,
        "overdrive_fraction": 10.0 / n,
        "unsafe_lysis": 0.25 * per100,
        "rollbacks": 0.5 * per100,
        "spoofer_capture": 30.0 / 75.0 - 0.25,
        "utilisation": 75.0 / (1.5 * n * N),
        "health": 40.0 / n,
        "repair_share": 10.0 / n,
        "mean_x_T": 18.75 / n,
        "mean_x_E": 18.75 / n,
        "lysis": 1.0 * per100,
        "panics": 2.0 * per100,
        "growth_ratio": 1.75,
        "missing": 5.0 / n,
    }
    got = m.to_dict()
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-15), name


def test_no_spoofers_no_capture_and_no_windows_no_division_by_zero():
    m = metrics_from(accum(10, spend=[5.0, 0, 0, 0]), outcome(), 1.0)
    assert float(m.spoofer_capture) == 0.0
    m = metrics_from(accum(0), outcome(spoofer=[True] * N), 1.0)
    for name, value in m.to_dict().items():
        assert np.isfinite(value), name
    # A fair share is no capture; all of it, the rest of the regions' share.
    spoofer = [True, False, False, True]
    m = metrics_from(accum(10, spend=[1.0, 1.0, 1.0, 1.0]), outcome(spoofer=spoofer), 1.0)
    assert float(m.spoofer_capture) == pytest.approx(0.0, abs=1e-15)
    m = metrics_from(accum(10, spend=[1.0, 0, 0, 3.0]), outcome(spoofer=spoofer), 1.0)
    assert float(m.spoofer_capture) == pytest.approx(0.5, rel=1e-15)


def test_objective_weights_each_metric_alone():
    zero = {k: 0.0 for k in METRIC_NAMES}
    w = ObjectiveWeights(**{k: float(i + 1) for i, k in enumerate(("progress", *PENALTIES))})
    for k in PENALTIES:
        assert float(objective({**zero, k: 1.0}, w)) == float(getattr(w, k)), k
    # Progress is a benefit: more progress, lower cost.
    assert float(objective({**zero, "progress": 1.0}, w)) == -1.0
    # Extras are reported, never scored.
    extras = {k: 5.0 for k in METRIC_NAMES if k not in ("progress", *PENALTIES)}
    assert float(objective({**zero, **extras}, w)) == 0.0


def test_objective_default_and_partial_weights():
    m = {k: 1.0 for k in METRIC_NAMES}
    d = sims.DEFAULT_WEIGHTS
    total = -float(d.progress) + sum(float(getattr(d, k)) for k in PENALTIES)
    assert float(objective(m)) == pytest.approx(total, rel=1e-15)
    # A mapping changes the named weights; the rest keep their defaults.
    partial = float(objective(m, {"flap_rate": 0.0, "progress": 1.0}))
    assert partial == pytest.approx(total - float(d.flap_rate) + float(d.progress) - 1.0)
    with pytest.raises(ValueError, match="unknown objective weight.*flap"):
        objective(m, {"flap": 1.0})
    assert ObjectiveWeights(**d.to_dict()).to_dict() == d.to_dict()


def test_objective_is_linear_batched_and_differentiable():
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.random(5)) for k in METRIC_NAMES}
    got = np.asarray(objective(batch))
    for i in range(5):
        one = {k: float(v[i]) for k, v in batch.items()}
        assert got[i] == pytest.approx(float(objective(one)), rel=1e-13)
    grad = jax.grad(lambda m: objective(m))({k: jnp.asarray(0.5, F64) for k in METRIC_NAMES})
    d = sims.DEFAULT_WEIGHTS
    assert float(grad["progress"]) == -float(d.progress)
    for k in PENALTIES:
        assert float(grad[k]) == float(getattr(d, k)), k
    # Weights are leaves too: vmap over them.
    ws = jax.vmap(lambda f: ObjectiveWeights(flap_rate=f))(jnp.array([0.0, 1.0, 2.0]))
    one = {k: jnp.asarray(1.0, F64) for k in METRIC_NAMES}
    costs = jax.vmap(lambda w: objective(one, w))(ws)
    np.testing.assert_allclose(np.diff(np.asarray(costs)), 1.0, rtol=1e-12)
