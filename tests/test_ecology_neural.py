"""The neural ecology: real training of MNIST-1D regions, Esper's seed lifecycle, the local
agents' rules under Narset's limits, the governor, and the rollout on it.

Tiny sizes (hidden 16, 10 steps of 32 per window, 1,000 samples) and few shapes: one
compile of ``init`` and ``step`` for ``N = 4``, one for ``N = 1``, two rollouts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.params import NarsetParams
from sims.ecologies.neural import Neural, load_neural_scenario
from sims.ecologies.neural import lifecycle as lc
from sims.ecologies.neural.governor import judge
from sims.ecologies.neural.scenario import NEURAL_SCENARIOS
from sims.ecologies.stylised import Action

ECO = Neural(hidden=16, n_slots=4, steps=10, batch=32)
N = 4
KEY = jax.random.key(0)
STEADY = load_neural_scenario("steady", num_samples=1000, n_val=128)
SC = ECO.prepare(STEADY)

_init = jax.jit(ECO.init, static_argnums=1)
_step = jax.jit(ECO.step)


def init(sc=SC, ids=(0, 1, 2, 3)):
    ids = jnp.asarray(ids, jnp.int32)
    return _init(KEY, ids.shape[0], sc, region_ids=ids)


def act(x_T=0.0, x_E=0.0, tier_T=0, tier_E=0, n=N):
    def f(v, d):
        return jnp.broadcast_to(jnp.asarray(v, d), (n,))

    return Action(f(x_T, jnp.float32), f(x_E, jnp.float32), f(tier_T, jnp.int32),
                  f(tier_E, jnp.int32))


def run(state, action, windows, sc=SC, t0=0):
    for t in range(t0, t0 + windows):
        state, tel, ev = _step(sc, state, action, jnp.int32(t))
    return state, tel, ev


# Capacity-limited hosts (2 of 16 hidden units live); regions 0, 1 are left alone, regions
# 2, 3 (the same ids, so the same data, init and draws) let Tamiyo grow with full authority.
NARROW = SC.replace(width_frac=jnp.asarray(2 / 16), plateau_windows=jnp.asarray(0.0),
                    blend_rate=jnp.asarray(0.5), hold_windows=jnp.asarray(1.0))
GROW = act(x_T=jnp.asarray([0.0, 0.0, 1.0, 1.0]), tier_T=jnp.asarray([0, 0, 2, 2]))


@pytest.fixture(scope="module")
def grown():
    state = init(NARROW, ids=(0, 1, 0, 1))
    return run(state, GROW, 24, NARROW)


def test_scenarios_load_and_record_the_dataset():
    for name in NEURAL_SCENARIOS:
        sc = load_neural_scenario(name, num_samples=1000, n_val=128)
        assert sc.name == name and len(sc.dataset_sha256) == 64
        args = dict(sc.dataset_args)
        assert args["num_samples"] == "1000" and args["mnist1d"].startswith("'0.0.2")
    again = load_neural_scenario("steady", num_samples=1000, n_val=128)
    assert again.dataset_sha256 == STEADY.dataset_sha256
    with pytest.raises(ValueError, match="unknown neural scenario key"):
        load_neural_scenario("steady", bogus=1.0)
    assert sims.get_ecology("neural") == Neural()


def test_a_region_learns_without_interference():
    state = init()
    acc0 = np.asarray(state.test_acc)
    state, tel, ev = run(state, act(), 20)
    acc = np.asarray(state.test_acc)
    assert np.all(acc0 < 0.2)
    assert acc.mean() > 0.3 and acc.min() > 0.2, acc  # chance is 0.1
    assert np.all(np.asarray(state.stage) == lc.DORMANT)  # no authority: no seeds
    assert np.all(np.isfinite(np.asarray(tel.loss))) and np.all(np.asarray(ev.rollback) == 0)


def test_a_grafted_fossilised_seed_raises_the_accuracy_reached(grown):
    state, tel, _ = grown
    stage = np.asarray(state.stage)
    assert np.all(stage[:2] == lc.DORMANT)
    assert np.all(np.sum(stage[2:] == lc.FOSSILIZED, -1) >= 1), stage
    acc = np.asarray(state.test_acc)
    assert acc[2:].min() > acc[:2].max() + 0.05, acc
    g = np.asarray(tel.growth_ratio)
    assert np.all(g[:2] == 1) and np.all(g[2:] > 1)
    assert np.all(np.asarray(tel.fossilised_seeds)[2:] >= 1)


def _lysis_scenario():
    # Emrakul lyses every probed fossilised seed (any gain is below a margin of 10).
    return NARROW.replace(lysis_margin=jnp.asarray(10.0))


def test_a_lysed_seed_is_gone_for_good(grown):
    state, tel0, _ = grown
    sc = _lysis_scenario()
    state = dataclasses.replace(state, boundary=jnp.ones((N,), bool))
    foss0 = np.asarray(state.stage) == lc.FOSSILIZED
    s1, tel, ev = _step(sc, state, act(x_E=4.0, tier_E=2), jnp.int32(30))
    lysed = foss0 & (np.asarray(s1.stage) == lc.PRUNED)
    assert lysed[2:].any() and not lysed[:2].any()
    assert np.asarray(ev.lysis)[2:].sum() >= 1
    assert np.all(np.asarray(tel.growth_ratio)[2:] < np.asarray(tel0.growth_ratio)[2:])
    # Parameters freed: every lysed slot's weights are zero, and stay zero through the
    # failure path (no authority to germinate again).
    s, _, _ = run(s1, act(), 5, sc, t0=31)
    stage = np.asarray(s.stage)
    kc = ECO.arch.n_conv
    for r, k in zip(*np.nonzero(lysed), strict=True):
        assert stage[r, k] == lc.DORMANT
        if k < kc:
            assert not np.any(np.asarray(s.net.P)[r, k]) and not np.any(np.asarray(s.net.Wc)[r, k])
        else:
            assert not np.any(np.asarray(s.net.B)[r, k - kc])


def test_no_lysis_off_a_boundary_or_without_authority(grown):
    state, _, _ = grown
    sc = _lysis_scenario()
    on = dataclasses.replace(state, boundary=jnp.ones((N,), bool))
    off = dataclasses.replace(state, boundary=jnp.zeros((N,), bool))
    for s0, a in ((off, act(x_E=4.0, tier_E=2)), (on, act(x_E=4.0, tier_E=1)),
                  (on, act(x_E=0.0, tier_E=0))):
        s1, _, ev = _step(sc, s0, a, jnp.int32(30))
        assert float(np.asarray(ev.lysis).sum()) == 0
        assert not np.any(np.asarray(s1.stage) == lc.PRUNED)


def test_sedation_is_reversible(grown):
    state, tel0, _ = grown
    acc0 = np.asarray(state.test_acc)
    sedate = NARROW.replace(sedate_margin=jnp.asarray(-10.0), wake_margin=jnp.asarray(10.0))
    wake = NARROW.replace(sedate_margin=jnp.asarray(10.0), wake_margin=jnp.asarray(-10.0))
    s1, tel1, _ = _step(sedate, state, act(x_E=4.0, tier_E=1), jnp.int32(30))
    sed = np.asarray(s1.sedated)
    assert sed[2:].any() and not sed[:2].any()
    foss = np.asarray(s1.stage) == lc.FOSSILIZED
    assert np.all(foss[sed])  # sedation keeps the stage and the parameters
    assert np.all(np.asarray(tel1.alpha_shock)[2:] > 0)
    assert np.all(np.asarray(s1.test_acc)[2:] < acc0[2:])  # the region is weaker without it
    s2, _, _ = _step(wake, s1, act(x_E=4.0, tier_E=1), jnp.int32(31))
    assert not np.asarray(s2.sedated).any()
    assert np.all(np.asarray(s2.stage)[sed] == lc.FOSSILIZED)
    # A sedated seed does not train: its parameters come back exactly as they were.
    for name in ("Wc", "P", "A", "B"):
        x, y = np.asarray(getattr(s1.net, name)), np.asarray(getattr(s2.net, name))
        kc = ECO.arch.n_conv
        idx = sed[:, :kc] if name in ("Wc", "P") else sed[:, kc:]
        np.testing.assert_array_equal(x[idx], y[idx])
    assert np.all(np.asarray(s2.test_acc)[2:] > np.asarray(s1.test_acc)[2:])


def test_a_step_size_spike_is_a_real_nan_and_a_rollback_restores_the_snapshot():
    state, _, _ = run(init(), act(), 3)
    spike = SC.replace(lr_spike_rate=jnp.asarray(1.0), lr_spike_mult=jnp.asarray(1e6))
    s1, tel, ev = _step(spike, state, act(), jnp.int32(3))
    assert np.all(np.asarray(ev.lr_spike))
    assert not np.any(np.isfinite(np.asarray(tel.loss)))
    assert np.all(np.asarray(tel.nonfinite) >= 1) and np.all(np.asarray(ev.rollback) == 1)
    assert np.all(np.asarray(tel.rollbacks) == 1)
    # The network is the last good snapshot: the state after window 2, exactly.
    for a, b in zip(jax.tree.leaves(s1.net), jax.tree.leaves(state.net), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(s1.test_acc), np.asarray(state.test_acc))
    # And the region trains on from there.
    s2, tel2, _ = _step(SC, s1, act(), jnp.int32(4))
    assert np.all(np.isfinite(np.asarray(tel2.loss)))


def test_governor_divergence_needs_history_and_three_panics():
    hist = jnp.full((20,), 1.0).at[0].set(1.2)
    v = judge(jnp.asarray(50.0), hist, jnp.int32(5), jnp.int32(0))
    assert not bool(v.panic)  # fewer than 10 samples
    count = jnp.int32(0)
    for i in range(3):
        v = judge(jnp.asarray(50.0), hist, jnp.int32(20), count)
        count = v.count
        assert bool(v.divergent) and bool(v.rollback) == (i == 2)
    v = judge(jnp.asarray(jnp.nan), hist, jnp.int32(0), jnp.int32(0))
    assert bool(v.rollback) and bool(v.nonfinite)


def test_vmapped_regions_equal_regions_run_one_at_a_time():
    a = act(x_T=1.0, x_E=1.0, tier_T=2, tier_E=2)
    sc = SC.replace(plateau_windows=jnp.asarray(0.0))
    batch, tel, _ = run(init(sc), a, 3, sc)
    for r in (0, 3):
        one, tel1, _ = run(init(sc, ids=(r,)), act(1.0, 1.0, 2, 2, n=1), 3, sc)
        for x, y in zip(jax.tree.leaves(batch), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(np.asarray(x)[r], np.asarray(y)[0], rtol=2e-5, atol=2e-5)


def test_rollout_runs_with_narset_and_a_baseline_bit_for_bit():
    sc = load_neural_scenario("crisis", num_samples=1000, n_val=128)
    p = NarsetParams()
    a = sims.rollout(p, sc, KEY, N, 5, ecology=ECO, record=True)
    b = sims.rollout(p, sc, KEY, N, 5, ecology=ECO, record=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert 0 < float(a.metrics.progress) < 1 and float(a.metrics.growth_ratio) >= 1
    base = sims.rollout(p, sc, KEY, N, 5, controller="static_split", ecology=ECO)
    assert np.isfinite(float(base.metrics.progress))
    with pytest.raises(NotImplementedError, match="hard hysteresis"):
        sims.rollout(p.replace(hysteresis="soft"), sc, KEY, N, 2, ecology=ECO)


def test_class_subset_regions_learn_only_their_classes():
    from sims.ecologies.neural.data import allowed_labels, class_index, sample_in_classes, view

    sub = SC.replace(class_subset=jnp.asarray(1.0), subset_size=jnp.asarray(3.0))
    full, part = init(), init(sub)
    sets = np.asarray(jax.vmap(lambda k: ECO._subset(sub, k))(part.rkey))
    assert np.all(sets.sum(-1) == 3) and len({tuple(s) for s in sets}) > 1
    assert np.all(np.asarray(ECO._subset(SC, full.rkey[0])))  # share 0: every class
    # Minibatches hold only the subset's samples; label-noise flips stay inside it.
    y = STEADY.data.y_train
    idx = sample_in_classes(jax.random.key(1), class_index(y), jnp.asarray(sets[0]), 256)
    assert np.all(sets[0][np.asarray(y)[np.asarray(idx)]])
    allowed = allowed_labels(jnp.asarray(sets[0]), part.perm[0])
    _, yn = view(STEADY.data.x_train[:256], y[:256], part.perm[0], 0, 0.0,
                 jax.random.key(2), 1.0, allowed)
    assert np.all(np.asarray(allowed)[np.asarray(yn)])
    # A 3-class region learns its task (chance 1/3), better than the 10-class one.
    full, _, _ = run(full, act(), 8)
    part, tel, _ = run(part, act(), 8, sub)
    acc, acc_full = np.asarray(part.test_acc), np.asarray(full.test_acc)
    assert acc.min() > 0.45 and np.all(acc > acc_full), (acc, acc_full)
    assert np.all(np.isfinite(np.asarray(tel.loss)))


def test_blocked_regions_equal_one_vmap():
    # Neural(block=2): a lax.map over blocks of two regions, each vmapped (N = 4: two
    # blocks); the same maths as one vmap over all four, to float tolerance.
    blocked = jax.jit(dataclasses.replace(ECO, block=2).step)
    a = act(x_T=1.0, x_E=1.0, tier_T=2, tier_E=2)
    s0 = init()
    one, tel1, ev1 = _step(SC, s0, a, jnp.int32(0))
    two, tel2, ev2 = blocked(SC, s0, a, jnp.int32(0))
    for x, y in zip(jax.tree.leaves((one, tel1, ev1)), jax.tree.leaves((two, tel2, ev2)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-5)
    assert dataclasses.replace(ECO, block=2).manifest_entries(STEADY)["ecology_settings"][
        "block"] == 2 and "block" not in ECO.manifest_entries(STEADY)["ecology_settings"]


def test_a_rollback_prunes_live_experimental_seeds_as_esper_does(grown):
    # Esper's execute_rollback restores the host and the fossils and prunes live seeds; a
    # restored experimental seed would replay the window that diverged, every window.
    sc = NARROW.replace(plateau_windows=jnp.asarray(0.0))
    state, _, _ = grown
    foss = np.asarray(state.stage) == lc.FOSSILIZED
    # Regions 0, 1 grew nothing so far; give them authority for two good windows.
    s1, _, ev1 = run(state, act(x_T=1.0, tier_T=2), 2, sc, t0=24)
    assert np.all(np.asarray(ev1.rollback) == 0)
    live = np.isin(np.asarray(s1.stage), (lc.GERMINATED, lc.TRAINING, lc.BLENDING, lc.HOLDING))
    assert live[:2].any(), np.asarray(s1.stage)
    spike = sc.replace(lr_spike_rate=jnp.asarray(1.0), lr_spike_mult=jnp.asarray(1e6))
    s2, tel2, ev2 = _step(spike, s1, act(), jnp.int32(26))
    assert np.all(np.asarray(ev2.rollback) == 1)
    stage = np.asarray(s2.stage)
    assert np.all(stage[live] == lc.PRUNED)
    assert np.all(stage[foss] == lc.FOSSILIZED)  # fossils are committed memory: kept
    assert np.all(np.asarray(tel2.active_seeds) == 0)
    kc = ECO.arch.n_conv
    for r, k in zip(*np.nonzero(live), strict=True):
        w = np.asarray(s2.net.P)[r, k] if k < kc else np.asarray(s2.net.B)[r, k - kc]
        assert not np.any(w)  # parameters freed
