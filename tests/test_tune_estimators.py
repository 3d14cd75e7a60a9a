"""The gradient estimators of ``narset tune`` (``sims.tune.estimators``): the saturating
hysteresis, the per-region decomposition of the objective, and the smoothed estimator's
gradient for every tuned parameter, ``alpha`` and the pool included, against finite
differences of the smoothed objective (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.errors import UserError
from narset_jax.hysteresis import gate, init_hysteresis, saturate, update_mode
from narset_jax.params import NarsetParams
from sims import tune
from sims.tune import estimators as est

jax.config.update("jax_enable_x64", True)

# ---------------------------------------------------------------------------------------
# The saturating hysteresis.


def test_saturate_fixes_0_and_1_and_pushes_towards_them():
    m = jnp.linspace(0.0, 1.0, 101, dtype=jnp.float64)
    s = saturate(m)
    assert float(s[0]) == 0.0 and float(s[-1]) == 1.0 and float(s[50]) == pytest.approx(0.5)
    assert bool(jnp.all(jnp.diff(s) > 0))
    inner = (m > 0) & (m < 1) & (jnp.abs(m - 0.5) > 1e-9)
    assert bool(jnp.all(jnp.where(inner, jnp.abs(s - 0.5) > jnp.abs(m - 0.5), True)))
    z = jnp.linspace(-1, 1, 9)
    np.testing.assert_array_equal(gate(z, 0.1, "saturating"), gate(z, 0.1, "soft"))


def test_saturating_mode_stays_near_0_or_1_where_soft_rests_in_between():
    """Need hovering just above theta_enter: the soft mode weight drifts through
    intermediate values; the saturating one stays within 1e-3 of 0 or 1 except on the
    window it switches."""
    p = NarsetParams(temp_need=0.2, temp_dwell=0.5).astype(jnp.float64)
    need = jnp.asarray(np.random.default_rng(0).uniform(0.3, 0.5, (40, 16)))
    upd = jnp.ones(16, bool)
    out = {}
    for variant in ("soft", "saturating"):
        st, ms = init_hysteresis(16, jnp.float64), []
        for t in range(need.shape[0]):
            st = update_mode(p.replace(hysteresis=variant), st, need[t], upd, variant)
            ms.append(st.mode)
        out[variant] = np.asarray(jnp.stack(ms))
    middle = lambda m: np.mean((m > 1e-3) & (m < 1 - 1e-3))  # noqa: E731
    assert middle(out["soft"]) > 0.5
    assert middle(out["saturating"]) < 0.2


# ---------------------------------------------------------------------------------------
# Settings: the estimator and the old flags.


def test_estimator_settings_and_old_flags():
    s, _ = tune.build_settings({})
    assert s["estimator"] == tune.DEFAULT_ESTIMATOR == est.DEFAULT_ESTIMATOR
    assert s["hysteresis"] == est.estimator_hysteresis(tune.DEFAULT_ESTIMATOR)
    s, _ = tune.build_settings({"hysteresis": "straight_through"})
    assert (s["estimator"], s["hysteresis"]) == ("straight_through", "straight_through")
    s, _ = tune.build_settings({"anneal": 0.5})
    assert (s["estimator"], s["hysteresis"], s["anneal"]) == ("anneal", "soft", 0.5)
    s, _ = tune.build_settings({"hysteresis": "soft"})
    assert (s["estimator"], s["anneal"]) == ("soft", 1.0)
    s, _ = tune.build_settings({"estimator": "anneal"})
    assert s["anneal"] == est.ANNEAL_DEFAULT
    s, _ = tune.build_settings({"estimator": "saturating"})
    assert s["hysteresis"] == "saturating"
    s, _ = tune.build_settings({"estimator": "smoothed"})
    assert s["hysteresis"] == "hard"
    for bad, msg in (({"estimator": "smoothed", "anneal": 0.5}, "not to --estimator smoothed"),
                     ({"estimator": "soft", "hysteresis": "straight_through"}, "contradicts"),
                     ({"estimator": "anneal", "anneal": 1.0}, "--anneal < 1"),
                     ({"estimator": "nope"}, "--estimator must be one of")):
        with pytest.raises(UserError, match=msg):
            tune.build_settings(bad)


# ---------------------------------------------------------------------------------------
# The smoothed estimator.

N, T, B = 256, 40, 2
CFG = tune.TuneConfig(N, T, dtype="float64", checkpoint=False)
# Budget churn weighted 3 (default 0.1): alpha, the overdrive cost's curvature, changes how
# far an overdriven target goes when the pool binds (so the churn), hardly whether it
# overdrives; under the default weights the smoothed objective is nearly flat in alpha
# (docs/tuning.md section 12), too flat for finite differences at a test's size to tell.
WEIGHTS = jax.tree.map(lambda w: jnp.asarray(w, jnp.float64),
                       sims.ObjectiveWeights(budget_churn=3.0))
SIGMA = jnp.asarray(0.2, jnp.float64)
# The pool binds with Tamiyo in overdrive in a fair share of region-windows (checked below).
BASE = NarsetParams(pool=1.2, gain_T_repair=1.6, gain_T_crisis=1.6, theta_enter=0.25,
                    theta_exit=0.1, k_enter=1.5, k_exit=2.0).astype(jnp.float64)
CRISIS = sims.load_scenario("crisis")
STACKED = tune.stack_scenarios([CRISIS]).astype(jnp.float64)
KEYS = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, B)
NKEYS = est.noise_keys(0, 0, 1, B)
RAW = tune.from_params(BASE, jnp.float64)


def _samples(raw, base=BASE):
    return est.smoothed_samples(raw, base, STACKED, KEYS, NKEYS, WEIGHTS, SIGMA, cfg=CFG,
                                perturb_pool=True)


@pytest.fixture(scope="module")
def perturbed():
    """A hard rollout (decisions recorded) with every region's params drawn around
    ``BASE`` as the estimator draws them (s.d. ``SIGMA`` in raw units and in log pool)."""
    rng = np.random.default_rng(1)
    s = float(SIGMA)
    raw = {n: RAW[n] + s * jnp.asarray(rng.standard_normal(N)) for n in tune.TUNED}
    params = tune.to_params(raw, BASE).replace(pool=BASE.pool * jnp.exp(
        s * jnp.asarray(rng.standard_normal(N))))
    sc = CRISIS.without_metadata().astype(jnp.float64)
    return params, sc, sims.rollout(params, sc, KEYS[0, 0], N, T, dtype=jnp.float64,
                                    record=True)


def test_region_objectives_decompose_the_objective_and_regions_are_independent(perturbed):
    """``mean_i J_i`` is the rollout's objective, and with per-region params region ``i``'s
    ``J_i`` is what a one-region rollout of that region (its id, its params) scores."""
    params, sc, res = perturbed
    ji = est.region_objectives(params, sc, res.final, WEIGHTS)
    assert ji.shape == (N,)
    # (with a per-region pool the rollout's utilisation is per region too; its weight is 0)
    whole = jnp.mean(sims.objective(res.metrics, WEIGHTS))
    assert float(jnp.mean(ji)) == pytest.approx(float(whole), rel=1e-12, abs=1e-12)
    for i in (0, 17, N - 1):
        p_i = jax.tree.map(lambda v, i=i: v[i] if jnp.ndim(v) else v, params)
        one = sims.rollout(p_i, sc, KEYS[0, 0], 1, T, dtype=jnp.float64,
                           region_ids=jnp.asarray([i]))
        assert float(ji[i]) == pytest.approx(float(sims.objective(one.metrics, WEIGHTS)),
                                             rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def estimate():
    g = est.smoothed_grad(RAW, BASE, STACKED, KEYS, NKEYS, WEIGHTS, SIGMA, cfg=CFG)
    jp, jm, eps = _samples(RAW)
    return g, (np.asarray(jp), np.asarray(jm), {k: np.asarray(v) for k, v in eps.items()})


def test_smoothed_grad_is_the_score_function_of_its_samples(estimate):
    g, (jp, jm, eps) = estimate
    assert g["samples"] == B * N
    assert set(eps) == {n for n in tune.TUNED if n not in est.UNPERTURBED} | {"pool"}
    for name in tune.TUNED:
        want = (np.mean((jp - jm) / (2 * 0.2) * eps[name]) if name in eps else 0.0)
        assert float(g["grad"][name]) == pytest.approx(want, rel=1e-10, abs=1e-14), name
    assert float(g["grad_log_pool"]) == pytest.approx(
        np.mean((jp - jm) / 0.4 * eps["pool"]), rel=1e-10)
    assert float(g["loss"]) == pytest.approx(np.mean((jp + jm) / 2), rel=1e-12)


def _fd_samples(lo, hi, h):
    """Per region-sample central differences of the smoothed objective (same seeds, same
    perturbations: common random numbers)."""
    return ((hi[0] + hi[1]) / 2 - (lo[0] + lo[1]) / 2) / (2 * h)


def test_smoothed_gradient_matches_finite_differences_of_the_smoothed_objective(estimate,
                                                                              perturbed):
    """For every tuned parameter and for log(pool): the estimator against central
    differences (h = 0.2 raw units) of the smoothed objective on the same seeds and
    perturbations (common random numbers), within 4 combined standard errors. Where the
    pool binds in overdrive, the smoothed objective's slopes in alpha and in the pool are
    significantly non-zero (finite differences more than 3 standard errors from 0), the
    estimator's alpha and pool gradients are non-zero, and the pool's (a large effect) is
    significant too, with the finite differences' sign. (The score function's standard
    error for alpha is ~10x the finite differences': every region perturbs all 30
    coordinates at once, and alpha's effect is small.)"""
    g, _ = estimate
    h = 0.2
    # The hard controller's pool binds while a target is in overdrive (params drawn as the
    # smoothed objective draws them).
    params, _, res = perturbed
    d = res.decisions
    binds = (d.spent >= params.pool - 1e-9) & ((d.x_T > 1) | (d.x_E > 1))
    assert float(jnp.mean(binds)) > 0.02
    report = {}
    for name in [n for n in tune.TUNED if n not in est.UNPERTURBED] + ["pool"]:
        if name == "pool":
            lo = _samples(RAW, BASE.replace(pool=BASE.pool * np.exp(-h)))
            hi = _samples(RAW, BASE.replace(pool=BASE.pool * np.exp(h)))
            gk, sek = float(g["grad_log_pool"]), float(g["se_log_pool"])
        else:
            lo = _samples({**RAW, name: RAW[name] - h})
            hi = _samples({**RAW, name: RAW[name] + h})
            gk, sek = float(g["grad"][name]), float(g["se"][name])
        d = _fd_samples([np.asarray(x) for x in lo[:2]], [np.asarray(x) for x in hi[:2]], h)
        fd, se_fd = float(np.mean(d)), float(np.std(d) / np.sqrt(d.size))
        report[name] = (gk, sek, fd, se_fd)
        assert abs(gk - fd) <= 4 * np.hypot(sek, se_fd) + 1e-12, (name, report[name])
    for name in ("alpha", "pool"):
        gk, sek, fd, se_fd = report[name]
        assert gk != 0 and abs(fd) > 3 * se_fd, (name, report[name])
    gk, sek, fd, se_fd = report["pool"]
    assert abs(gk) > 3 * sek and np.sign(gk) == np.sign(fd), report["pool"]
    assert float(g["grad"]["temp_dwell"]) == 0.0
