"""Gradient tuning through real rollouts, at a tiny size: the gradient against finite
differences, its finiteness under NaN/Inf bursts, and ``narset tune`` end to end (exact
resume, outputs, the honest evaluation protocol, each scenario's budget mode).

Every test here shares one compiled gradient program (float64, N = 8 regions, T = 10
windows, one scenario of the per-region budget, two seeds, ``jax.checkpoint`` per window)
and two hard rollout programs (narset with the per-region and the global budget):
compiling them is most of this file's time, so keep the CLI runs' settings equal to
``CFG``'s."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.cli import main
from narset_jax.params import NarsetParams
from sims import tune
from sims.simulate import resolve_params
from sims.tune import checkpoint as tune_checkpoint

N, T, B = 8, 10, 2
CFG = tune.TuneConfig(N, T, dtype="float64", checkpoint=True)
KEYS = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, B)
WEIGHTS = jax.tree.map(lambda w: jnp.asarray(w, jnp.float64), sims.DEFAULT_WEIGHTS)
ONE = jnp.asarray(1.0, jnp.float64)

# A small case where every tuned parameter matters: the pool binds with Tamiyo in
# overdrive (alpha), rent lies between its bands (rate_growth_ratio), LSTM health crosses
# its warning level (rate_lstm_health), and repair mode is entered and left quickly.
FD_BASE = NarsetParams(
    hysteresis="soft",
    pool=1.2,
    gain_T_consol=1.2,
    growth_green=1.05,
    theta_enter=0.2,
    theta_exit=0.1,
    k_enter=1.5,
    k_exit=2.0,
    lstm_warn=1.1,
    lstm_critical=4.0,
).astype(jnp.float64)


def _stacked(scenario):
    return tune.stack_scenarios([scenario]).astype(jnp.float64)


def _loss_grad(raw, scenario, base=FD_BASE):
    loss, _, grad, gnorm = tune.loss_and_grad(
        raw, base, _stacked(scenario), KEYS, WEIGHTS, ONE, cfg=CFG
    )
    return loss, grad, gnorm


@pytest.mark.parametrize(
    "budget,scenario_name",
    # The global pool with the seed cost: the spend jumps as the price moves, and the
    # price then sits at a jump (budget.project_global_pool's tie derivative).
    [("region", "crisis"), ("global", "spoofing")],
)
def test_gradient_matches_central_differences(budget, scenario_name):
    """d loss / d raw for every tuned parameter, against central differences (h = 1e-5)
    in float64. The raw -> params map is a bijection with a triangular Jacobian whose
    diagonal never vanishes, so agreement on every raw coordinate is agreement on every
    tuned parameter's gradient.

    Relative error: ``|g - fd| / max(|g|, |fd|, 1e-6 * max_j |g_j|)``; the floor only
    matters for a component a million times smaller than the largest.
    """
    scenario = sims.load_scenario(scenario_name)
    base = FD_BASE.replace(budget=budget)
    raw = tune.from_params(base, jnp.float64)
    _, grad, _ = _loss_grad(raw, scenario, base)
    g = {n: float(grad[n]) for n in tune.TUNED}
    gmax = max(abs(v) for v in g.values())
    h = 1e-5
    errors = {}
    for name in tune.TUNED:
        plus = dict(raw, **{name: raw[name] + h})
        minus = dict(raw, **{name: raw[name] - h})
        fd = (
            float(_loss_grad(plus, scenario, base)[0]) - float(_loss_grad(minus, scenario, base)[0])
        ) / (2 * h)
        errors[name] = abs(g[name] - fd) / max(abs(g[name]), abs(fd), 1e-6 * gmax)
        # Every tuned parameter has a non-negligible gradient in this case.
        assert abs(g[name]) > 1e-6 * gmax, (name, g[name])
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-3, (worst, errors[worst], g[worst])


@partial(jax.jit, static_argnums=(2,))
def _nonfinite_readings(scenario, key, n_regions):
    """NaN/Inf telemetry of the dropout ecology under a fixed action. Bursts do not depend
    on the decisions (their draws are keyed by region and window), so these are exactly the
    bursts the controlled rollout sees."""
    state = sims.init(key, n_regions, scenario, jnp.float64)
    z = jnp.full((n_regions,), 0.5, jnp.float64)
    action = sims.Action(x_T=z, x_E=z, tier_T=z, tier_E=z)

    def body(s, t):
        s, tel = sims.sim_step(scenario, s, action, t)
        return s, jnp.sum(~jnp.isfinite(tel.loss)) + jnp.sum(~jnp.isfinite(tel.lstm_health))

    _, bad = jax.lax.scan(body, state, jnp.arange(T, dtype=jnp.int32))
    return jnp.sum(bad)


def test_gradient_is_finite_with_nan_bursts():
    scenario = sims.load_scenario("dropout")
    bursts = sum(int(_nonfinite_readings(scenario, k, N)) for k in KEYS[0])
    assert bursts > 0, "the test seeds must produce NaN/Inf telemetry"
    raw = tune.from_params(FD_BASE, jnp.float64)
    loss, grad, gnorm = _loss_grad(raw, scenario)
    assert np.isfinite(float(loss))
    assert np.isfinite(float(gnorm)) and float(gnorm) > 0
    assert all(np.isfinite(float(v)) for v in grad.values())


# ---------------------------------------------------------------------------------------
# narset tune: trained on crisis (per region), evaluated also on the held-out spoofing,
# which recommends the global pool. Same N, T, B, dtype and remat as CFG.

# A warm start (ES's default; the gradient's is 0): a random search of K / 2 candidates,
# then K_M gradient iterations from its best.
K, K_M = 8, 4
COMMON = ["tune", "--scenario", "crisis", "--iters", str(K), "--regions", str(N), "--steps",
          str(T), "--batch", str(B), "--dtype", "float64", "--no-progress",
          "--warm-start", "0.5"]
# No baselines here (each would compile two more rollout programs); that every baseline is
# evaluated, hard and under each scenario's budget mode, is checked with stubs in
# test_tune_units.py.
EVAL = ["--holdout", "spoofing", "--baselines", "none"]
# Starting params without a budget line (so each scenario's recommendation applies) and
# with a pool small enough to bind at this size, so that the global pool and the
# per-region budget give different spoofing rollouts.
START = "pool = 1.0\n"


def _hard_objectives(params, scenario, seeds=8, seed=0):
    """What the evaluation must have computed: hard rollouts on the held-out keys."""
    keys = jax.random.split(tune.run_keys(seed, tune.STREAM_EVAL), seeds)
    p = params.replace(hysteresis="hard").astype(jnp.float64)
    return [float(sims.objective(sims.rollout(p, scenario.astype(jnp.float64), k, N, T,
                                              dtype=jnp.float64).metrics))
            for k in keys]


def test_cli_resume_is_bit_for_bit(tmp_path, capsys, monkeypatch):
    saved = []
    real_save = tune_checkpoint.save_checkpoint

    def save(path, state, history, meta):
        saved.append((path.parent.name, state.iteration))
        real_save(path, state, history, meta)

    monkeypatch.setattr(tune_checkpoint, "save_checkpoint", save)
    start = tmp_path / "start.toml"
    start.write_text(START)
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = COMMON + ["--params", str(start), "--checkpoint-every", "2"]
    assert main(common + EVAL + ["--out", str(full)]) == 0
    assert main(common + ["--out", str(cut), "--stop-after", "3"]) == 0
    assert (cut / "checkpoint.npz").is_file()
    assert not (cut / "params.toml").exists()
    summary = tmp_path / "summary.json"
    # Settings come from the checkpoint; only evaluation flags are given again.
    rc = main(["tune", "--out", str(cut), "--resume", "--no-progress", *EVAL,
               "--json", str(summary)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "crisis (trained on, budget region)" in out
    assert "spoofing (held-out, budget global)" in out
    # Checkpoints every 2 iterations, at the stop and at the end.
    assert saved == [("full", 2), ("full", 4), ("cut", 2), ("cut", 3), ("cut", 4)]

    # Identical tuned params, loss history and evaluation.
    assert (full / "params.toml").read_text() == (cut / "params.toml").read_text()
    h_full = json.loads((full / "history.json").read_text())
    h_cut = json.loads((cut / "history.json").read_text())
    for key in ("loss", "grad_norm", "objective", "temp_factor", "finite"):
        assert h_full["history"][key] == h_cut["history"][key], key
    hist = h_cut["history"]
    assert len(hist["loss"]) == K_M and all(hist["finite"])
    # The gradient norm (before clipping) is reported for every iteration.
    assert len(hist["grad_norm"]) == K_M and all(np.isfinite(hist["grad_norm"]))
    # The warm start: the gradient started from the best of the random search's first
    # K - K_M candidates (recomputed identically on --resume).
    warm = h_cut["warm_start"]
    scores = h_cut["random_search"]["scores"]
    assert warm == h_full["warm_start"]
    assert (warm["random_search_candidates"], warm["method_iterations"]) == (K - K_M, K_M)
    assert warm["start"] == int(np.argmin(scores[:K - K_M]))
    assert warm["start_score"] == scores[warm["start"]]
    assert all(g > 0 for g in hist["grad_norm"])
    assert h_cut["settings"]["budget"] is None
    e_full = json.loads((full / "evaluation.json").read_text())
    e_cut = json.loads((cut / "evaluation.json").read_text())
    assert e_full == e_cut

    # params.toml: hard hysteresis, loadable by narset simulate --params, which (no budget
    # line) runs spoofing with the global pool and crisis per region, as evaluated.
    tuned = NarsetParams.from_toml(cut / "params.toml")
    initial = NarsetParams.from_toml(start)
    assert tuned.hysteresis == "hard" and float(tuned.pool) == 1.0
    assert tuned != initial
    spoofing, crisis = sims.load_scenario("spoofing"), sims.load_scenario("crisis")
    assert resolve_params(str(cut / "params.toml"), spoofing, None).budget == "global"
    assert resolve_params(str(cut / "params.toml"), crisis, None).budget == "region"
    for name in ("loss_curve.png", "params_before_after.png", "random_search_params.toml"):
        assert (cut / name).stat().st_size > 0

    # The evaluation protocol: hard controller, >= 8 held-out seeds, a held-out scenario,
    # the starting params and random search with the same number of rollouts.
    proto = e_cut["protocol"]
    assert proto["hysteresis"] == "hard" and proto["seeds"] >= 8
    assert proto["held_out_scenarios"] == ["spoofing"]
    assert proto["budget"] == {"crisis": "region", "spoofing": "global"}
    assert proto["rollouts"]["gradient"] == proto["rollouts"]["random_search"] == K * B
    for sc_name in ("crisis", "spoofing"):
        rows = e_cut["results"][sc_name]
        assert set(rows) == {"initial", "tuned", "random_search"}
        for row in rows.values():
            ci = row["objective"]
            assert ci["n"] == 8 and ci["lo"] <= ci["mean"] <= ci["hi"]
            assert row["budget"] == proto["budget"][sc_name]
    spoof = e_cut["results"]["spoofing"]
    paired = np.subtract(spoof["tuned"]["objective_values"],
                         spoof["random_search"]["objective_values"])
    assert spoof["tuned"]["versus"]["random_search"]["mean"] == pytest.approx(paired.mean())
    assert "tuned vs random_search: dJ =" in out
    s = json.loads(summary.read_text())
    assert s["status"] == "done" and s["iterations"] == K
    assert s["rollouts"] == {"gradient": K * B, "random_search": K * B}
    assert s["budget"] == proto["budget"]

    # The numbers are those of hard rollouts under each scenario's recommended budget:
    # spoofing with the global pool (here different from the per-region budget's),
    # crisis per region.
    for label, params in (("initial", initial), ("tuned", tuned)):
        want = _hard_objectives(params.replace(budget="global"), spoofing)
        assert spoof[label]["objective_values"] == pytest.approx(want, rel=1e-12), label
        want = _hard_objectives(params, crisis)
        got = e_cut["results"]["crisis"][label]["objective_values"]
        assert got == pytest.approx(want, rel=1e-12), label
    wrong = _hard_objectives(initial.replace(budget="region"), spoofing)
    assert spoof["initial"]["objective_values"] != pytest.approx(wrong, rel=1e-3)


def test_cli_refuses_to_overwrite_or_to_resume_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(COMMON + ["--out", str(out), *EVAL, "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert main(COMMON + ["--out", str(out), *EVAL]) == 2  # a run is already there
    assert "pass --resume" in capsys.readouterr().err
    assert main(["tune", "--out", str(out), "--resume", "--regions", "16"]) == 2
    err = capsys.readouterr().err
    assert "regions" in err and "differs" in err and len(err.strip().splitlines()) == 1
    # A params file that fixes a budget mode is a different run.
    fixed = tmp_path / "fixed.toml"
    fixed.write_text('budget = "region"\n')
    assert main(["tune", "--out", str(out), "--resume", "--params", str(fixed)]) == 2
    err = capsys.readouterr().err
    assert "budget" in err and "differs" in err and len(err.strip().splitlines()) == 1
