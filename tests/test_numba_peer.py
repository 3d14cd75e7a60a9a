"""The Numba peer of the closed loop (``benchmarks/numba_peer/``) against the NumPy twin
(``sims/numpy_twin.py``): a third oracle. Float64, small N, in a scenario with every kind of
event (shocks and waves, NaN bursts, dropouts, spoofers) and budgets that bind.

The peer runs here through its serial kernel: the same per-region function as the threaded
``prange`` kernel the benchmark times, which compiles in about half the time. Skipped only
when numba (a benchmark dependency, the ``bench`` extra) is not installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from benchmarks import numba_peer
from narset_jax.params import NarsetParams
from sims import numpy_twin as ref

if not numba_peer.available():
    pytest.skip("numba is not installed (pip install -e .[bench])", allow_module_level=True)

# The NumPy oracle's sizes and scenario (every kind of event, often).
from test_numpy_oracle import KEY, SCENARIO, N, T  # noqa: E402

TOL = dict(rtol=1e-9, atol=1e-9)


def _flat(carry):
    """name -> array of every per-region leaf of a twin carry."""
    out = {}
    for part in ("sim", "telemetry", "acc"):
        for k, v in vars(getattr(carry, part)).items():
            out[f"{part}.{k}"] = np.asarray(v)
    ctl = carry.ctl
    for k in ("step", "staleness", "target_T", "target_E"):
        out[f"ctl.{k}"] = np.asarray(getattr(ctl, k))
    for group in ("signals", "hysteresis"):
        for k, v in vars(getattr(ctl, group)).items():
            out[f"ctl.{group}.{k}"] = np.asarray(v)
    return out


@pytest.mark.parametrize(
    "params",
    [NarsetParams(pool=0.6, beta=0.8), NarsetParams(cost="convex", pool=2.6, beta=0.9)],
    ids=["seed_binding", "convex_overdrive"],
)
def test_numba_peer_matches_numpy_twin(params):
    scenario = sims.Scenario.from_dict(SCENARIO)
    init = jax.jit(
        lambda k: sims.rollout_init(params, scenario.without_metadata(), k, N,
                                    dtype=jnp.float64)
    )(KEY)
    start = ref.from_jax(init)
    peer = numba_peer.NumbaPeer(params, scenario, start)
    twin = start
    for _half in range(2):  # two calls: the peer's state and window counter carry over
        peer.run(T // 2, parallel=False)
        for _ in range(T // 2):
            twin = ref.window(params, scenario, twin)
    got, want = _flat(peer.carry()), _flat(twin)
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, name
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, **TOL, err_msg=name)  # NaN == NaN
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)
    # The run exercised what it claims to: binding budgets, events, missing telemetry.
    assert np.any(twin.last[0].price > 0)
    assert np.any(twin.acc.missing > 0) and np.any(twin.acc.panics > 0)
    m_peer = ref.metrics(params, scenario, peer.carry())
    m_twin = ref.metrics(params, scenario, twin)
    for k, v in m_twin.items():
        np.testing.assert_allclose(m_peer[k], v, **TOL, err_msg=k)


def test_numba_peer_rejects_what_it_does_not_run():
    scenario = sims.load_scenario("steady")
    init = ref.from_jax(sims.rollout_init(NarsetParams(), scenario.without_metadata(), KEY, 4,
                                          dtype=jnp.float64))
    with pytest.raises(ValueError, match="per-region budget"):
        numba_peer.NumbaPeer(NarsetParams(budget="global"), scenario, init)
