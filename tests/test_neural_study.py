"""The neural ecology's evidence: the baseline table under ``--ecology neural`` and
``--ci``, the ``no_overdrive`` controller, the recovery-time metric and the transfer
statistics (``sims.table``, ``sims.controllers``, ``sims.neural_study``).

Cost: one small stylised rollout compile (``no_overdrive``) and two jitted controller
steps; the neural table reuses the shapes of ``tests/test_ecology_neural.py``'s rollout
(``Neural(hidden=16, n_slots=4, steps=10, batch=32)``, ``crisis`` with 1,000 samples,
N = 4, T = 5, Narset, recorded), so in a whole-suite run it compiles nothing new.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.params import NarsetParams
from narset_jax.telemetry import Telemetry
from sims.controllers import NoOverdrive
from sims.ecologies.neural import NEURAL_SCENARIO_DIR, Neural, load_neural_scenario
from sims.neural_study import recovery_time, transfer
from sims.table import baseline_table, main, markdown_ci, neural_settings

ECO = Neural(hidden=16, n_slots=4, steps=10, batch=32)


def test_recovery_time_on_a_synthetic_curve():
    # Pre-switch level: mean of windows 5..9 = 0.5; the switch acts from window 10.
    curve = [0.1] * 5 + [0.4, 0.5, 0.6, 0.5, 0.5] + [0.2, 0.3, 0.49, 0.5, 0.7, 0.3]
    assert recovery_time(curve, 10) == (4, False)  # window 13 is the 4th on the new task
    assert recovery_time(curve, 10, pre_windows=1) == (4, False)
    assert recovery_time(curve[:13], 10) == (4, True)  # never regained: censored
    assert recovery_time([0.5] * 10 + [0.9], 10) == (1, False)
    with pytest.raises(ValueError, match="switch_at"):
        recovery_time(curve, 3)  # fewer than pre_windows windows before the switch


def test_no_overdrive_is_narset_capped_at_one():
    sc = sims.load_scenario("crisis")
    r = sims.rollout(NarsetParams(), sc, jax.random.key(0), 16, 30, controller="no_overdrive",
                     record=True)
    d = r.decisions
    assert float(jnp.max(d.x_T)) <= 1 and float(jnp.max(d.x_E)) <= 1
    assert float(jnp.max(d.target_T)) <= 1 and float(r.metrics.overdrive_fraction) == 0
    assert float(r.metrics.progress) > 0
    assert "no_overdrive" not in sims.CONTROLLERS  # an ablation, not a table baseline
    # Open loop on a persistent crisis (a rollback, 4 anomalies and hidden RMS 12 every
    # window): identical to Narset until Narset's first target above 1, which the cap holds
    # at 1; and never above 1 after.
    z = jnp.zeros(16)
    tel = Telemetry(loss=z + 3, rollbacks=z + 1, anomalies=z + 4, nonfinite=z,
                    lstm_health=z + 12, growth_ratio=z + 1, churn=z, alpha_shock=z,
                    active_seeds=z, fossilised_seeds=z, valid=z == 0, boundary=z == 0)
    p = NarsetParams()
    ctl = (sims.NarsetController(), NoOverdrive())
    steps = [jax.jit(c.step) for c in ctl]
    (sa, sb), capped = [c.init(16) for c in ctl], False
    for _ in range(12):
        (sa, da), (sb, db) = steps[0](p, sa, tel), steps[1](p, sb, tel)
        assert float(jnp.max(db.x_T)) <= 1 and float(jnp.max(sb.target_T)) <= 1
        if not capped and float(jnp.max(da.target_T)) > 1:
            capped = True
            np.testing.assert_array_equal(np.asarray(db.target_T),
                                          np.minimum(np.asarray(da.target_T), 1))
        elif not capped:
            for x, y in zip(jax.tree.leaves(da), jax.tree.leaves(db), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert capped and float(jnp.max(da.x_T)) > 1  # the cap was exercised


def test_the_table_runs_on_the_neural_ecology_with_intervals():
    sc = load_neural_scenario("crisis", num_samples=1000, n_val=128)
    res = baseline_table(4, 5, seeds=(0,), scenarios=[sc], controllers=["narset"],
                         progress=False, ecology=ECO, params={"same": NarsetParams()},
                         ci=True)
    assert list(res["objective"]) == ["crisis"] and list(res["suite"]) == ["narset",
                                                                          "narset:same"]
    m = res["metrics"]["crisis"]["narset"]
    assert 0 <= m["test_acc_final"] <= 1 and 0 <= m["test_acc_mean"] <= 1
    # Compute: at least the host trains every window (L*w + w + H*10 + 10 parameters).
    host = 40 * 16 + 16 + 16 * 10 + 10
    assert m["compute"] >= host * 5 * ECO.steps / 1e6
    # The same params as a second row give the same numbers.
    assert res["per_seed"]["crisis"]["narset:same"] == res["per_seed"]["crisis"]["narset"]
    ci = res["ci"]["crisis"]["narset"]["test_acc_final"]
    assert ci["lo"] == ci["mean"] == ci["hi"] and ci["n"] == 1
    assert res["config"]["ecology"] == "neural" and res["config"]["ecology_settings"][
        "hidden"] == 16
    text = markdown_ci(res)
    assert "test acc (final)" in text and "| narset:same |" in text


def test_table_cli_rejects_bad_neural_settings(capsys):
    assert neural_settings(["hidden=8", "steps=2"]) == {"hidden": 8, "steps": 2}
    for bad in (["hidden"], ["width=3"], ["steps=0"], ["batch=x"]):
        with pytest.raises(ValueError, match="--neural"):
            neural_settings(bad)
    with pytest.raises(SystemExit):
        main(["--neural", "hidden=8"])  # needs --ecology neural
    assert "--neural needs --ecology neural" in capsys.readouterr().err


def _table(obj: dict, acc_key: str, per_seed=None) -> dict:
    rows = list(next(iter(obj.values())))
    return {
        "objective": obj,
        "metrics": {s: {r: {acc_key: -v} for r, v in d.items()} for s, d in obj.items()},
        "suite": {r: float(np.mean([obj[s][r] for s in obj])) for r in rows},
        "per_seed": per_seed,
    }


def test_transfer_ranks_and_paired_tuned_effect():
    rows = ["narset", "static_split", "always_overdrive", "narset:tuned"]
    sty = _table({"steady": dict(zip(rows, [1.0, 2.0, 3.0, 0.0])),
                  "crisis": dict(zip(rows, [1.0, 2.0, 3.0, 0.0]))}, "progress")
    seeds = {"steady": {"narset": {"objective": [1.0, 2.0], "test_acc_final": [0.5, 0.6],
                                   "overdrive_fraction": [0.1, 0.1], "rollbacks": [1, 1]},
                        "narset:tuned": {"objective": [2.0, 3.5], "test_acc_final": [0.4, 0.6],
                                         "overdrive_fraction": [0.0, 0.0],
                                         "rollbacks": [0, 1]}}}
    seeds["crisis"] = seeds["steady"]
    neu = _table({"steady": dict(zip(rows, [10.0, 20.0, 30.0, 0.0])),
                  "crisis": dict(zip(rows, [3.0, 2.0, 1.0, 4.0]))}, "test_acc_final", seeds)
    tr = transfer(sty, neu)
    assert tr["rows"] == rows
    assert tr["objective"]["steady"]["rho"] == pytest.approx(1.0)
    assert tr["objective"]["crisis"]["rho"] == pytest.approx(-1.0)
    assert tr["accuracy"]["steady"]["rho"] == pytest.approx(1.0)
    d = tr["tuned"]["neural"]["steady"]["objective"]
    assert d["mean"] == pytest.approx(1.25) and d["n"] == 2
    assert "stylised" not in tr["tuned"]  # no per-seed values there


def test_the_task_switch_scenario_switches_every_region():
    sc = load_neural_scenario(NEURAL_SCENARIO_DIR / "task_switch.toml", num_samples=1000,
                              n_val=128)
    assert sc.name == "task_switch"
    assert float(sc.switch_at) == 20 and float(sc.switch_fraction) == 1
    base = load_neural_scenario("steady", num_samples=1000, n_val=128)
    assert float(sc.width_frac) == 0.5 and float(sc.lr) == float(base.lr)
