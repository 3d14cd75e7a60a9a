"""The closed-loop layer's interfaces: a new controller and a new ecology are one class
each, and every generic driver (rollout, sharded rollout, phase grid) runs them unchanged.
Names resolve to objects outside ``jit``; unknown names fail with the valid ones listed."""

from __future__ import annotations

import importlib
import sys
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.params import NarsetParams
from narset_jax.sharding import region_mesh
from narset_jax.telemetry import Telemetry
from sims.sharding import sharded_rollout

N, T = 8, 6
KEY = jax.random.key(0)


class QuarterSplit(sims.FixedTargets):
    """A baseline written for this test: targets (pool / 4, pool / 4)."""

    name: ClassVar[str] = "quarter_split"

    def targets(self, params, like):
        q = 0.25 * params.pool.astype(like.dtype)
        return jnp.broadcast_to(q, like.shape), jnp.broadcast_to(q, like.shape)


class ToyState(eqx.Module):
    region: jax.Array
    loss: jax.Array
    health: jax.Array


class ToyEvents(NamedTuple):
    lysis: jax.Array
    unsafe: jax.Array
    panic: jax.Array
    rollback: jax.Array
    health: jax.Array


class Decay(eqx.Module):
    """Params of the toy ecology: how fast Tamiyo's intensity lowers the loss."""

    rate: jax.Array


def _per_region(tel: Telemetry, like) -> Telemetry:
    """Telemetry whose constant fields vary over regions like ``like`` (a sharded rollout
    runs the ecology under shard_map, where a broadcast constant is not per-region)."""
    zf = jnp.zeros_like(like)
    zb = zf.astype(bool)
    return jax.tree.map(lambda x: (x | zb) if x.dtype == bool else x + zf, tel)


class ToyEcology(sims.Ecology):
    """An ecology written for this test: each region's loss decays in proportion to the
    Tamiyo intensity it gets; region 0 always reports a rollback."""

    name: ClassVar[str] = "toy"

    def init(self, key, n_regions, params, *, dtype, region_ids=None):
        del key
        ids = jnp.arange(n_regions, dtype=jnp.int32) if region_ids is None else region_ids
        return ToyState(region=ids, loss=jnp.full((n_regions,), 2.0, dtype),
                        health=jnp.ones((n_regions,), dtype))

    def observe(self, params, state):
        return _per_region(Telemetry.calm(state.loss.shape[-1], state.loss.dtype, loss=state.loss),
                           state.loss)

    def step(self, params, state, action, t, *, relax="hard"):
        dtype = state.loss.dtype
        loss = state.loss * (1 - params.rate.astype(dtype) * action.x_T)
        rollback = (state.region == 0).astype(dtype)
        tel = _per_region(Telemetry.calm(loss.shape[-1], dtype, loss=loss, rollbacks=rollback),
                          loss)
        zero = jnp.zeros_like(loss)
        events = ToyEvents(lysis=zero, unsafe=zero, panic=rollback, rollback=rollback,
                           health=state.health)
        return ToyState(region=state.region, loss=loss, health=state.health), tel, events

    def outcome(self, params, state):
        return sims.Outcome(progress=jnp.mean(2.0 - state.loss),
                            growth_ratio=jnp.ones((), state.loss.dtype),
                            spoofer=jnp.zeros(state.loss.shape, bool))


def test_a_new_controller_is_one_class():
    sc = sims.load_scenario("crisis")
    p = NarsetParams()
    mine = sims.rollout(p, sc, KEY, N, T, controller=QuarterSplit(), record=True)
    half = sims.rollout(p, sc, KEY, N, T, controller="static_split", record=True)
    np.testing.assert_allclose(np.asarray(mine.decisions.target_T), 0.25 * 1.5)
    np.testing.assert_allclose(np.asarray(half.decisions.target_T), 0.5 * 1.5)
    assert float(mine.metrics.utilisation) < float(half.metrics.utilisation)
    # The same object runs sharded, bitwise as on one device (per-region budget).
    sh = sharded_rollout(p, sc, KEY, N, T, mesh=region_mesh(2), controller=QuarterSplit(),
                         record=True)
    np.testing.assert_array_equal(np.asarray(sh.decisions.x_T), np.asarray(mine.decisions.x_T))


def test_a_new_ecology_is_one_class():
    eco = ToyEcology()
    params = Decay(rate=jnp.asarray(0.1))
    p = NarsetParams()
    r = sims.rollout(p, params, KEY, N, T, ecology=eco, record=True)
    loss = np.asarray(r.telemetry.loss)
    assert loss.shape == (T, N)
    assert np.all(np.diff(loss, axis=0) <= 0) and loss[-1].max() < 2.0
    # Region 0 reports a rollback every window; the rollout counts them per 100 windows.
    assert float(r.metrics.rollbacks) == pytest.approx(100 / N)
    assert float(r.metrics.progress) == pytest.approx(float(np.mean(2.0 - loss[-1])), rel=1e-6)
    # Its params are traced: a faster decay gives more progress, under vmap.
    rates = Decay(rate=jnp.asarray([0.05, 0.2]))
    prog = jax.vmap(lambda q: sims.rollout(p, q, KEY, N, T, ecology=eco).metrics.progress)(rates)
    assert float(prog[1]) > float(prog[0])
    # And the sharded rollout runs it too.
    sh = sharded_rollout(p, params, KEY, N, T, mesh=region_mesh(2), ecology=eco)
    assert float(sh.metrics.progress) == pytest.approx(float(r.metrics.progress), rel=1e-6)


def test_names_resolve_outside_jit():
    assert sims.get_controller("narset") == sims.NarsetController()
    assert sims.get_ecology(None) is sims.STYLISED
    assert sims.get_ecology("stylised") == sims.Stylised()
    c = QuarterSplit()
    assert sims.get_controller(c) is c
    assert sims.CONTROLLERS == ("narset", "static_split", "single_threshold", "no_inertia",
                                "always_overdrive")
    with pytest.raises(ValueError, match="valid: narset, static_split"):
        sims.get_controller("narsett")
    with pytest.raises(ValueError, match="valid: stylised"):
        sims.get_ecology("neural-ish")
    with pytest.raises(ValueError, match="unknown controller"):
        sims.rollout(NarsetParams(), sims.load_scenario("steady"), KEY, N, T, controller="x")


def test_the_old_ecology_path_is_a_deprecated_alias():
    sys.modules.pop("sims.ecology", None)
    with pytest.warns(DeprecationWarning, match="sims.ecologies.stylised"):
        old = importlib.import_module("sims.ecology")
    assert old.sim_transition is sims.sim_transition
    assert old.SimState is sims.SimState


def test_the_tuner_runs_on_any_ecology_and_controller():
    from sims import tune

    eco, params = ToyEcology(), Decay(rate=jnp.asarray(0.1))
    p = NarsetParams(hysteresis="soft")
    cfg = tune.TuneConfig(N, T, controller=QuarterSplit(), ecology=eco)
    m = tune.rollout_metrics(p, params, KEY, cfg)
    want = sims.rollout(p, params, KEY, N, T, controller=QuarterSplit(), ecology=eco).metrics
    assert m.to_dict() == want.to_dict()
    # Differentiable end to end through the new ecology: the objective depends on beta.
    g = jax.grad(lambda b: sims.objective(tune.rollout_metrics(
        p.replace(beta=b), params, KEY, tune.TuneConfig(N, T, ecology=eco))))(jnp.asarray(0.3))
    assert np.isfinite(float(g)) and float(g) != 0.0
