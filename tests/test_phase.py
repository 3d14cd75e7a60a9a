"""Phase diagrams: axes, validation, the thrash indicator, and the jitted grid against a
Python loop over the same cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.params import NarsetParams
from sims import phase
from sims.phase import (
    AXIS_NAMES,
    EWMA_FIELDS,
    GAP_FLOOR,
    METRICS,
    Axis,
    PhaseError,
    axis_coordinate,
    axis_fields,
    cell_values,
    phase_grid,
    thrash,
)

P = NarsetParams()
S = sims.Scenario()


# ---- the grid against a Python loop --------------------------------------------------------


def _loop_over_cells(x, y, *, scenario, n_regions, n_steps, n_seeds, seed, dtype):
    """The reference: one un-vmapped rollout per cell and seed."""
    keys = jax.random.split(jax.random.key(seed), n_seeds)
    out = {m: np.zeros((y.n, x.n, n_seeds)) for m in METRICS}
    for iy, yv in enumerate(y.values):
        for ix, xv in enumerate(x.values):
            p, s = P, scenario
            for axis, v in ((x, xv), (y, yv)):
                fields = {k: float(a[0]) for k, a in axis_fields(axis.name, [v], P, S).items()}
                if axis.info.target == "params":
                    p = p.replace(**fields)
                else:
                    s = s.replace(**fields)
            for k in range(n_seeds):
                m = sims.rollout(p, s, keys[k], n_regions, n_steps, dtype=dtype).metrics
                for name in METRICS:
                    if name != "thrash":
                        out[name][iy, ix, k] = float(getattr(m, name))
    out["thrash"] = thrash(out["flap_rate"], out["budget_churn"])
    return out


def test_jitted_grid_equals_python_loop(monkeypatch):
    # 2 x 3 cells (a params axis that sets two leaves, and a scenario axis), run in two
    # chunks of rows (the second padded), R = 8, T = 20, S = 2.
    x = Axis.parse("gap:0:0.3:2")
    y = Axis.parse("noise:0:0.6:3")
    scenario = sims.load_scenario("crisis")
    traced = []
    real = phase._substitute
    monkeypatch.setattr(phase, "_substitute", lambda m, v: traced.append(1) or real(m, v))
    progress = []
    grid = phase_grid(
        x, y, scenario=scenario, n_regions=8, n_steps=20, n_seeds=2, seed=3,
        dtype=jnp.float64, chunks=2, on_progress=lambda d, t: progress.append((d, t)),
    )
    # One trace of one cell (params and scenario substituted once each): the cells are a
    # vmapped axis of one compiled call, not a Python loop.
    assert len(traced) == 2
    assert progress == [(0, 6), (4, 6), (6, 6)]
    assert grid.config["chunks"] == 2
    ref = _loop_over_cells(x, y, scenario=scenario, n_regions=8, n_steps=20, n_seeds=2,
                           seed=3, dtype=jnp.float64)
    for name in METRICS:
        np.testing.assert_allclose(grid.samples[name], ref[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
        np.testing.assert_allclose(grid.mean[name], ref[name].mean(-1), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grid.std[name], ref[name].std(-1, ddof=1), rtol=1e-7,
                                   atol=1e-12)
    # The cells differ: the swept values reach the simulation.
    assert np.ptp(grid.mean["budget_churn"]) > 0
    rows = grid.rows()
    assert len(rows) == 6 and rows[1]["ix"] == 1 and rows[2]["iy"] == 1
    assert rows[5]["noise"] == pytest.approx(0.6) and rows[5]["gap"] == pytest.approx(0.3)
    d = grid.to_dict()
    assert np.asarray(d["metrics"]["thrash"]["mean"]).shape == (3, 2)


# ---- axes ------------------------------------------------------------------------------------


def test_axis_parse_and_values():
    a = Axis.parse("beta:0.02:1:40")
    assert (a.name, a.lo, a.hi, a.n) == ("beta", 0.02, 1.0, 40)
    assert a.values[0] == 0.02 and a.values[-1] == 1.0 and len(a.values) == 40
    assert str(a) == "beta:0.02:1:40"
    assert Axis.parse(" gap : 0 : 0.5 : 3 ").values.tolist() == [0.0, 0.25, 0.5]


@pytest.mark.parametrize(
    "text, match",
    [
        ("bta:0:1:4", "unknown axis 'bta'; valid axes: alpha, beta, gap, k, ewma, pool"),
        ("beta:0:1", "expected NAME:LO:HI:N"),
        ("beta:1:0.5:10", "lo must be < hi, got lo=1 and hi=0.5"),
        ("beta:0.5:0.5:10", "lo must be < hi"),
        ("beta:0.1:1:1", "resolution must be an int >= 2, got 1"),
        ("beta:0.1:1:2.5", "resolution N must be an int >= 2, got '2.5'"),
        ("beta:a:1:4", "LO and HI must be numbers"),
        ("beta:0:inf:4", "must be finite"),
    ],
)
def test_axis_parse_errors(text, match):
    with pytest.raises(PhaseError, match=match) as err:
        Axis.parse(text)
    assert "\n" not in str(err.value)


def test_unknown_axis_lists_every_valid_name():
    with pytest.raises(PhaseError) as err:
        Axis.parse("nois:0:1:4")
    for name in AXIS_NAMES:
        assert name in str(err.value)


def test_axis_fields_mapping():
    f = axis_fields("gap", [0.0, 0.25, 0.5], P, S)
    np.testing.assert_allclose(f["theta_enter"] - f["theta_exit"], [GAP_FLOOR, 0.25, 0.5])
    np.testing.assert_allclose((f["theta_enter"] + f["theta_exit"]) / 2, 0.275)
    f = axis_fields("k", [2.0, 4.0], P, S)
    np.testing.assert_allclose(f["k_enter"], [1.0, 3.0])
    np.testing.assert_allclose(f["k_exit"], [3.0, 5.0])
    f = axis_fields("ewma", [0.3], P, S)
    assert set(f) == set(EWMA_FIELDS)
    assert list(axis_fields("shock_rate", [0.1], P, S)) == ["shock_rate"]


def test_axis_coordinate_is_the_inverse_at_the_defaults():
    expected = {"alpha": 2.0, "beta": 0.3, "gap": 0.25, "k": 4.0, "ewma": 0.5, "pool": 1.5,
                "noise": 0.05, "shock_rate": 0.005, "spoofer_fraction": 0.0}
    for name, value in expected.items():
        assert axis_coordinate(name, P, S) == pytest.approx(value, abs=1e-7)
        fields = axis_fields(name, [axis_coordinate(name, P, S)], P, S)
        src = P if phase.AXES[name].target == "params" else S
        for field, v in fields.items():
            assert v[0] == pytest.approx(float(getattr(src, field)), abs=1e-7), field


@pytest.mark.parametrize(
    "x, y, match",
    [
        ("gap:0:0.6:3", "beta:0.1:1:3", r"gap=0.6 puts theta_exit < 0 .* use gap <= 0.55"),
        ("gap:-0.1:0.2:3", "beta:0.1:1:3", "gap must be >= 0"),
        ("k:1:5:3", "beta:0.1:1:3", r"dwell < 1 window .* use k >= 2"),
        ("beta:0:1:3", "gap:0:0.5:3", r"axis beta:0:1:3: NarsetParams.beta must be in \(0, 1\]"),
        ("alpha:-1:2:3", "noise:0:1:3", "NarsetParams.alpha must be in"),
        ("alpha:1:2:3", "noise:0:3:3", r"Scenario.noise must be in \[0, 2\], got 3"),
        ("ewma:0:1:3", "beta:0.1:1:3", "NarsetParams.rate_rollbacks must be in"),
        ("beta:0.1:1:3", "beta:0.2:1:3", "different axes"),
    ],
)
def test_cell_values_reject_bad_ranges(x, y, match):
    with pytest.raises(PhaseError, match=match) as err:
        cell_values(Axis.parse(x), Axis.parse(y), P, S)
    assert "\n" not in str(err.value)


def test_cell_values_layout_is_row_major():
    pv, sv = cell_values(Axis.parse("beta:0.1:0.3:3"), Axis.parse("noise:0:1:2"), P, S)
    np.testing.assert_allclose(pv["beta"], [0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(sv["noise"], [0, 0, 0, 1, 1, 1])


def test_thrash_indicator():
    assert thrash(5.0, 10.0) == pytest.approx(1.0)
    assert thrash(0.0, 0.0) == 0.0
    assert thrash(10.0, 0.0) == pytest.approx(1.0)
    assert thrash(2.0, 5.0, flap_ref=2.0, churn_ref=5.0) == pytest.approx(1.0)


def test_phase_grid_rejects_bad_settings():
    x, y = Axis.parse("beta:0.1:1:2"), Axis.parse("gap:0:0.2:2")
    with pytest.raises(PhaseError, match="regions must be a positive int"):
        phase_grid(x, y, scenario=S, n_regions=0, n_steps=5, n_seeds=1)
    with pytest.raises(PhaseError, match="unknown controller 'nope'"):
        phase_grid(x, y, scenario=S, n_regions=4, n_steps=5, n_seeds=1, controller="nope")
    with pytest.raises(PhaseError, match="dtype must be float32 or float64"):
        phase_grid(x, y, scenario=S, n_regions=4, n_steps=5, n_seeds=1, dtype=jnp.float16)


def test_cli_end_to_end(tmp_path, capsys):
    # Same shapes as the test above, so the compiled grid is reused when both run here.
    from narset_jax.cli import main

    tuned = tmp_path / "tuned.toml"
    tuned.write_text("beta = 0.5\ntheta_enter = 0.35\ntheta_exit = 0.2\n")
    out = tmp_path / "out"
    rc = main([
        "phase", "--x", "gap:0:0.3:2", "--y", "noise:0:0.6:3", "--scenario", "crisis",
        "--regions", "8", "--steps", "20", "--seeds", "2", "--chunks", "2", "--float64",
        "--out", str(out), "--figures", str(tmp_path / "fig"), "--name", "pd",
        "--params", str(tuned), "--json", str(tmp_path / "summary.json"),
        "--compare", "beta=0.9, k_enter=1",
    ])
    assert rc == 0
    captured = capsys.readouterr()
    assert "narset phase" in captured.err  # progress and the closing line go to stderr
    import csv
    import json

    grid = json.loads((out / "pd.json").read_text())
    assert grid["x"]["name"] == "gap" and grid["y"]["values"] == [0.0, 0.3, 0.6]
    assert set(grid["metrics"]) == set(METRICS)
    assert np.asarray(grid["metrics"]["progress"]["std"]).shape == (3, 2)
    labels = [m["label"] for m in grid["markers"]]
    assert labels[0] == "default params" and labels[1].startswith("tuned (tuned.toml)")
    assert grid["markers"][1]["x"] == pytest.approx(0.15)
    rows = list(csv.DictReader((out / "pd.csv").open()))
    assert len(rows) == 6 and "thrash_mean" in rows[0] and "noise" in rows[0]
    assert [float(r["noise"]) for r in rows] == [0.0, 0.0, 0.3, 0.3, 0.6, 0.6]
    assert all(float(r["thrash_std"]) >= 0 for r in rows)
    assert (tmp_path / "fig" / "pd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "fig" / "pd.svg").read_bytes()[:500]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cells"] == 6 and summary["chunks"] == 2
    # The default (gap 0.25, noise 0.05) is nearest the cell (gap 0.3, noise 0).
    assert summary["markers"][0]["thrash_nearest_cell"] == pytest.approx(grid["metrics"][
        "thrash"]["mean"][0][1])
    assert summary["outputs"]["png"].endswith("pd.png")
    # The comparison reuses the compiled program and lands in the JSON and the figure.
    (variant,) = summary["variants"]
    assert variant["overrides"] == {"beta": 0.9, "k_enter": 1.0}
    assert variant["compile_s"] < 1.0
    assert grid["variants"][0]["label"] == "beta=0.9, k_enter=1"
    assert np.asarray(grid["variants"][0]["thrash"]["mean"]).shape == (3, 2)
    assert "k_enter=1" in (tmp_path / "fig" / "pd.svg").read_text()
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []
