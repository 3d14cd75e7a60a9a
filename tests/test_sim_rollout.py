"""Closed-loop rollouts: determinism, independence of batching and sharding, metrics,
baselines, vmap and gradients. Shapes are tiny: compiling is the cost."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import sims
from narset_jax.params import NarsetParams, stack_params

N, T = 24, 12
# Everything happens in a short run: waves, independent shocks, spoofers, dropout, NaN.
BUSY = sims.load_scenario("crisis").replace(
    name="busy",
    shock_rate=0.15,
    shock_corr=0.5,
    spoofer_fraction=0.3,
    spoof_rate=0.5,
    dropout_rate=0.1,
    dropout_persist=0.5,
    nan_rate=0.1,
    nan_persist=0.5,
    health0=0.5,
)
PARAMS = NarsetParams()
KEY = jax.random.key(7)


@pytest.fixture(scope="module")
def recorded():
    return sims.rollout(PARAMS, BUSY, KEY, N, T, record=True)


def np_tree(tree):
    return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(np_tree(a)), jax.tree.leaves(np_tree(b))):
        np.testing.assert_array_equal(x, y)


def test_deterministic_per_seed(recorded):
    again = sims.rollout(PARAMS, BUSY, KEY, N, T, record=True)
    assert_trees_equal(recorded.decisions, again.decisions)
    assert_trees_equal(recorded.telemetry, again.telemetry)
    other = sims.rollout(PARAMS, BUSY, jax.random.key(8), N, T, record=True)
    assert not np.array_equal(np.asarray(other.telemetry.loss), np.asarray(recorded.telemetry.loss))


def test_other_batches_of_region_ids_reproduce_shared_regions(recorded):
    # Same N (so the same compiled program), but a different batch: five of the recorded
    # regions, in another order, among regions that were never simulated before.
    keep = np.array([23, 0, 17, 5, 6])
    ids = np.concatenate([keep, np.arange(1000, 1000 + N - len(keep))])
    other = sims.rollout(PARAMS, BUSY, KEY, N, T, record=True, region_ids=jnp.asarray(ids))
    mine = lambda tree: jax.tree.map(lambda x: np.asarray(x)[..., keep], tree)  # noqa: E731
    theirs = lambda tree: jax.tree.map(lambda x: np.asarray(x)[..., : len(keep)], tree)  # noqa: E731
    assert_trees_equal(mine(recorded.decisions), theirs(other.decisions))
    assert_trees_equal(mine(recorded.telemetry), theirs(other.telemetry))
    assert_trees_equal(mine(recorded.events), theirs(other.events))


def test_sharding_regions_changes_nothing(recorded):
    devices = np.array(jax.devices()[:4])
    if devices.size < 2:
        pytest.skip("needs several devices")
    mesh = Mesh(devices, ("regions",))
    ids = jax.device_put(jnp.arange(N, dtype=jnp.int32), NamedSharding(mesh, P("regions")))
    sharded = sims.rollout(PARAMS, BUSY, KEY, N, T, record=True, region_ids=ids)
    assert_trees_equal(recorded.decisions, sharded.decisions)
    assert_trees_equal(recorded.telemetry, sharded.telemetry)


def test_the_busy_scenario_exercises_every_mechanism(recorded):
    tel, ev = np_tree(recorded.telemetry), np_tree(recorded.events)
    assert np.isnan(tel.loss).any() and np.isinf(tel.lstm_health).any()  # NaN/Inf bursts
    assert (~tel.valid).any()  # missing windows
    assert ev.hit.any() and ev.spike.any() and ev.panic.any()
    # Spoofers fake one-window spikes: never two in a row, and only spoofers spike.
    assert not (ev.spike[1:] & ev.spike[:-1]).any()
    assert not (ev.spike & ~ev.spoofer).any()
    # The governor rolls back on the third consecutive panic only.
    rb = ev.rollback > 0.5
    pan = ev.panic > 0.5
    for t, r in zip(*np.nonzero(rb)):
        assert t >= 2 and pan[t, r] and pan[t - 1, r] and pan[t - 2, r]
    # The controller reads the previous window's telemetry.
    d = np_tree(recorded.decisions)
    np.testing.assert_array_equal(d.raw.churn[1:], tel.churn[:-1])
    np.testing.assert_array_equal(d.step, np.broadcast_to(np.arange(T)[:, None], (T, N)))


def test_metrics_match_the_records(recorded):
    d, ev = np_tree(recorded.decisions), np_tree(recorded.events)
    m = recorded.metrics
    per100 = 100 / T
    mode = np.concatenate([np.zeros((1, N)), d.mode_weight])
    np.testing.assert_allclose(m.flap_rate, np.abs(np.diff(mode, axis=0)).sum(0).mean() * per100,
                               rtol=1e-5)
    churn = sum(np.abs(np.diff(np.concatenate([np.zeros((1, N)), x]), axis=0)).sum(0)
                for x in (d.x_T, d.x_E))
    np.testing.assert_allclose(m.budget_churn, churn.mean() * per100, rtol=1e-5)
    np.testing.assert_allclose(m.overdrive_fraction, (d.overdrive_T | d.overdrive_E).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(m.rollbacks, ev.rollback.sum(0).mean() * per100, rtol=1e-5)
    np.testing.assert_allclose(m.unsafe_lysis, ev.unsafe.sum(0).mean() * per100, rtol=1e-5)
    np.testing.assert_allclose(m.utilisation, d.spent.mean() / float(PARAMS.pool), rtol=1e-5)
    spoof = ev.spoofer[0]
    share = d.spent[:, spoof].sum() / d.spent.sum()
    np.testing.assert_allclose(m.spoofer_capture, share - spoof.mean(), rtol=1e-4, atol=1e-7)
    # Unsafe lysis only happens with lysis authority.
    assert np.all(ev.unsafe <= ev.lysis + 1e-12)
    np.testing.assert_array_equal(ev.lysis > 0.5, d.tier_E == 2)


def test_chunks_continue_the_same_run(recorded):
    @jax.jit
    def chunked(params, scenario, key):
        carry = sims.rollout_init(params, scenario, key, N)
        carry, (d1, _, _) = sims.rollout_chunk(params, scenario, carry, T // 2, record=True)
        carry, (d2, _, _) = sims.rollout_chunk(params, scenario, carry, T // 2, record=True)
        x = jnp.concatenate([d1.x_T, d2.x_T])
        return x, sims.rollout_metrics(params, scenario, carry)

    x, m = chunked(PARAMS, BUSY.without_metadata(), KEY)
    # Another program: XLA may contract multiply-adds differently, so equal to rounding.
    np.testing.assert_allclose(x, np.asarray(recorded.decisions.x_T), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.progress, recorded.metrics.progress, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(m.flap_rate, recorded.metrics.flap_rate, rtol=1e-4)


def test_pipeline_baselines_are_params_changes():
    p = NarsetParams()
    assert sims.controller_params(p, "narset") is p
    q = sims.controller_params(p, "no_inertia")
    assert float(q.beta) == 1.0 and float(q.theta_enter) == float(p.theta_enter)
    q = sims.controller_params(p, "single_threshold")
    assert float(q.k_enter) == float(q.k_exit) == 1.0
    mid = 0.5 * (float(p.theta_enter) + float(p.theta_exit))
    assert float(q.theta_enter) == pytest.approx(mid)
    assert 0 < float(q.theta_enter) - float(q.theta_exit) < 1e-3


@pytest.mark.parametrize("controller", ["static_split", "always_overdrive", "single_threshold"])
def test_baselines_run_in_the_same_harness(controller):
    p = NarsetParams(budget="region")
    r = sims.rollout(p, BUSY, KEY, 8, 6, controller=controller, record=True)
    d = np_tree(r.decisions)
    assert np.all(np.isfinite(d.x_T)) and np.all(d.spent <= float(p.pool) * (1 + 1e-5))
    # Every baseline still logs the controller's smoothed signals and scores.
    assert np.all((d.stability > 0) & (d.stability <= 1))
    if controller == "static_split":
        np.testing.assert_allclose(d.x_T, 0.75, rtol=1e-6)
        np.testing.assert_allclose(d.x_E, 0.75, rtol=1e-6)
        assert not d.mode.any() and not r.metrics.flap_rate
    elif controller == "always_overdrive":
        np.testing.assert_allclose(d.x_T, 1.25, rtol=1e-6)
        np.testing.assert_allclose(d.x_E, 0.25, rtol=1e-6)
        assert d.overdrive_T.all() and float(r.metrics.overdrive_fraction) == 1.0
        assert not (d.tier_E == 2).any()  # x_E below tau_lysis: probe only
    else:
        # One threshold and no dwell: it switches on the first window past the midpoint.
        need, mode = d.need, d.mode
        q = sims.controller_params(p, controller)
        first = np.argmax(need >= float(q.theta_enter), axis=0)
        hit = (need >= float(q.theta_enter)).any(axis=0)
        assert np.all(mode[first[hit], np.nonzero(hit)[0]] == 1)
    assert np.isfinite(float(sims.objective(r.metrics)))


def test_unknown_controller_and_bad_sizes():
    with pytest.raises(ValueError, match="always_overdrive"):
        sims.rollout(PARAMS, BUSY, KEY, 4, 4, controller="panic")
    with pytest.raises(ValueError, match="n_regions"):
        sims.rollout(PARAMS, BUSY, KEY, 0, 4)
    with pytest.raises(ValueError, match="n_steps"):
        sims.rollout(PARAMS, BUSY, KEY, 4, -1)


def test_vmap_over_params_and_scenario_leaves(recorded):
    calm = BUSY.replace(noise=0.0, shock_rate=0.0, spoofer_fraction=0.0, dropout_rate=0.0,
                        nan_rate=0.0, health0=0.9)
    params = stack_params([PARAMS, NarsetParams(beta=0.7, theta_enter=0.3)])
    scenarios = jax.tree.map(lambda *xs: jnp.stack(xs),
                             BUSY.without_metadata(), calm.without_metadata())
    run = lambda p, sc: sims.rollout(p, sc, KEY, N, T).metrics  # noqa: E731
    batched = jax.vmap(run)(params, scenarios)
    assert batched.progress.shape == (2,)
    # Entry 0 is the recorded run (another program, so equal to rounding).
    for name in ("progress", "flap_rate", "budget_churn", "health", "utilisation"):
        np.testing.assert_allclose(getattr(batched, name)[0], getattr(recorded.metrics, name),
                                   rtol=1e-4, atol=1e-6)
    # No shocks, noise or spoofers: the calm mesh stays healthier and nobody spoofs.
    assert float(batched.health[1]) > float(batched.health[0])
    assert float(batched.spoofer_capture[1]) == 0.0


def test_gradients_reach_the_params():
    base = NarsetParams(hysteresis="soft")
    names = ("beta", "theta_enter", "gain_T_repair", "tau_lysis", "alpha")

    def loss(leaves):
        p = dataclasses.replace(base, **leaves)
        m = sims.rollout(p, BUSY, KEY, 8, 6, checkpoint=True).metrics
        return sims.objective(m)

    leaves = {k: getattr(base, k) for k in names}
    grads = jax.grad(loss)(leaves)
    g = np.array([float(grads[k]) for k in names])
    assert np.all(np.isfinite(g))
    assert np.count_nonzero(g) >= 3


def _conds(jaxpr):
    """Every ``cond`` equation in a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            found.append(eqn)
        for v in eqn.params.values():
            for j in v if isinstance(v, (tuple, list)) else [v]:
                inner = getattr(j, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    found += _conds(inner)
    return found


def test_relaxed_ecology_runs_behind_a_fusion_boundary(monkeypatch):
    """The differentiable rollout runs the ecology inside a ``lax.cond`` (so that XLA
    cannot fuse its rematerialised forward into every backward fusion); the hard rollout
    does not, and the boundary changes no value."""
    soft = NarsetParams(hysteresis="soft").astype(jnp.float64)
    carry = sims.rollout_init(soft, BUSY, KEY, 8, dtype=jnp.float64)
    chunk = lambda p, c: sims.rollout_chunk(p, BUSY, c, 3)[0]  # noqa: E731
    assert len(_conds(jax.make_jaxpr(chunk)(soft, carry).jaxpr)) == 1
    hard = NarsetParams().astype(jnp.float64)
    assert _conds(jax.make_jaxpr(chunk)(hard, carry).jaxpr) == []
    with_boundary = jax.jit(chunk)(soft, carry)
    rollout_module = importlib.import_module("sims.rollout")  # sims.rollout is the function
    monkeypatch.setattr(rollout_module, "_materialised", lambda fn, t, *ops: fn(*ops))
    inline = jax.jit(chunk)(soft, carry)
    for a, b in zip(jax.tree.leaves(with_boundary), jax.tree.leaves(inline)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_sim_step_alone_is_pure_and_elementwise():
    sc = BUSY
    state = sims.init(KEY, 6, sc, jnp.float64)
    act = sims.Action(
        x_T=jnp.array([0.0, 0.5, 1.0, 1.4, 0.3, 0.8]),
        x_E=jnp.array([1.0, 0.5, 0.2, 0.0, 0.6, 0.6]),
        tier_T=jnp.array([0, 1, 2, 2, 1, 2]),
        tier_E=jnp.array([2, 2, 0, 0, 2, 1]),
    )
    step = jax.jit(sims.sim_step)
    s1, tel1 = step(sc, state, act, 3)
    s2, tel2 = step(sc, state, act, 3)
    assert_trees_equal((s1, tel1), (s2, tel2))
    assert tel1.loss.dtype == jnp.float64 and tel1.valid.dtype == jnp.bool_
    # Elementwise: region 2 alone, with its id, gives the same row.
    one = sims.init(KEY, 1, sc, jnp.float64, region_ids=jnp.array([2]))
    a1 = jax.tree.map(lambda x: x[2:3], act)
    s3, tel3 = step(sc, one, a1, 3)
    assert_trees_equal(jax.tree.map(lambda x: x[2:3], tel1), tel3)
    # The window index keys the draws.
    _, tel4 = step(sc, state, act, 4)
    assert not np.array_equal(np.asarray(tel4.loss), np.asarray(tel1.loss), equal_nan=True)


def test_objective_weights():
    m = {k: 1.0 for k in sims.METRIC_NAMES}
    w = sims.DEFAULT_WEIGHTS
    expected = -float(w.progress) + sum(
        float(getattr(w, k)) for k in w.__dataclass_fields__ if k != "progress"
    )
    np.testing.assert_allclose(float(sims.objective(m)), expected)
    np.testing.assert_allclose(float(sims.objective(m, {"progress": 0.0})), expected + 10.0)
    with pytest.raises(ValueError, match="unknown objective weight"):
        sims.objective(m, {"progres": 1.0})
