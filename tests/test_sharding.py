"""Regions sharded over a mesh of the 4 host devices (conftest): same results as one device,
state that stays sharded across the scan, and no per-step gathers in the compiled HLO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sims
from narset_jax.params import NarsetParams
from narset_jax.sharding import (
    AXIS,
    collectives,
    padded_size,
    region_mesh,
    region_specs,
)
from sims.sharding import rollout_runner, sharded_rollout

# Per-region runs use N = 1002, not a multiple of 4: the per-region path pads to 1004 and
# drops 2. The global pool cannot pad (extra regions would spend the pool), so its runs use
# a multiple of 4 (XLA would handle an uneven split, but the result could not stay sharded).
N, N_GLOBAL, T = 1002, 1000, 6
KEY = jax.random.key(3)


@pytest.fixture(scope="module")
def crisis():
    return sims.load_scenario("crisis")


class Run:
    """A sharded run, kept in pieces: runner, padded carries, unpadded results.

    ``one_call``: the result comes from ``sharded_rollout`` itself (its donated chunk);
    otherwise from the runner's init and (undonated) chunk, keeping both carries.
    """

    def __init__(self, params, scenario, devices, n=N, dtype=jnp.float64, one_call=False):
        self.params, self.scenario = params, scenario
        mesh = region_mesh(jax.devices()[:devices])
        # The runner cache of sharded_rollout, so one-call runs reuse its compilations.
        self.runner = rollout_runner(params, n, mesh, record=True, dtype=dtype)
        self.carry0 = self.runner.init(params, scenario, KEY)
        if one_call:
            res = sharded_rollout(params, scenario, KEY, n, T, mesh=mesh, dtype=dtype,
                                  record=True)
            self.carry = self.final = res.final
            self.records = (res.decisions, res.telemetry, res.events)
            self.metrics = res.metrics.to_dict()
            return
        self.carry, records = self.runner.chunk(params, scenario, self.carry0, T)
        self.final = self.runner.unpad(self.carry)
        self.records = self.runner.unpad(records)
        self.metrics = self.runner.metrics(params, scenario, self.carry).to_dict()

    def leaves(self):
        return jax.tree.leaves((self.final, self.records))


@pytest.fixture(scope="module")
def region_runs(crisis):
    params = NarsetParams()
    return {d: Run(params, crisis, d) for d in (1, 4)}


@pytest.fixture(scope="module")
def global_runs(crisis):
    params = NarsetParams(budget="global", pool=0.6, beta=0.8)  # a pool that binds
    return {d: Run(params, crisis, d, n=N_GLOBAL, one_call=d == 4) for d in (1, 4)}


def test_mesh_specs_and_padding():
    mesh = region_mesh()
    assert mesh.axis_names == (AXIS,) and mesh.devices.size == 4
    tree = {"a": jnp.zeros(8), "b": jnp.zeros((3, 8)), "s": jnp.zeros(())}
    assert region_specs(tree, 8) == {"a": P(AXIS), "b": P(None, AXIS), "s": P()}
    assert padded_size(1001, 4) == 1004 and padded_size(1000, 4) == 1000


def test_per_region_pool_is_bitwise_across_device_counts(region_runs):
    one, four = region_runs[1], region_runs[4]
    assert four.runner.path == "shard_map" and four.runner.n_padded == 1004
    la, lb = one.leaves(), four.leaves()
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert one.metrics == four.metrics
    assert one.records[0].x_T.shape == (T, N)


def test_state_stays_sharded_across_the_scan(region_runs, global_runs):
    for run in (region_runs[4], global_runs[4]):
        for carry in (run.carry0, run.carry):
            for leaf in jax.tree.leaves(carry):
                assert leaf.sharding.spec == (P(AXIS) if leaf.ndim else P())


def test_global_pool_matches_single_device_within_1e6(global_runs):
    one, four = global_runs[1], global_runs[4]
    assert four.runner.path == "gspmd"
    for x, y in zip(one.leaves(), four.leaves()):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
        else:
            assert (x != y).mean() < 1e-3  # a flag may flip at an exact rounding tie
    for k in one.metrics:
        assert abs(one.metrics[k] - four.metrics[k]) <= 1e-6, k
    # One price, shared by every region, and positive: the pool binds.
    price = np.asarray(four.records[0].price)
    assert np.all(price == price[:, :1]) and price.max() > 0


def test_matches_sims_rollout(crisis, region_runs):
    """Against the unsharded ``sims.rollout``, a different XLA program: equal up to where
    XLA contracts ``a * b + c`` into an FMA in each (docs/scaling.md, "Exactness")."""
    ref = sims.rollout(NarsetParams(), crisis, KEY, N, T, dtype=jnp.float64, record=True)
    four = region_runs[4]
    mine = jax.tree.leaves((four.final, four.records))
    theirs = jax.tree.leaves((ref.final, (ref.decisions, ref.telemetry, ref.events)))
    for x, y in zip(theirs, mine):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)
    for k, v in ref.metrics.to_dict().items():
        assert v == pytest.approx(four.metrics[k], rel=1e-12, abs=1e-12), k


def test_in_place_metrics_close_to_exact(region_runs):
    four = region_runs[4]
    approx = four.runner.metrics(four.params, four.scenario, four.carry, exact=False).to_dict()
    for k, v in four.metrics.items():
        assert approx[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k


@pytest.mark.parametrize("budget", ["region", "global"])
def test_no_gather_of_region_state_inside_the_scan(region_runs, global_runs, budget):
    """The compiled scan body never gathers per-region state. Per-region pools: no
    collective at all in the loop. Global pool: only all-reduces (the multiplier's sums)."""
    run = (region_runs if budget == "region" else global_runs)[4]
    donate = budget == "global"  # the one-call run donates its carry
    low = run.runner.lower_chunk(run.params, run.scenario, run.carry0, T, donate=donate)
    hlo = low.compile().as_text()
    counts = collectives(hlo)
    loop = counts["in_loop"]
    assert loop["all-gather"] == loop["all-to-all"] == loop["collective-permute"] == 0
    assert loop["reduce-scatter"] == 0
    if budget == "region":
        assert counts["total"] == dict.fromkeys(counts["total"], 0)
    else:
        assert loop["all-reduce"] > 0  # the pool's cross-device reduction


def test_collectives_parser():
    text = """HloModule m

%body (p: f32[4]) -> f32[4] {
  %p = f32[4] parameter(0)
  %ag = f32[16] all-gather(%p), dimensions={0}
  ROOT %c = f32[4] call(%p), to_apply=%inner
}

%inner (q: f32[4]) -> f32[4] {
  %q = f32[4] parameter(0)
  ROOT %r = f32[4] all-reduce(%q), to_apply=%sum
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4] parameter(0)
  %w = f32[4] while(%x), condition=%cond, body=%body
  ROOT %s = f32[4] all-reduce(%w), to_apply=%sum
}
"""
    counts = collectives(text)
    assert counts["in_loop"]["all-gather"] == 1
    assert counts["in_loop"]["all-reduce"] == 1
    assert counts["total"]["all-reduce"] == 2


def test_sharded_rollout_checks_its_arguments(crisis):
    with pytest.raises(ValueError, match="n_steps"):
        sharded_rollout(NarsetParams(), crisis, KEY, 64, 0)
    with pytest.raises(ValueError, match="n_regions"):
        sharded_rollout(NarsetParams(), crisis, KEY, 0, 3)


def test_per_window_steps_match_simulate_loop(crisis, region_runs):
    """``controller`` + ``advance`` (what ``narset simulate`` runs per window), sharded over
    4 devices with padding, against the same two steps jitted on one device: bitwise."""
    from sims.baselines import controller_step
    from sims.rollout import advance, rollout_init

    run = region_runs[4]
    params, runner, carry = run.params, run.runner, run.carry0
    sc = crisis.without_metadata()
    init = jax.jit(rollout_init, static_argnames=("n_regions", "dtype"))
    ref = init(params, sc, KEY, N, dtype=jnp.float64)
    ctl_step = jax.jit(lambda p, s, tel: controller_step(p, "narset", s, tel))
    eco_step = jax.jit(advance)
    for _ in range(3):
        ctl, d = runner.controller_step(params, carry.ctl, carry.telemetry)
        assert d.x_T.sharding.spec == P(AXIS)
        carry, (d, _, _) = runner.advance(params, crisis, carry, ctl, d)
        ref_ctl, ref_d = ctl_step(params, ref.ctl, ref.telemetry)
        ref, _ = eco_step(params, sc, ref, ref_ctl, ref_d)
        for x, y in zip(jax.tree.leaves(runner.to_host(d)), jax.tree.leaves(ref_d)):
            np.testing.assert_array_equal(x, np.asarray(y))
    for x, y in zip(jax.tree.leaves(runner.to_host(carry)), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(x, np.asarray(y))
    m = runner.metrics(params, crisis, carry).to_dict()
    assert m == jax.jit(sims.rollout_metrics)(params, sc, ref).to_dict()
