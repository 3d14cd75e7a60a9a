"""``--ecology`` on the closed-loop commands (issue 17): ``narset simulate`` (and ``narset
replay`` of its log), ``narset phase`` and ``narset sweep`` run the neural ecology. Tiny
sizes: the neural ecology trains real networks."""

import json

import pytest

from narset_jax.cli import main

N, T = 4, 2


@pytest.fixture(scope="module")
def neural_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("neural") / "run"
    rc = main(["simulate", "--ecology", "neural", "--scenario", "steady", "--regions", str(N),
               "--steps", str(T), "--seed", "1", "--no-progress", "--no-plots",
               "--out", str(out)])
    assert rc == 0
    return out


def test_simulate_neural_manifest_names_ecology_and_dataset(neural_run):
    from sims.ecologies import load_params

    cfg = json.loads((neural_run / "manifest.json").read_text())["config"]
    sc = load_params("neural", "steady")
    assert cfg["ecology"] == "neural" and cfg["scenario"] == "steady"
    assert cfg["dataset"]["sha256"] == sc.dataset_sha256 and len(sc.dataset_sha256) == 64
    assert cfg["dataset"]["args"]["num_samples"] == "4000" and cfg["dataset"]["mnist1d"]
    assert cfg["ecology_settings"]["hidden"] == 32
    assert cfg["scenario_values"]["dataset_sha256"] == sc.dataset_sha256
    summary = json.loads((neural_run / "summary.json").read_text())
    assert summary["ecology"] == "neural" and summary["steps"] == T


def test_replay_verifies_neural_log_bit_for_bit(neural_run, capsys):
    assert main(["replay", str(neural_run), "--no-progress"]) == 0
    assert "every decision matches bit for bit" in capsys.readouterr().out


def test_stylised_manifest_has_no_ecology_key(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--regions", "4", "--steps", "2", "--no-progress", "--no-plots",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert "ecology" not in cfg and "dataset" not in cfg
    assert "ecology" not in json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("command", [
    ["simulate", "--out", "OUT"],
    ["phase", "--x", "beta:0.2:0.8:2", "--y", "gap:0.1:0.3:2", "--out", "OUT"],
    ["sweep", "--regions", "8"],
])
def test_bad_ecology_is_one_line(command, tmp_path, capsys):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in command]
    assert main([*argv, "--ecology", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown --ecology 'bogus'; valid: stylised, neural" in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_neural_scenario_is_one_line(tmp_path, capsys):
    assert main(["simulate", "--ecology", "neural", "--scenario", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown neural scenario 'nope'" in err[0]


def test_phase_neural_params_axes(tmp_path, capsys):
    js = tmp_path / "summary.json"
    assert main(["phase", "--ecology", "neural", "--x", "beta:0.2:0.8:2",
                 "--y", "gap:0.1:0.3:2", "--regions", "4", "--steps", "2", "--seeds", "1",
                 "--out", str(tmp_path), "--json", str(js)]) == 0
    summary = json.loads(js.read_text())
    assert summary["ecology"] == "neural" and summary["cells"] == 4
    data = json.loads((tmp_path / "phase.json").read_text())
    assert data["config"]["ecology"] == "neural"
    assert len(data["config"]["scenario"]["dataset_sha256"]) == 64


def test_phase_neural_refuses_scenario_axes(tmp_path, capsys):
    assert main(["phase", "--ecology", "neural", "--x", "noise:0:0.3:2",
                 "--y", "gap:0.1:0.3:2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "axis 'noise' is a field of the stylised scenario" in err[0]
    assert "params axes only: alpha, beta, gap, k, ewma, pool" in err[0]


def test_sweep_neural_runs_sharded_over_two_devices(tmp_path):
    js = tmp_path / "sweep.json"
    assert main(["sweep", "--ecology", "neural", "--regions", "3", "--steps", "1",
                 "--devices", "2", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["config"]["ecology"] == "neural" and "--ecology neural" in doc["command"]
    (row,) = doc["rows"]
    assert row["devices"] == 2 and row["n_regions"] == 3 and row["path"] == "shard_map"
    assert row["throughput"] > 0 and sum(row["collectives_in_loop"].values()) == 0
