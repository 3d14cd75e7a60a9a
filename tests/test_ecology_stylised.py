"""The stylised ecology (``sims.init``, ``sims.observe``, ``sims.sim_step``,
``sims.sim_transition``, and its outcome through ``sims.STYLISED``): its starting state, its
invariants, its rules (authority tiers, the governor, spoofers, dropouts), what it reports
for the metrics, and its determinism by key."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims

N = 8
F64 = jnp.float64
KEY = jax.random.key(3)
# Metadata blanked, so that every scenario below shares one compiled transition.
SC = sims.load_scenario("crisis").without_metadata()
transition = jax.jit(sims.sim_transition, static_argnames="relax")


def action(x_T, x_E, tier_T, tier_E, dtype=F64):
    def full(v):
        return jnp.broadcast_to(jnp.asarray(v, dtype), (N,))

    return sims.Action(x_T=full(x_T), x_E=full(x_E), tier_T=full(tier_T), tier_E=full(tier_E))


def run(scenario, act, T, key=KEY, relax="hard"):
    """States, telemetry and events of T windows under a fixed action."""
    state = sims.init(key, N, scenario, F64)
    out = []
    for t in range(T):
        state, tel, ev = transition(scenario, state, act, t, relax=relax)
        out.append((state, tel, ev))
    return out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_starting_state(dtype):
    s = sims.init(KEY, N, SC, dtype)
    assert isinstance(s, sims.SimState) and s.n_regions == N
    for leaf in jax.tree.leaves(s):
        assert leaf.shape == (N,)
    assert s.health.dtype == dtype and s.lr.dtype == dtype
    assert s.region.dtype == jnp.int32 and s.k0.dtype == jnp.uint32
    assert s.outage.dtype == jnp.bool_
    np.testing.assert_array_equal(s.region, np.arange(N))
    h = np.asarray(s.health)
    assert np.all((h >= 0.05) & (h <= 1))
    np.testing.assert_array_equal(s.active, 2.0)
    np.testing.assert_array_equal(s.fossil, 4.0)
    np.testing.assert_array_equal(s.loss, s.loss0)
    for name in ("stress", "panic", "prev_x_T", "prev_x_E"):
        np.testing.assert_array_equal(getattr(s, name), 0, err_msg=name)
    for name in ("outage", "burst", "spiked"):
        assert not np.asarray(getattr(s, name)).any(), name
    # Heterogeneous: every region draws its own traits.
    assert len(np.unique(np.asarray(s.lr))) == N


def test_init_is_determined_by_key_and_region_id():
    a, b = sims.init(KEY, N, SC, F64), sims.init(KEY, N, SC, F64)
    chex.assert_trees_all_equal(a, b)
    other = sims.init(jax.random.key(4), N, SC, F64)
    assert not np.any(np.asarray(other.lr) == np.asarray(a.lr))
    # A region's traits depend on its id only, not on which regions are simulated with it.
    some = sims.init(KEY, 2, SC, F64, region_ids=jnp.array([5, 2]))
    chex.assert_trees_all_equal(some, jax.tree.map(lambda x: x[jnp.array([5, 2])], a))


def test_init_rejects_bad_sizes_dtypes_and_ids():
    for n in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="n_regions"):
            sims.init(KEY, n, SC)
    for dtype in (jnp.int32, jnp.float16):
        with pytest.raises(ValueError, match="dtype"):
            sims.init(KEY, N, SC, dtype)
    with pytest.raises(ValueError, match="region_ids"):
        sims.init(KEY, N, SC, region_ids=jnp.arange(N + 1))


def test_observe_is_the_noise_free_state():
    s = sims.init(KEY, N, SC, F64)
    tel = sims.observe(SC, s)
    assert bool(tel.valid.all()) and bool(tel.boundary.all())
    for name in ("rollbacks", "anomalies", "nonfinite", "churn", "alpha_shock"):
        np.testing.assert_array_equal(getattr(tel, name), 0, err_msg=name)
    np.testing.assert_allclose(tel.loss, s.scale * s.loss, rtol=1e-15)
    np.testing.assert_allclose(tel.growth_ratio, 1 + s.cap + s.bloat, rtol=1e-15)
    lstm = float(SC.lstm_base) + float(SC.lstm_gain) * (1 - np.asarray(s.health)) ** 2
    np.testing.assert_allclose(tel.lstm_health, lstm, rtol=1e-14)
    np.testing.assert_array_equal(tel.active_seeds, s.active)
    np.testing.assert_array_equal(tel.fossilised_seeds, s.fossil)


def test_invariants_under_random_actions():
    rng = np.random.default_rng(0)
    state = sims.init(KEY, N, SC, F64)
    safe = float(SC.health_safe)
    for t in range(25):
        act = sims.Action(
            x_T=jnp.asarray(rng.uniform(0, 2.5, N)),
            x_E=jnp.asarray(rng.uniform(0, 2.5, N)),
            tier_T=jnp.asarray(rng.integers(0, 3, N), F64),
            tier_E=jnp.asarray(rng.integers(0, 3, N), F64),
        )
        new, tel, ev = transition(SC, state, act, t, relax="hard")
        h = np.asarray(new.health)
        assert np.all((h >= 0) & (h <= 1)), t
        assert np.all(np.asarray(new.fossil) >= np.asarray(state.fossil)), t
        assert np.all(np.asarray(new.cap) >= np.asarray(state.cap)), t
        np.testing.assert_array_equal(new.prev_x_T, act.x_T)
        np.testing.assert_array_equal(new.prev_x_E, act.x_E)
        # Lysis is Emrakul's irreversible authority; unsafe lysis needs an unstable region.
        np.testing.assert_array_equal(ev.lysis, np.clip(np.asarray(act.tier_E) - 1, 0, 1))
        unsafe = np.asarray(ev.unsafe) > 0
        assert np.all(np.asarray(ev.lysis)[unsafe] == 1)
        assert np.all(np.asarray(state.health)[unsafe] < safe)
        for name in ("panic", "rollback"):
            assert set(np.unique(np.asarray(getattr(ev, name)))) <= {0.0, 1.0}, name
        for name in ("rollbacks", "anomalies", "nonfinite", "churn", "alpha_shock"):
            assert np.all(np.asarray(getattr(tel, name)) >= 0), name
        np.testing.assert_allclose(tel.growth_ratio, 1 + new.cap + new.bloat, rtol=1e-15)
        np.testing.assert_array_equal(ev.health, new.health)
        state = new


def test_a_run_is_determined_by_its_key():
    act = action(0.8, 0.6, 1.0, 2.0)
    a, b = run(SC, act, 6), run(SC, act, 6)
    chex.assert_trees_all_equal(a, b)
    c = run(SC, act, 6, key=jax.random.key(99))
    assert not np.array_equal(np.asarray(a[-1][0].health), np.asarray(c[-1][0].health))
    # sim_step is sim_transition without the events.
    s0 = sims.init(KEY, N, SC, F64)
    new, tel = sims.sim_step(SC, s0, act, 0)
    chex.assert_trees_all_equal((new, tel), a[0][:2])


def test_lysis_compacts_bloat_only_with_irreversible_authority():
    s0 = sims.init(KEY, N, SC, F64)
    sedate, _, ev1 = transition(SC, s0, action(0.0, 1.0, 0.0, 1.0), 0, relax="hard")
    lyse, _, ev2 = transition(SC, s0, action(0.0, 1.0, 0.0, 2.0), 0, relax="hard")
    np.testing.assert_array_equal(ev1.lysis, 0)
    np.testing.assert_array_equal(ev2.lysis, 1)
    np.testing.assert_array_equal(sedate.bloat, s0.bloat)
    rate = float(SC.lysis_rate)
    np.testing.assert_allclose(lyse.bloat, np.asarray(s0.bloat) * (1 - rate), rtol=1e-14)


def test_fossilisation_needs_tamiyos_irreversible_authority():
    s0 = sims.init(KEY, N, SC, F64)
    grow, _, _ = transition(SC, s0, action(1.0, 0.0, 1.0, 0.0), 0, relax="hard")
    foss, _, _ = transition(SC, s0, action(1.0, 0.0, 2.0, 0.0), 0, relax="hard")
    np.testing.assert_array_equal(grow.fossil, s0.fossil)
    np.testing.assert_array_equal(grow.cap, s0.cap)
    assert np.all(np.asarray(grow.active) > np.asarray(s0.active))  # germination
    assert np.all(np.asarray(foss.fossil) > np.asarray(s0.fossil))
    assert np.all(np.asarray(foss.cap) > np.asarray(s0.cap))


def test_three_consecutive_panics_roll_back():
    sc = SC.replace(panic_base=1.0, spoofer_fraction=0.0)
    out = run(sc, action(0.5, 0.5, 1.0, 1.0), 9)
    panic = np.array([np.asarray(ev.panic) for _, _, ev in out])
    rollback = np.array([np.asarray(ev.rollback) for _, _, ev in out])
    count = np.array([np.asarray(s.panic) for s, _, _ in out])
    observed = np.array([np.asarray(tel.rollbacks) for _, tel, _ in out])
    boundary = np.array([np.asarray(tel.boundary) for _, tel, _ in out])
    assert np.all(panic == 1)
    np.testing.assert_array_equal(rollback, np.array([0, 0, 1] * 3)[:, None] * np.ones(N))
    np.testing.assert_array_equal(count, np.array([1, 2, 0] * 3)[:, None] * np.ones(N))
    np.testing.assert_array_equal(observed, rollback)
    assert not boundary[count > 0].any()  # no safe boundary in the middle of a panic run


def test_spoofers_fake_one_window_spikes_never_two_in_a_row():
    act = action(0.5, 0.5, 1.0, 1.0)
    honest = run(SC.replace(spoofer_fraction=0.0), act, 6)
    assert not any(np.asarray(ev.spike).any() or np.asarray(ev.spoofer).any()
                   for _, _, ev in honest)
    sc = SC.replace(spoofer_fraction=1.0, spoof_rate=1.0)
    out = run(sc, act, 6)
    spike = np.array([np.asarray(ev.spike) for _, _, ev in out])
    np.testing.assert_array_equal(spike, np.array([1, 0] * 3, bool)[:, None] * np.ones(N, bool))
    lstm = np.array([np.asarray(tel.lstm_health) for _, tel, _ in out])
    assert np.all(lstm[spike] >= 12.0 * float(sc.spoof_size))


def test_missing_windows_and_nan_bursts():
    sc = SC.replace(dropout_rate=1.0, dropout_persist=0.0, nan_rate=1.0, nan_persist=0.0)
    out = run(sc, action(0.5, 0.5, 1.0, 1.0), 4)
    valid = np.array([np.asarray(tel.valid) for _, tel, _ in out])
    # A new outage always starts; with no persistence it lasts exactly one window.
    np.testing.assert_array_equal(valid, np.array([0, 1, 0, 1], bool)[:, None] * np.ones(N))
    tel0 = out[0][1]
    assert np.isnan(np.asarray(tel0.loss)).all() and np.isinf(np.asarray(tel0.lstm_health)).all()
    assert np.isfinite(np.asarray(out[1][1].loss)).all()


def test_relaxed_events():
    act = action(1.5, 0.8, 2.0, 2.0)
    hard = run(SC, act, 3, relax="hard")
    st = run(SC, act, 3, relax="straight_through")
    chex.assert_trees_all_equal(hard, st)
    soft = run(SC, act, 3, relax="soft")
    panic = np.array([np.asarray(ev.panic) for _, _, ev in soft])
    assert np.all((panic > 0) & (panic < 1))


def test_float32_stays_float32():
    s0 = sims.init(KEY, N, SC, jnp.float32)
    new, tel = sims.sim_step(SC, s0, action(0.5, 0.5, 1.0, 1.0, jnp.float32), 0)
    for leaf in jax.tree.leaves((new, tel)):
        assert leaf.dtype in (jnp.float32, jnp.int32, jnp.uint32, jnp.bool_), leaf.dtype


def test_outcome_reports_progress_growth_and_spoofers():
    sc = SC.replace(spoofer_fraction=0.5)
    s = sims.init(KEY, N, sc, F64)
    loss0 = np.asarray(s.loss0)
    # Region r closed r/N of its reducible loss (the floor is 1).
    closed = np.arange(N) / N
    s = eqx.tree_at(lambda s: s.loss, s, jnp.asarray(loss0 - closed * (loss0 - 1)))
    out = sims.STYLISED.outcome(sc, s)
    assert float(out.progress) == pytest.approx(closed.mean(), rel=1e-12)
    growth = np.mean(1 + np.asarray(s.cap) + np.asarray(s.bloat))
    assert float(out.growth_ratio) == pytest.approx(growth, rel=1e-14)
    np.testing.assert_array_equal(out.spoofer, np.asarray(s.spoof_u) < 0.5)
    assert 0 < int(np.sum(out.spoofer)) < N
