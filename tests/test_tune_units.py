"""Tuning: parameterisation, budget modes, optimiser, statistics, keys, config,
checkpoints, plots and CLI errors. Nothing here compiles a rollout (the loss and the hard
rollouts are replaced by recording stubs where a test needs them)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sims
from narset_jax.cli import main
from narset_jax.cli import tune as cli_tune
from narset_jax.params import NarsetParams
from narset_jax.plots.tune import plot_loss_curve, plot_params
from sims import tune
from sims.simulate import resolve_params
from sims.tune import estimators as tune_estimators
from sims.tune import evaluation as tune_evaluation
from sims.tune import loss as tune_loss
from sims.tune import training as tune_training


def test_tuned_fields_cover_the_issue():
    names = set(tune.TUNED)
    assert {"alpha", "beta", "theta_enter", "theta_exit", "temp_dwell"} <= names
    assert {n for n in NarsetParams.tunable_names() if n.startswith("rate_")} <= names
    assert {n for n in NarsetParams.tunable_names() if n.startswith("gain_")} <= names
    assert {"tau_sedate", "tau_lysis", "tau_germinate", "tau_fossilise"} <= names
    assert "pool" not in names  # the budget is the operator's, not tuned
    assert len(names) == len(tune.TUNED)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_from_params_inverts_to_params(dtype):
    params = NarsetParams(beta=0.7, theta_enter=0.6, theta_exit=0.05, tau_lysis=0.9,
                          gain_T_crisis=0.0, k_exit=1.0).astype(dtype)
    back = tune.to_params(tune.from_params(params, dtype), params)
    tol = 1e-4 if dtype == jnp.float32 else 1e-9
    for n in tune.TUNED:
        a, b = float(getattr(params, n)), float(getattr(back, n))
        assert abs(a - b) <= tol * max(1.0, abs(a)) + 1e-5 * (n == "gain_T_crisis"), n


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_constraints_hold_for_any_raw_values(dtype):
    """Constraints by parameterisation: every raw vector, however extreme, gives params
    that pass validation (which runs on concrete values) with the orderings strict."""
    rng = np.random.default_rng(0)
    base = NarsetParams(hysteresis="soft")
    for scale in (0.1, 3.0, 30.0):
        for _ in range(20):
            raw = {n: jnp.asarray(scale * rng.standard_normal(), dtype) for n in tune.TUNED}
            p = tune.to_params(raw, base)  # validated here
            assert float(p.theta_exit) < float(p.theta_enter) <= 1
            assert float(p.tau_sedate) < float(p.tau_lysis)
            assert float(p.tau_germinate) < float(p.tau_fossilise)
            assert 0 < float(p.beta) <= 1 and float(p.k_enter) >= 1
    for value in (-80.0, 80.0):
        raw = {n: jnp.asarray(value, dtype) for n in tune.TUNED}
        p = tune.to_params(raw, base)
        assert float(p.theta_exit) < float(p.theta_enter)


def test_to_params_is_traceable_and_differentiable():
    base = NarsetParams(hysteresis="soft")
    raw = tune.from_params(base, jnp.float64)
    g = jax.grad(lambda r: tune.to_params(r, base).theta_enter)(raw)
    # theta_enter depends on its own gap and on theta_exit, nothing else.
    assert {n for n, v in g.items() if float(v) != 0} == {"theta_enter", "theta_exit"}
    with pytest.raises(ValueError, match="lack"):
        tune.to_params({"alpha": 0.0}, base)


def test_temperature_annealing():
    p = NarsetParams(hysteresis="soft")
    q = tune.with_temperature(p, 0.5)
    for n in tune.TEMPERATURES:
        assert float(getattr(q, n)) == pytest.approx(0.5 * float(getattr(p, n)))
    assert tune.anneal_factor(0, 10, 0.1) == 1.0
    assert tune.anneal_factor(9, 10, 0.1) == pytest.approx(0.1)
    assert tune.anneal_factor(5, 10, 1.0) == 1.0
    f = [tune.anneal_factor(i, 10, 0.1) for i in range(10)]
    assert all(a > b for a, b in zip(f, f[1:]))


def test_t_interval():
    ci = tune.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5)
    assert ci["mean"] == 3.0 and ci["n"] == 5
    assert ci["hi"] - ci["mean"] == pytest.approx(half)
    assert tune.t_interval([2.0])["lo"] == 2.0
    # Student t 0.975 quantiles (tables): df 40 -> 2.0211, 60 -> 2.0003, 120 -> 1.9799.
    for df, q in ((7, 2.3646), (40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert tune.t_quantile_975(df) == pytest.approx(q, abs=2e-4)
    with pytest.raises(ValueError):
        tune.t_interval([])


def test_keys_fresh_each_iteration_and_eval_disjoint():
    k = tune.run_keys(0, tune.STREAM_TRAIN)
    a = jax.random.key_data(tune.batch_keys(k, 0, 2, 3))
    b = jax.random.key_data(tune.batch_keys(k, 1, 2, 3))
    assert a.shape[:2] == (2, 3)
    again = jax.random.key_data(tune.batch_keys(k, 0, 2, 3))
    assert np.array_equal(a, again)
    train = {tuple(x) for x in np.asarray(a).reshape(6, -1)} | {
        tuple(x) for x in np.asarray(b).reshape(6, -1)
    }
    ev = jax.random.key_data(jax.random.split(tune.run_keys(0, tune.STREAM_EVAL), 8))
    assert len(train) == 12
    assert not train & {tuple(x) for x in np.asarray(ev)}


def test_config_and_optimizer_validation():
    with pytest.raises(ValueError, match="n_regions"):
        tune.TuneConfig(0, 10)
    with pytest.raises(ValueError, match="truncate"):
        tune.TuneConfig(4, 10, truncate=0)
    with pytest.raises(ValueError, match="dtype"):
        tune.TuneConfig(4, 10, dtype="float16")
    with pytest.raises(ValueError, match="learning_rate"):
        tune.make_optimizer(0.0, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        tune.make_optimizer(0.1, -1.0)


def test_config_weights_default_to_the_simulators(tmp_path):
    """The shipped config sets no weights (they come from sims.DEFAULT_WEIGHTS); a user's
    config overrides single weights and keeps the rest."""
    cfg = tune.read_config(tune.DEFAULT_CONFIG)
    assert cfg["weights"] == {}
    assert cfg["hysteresis"] in ("soft", "straight_through")
    user = tmp_path / "c.toml"
    user.write_text("[objective]\nrollbacks = 7\n[optimiser]\nbatch = 3\n")
    args = main.__globals__["_build_parser"]().parse_args(
        ["tune", "--out", str(tmp_path), "--config", str(user)]
    )
    settings, explicit = cli_tune._settings(args)
    assert settings["weights"] == {**sims.DEFAULT_WEIGHTS.to_dict(), "rollbacks": 7.0}
    assert settings["batch"] == 3 and {"weights", "batch"} <= explicit


def test_checkpoint_round_trip(tmp_path):
    base = NarsetParams(hysteresis="soft")
    opt = tune.make_optimizer(0.05, 1.0)
    state = tune.train_init(tune.from_params(base, jnp.float32), opt)
    # Make the optimiser state non-trivial.
    grad = {n: jnp.asarray(0.1 * i, jnp.float32) for i, n in enumerate(tune.TUNED)}
    upd = tune_training._update_fn(opt)
    raw, opt_state = upd(state.raw, state.opt_state, grad)
    state = tune.TrainState(raw=raw, opt_state=opt_state, iteration=3)
    hist = tune.History(loss=[1.0, 0.5, 0.25], grad_norm=[3.0, 2.0, 1.0],
                        temp_factor=[1.0] * 3, finite=[True] * 3,
                        objective=[[1.0], [0.5], [0.25]], seconds=[0.1] * 3)
    path = tmp_path / "checkpoint.npz"
    tune.save_checkpoint(path, state, hist, {"config": {"a": 1}})
    template = tune.train_init(tune.from_params(base, jnp.float32), opt)
    loaded, h2, meta = tune.load_checkpoint(path, template)
    assert loaded.iteration == 3 and meta["config"] == {"a": 1}
    assert h2 == hist
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loaded)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # No temporary files left behind; a corrupt file is one clear error.
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="unreadable checkpoint"):
        tune.read_checkpoint_meta(path)


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--iters", "0"], "--iters must be a positive int"),
        (["--eval-seeds", "4"], "--eval-seeds must be >= 8"),
        (["--anneal", "2"], "--anneal must be in (0, 1]"),
        (["--holdout", "crisis"], "also a training scenario"),
        (["--holdout", "nope"], "unknown scenario 'nope'"),
        (["--baselines", "narset"], "unknown baseline 'narset'"),
        (["--eval-steps", "0"], "--eval-steps must be positive"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    argv = ["tune", "--scenario", "crisis", "--iters", "2", "--regions", "4", "--steps", "3",
            "--out", str(tmp_path / "o"), *extra]
    rc, err = _run(argv, capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_files(tmp_path, capsys):
    base = ["tune", "--scenario", "crisis", "--iters", "2", "--regions", "4", "--steps", "3",
            "--out", str(tmp_path / "o")]
    rc, err = _run(base[:1] + base[3:], capsys)  # no --scenario
    assert rc == 2 and "--scenario is required" in err
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[optimiser]\nlearning_rat = 0.1\n")
    rc, err = _run(base + ["--config", str(cfg)], capsys)
    assert rc == 2 and "bad.toml" in err and "learning_rat" in err
    cfg.write_text("[objective]\nprogress = \n")
    rc, err = _run(base + ["--config", str(cfg)], capsys)
    assert rc == 2 and "malformed TOML" in err and "line 2" in err
    cfg.write_text("[objective]\nprogress = 'a'\n")
    rc, err = _run(base + ["--config", str(cfg)], capsys)
    assert rc == 2 and "must be a number" in err
    rc, err = _run(["tune", "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert rc == 2 and "no checkpoint" in err


def test_format_table_and_verdicts():
    ci = lambda m, lo, hi: {"mean": m, "lo": lo, "hi": hi, "sd": 1.0, "n": 8}  # noqa: E731
    metrics = {m: 0.0 for m in tune.REPORT_METRICS}
    rows = {
        "defaults": {"objective": ci(1, 0, 2), "delta": None, "metrics": metrics},
        "tuned": {"objective": ci(0, -1, 1), "delta": ci(-1, -1.5, -0.5), "metrics": metrics},
        "random_search": {"objective": ci(1, 0, 2), "delta": ci(0, -1, 1), "metrics": metrics},
    }
    for row in rows.values():
        row["budget"] = "global"
    rows["tuned"]["versus"] = {"random_search": ci(0.2, 0.1, 0.3)}
    text = tune.format_table({"spoofing": rows}, {"spoofing"}, "defaults", 8, 16, 10)
    assert "spoofing (held-out, budget global)" in text
    assert "tuned vs defaults: better" in text
    assert "random_search vs defaults: no significant difference" in text
    assert "tuned vs random_search: dJ = 0.200 [0.100, 0.300], worse" in text
    assert tune.verdict(ci(1, 0.5, 1.5)) == "worse"


def test_plots(tmp_path):
    hist = {"loss": [3.0, 2.0, 1.5, 1.2, 1.1, 1.0], "grad_norm": [5, 4, 3, 2, 1, 0.5],
            "temp_factor": [1, 0.8, 0.6, 0.4, 0.2, 0.1], "finite": [True] * 5 + [False]}
    p = plot_loss_curve(hist, tmp_path / "loss.png", random_search=[3, 2.5, 2.8, 1.9, 2, 2],
                        batch=4)
    assert p.stat().st_size > 0
    before = {n: float(getattr(NarsetParams(), n)) for n in tune.TUNED}
    after = {n: v * 1.3 for n, v in before.items()}
    p = plot_params(before, after, tmp_path / "params.png", random_search=before)
    assert p.stat().st_size > 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["loss.png", "params.png"]


def test_history_round_trip():
    h = tune.History(loss=[1.0], grad_norm=[2.0], temp_factor=[1.0], finite=[True],
                     objective=[[1.0]], seconds=[0.5])
    assert tune.History.from_dict(json.loads(json.dumps(h.to_dict()))) == h


@pytest.mark.parametrize("window", [1, 3, 4, 10, 12])
def test_truncated_scan_gradient_on_a_linear_recurrence(window):
    """``x_t = a x_{t-1} + theta``, loss ``sum_t x_t`` over ``T = 10`` steps. With the
    carry stopped at chunk starts ``s``, ``d x_t / d theta = sum_{j < t - s} a^j``; the
    forward pass is the untruncated one exactly, and non-float leaves pass through."""
    T, a = 10, 0.9

    def loss(theta, truncated):
        def chunk(c, n):  # the parameter is closed over, never part of the carry
            def body(c, _):
                x = a * c["x"] + theta
                return {"x": x, "acc": c["acc"] + x, "t": c["t"] + 1, "flag": ~c["flag"]}, None

            return jax.lax.scan(body, c, None, length=n)[0]

        c = {"x": jnp.asarray(0.5), "acc": jnp.asarray(0.0), "t": jnp.asarray(0, jnp.int32),
             "flag": jnp.asarray(False)}
        c = tune.truncated_scan(chunk, c, T, window) if truncated else chunk(c, T)
        return c["acc"], c

    (v_full, c_full), g_full = jax.value_and_grad(loss, has_aux=True)(1.0, False)
    (v_trunc, c_trunc), g_trunc = jax.value_and_grad(loss, has_aux=True)(1.0, True)
    assert float(v_trunc) == float(v_full)
    assert int(c_trunc["t"]) == T and bool(c_trunc["flag"]) == bool(c_full["flag"])
    start = lambda t: (t - 1) // window * window  # noqa: E731 - the chunk holding step t
    expected = sum(sum(a**j for j in range(t - start(t))) for t in range(1, T + 1))
    assert float(g_trunc) == pytest.approx(expected, rel=1e-12)
    full = sum(sum(a**j for j in range(t)) for t in range(1, T + 1))
    assert float(g_full) == pytest.approx(full, rel=1e-12)
    if window >= T:
        assert float(g_trunc) == pytest.approx(float(g_full), rel=1e-14)
    else:
        assert float(g_trunc) < float(g_full)


def test_train_rejects_hard_hysteresis():
    with pytest.raises(ValueError, match="hysteresis"):
        tune.train(NarsetParams(), [sims.load_scenario("steady")], iters=1,
                   cfg=tune.TuneConfig(4, 3))


# ---------------------------------------------------------------------------------------
# Budget modes: every rollout runs its scenario's recommended mode, as narset simulate
# does without --budget.


def test_scenario_params_follows_narset_simulate(tmp_path):
    """``tune.scenario_params`` and the CLI's budget setting pick the mode that
    ``narset simulate`` (without ``--budget``) picks, for every shipped scenario, from
    the defaults, a params file without a budget line and one with it."""
    bare = tmp_path / "bare.toml"
    bare.write_text("beta = 0.7\n")
    fixed = tmp_path / "fixed.toml"
    fixed.write_text('beta = 0.7\nbudget = "fixed_sum"\n')
    parser = main.__globals__["_build_parser"]()
    modes = {}
    for path in (None, bare, fixed):
        argv = ["tune", "--out", str(tmp_path / "o")] + (["--params", str(path)] if path else [])
        settings, _ = cli_tune._settings(parser.parse_args(argv))
        base = NarsetParams.from_dict(settings["base_params"])
        for name in sims.SCENARIOS:
            sc = sims.load_scenario(name)
            want = resolve_params(str(path) if path else None, sc, None).budget
            got = tune.scenario_params(base, sc, settings["budget"]).budget
            assert got == want, (path, name, got, want)
            modes[path, name] = got
    assert modes[None, "spoofing"] == modes[bare, "spoofing"] == "global"
    assert modes[None, "crisis"] == "region"
    assert {modes[fixed, n] for n in sims.SCENARIOS} == {"fixed_sum"}


def test_budget_groups():
    base = NarsetParams(hysteresis="soft")
    names = ["crisis", "spoofing", "steady"]
    scs = [sims.load_scenario(n) for n in names]
    groups = tune.budget_groups(base, scs)
    assert [(g.params.budget, g.index) for g in groups] == [("region", (0, 2)),
                                                            ("global", (1,))]
    assert all(g.params.hysteresis == "soft" for g in groups)
    np.testing.assert_array_equal(np.asarray(groups[0].scenarios.shock_rate),
                                  [scs[0].shock_rate, scs[2].shock_rate])
    one = tune.budget_groups(base, scs, budget="fixed_sum")
    assert [(g.params.budget, g.index) for g in one] == [("fixed_sum", (0, 1, 2))]


def _fake_loss_and_grad(calls):
    """A stand-in for ``tune.loss_and_grad``: the objective of every rollout of a group is
    a constant of its budget mode, and so is every gradient component."""
    value = {"region": 1.0, "global": 4.0, "fixed_sum": 2.0}

    def fake(raw, base, scenarios, keys, weights, temp, cfg):
        v = value[base.budget]
        calls.append((base.budget, base.hysteresis, jax.random.key_data(keys),
                      int(jax.tree.leaves(scenarios)[0].shape[0])))
        grad = {n: jnp.asarray(v, cfg.jdtype) for n in tune.TUNED}
        obj = jnp.full(keys.shape, v, cfg.jdtype)
        return jnp.asarray(v, cfg.jdtype), obj, grad, jnp.sqrt(len(tune.TUNED) * v**2)

    return fake


def test_training_groups_rollouts_by_budget_mode(monkeypatch):
    """A batch of crisis, spoofing and steady runs as two vmapped groups, region
    (crisis, steady) and global (spoofing), each on its own rows of the iteration's keys,
    and their losses and gradients are summed with weights ``S_g / S``."""
    calls = []
    monkeypatch.setattr(tune_loss, "loss_and_grad", _fake_loss_and_grad(calls))
    scs = [sims.load_scenario(n) for n in ("crisis", "spoofing", "steady")]
    base = NarsetParams(hysteresis="soft")
    cfg = tune.TuneConfig(4, 3, dtype="float64")
    state, hist = tune.train(base, scs, iters=2, cfg=cfg, batch=2, seed=5)
    assert [(c[0], c[1], c[3]) for c in calls] == [("region", "soft", 2), ("global", "soft", 1)] * 2
    for it in range(2):
        keys = jax.random.key_data(tune.batch_keys(tune.run_keys(5, tune.STREAM_TRAIN), it, 3, 2))
        np.testing.assert_array_equal(calls[2 * it][2], keys[np.array([0, 2])])
        np.testing.assert_array_equal(calls[2 * it + 1][2], keys[np.array([1])])
    # (2 * 1 + 1 * 4) / 3 = 2: the mean over all rollouts; the per-scenario record keeps
    # the training order.
    assert hist.loss == [pytest.approx(2.0)] * 2
    assert hist.grad_norm == [pytest.approx(2.0 * np.sqrt(len(tune.TUNED)))] * 2
    assert hist.objective == [[1.0, 4.0, 1.0]] * 2
    # One mode fixed for every scenario: one group.
    calls.clear()
    _, hist = tune.train(base, scs, iters=1, cfg=cfg, batch=2, budget="fixed_sum")
    assert [(c[0], c[3]) for c in calls] == [("fixed_sum", 3)]
    assert hist.loss == [2.0]


def test_smoothed_training_groups_rollouts_and_draws_its_own_perturbations(monkeypatch):
    """``estimator="smoothed"``: each budget group's samples on its own rows of the
    iteration's rollout keys and of the perturbation keys (stream ``STREAM_SMOOTH``,
    disjoint from training and evaluation), the hard hysteresis, gradients summed with
    weights ``S_g / S``, the pool perturbed (and its derivative recorded) only where the
    budget is per region; a relaxed base is refused."""
    calls = []
    value = {"region": 1.0, "global": 4.0}

    def fake(raw, base, scenarios, keys, nkeys, weights, sigma, cfg, perturb_pool):
        v = value[base.budget]
        calls.append((base.budget, base.hysteresis, jax.random.key_data(keys),
                      jax.random.key_data(nkeys), perturb_pool, float(sigma)))
        n = int(jax.tree.leaves(scenarios)[0].shape[0])
        jp = jnp.full((n, keys.shape[1], 4), v + 1, cfg.jdtype)
        jm = jnp.full((n, keys.shape[1], 4), v - 1, cfg.jdtype)
        names = [m for m in tune.TUNED if m not in tune_estimators.UNPERTURBED]
        eps = {m: jnp.ones_like(jp) for m in names + (["pool"] if perturb_pool else [])}
        return jp, jm, eps

    monkeypatch.setattr(tune_estimators, "smoothed_samples", fake)
    scs = [sims.load_scenario(n) for n in ("crisis", "spoofing", "steady")]
    cfg = tune.TuneConfig(4, 3, dtype="float64")
    _, hist = tune.train(NarsetParams(), scs, iters=2, cfg=cfg, batch=2, seed=5,
                         estimator="smoothed", smoothing_sigma=0.5)
    assert [(c[0], c[1], c[4], c[5]) for c in calls] == [
        ("region", "hard", True, 0.5), ("global", "hard", False, 0.5)] * 2
    for it in range(2):
        keys = jax.random.key_data(tune.batch_keys(tune.run_keys(5, tune.STREAM_TRAIN), it, 3, 2))
        nkeys = jax.random.key_data(tune_estimators.noise_keys(5, it, 3, 2))
        np.testing.assert_array_equal(calls[2 * it][2], keys[np.array([0, 2])])
        np.testing.assert_array_equal(calls[2 * it][3], nkeys[np.array([0, 2])])
        np.testing.assert_array_equal(calls[2 * it + 1][3], nkeys[np.array([1])])
        assert not np.array_equal(nkeys, keys)
    # (J+ - J-) / (2 sigma) * eps = 2 for every coordinate and group: the weighted sum is 2;
    # the objective is the pairs' mean, per scenario in training order.
    assert hist.grad_alpha == [pytest.approx(2.0)] * 2
    assert hist.grad_log_pool == [pytest.approx(2.0)] * 2
    assert hist.objective == [[1.0, 4.0, 1.0]] * 2
    assert hist.loss == [pytest.approx(2.0)] * 2
    with pytest.raises(ValueError, match="needs hysteresis 'hard'"):
        tune.train(NarsetParams(hysteresis="soft"), scs, iters=1, cfg=cfg, estimator="smoothed")


def _recording_objectives(calls):
    """A stand-in for ``tune.rollout_objectives`` (the hard rollouts) that records what would
    have been simulated: ``(budget, hysteresis, controller, scenario name)``."""

    def fake(params, controller, scenario, keys, n_regions, n_steps, weights, dtype,
             ecology=None):
        calls.append((params.budget, params.hysteresis, controller, scenario.name))
        obj = np.arange(len(keys), dtype=np.float64) + len(calls)
        return obj, [{m: 0.0 for m in tune.REPORT_METRICS} for _ in keys]

    return fake


def test_evaluation_and_random_search_use_each_scenarios_budget(monkeypatch):
    """The defaults, tuned params, random search and every baseline run spoofing with
    the global pool and crisis per region, all with the hard hysteresis (a test that
    fails if spoofing is evaluated under the wrong budget mode)."""
    calls = []
    monkeypatch.setattr(tune_evaluation, "rollout_objectives", _recording_objectives(calls))
    crisis, spoofing = sims.load_scenario("crisis"), sims.load_scenario("spoofing")
    soft = NarsetParams(hysteresis="soft")
    cands = {"defaults": (NarsetParams(), "narset"), "tuned": (soft, "narset")}
    cands.update({c: (NarsetParams(), c) for c in sims.CONTROLLERS if c != "narset"})
    ev = tune.evaluate(cands, {"crisis": crisis, "spoofing": spoofing}, seeds=8,
                       n_regions=4, n_steps=3, reference="defaults")
    assert len(calls) == 2 * len(cands)
    for budget, hyst, controller, name in calls:
        assert hyst == "hard"
        assert budget == {"crisis": "region", "spoofing": "global"}[name], controller
    assert {r["budget"] for r in ev["spoofing"].values()} == {"global"}
    assert {r["budget"] for r in ev["crisis"].values()} == {"region"}
    calls.clear()
    tune.random_search(soft, [crisis, spoofing], candidates=3, batch=2, n_regions=4,
                       n_steps=3)
    assert [(b, h, s) for b, h, _, s in calls] == [
        ("region", "hard", "crisis"), ("global", "hard", "spoofing")] * 3
    calls.clear()
    tune.evaluate(cands, {"spoofing": spoofing}, seeds=8, n_regions=4, n_steps=3,
                  budget="region")
    assert {c[0] for c in calls} == {"region"}


def test_params_toml_leaves_the_budget_to_the_scenario(tmp_path):
    """Without a fixed mode, params.toml has no budget line, so ``narset simulate
    --params`` runs spoofing with the global pool, as the evaluation did; a mode fixed by
    ``--params`` is written."""
    p = NarsetParams(beta=0.7)
    free = tmp_path / "free.toml"
    free.write_text(tune.params_toml(p, ["tuned"], None))
    assert "budget =" not in free.read_text()
    assert NarsetParams.from_toml(free) == p
    assert resolve_params(str(free), sims.load_scenario("spoofing"), None).budget == "global"
    assert resolve_params(str(free), sims.load_scenario("crisis"), None) == p
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(tune.params_toml(p.replace(budget="region"), ["tuned"], "region"))
    assert resolve_params(str(fixed), sims.load_scenario("spoofing"), None).budget == "region"


# ---------------------------------------------------------------------------------------
# The optimiser and truncation.


def test_optimizer_clips_by_global_norm_and_skips_nonfinite_steps():
    """Adam sees the gradient clipped to the global norm (its first moment after one step
    is ``(1 - b1) * g * clip / |g|``); a non-finite gradient leaves the params as they
    were. Params are never clipped: only the gradient is."""
    opt = tune.make_optimizer(0.05, 2.0)
    raw = {n: jnp.asarray(0.0, jnp.float64) for n in tune.TUNED}
    g = {n: jnp.asarray(float(i + 1), jnp.float64) for i, n in enumerate(tune.TUNED)}
    norm = float(np.linalg.norm(np.arange(1, len(tune.TUNED) + 1)))
    update = tune_training._update_fn(opt)
    new, st = update(raw, opt.init(raw), g)
    mu = optax.tree_utils.tree_get(st, "mu")
    for n in tune.TUNED:
        assert float(mu[n]) == pytest.approx(0.1 * float(g[n]) * 2.0 / norm, rel=1e-12)
        assert float(new[n]) != 0.0
    bad = dict(g, alpha=jnp.asarray(np.nan, jnp.float64))
    again, st2 = update(new, st, bad)
    assert all(float(again[n]) == float(new[n]) for n in tune.TUNED)
    assert int(optax.tree_utils.tree_get(st2, "notfinite_count")) == 1


def test_truncated_rollout_goes_through_truncated_scan(monkeypatch):
    """With ``truncate = W < T`` the rollout's windows run through ``truncated_scan`` in
    chunks of ``W`` (whose gradient cut is checked exactly on a linear recurrence above);
    without it, or with ``W >= T``, they do not. Traced only, never compiled."""
    seen = []
    original = tune.truncated_scan

    def spy(chunk, carry, n_steps, window):
        seen.append((n_steps, window))
        return original(chunk, carry, n_steps, window)

    monkeypatch.setattr(tune_loss, "truncated_scan", spy)
    params = NarsetParams(hysteresis="soft").astype(jnp.float64)
    sc = sims.load_scenario("crisis").without_metadata().astype(jnp.float64)
    key = jax.random.key(0)
    for truncate in (4, None, 10):
        cfg = tune.TuneConfig(4, 10, truncate=truncate, dtype="float64")
        jax.eval_shape(lambda p, c=cfg: tune.rollout_metrics(p, sc, key, c).progress, params)
    assert seen == [(10, 4)]


def _fake_train(record):
    """A stand-in for ``tune.train`` that records its budget argument and returns the
    starting params after ``iters`` iterations."""

    def fake(base, scenarios, *, iters, budget, state, history, callback, **kwargs):
        record.append((budget, base.hysteresis, [sc.name for sc in scenarios]))
        while state.iteration < iters:
            state = state._replace(iteration=state.iteration + 1)
            for key, value in (("loss", 1.0), ("grad_norm", 0.5), ("temp_factor", 1.0),
                               ("finite", True), ("seconds", 0.0)):
                getattr(history, key).append(value)
            history.objective.append([1.0] * len(scenarios))
            callback(state, history)
        return state, history

    return fake


def _recording_population(calls):
    """A stand-in for ``tune.population_objectives`` (the surrogate report's relaxed
    rollouts) that records ``(budget, hysteresis, scenarios)`` of each call."""

    def fake(raw, temps, base, scenarios, keys, weights, cfg):
        n_sc = int(jax.tree.leaves(scenarios)[0].shape[0])
        calls.append((base.budget, base.hysteresis, n_sc))
        return jnp.zeros((temps.shape[0], *keys.shape), cfg.jdtype)

    return fake


def _recording_smoothed(calls):
    """A stand-in for ``tune.estimators.smoothed_population`` (the surrogate report's
    smoothed rollouts) that records ``(budget, hysteresis, scenarios, perturb_pool)``."""

    def fake(raw, base, scenarios, keys, nkeys, weights, sigma, cfg, perturb_pool):
        n_sc = int(jax.tree.leaves(scenarios)[0].shape[0])
        calls.append((base.budget, base.hysteresis, n_sc, perturb_pool))
        return jnp.zeros((jax.tree.leaves(raw)[0].shape[0], *keys.shape), cfg.jdtype)

    return fake


@pytest.mark.parametrize("fixed,estimator", [(None, "soft"), ("fixed_sum", "soft"),
                                             (None, "smoothed")])
def test_cli_wires_each_scenarios_budget_mode(tmp_path, capsys, monkeypatch, fixed,
                                              estimator):
    """``narset tune`` with the default held-out scenarios and baselines (rollouts
    stubbed): training, random search, the surrogate report and evaluation get each
    scenario's recommended mode (spoofing: global) unless ``--params`` sets ``budget``;
    every controller is evaluated hard; the mode is in the table, evaluation.json and the
    summary, and params.toml carries a budget line only when it was fixed. The smoothed
    estimator trains and reports on the hard controller and perturbs the pool only in the
    per-region mode."""
    trained, calls, relaxed, smoothed = [], [], [], []
    monkeypatch.setattr(tune_training, "train", _fake_train(trained))
    monkeypatch.setattr(tune_evaluation, "rollout_objectives", _recording_objectives(calls))
    monkeypatch.setattr(tune_loss, "population_objectives", _recording_population(relaxed))
    monkeypatch.setattr(tune_estimators, "smoothed_population", _recording_smoothed(smoothed))
    start = tmp_path / "start.toml"
    start.write_text("beta = 0.7\n" + (f'budget = "{fixed}"\n' if fixed else ""))
    out, summary = tmp_path / "run", tmp_path / "summary.json"
    argv = ["tune", "--scenario", "crisis", "--scenario", "spoofing", "--iters", "2",
            "--regions", "4", "--steps", "3", "--batch", "2", "--params", str(start),
            "--out", str(out), "--no-progress", "--json", str(summary),
            "--estimator", estimator]
    assert main(argv) == 0
    text = capsys.readouterr().out
    hyst = "hard" if estimator == "smoothed" else "soft"
    assert trained == [(fixed, hyst, ["crisis", "spoofing"])]
    want = {n: fixed or ("global" if n == "spoofing" else "region") for n in sims.SCENARIOS}
    baselines = [c for c in sims.CONTROLLERS if c != "narset"]
    # Random search: 2 candidates x 2 training scenarios; the surrogate report's final
    # params on the 2 training scenarios; then 5 scenarios x (initial, tuned, random
    # search and the four baselines).
    assert len(calls) == 2 * 2 + 2 + len(sims.SCENARIOS) * (3 + len(baselines))
    for budget, hyst, _, name in calls:
        assert (budget, hyst) == (want[name], "hard"), name
    evaluated = {(c, n) for _, _, c, n in calls[6:]}
    # The surrogate report's relaxed rollouts: one call per budget mode, soft (or smoothed).
    if estimator == "smoothed":
        assert relaxed == []
        assert smoothed == [("region", "hard", 1, True), ("global", "hard", 1, False)]
    else:
        assert smoothed == []
        assert relaxed == ([("fixed_sum", "soft", 2)] if fixed else
                           [("region", "soft", 1), ("global", "soft", 1)])
    assert evaluated == {(c, n) for c in ("narset", *baselines) for n in sims.SCENARIOS}
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["protocol"]["budget"] == want
    assert ev["protocol"]["held_out_scenarios"] == ["dropout", "heterogeneous", "steady"]
    assert set(ev["results"]["spoofing"]) == {"initial", "tuned", "random_search", *baselines}
    assert json.loads(summary.read_text())["budget"] == want
    tag = fixed or "global"
    assert f"spoofing (trained on, budget {tag})" in text
    assert f"dropout (held-out, budget {fixed or 'region'})" in text
    params = (out / "params.toml").read_text()
    assert ("budget =" in params) == (fixed is not None)
    assert resolve_params(str(out / "params.toml"), sims.load_scenario("spoofing"),
                          None).budget == tag
