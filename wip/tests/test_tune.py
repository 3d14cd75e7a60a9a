"""Gradient tuning: the rollout gradient against finite differences, finiteness under NaN
bursts, and the CLI's exact resume. Every test here shares one compiled gradient program
(float64, N = 8 regions, T = 10 windows, one scenario, two seeds, no remat)."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax import tune
from narset_jax.cli import main
from narset_jax.params import NarsetParams

N, T, B = 8, 10, 2
CFG = tune.TuneConfig(N, T, dtype="float64", checkpoint=False)
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


def _loss_grad(raw, scenario):
    loss, _, grad, gnorm = tune.loss_and_grad(
        raw, FD_BASE, _stacked(scenario), KEYS, WEIGHTS, ONE, cfg=CFG
    )
    return loss, grad, gnorm


def test_gradient_matches_central_differences():
    """d loss / d raw for every tuned parameter, against central differences (h = 1e-5)
    in float64. The raw -> params map is a bijection with a triangular Jacobian whose
    diagonal never vanishes, so agreement on every raw coordinate is agreement on every
    tuned parameter's gradient.

    Relative error: ``|g - fd| / max(|g|, |fd|, 1e-6 * max_j |g_j|)``; the floor only
    matters for a component a million times smaller than the largest.
    """
    scenario = sims.load_scenario("crisis")
    raw = tune.from_params(FD_BASE, jnp.float64)
    _, grad, _ = _loss_grad(raw, scenario)
    g = {n: float(grad[n]) for n in tune.TUNED}
    gmax = max(abs(v) for v in g.values())
    h = 1e-5
    errors = {}
    for name in tune.TUNED:
        plus = dict(raw, **{name: raw[name] + h})
        minus = dict(raw, **{name: raw[name] - h})
        fd = (float(_loss_grad(plus, scenario)[0]) - float(_loss_grad(minus, scenario)[0])) / (
            2 * h
        )
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


def test_cli_resume_is_bit_for_bit(tmp_path, capsys):
    common = [
        "tune", "--scenario", "crisis", "--iters", "4", "--regions", str(N), "--steps", str(T),
        "--batch", str(B), "--checkpoint-every", "2", "--dtype", "float64", "--no-remat",
        "--holdout", "dropout", "--no-progress", "--baselines", "static_split,no_inertia",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(common + ["--out", str(full)]) == 0
    assert main(common + ["--out", str(cut), "--stop-after", "2"]) == 0
    assert (cut / "checkpoint.npz").is_file()
    assert not (cut / "params.toml").exists()
    summary = tmp_path / "summary.json"
    # Settings come from the checkpoint; only evaluation flags are given again.
    rc = main(["tune", "--out", str(cut), "--resume", "--holdout", "dropout", "--no-progress",
               "--baselines", "static_split,no_inertia", "--json", str(summary)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "crisis (trained on)" in out and "dropout (held-out)" in out

    # Identical tuned params, loss history and evaluation.
    assert (full / "params.toml").read_text() == (cut / "params.toml").read_text()
    h_full = json.loads((full / "history.json").read_text())
    h_cut = json.loads((cut / "history.json").read_text())
    for key in ("loss", "grad_norm", "objective", "temp_factor", "finite"):
        assert h_full["history"][key] == h_cut["history"][key], key
    assert len(h_cut["history"]["loss"]) == 4
    e_full = json.loads((full / "evaluation.json").read_text())
    e_cut = json.loads((cut / "evaluation.json").read_text())
    assert e_full == e_cut

    # Outputs: loadable hard params, plots, an honest protocol.
    tuned = NarsetParams.from_toml(cut / "params.toml")
    assert tuned.hysteresis == "hard"
    assert tuned != NarsetParams()
    for name in ("loss_curve.png", "params_before_after.png", "random_search_params.toml"):
        assert (cut / name).stat().st_size > 0
    proto = e_cut["protocol"]
    assert proto["hysteresis"] == "hard" and proto["seeds"] >= 8
    assert proto["held_out_scenarios"] == ["dropout"]
    assert proto["rollouts"]["gradient"] == proto["rollouts"]["random_search"] == 4 * B
    rows = e_cut["results"]["dropout"]
    assert set(rows) == {"defaults", "tuned", "random_search", "static_split", "no_inertia"}
    for row in rows.values():
        ci = row["objective"]
        assert ci["n"] == 8 and ci["lo"] <= ci["mean"] <= ci["hi"]
    paired = np.subtract(rows["tuned"]["objective_values"],
                         rows["random_search"]["objective_values"])
    assert rows["tuned"]["versus"]["random_search"]["mean"] == pytest.approx(paired.mean())
    assert "tuned vs random_search: dJ =" in out
    s = json.loads(summary.read_text())
    assert s["status"] == "done" and s["iterations"] == 4
    assert s["rollouts"] == {"gradient": 8, "random_search": 8}


def test_cli_refuses_to_overwrite_or_to_resume_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["tune", "--scenario", "crisis", "--iters", "2", "--regions", str(N), "--steps",
              str(T), "--batch", str(B), "--dtype", "float64", "--no-remat", "--no-progress",
              "--out", str(out), "--holdout", "dropout"]
    assert main(common + ["--stop-after", "1"]) == 0
    capsys.readouterr()
    assert main(common) == 2  # a run is already there
    assert "pass --resume" in capsys.readouterr().err
    assert main(["tune", "--out", str(out), "--resume", "--regions", "16"]) == 2
    err = capsys.readouterr().err
    assert "regions" in err and "differs" in err and len(err.strip().splitlines()) == 1


def test_train_rejects_hard_hysteresis():
    with pytest.raises(ValueError, match="hysteresis"):
        tune.train(NarsetParams(), [sims.load_scenario("steady")], iters=1, cfg=CFG)
