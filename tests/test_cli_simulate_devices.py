"""``narset simulate --devices D`` and multi-process ``narset simulate``: the decision log,
summary and ``narset replay`` of a sharded run against the one-device run.

Regions are sharded over the 4 host devices of the test session (conftest). N = 62 is not a
multiple of 4, so the sharded runs also pad (to 64) and drop the padding. Every budget mode
gives the one-device log bit for bit: per-region pools run both steps sharded; the global
pool runs its controller gathered, as replay does (``sims/simulate.py``).
"""

import json
import textwrap

import numpy as np
import pytest
from process_workers import free_port, run_workers

from narset_jax.cli import main
from narset_jax.decision_log import read_decision_log

N, T, SEED = 62, 6, 5
ARGS = ["--scenario", "crisis", "--regions", str(N), "--steps", str(T), "--seed", str(SEED),
        "--chunk", "4", "--no-plots", "--no-progress"]
# A pool that binds, so that the global pool's multiplier is positive in every window.
PARAMS_TOML = "pool = 0.6\nbeta = 0.8\n"
BUDGETS = ("region", "global")
DEADLINE_S = 240


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("params") / "binding.toml"
    f.write_text(PARAMS_TOML)
    return f


@pytest.fixture(scope="module")
def runs(tmp_path_factory, params_file):
    """``{(budget, devices): out_dir}`` for 1 and 4 devices, per-region and global pool."""
    root = tmp_path_factory.mktemp("sim")
    out = {}
    for budget in BUDGETS:
        for devices in (1, 4):
            d = root / f"{budget}-{devices}"
            rc = main(["simulate", *ARGS, "--budget", budget, "--params", str(params_file),
                       "--devices", str(devices), "--out", str(d)])
            assert rc == 0
            out[budget, devices] = d
    return out


def _columns(run_dir):
    table = read_decision_log(run_dir).read_table()
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


def _assert_bitwise(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":  # compare bits (NaN is NaN of the same bits)
            x, y = x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")
        np.testing.assert_array_equal(x, y, err_msg=name)


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("budget", BUDGETS)
def test_four_devices_log_and_summary_equal_one_device_bitwise(runs, budget):
    one, four = runs[budget, 1], runs[budget, 4]
    cols = _columns(one)
    assert len(cols["x_T"]) == N * T
    _assert_bitwise(cols, _columns(four))
    s1, s4 = _summary(one), _summary(four)
    assert (s1["devices"], s1["processes"]) == (1, 1)
    assert (s4["devices"], s4["processes"]) == (4, 1)
    assert s4["budget"] == budget
    assert s4["metrics"] == s1["metrics"] and s4["objective"] == s1["objective"]
    config = json.loads((four / "manifest.json").read_text())["config"]
    assert config["devices"] == 4 and config["processes"] == 1
    if budget == "global":
        price = cols["price"].reshape(T, N)
        assert np.all(price == price[:, :1]) and price.max() > 0  # one price; it binds


@pytest.mark.parametrize("budget", BUDGETS)
def test_replay_verifies_the_four_device_log(runs, budget, capsys):
    assert main(["replay", str(runs[budget, 4]), "--no-progress"]) == 0
    assert "every decision matches bit for bit" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "64"], "--devices 64 needs 64 local devices"),
        (["--devices", "1,2"], "--devices takes one count here"),
        (["--devices", "0"], "--devices must be positive"),
        (["--coordinator", "127.0.0.1:1"], "go together"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
         "--coordinator must be HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
         "--process-id must be in [0, 1]"),
    ],
)
def test_bad_device_flags_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert main(["simulate", "--out", str(out), "--regions", "4", "--steps", "2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_xla_flags_device_count_is_kept(monkeypatch):
    """``--devices D`` never overrides a host device count that XLA_FLAGS forces (as this
    session's conftest does): ``jax_num_cpu_devices`` would win, and later tests in the
    same process would find fewer devices."""
    import jax

    from narset_jax import distributed

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3")
    assert distributed._forced_host_devices() == 3
    calls = []
    monkeypatch.setattr(distributed, "_backends_started", lambda: False)
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    distributed._configure_cpu(2)
    assert calls == []
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    assert distributed._forced_host_devices() is None
    distributed._configure_cpu(2)
    assert calls == [("jax_num_cpu_devices", 2)]


# -- two processes --------------------------------------------------------------------------

# Each worker is one process of a 2-process run (one CPU device each), through the CLI. x64
# is on, as in this test session, so that the logs' integer columns have the same dtypes.
# The global pool exercises every cross-process path of simulate: the telemetry gathered
# each window, the decisions sharded back, the log gathered to process 0, the sharded
# ecology and metrics. (The per-region controller is one more shard_map program, without
# communication, checked on 4 local devices above.)
WORKER = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from narset_jax.cli import main
    coordinator, pid, *args = sys.argv[1:]
    rc = main(["simulate", *args, "--budget", "global", "--devices", "1",
               "--coordinator", coordinator, "--num-processes", "2", "--process-id", pid])
    print("WORKER DONE", pid, flush=True)
    sys.exit(rc)
    """
)


def _run_workers(tmp_path, params_file):
    coordinator = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"proc{i}" for i in range(2)]
    argvs = [[WORKER, coordinator, str(i), *ARGS, "--params", str(params_file), "--out",
              str(outs[i])] for i in range(2)]
    results = run_workers(argvs, DEADLINE_S)
    for i, (code, out, err) in enumerate(results):
        assert code == 0, f"worker {i} failed (exit {code}):\n{err[-3000:]}"
        assert f"WORKER DONE {i}" in out
    return outs


def test_two_processes_match_single_process(runs, tmp_path, params_file):
    main_out, other_out = _run_workers(tmp_path, params_file)
    assert not other_out.exists()  # only process 0 writes
    summary, expected = _summary(main_out), _summary(runs["global", 1])
    assert (summary["devices"], summary["processes"]) == (2, 2)
    assert summary["metrics"] == expected["metrics"]
    assert summary["objective"] == expected["objective"]
    _assert_bitwise(_columns(main_out), _columns(runs["global", 1]))
