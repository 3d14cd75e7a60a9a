"""``narset simulate`` and ``narset replay`` end to end, and their bad-input errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narset_jax.cli import main
from narset_jax.step import DECISION_COLUMNS

N, T = 12, 5
ARGS = ["--regions", str(N), "--steps", str(T), "--seed", "4", "--chunk", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    js = out.parent / "summary.json"
    rc = main(["simulate", "--scenario", "dropout", "--out", str(out), "--json", str(js),
               *ARGS])
    assert rc == 0
    return out


def test_simulate_writes_log_manifest_summary_and_plots(run_dir, capsys):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] is True and not (run_dir / "INCOMPLETE").exists()
    assert manifest["n_rows"] == N * T and manifest["seed"] == 4
    assert len(manifest["parts"]) == 3  # chunks of 2, 2, 1 windows
    cfg = manifest["config"]
    assert cfg["scenario"] == "dropout" and cfg["controller"] == "narset"
    assert cfg["scenario_values"]["dropout_rate"] > 0
    assert {"jax", "narset_jax"} <= set(manifest["versions"])
    assert all(len(p["sha256"]) == 64 for p in manifest["parts"])
    table = pq.read_table(run_dir / "decisions" / "part-00000.parquet")
    assert table.column_names == list(DECISION_COLUMNS)
    assert table.num_rows == 2 * N
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["metrics"]) >= {
        "progress", "flap_rate", "budget_churn", "overdrive_fraction", "unsafe_lysis",
        "rollbacks", "spoofer_capture", "utilisation",
    }
    assert np.isfinite(summary["objective"])
    assert json.loads((run_dir.parent / "summary.json").read_text()) == summary
    for name in ("regions.png", "ecology.png", "mode_switches.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000


def test_replay_matches_bit_for_bit(run_dir, capsys, tmp_path):
    js = tmp_path / "replay.json"
    assert main(["replay", str(run_dir), "--no-progress", "--json", str(js)]) == 0
    assert "every decision matches bit for bit" in capsys.readouterr().out
    report = json.loads(js.read_text())
    assert report["ok"] and report["n_rows"] == N * T


def test_replay_catches_a_tampered_log(run_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    f = bad / "decisions" / "part-00001.parquet"
    table = pq.read_table(f)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False).copy()
            for c in table.column_names}
    row = N + 7  # window 3 (second window of part 1), region 7
    cols["spent"][row] = np.float32(cols["spent"][row] + 1e-3)
    pq.write_table(pa.table(cols, schema=table.schema), f)
    assert main(["replay", str(bad), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "part-00001.parquet: sha256 does not match" in out
    assert "MISMATCH at region 7, step 3, field 'spent'" in out


def test_what_if_replay(run_dir, tmp_path, capsys):
    p = tmp_path / "p.toml"
    p.write_text("beta = 1.0\ntheta_enter = 0.2\ntheta_exit = 0.1\n")
    assert main(["replay", str(run_dir), "--params", str(p), "--no-progress"]) == 0
    assert "what-if" in capsys.readouterr().out


def test_interrupted_run_leaves_a_marked_partial_log(tmp_path, monkeypatch, capsys):
    from narset_jax import decision_log

    real = decision_log.DecisionLogWriter.write
    calls = {"n": 0}

    def write(self, decisions):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, decisions)

    monkeypatch.setattr(decision_log.DecisionLogWriter, "write", write)
    out = tmp_path / "cut"
    assert main(["simulate", "--scenario", "dropout", "--out", str(out), "--no-plots",
                 *ARGS]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"the partial log (2 windows) is in {out}" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["parts"]) == 1
    assert (out / "INCOMPLETE").exists() and not (out / "summary.json").exists()
    monkeypatch.undo()
    assert main(["replay", str(out), "--no-progress"]) == 2
    assert "partial log" in capsys.readouterr().err
    assert main(["replay", str(out), "--allow-partial", "--no-progress"]) == 0


def test_baseline_logs_replay_too(tmp_path, capsys):
    out = tmp_path / "static"
    assert main(["simulate", "--scenario", "steady", "--controller", "static_split",
                 "--out", str(out), "--no-plots", *ARGS]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["controller"] == (
        "static_split"
    )
    assert main(["replay", str(out), "--no-progress"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--regions", "0"], "--regions must be a positive integer, got 0"),
        (["--steps", "-3"], "--steps must be a positive integer, got -3"),
        (["--scenario", "stormy"], "valid: steady, crisis, heterogeneous, spoofing, dropout"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    args = ["simulate", "--out", str(tmp_path / "x"), "--regions", "4", "--steps", "2", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_scenario_file_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "mine.toml"
    f.write_text("noise = 0.1\nshock_rate 0.2\n")
    assert main(["simulate", "--scenario", str(f), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "line 2" in err
    f.write_text("noise = 0.1\nshock_rat = 0.2\n")
    assert main(["simulate", "--scenario", str(f), "--out", str(tmp_path / "x")]) == 2
    assert "shock_rat" in capsys.readouterr().err


def test_budget_mode_comes_from_flag_then_file_then_scenario(tmp_path):
    import sims
    from sims.simulate import resolve_params

    spoof = sims.load_scenario("spoofing")
    assert resolve_params(None, spoof, None).budget == "global"
    assert resolve_params(None, spoof, "region").budget == "region"
    f = tmp_path / "p.toml"
    f.write_text('budget = "fixed_sum"\n')
    assert resolve_params(str(f), spoof, None).budget == "fixed_sum"
    f.write_text("beta = 0.5\n")
    p = resolve_params(str(f), spoof, None)
    assert p.budget == "global" and float(p.beta) == 0.5
    assert resolve_params(None, sims.load_scenario("steady"), None).budget == "region"


def test_replay_of_a_missing_log(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "none")]) == 2
    assert "no such decision-log directory" in capsys.readouterr().err


def test_float64_is_really_float64_outside_x64_sessions(tmp_path, capsys):
    """``--dtype float64`` must switch JAX's 64-bit mode on (the suite runs with it on, a
    user's shell does not); replay must do the same for a float64 log."""
    import jax

    out = tmp_path / "f64"
    jax.config.update("jax_enable_x64", False)
    try:
        assert main(["simulate", "--out", str(out), "--dtype", "float64", "--no-plots",
                     "--regions", "3", "--steps", "2", "--no-progress"]) == 0
        assert pq.read_table(out / "decisions").schema.field("x_T").type == pa.float64()
        jax.config.update("jax_enable_x64", False)
        assert main(["replay", str(out), "--no-progress"]) == 0
        assert "every decision matches bit for bit" in capsys.readouterr().out
    finally:
        jax.config.update("jax_enable_x64", True)
