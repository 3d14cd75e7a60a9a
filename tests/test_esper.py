"""Esper's own telemetry (``narset decide --format esper``): windows from batches and inner
epochs, events without an epoch placed by timestamp, global events in every region, both
schemas, the coverage report, never-measured inputs, bad lines, and the decisions.

The logs come from ``narset_jax.testing.esper`` (see its docstring for the run): 4 envs,
3 slots, 2 batches of 12 inner epochs; env 2 diverges in batch 1 (loss > 12 at epochs
5-7, a divergence rollback at 7, NaN loss and a NaN rollback at 8-11); one global ratio
explosion at the end of batch 0; every event of batch 1 epoch 3 dropped, and env 1's
``EPOCH_COMPLETED`` of batch 0 epoch 4. Window ``w`` is batch ``w // 12``, inner epoch
``w % 12 + 1``.
"""

import contextlib
import gzip
import io
import json

import numpy as np
import pytest

from narset_jax.cli import main
from narset_jax.decision_log import read_decision_log, replay
from narset_jax.ingest import IngestError, open_windows
from narset_jax.ingest.esper import looks_like_esper
from narset_jax.ingest.esper_coverage import neutral_fills
from narset_jax.params import NarsetParams
from narset_jax.testing import esper_events, esper_lines, synthetic_event_log, write_esper_log

E = 12  # inner epochs per batch
CRISIS = range(16, 23)  # batch 1, epochs 5-11
ROLLED = range(18, 23)  # epochs 7-11: a rollback each


def run_cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def windows(path, **kw):
    st = open_windows(path, **kw)
    out = {w: cols for w, cols in st}
    return out, st.report


def col(log, name, n):
    return log.read_table().column(name).to_numpy(zero_copy_only=False).reshape(-1, n)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esper")
    cur = write_esper_log(tmp / "cur", esper_events())
    old = write_esper_log(tmp / "old", esper_events(schema="old"))
    return tmp, cur, old


@pytest.fixture(scope="module")
def decided(logs):
    """``narset decide`` on both schemas (one region per env), the current one with
    ``--emit esper``."""
    tmp, cur, old = logs
    out = {}
    for name, path in (("cur", cur.parent.parent), ("old", old)):
        argv = ["decide", "--events", str(path), "--out", str(tmp / f"log_{name}"),
                "--no-progress", "--json", str(tmp / f"{name}.json")]
        if name == "cur":
            argv += ["--emit", "esper", str(tmp / "narset.jsonl")]
        code, err = run_cli(*argv)
        assert code == 0, err
        out[name] = (tmp / f"log_{name}", json.loads((tmp / f"{name}.json").read_text()), err)
    return out


def test_auto_detects_esper_and_keeps_own_schema(logs, tmp_path):
    _tmp, cur, old = logs
    assert looks_like_esper(str(cur)) and looks_like_esper(str(old))
    assert looks_like_esper(str(cur.parent.parent))  # a directory of telemetry_* runs
    own = tmp_path / "own.jsonl"
    own.write_text("\n".join(synthetic_event_log(n_windows=2, n_regions=3)) + "\n")
    assert not looks_like_esper(str(own))
    assert open_windows(own).report.format == "jsonl"
    assert open_windows(cur).report.format == "esper"
    with pytest.raises(IngestError, match=r"own.jsonl:1: missing field: an Esper event needs "):
        open_windows(own, format="esper")  # forced: the first line that is not Esper's


def test_windows_of_the_current_schema(logs):
    _tmp, cur, _old = logs
    win, rep = windows(cur.parent)  # a telemetry_* directory
    assert rep.windowing == "epoch" and rep.epochs == {"first_epoch": 1, "epochs_per_batch": E}
    assert rep.regions["n_regions"] == 4 and rep.regions["slots"] == ["r0c0", "r0c1", "r1c0"]
    assert sorted(win) == list(range(2 * E)) and rep.bad_lines == 0
    # The dropped epoch (batch 1, epoch 3) is a missing window; env 1's dropped
    # EPOCH_COMPLETED (batch 0, epoch 4) leaves its loss carried and no boundary.
    assert not win[14]["valid"].any()
    w3 = win[3]
    assert w3["valid"].all() and w3["loss"][1] == win[2]["loss"][1]
    assert list(w3["boundary"]) == [True, False, True, True]
    # The rollbacks, null epoch, placed by timestamp in the window of their epoch, env 2.
    rb = np.array([win[w]["rollbacks"] for w in range(2 * E)])
    assert rb[:, [0, 1, 3]].sum() == 0 and list(np.flatnonzero(rb[:, 2])) == list(ROLLED)
    assert [win[w]["nonfinite"][2] for w in ROLLED] == [0, 2, 2, 2, 2]  # NaN loss + NaN panic
    assert np.isnan(win[19]["loss"][2]) and not win[19]["boundary"][2]
    # The global ratio explosion and the LSTM health reach every region, at the batch end.
    an = np.array([win[w]["anomalies"] for w in range(2 * E)])
    assert an.sum(axis=0).tolist() == [1, 1, 1, 1] and an[E - 1].tolist() == [1, 1, 1, 1]
    assert win[E - 1]["lstm_health"].tolist() == [1.5] * 4
    assert win[E - 2]["lstm_health"].tolist() == [0.0] * 4  # before the first PPO update
    # Seeds: slot 0 germinates at epoch 2, slot 1 at 5; slot 0 is fossilised (even envs)
    # or pruned (odd) at 8; envs are rebuilt at the next batch.
    assert win[1]["active_seeds"].tolist() == [1, 1, 1, 1]
    assert win[4]["active_seeds"].tolist() == [2, 2, 2, 2]
    assert win[7]["fossilised_seeds"].tolist() == [1, 0, 1, 0]
    assert win[7]["active_seeds"].tolist() == [1, 1, 1, 1]
    assert win[E]["active_seeds"].tolist() == [0] * 4
    assert win[E]["fossilised_seeds"].tolist() == [0] * 4
    assert win[18]["active_seeds"][2] == 0  # the governor pruned env 2's live seeds
    # Growth ratio (1 + overhead over host) and alpha shock (sum of delta alpha^2 from the
    # capped reward penalty) from the last action's reward components.
    assert win[7]["growth_ratio"].tolist() == [1.2, 1.0, 1.2, 1.0]
    assert win[3]["alpha_shock"].tolist() == pytest.approx([0.25] * 4)
    assert win[4]["churn"].tolist() == [1, 1, 1, 1]  # slot 1 germinates
    assert win[5]["churn"].tolist() == [3, 3, 3, 3]  # hold, train, SET_ALPHA_TARGET


def test_old_schema_reads_the_same(logs):
    _tmp, cur, old = logs
    a, _ = windows(cur)
    b, rep = windows(old)
    assert rep.regions["slots"] == ["block1_post", "block2_post", "block3_post"]
    assert sorted(a) == sorted(b)
    for w in a:
        for k in ("loss", "rollbacks", "anomalies", "valid", "boundary", "active_seeds",
                  "fossilised_seeds", "growth_ratio"):
            np.testing.assert_array_equal(a[w][k], b[w][k], err_msg=f"{k} window {w}")
        # Old logs: no SET_ALPHA_TARGET action, no panic reason (so no NaN rollback).
        assert (a[w]["churn"] - b[w]["churn"] == (1 if w % E == 5 and a[w]["valid"][0] else 0)
                ).all()
    cov = rep.coverage
    assert cov["never_measured"] == ["lstm_health", "alpha_shock"]
    assert cov["inputs"]["churn"]["sources"]["SEED_CULLED"] > 0
    fill = neutral_fills()["alpha_shock"]
    assert all((b[w]["alpha_shock"] == np.where(b[w]["valid"], fill, 0)).all() for w in b)
    # The old follow-up GOVERNOR_ROLLBACK (state-dict warning) is not a second rollback.
    assert sum(b[w]["rollbacks"][2] for w in b) == len(ROLLED)


def test_rolled_back_env_goes_to_repair_and_replays(decided):
    for name in ("cur", "old"):
        out, summary, _err = decided[name]
        log = read_decision_log(out)
        mode = col(log, "mode", 4)
        assert mode[:, [0, 1, 3]].sum() == 0, name  # the calm envs never enter repair
        entered = int(np.flatnonzero(mode[:, 2])[0])
        assert entered in CRISIS and mode[entered:, 2].all(), name
        x_E = col(log, "x_E", 4)
        assert x_E[-1, 2] < 0.5 * x_E[-1, 0]  # Emrakul starved in the crisis, no rule
        rep = replay(out)
        assert rep.ok and rep.n_windows == 2 * E, name
        assert summary["ingest"]["format"] == "esper"
        assert log.manifest["config"]["region"] == "env"


def test_coverage_in_summary_and_on_stderr(decided):
    _out, summary, err = decided["cur"]
    cov = summary["coverage"]
    assert cov["never_measured"] == [] and cov["loss_source"] == "EPOCH_COMPLETED.val_loss"
    inputs = cov["inputs"]
    assert inputs["rollbacks"]["sources"] == {"GOVERNOR_ROLLBACK": 5}
    assert inputs["anomalies"]["sources"] == {"RATIO_EXPLOSION_DETECTED": 1}
    assert inputs["loss"]["measured_region_windows"] == 91  # 23 windows x 4, one dropped
    assert inputs["lstm_health"]["measured_region_windows"] == 8  # two batch ends x 4
    assert cov["unknown_event_types"] == {"NARSET_UNKNOWN_PROBE": 1}
    assert {"MEMORY_WARNING", "SEED_GATE_EVALUATED", "TRAINING_STARTED"} <= set(
        cov["ignored_event_types"])
    assert "coverage: 92 of 96 region-windows valid" in err
    assert "unknown event types (1 events, not used): NARSET_UNKNOWN_PROBE" in err


def test_env_slot_regions(logs, tmp_path):
    _tmp, cur, _old = logs
    out = tmp_path / "log"
    code, err = run_cli("decide", "--events", str(cur), "--out", str(out), "--region",
                        "env,slot", "--no-progress")
    assert code == 0, err
    log = read_decision_log(out)
    assert log.n_regions == 12
    seeds = col(log, "active_seeds", 12)[4].reshape(4, 3)  # epoch 5: slots 0 and 1
    assert seeds.tolist() == [[1, 1, 0]] * 4
    churn = col(log, "churn", 12)[5].reshape(4, 3)  # hold + SET_ALPHA_TARGET, slot 1 trains
    assert churn.tolist() == [[2, 1, 0]] * 4
    loss = col(log, "loss", 12)[16].reshape(4, 3)  # the env's loss in each of its slots
    assert (loss == loss[:, :1]).all() and loss[2, 0] == 14.0
    mode = col(log, "mode", 12).reshape(-1, 4, 3)
    assert mode[:, [0, 1, 3]].sum() == 0 and mode[-1, 2].all()
    assert replay(out).ok


def test_batch_windows_and_accuracy_as_loss(tmp_path):
    """An old log without EPOCH_COMPLETED or GOVERNOR_ROLLBACK: one window per batch, the
    error rate stands in for the loss, rollbacks, LSTM and alpha shock never measured."""
    path = write_esper_log(tmp_path, esper_events(schema="old", epoch_completed=False))
    out = tmp_path / "log"
    code, err = run_cli("decide", "--events", str(path), "--out", str(out), "--no-progress",
                        "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    cov = json.loads((tmp_path / "s.json").read_text())["coverage"]
    assert cov["loss_source"].startswith("1 - accuracy/100")
    assert cov["never_measured"] == ["rollbacks", "lstm_health", "alpha_shock"]
    assert cov["inputs"]["rollbacks"]["treated_as"].startswith("unknown: filled with 0")
    assert "never measured" in err
    log = read_decision_log(out)
    assert log.manifest["ingest"]["windowing"] == "batch" and log.manifest["n_windows"] == 2
    fills = neutral_fills()
    # Never measured: each efficiency input sits at its neutral value, whose score term is
    # 1/2; a stability input at 0, whose term is 0.
    assert (col(log, "alpha_shock", 4) == np.float32(fills["alpha_shock"])).all()
    assert (col(log, "ewma_alpha_shock", 4) == np.float32(fills["alpha_shock"])).all()
    assert (col(log, "ewma_lstm_health", 4) == 0).all()
    assert replay(out).ok


def test_never_measured_input_is_neutral_not_calm(tmp_path):
    """The same run with and without the growth ratio and alpha shock: where the log never
    carries them, efficiency pressure is computed with those terms at 1/2, not at 0."""
    from narset_jax.signals import scores

    p = NarsetParams()
    fills = neutral_fills(p)
    # The rent term of the neutral growth ratio, and the shock term, are 1/2.
    rent = lambda g: min(0.5 * np.log1p(g), 1.5)  # noqa: E731
    f_rent = (rent(fills["growth_ratio"]) - rent(2.0)) / (rent(5.0) - rent(2.0))
    assert f_rent == pytest.approx(0.5)
    assert fills["alpha_shock"] / (fills["alpha_shock"] + float(p.shock_ref)) == 0.5
    events = [e for e in esper_events(crisis=None) if e["event_type"] not in
              ("ANALYTICS_SNAPSHOT", "EPISODE_OUTCOME")]
    win, rep = windows(write_esper_log(tmp_path, events))
    assert rep.coverage["never_measured"] == ["growth_ratio", "alpha_shock"]
    assert all((w["growth_ratio"][w["valid"]] == fills["growth_ratio"]).all()
               for w in win.values())
    from narset_jax.step import Narset
    from narset_jax.telemetry import Telemetry

    ctl = Narset(p)
    state = ctl.init(4)
    for w in sorted(win):
        state, d = ctl.step(state, Telemetry(**{k: v for k, v in win[w].items()}))
    s = state.signals
    f_shock = s.ewma_alpha_shock / (s.ewma_alpha_shock + p.shock_ref)
    np.testing.assert_allclose(np.asarray(f_shock), 0.5, rtol=1e-6)
    assert np.asarray(scores(p, s).efficiency).min() > 0.2  # not a calm, lean zero


def test_loss_never_measured_holds_the_controller(tmp_path):
    """No loss and no accuracy anywhere: every window is missing, so the controller holds
    its initial state (no authority) and counts staleness; time windows need a span."""
    keep = ("SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_FOSSILIZED", "SEED_PRUNED")
    events = [e for e in esper_events() if e["event_type"] in keep]
    path = write_esper_log(tmp_path, events)
    code, err = run_cli("decide", "--events", str(path), "--out", str(tmp_path / "x"),
                        "--no-progress")
    assert code == 2 and "give --window-seconds" in err and err.count("\n") == 1
    out = tmp_path / "log"
    code, err = run_cli("decide", "--events", str(path), "--out", str(out), "--no-progress",
                        "--window-seconds", "60", "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    cov = json.loads((tmp_path / "s.json").read_text())["coverage"]
    assert cov["inputs"]["loss"]["status"] == "never_measured"
    assert cov["valid_region_windows"] == 0
    log = read_decision_log(out)
    assert log.manifest["ingest"]["windowing"] == "time"
    assert (col(log, "x_T", 4) == 0).all() and (col(log, "x_E", 4) == 0).all()
    assert (col(log, "tier_E", 4) == 0).all()
    stale = col(log, "staleness", 4)
    assert (stale[-1] == len(stale)).all()


def test_malformed_lines_name_file_and_line(logs, tmp_path):
    _tmp, cur, _old = logs
    lines = cur.read_text().splitlines()
    ec = next(i for i, line in enumerate(lines) if '"EPOCH_COMPLETED"' in line and i > 10)
    bad = json.loads(lines[ec])
    del bad["data"]["val_loss"]
    lines[ec] = json.dumps(bad)
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"event_type": "PPO_UPDATE_COMPLETED", "timestamp": "yesterday"}))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, err = run_cli("decide", "--events", str(path), "--out", str(tmp_path / "a"),
                        "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert f"{path}:4: not json:" in err
    _win, rep = windows(path, on_error="skip")
    assert rep.bad_lines == 3
    assert rep.bad_by_reason["not_json"] == 1 and rep.bad_by_reason["wrong_type"] == 1
    assert rep.bad_by_reason["missing_field"] == 1
    assert any("needs 'val_loss' (it is missing)" in e for e in rep.errors)
    del lines[3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"events.jsonl:5: wrong type: 'timestamp' is not"):
        list(open_windows(path, format="esper"))


def test_late_event_and_unknown_env(logs, tmp_path):
    _tmp, cur, _old = logs
    events = esper_events(crisis=None)
    late = dict(events[-1], timestamp="2026-03-01T09:00:01+00:00")  # long closed
    stray = dict(events[-1], data=dict(events[-1]["data"], env_id=9))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(esper_lines([*events, late, stray])) + "\n")
    with pytest.raises(IngestError, match=r":\d+: late event: EPISODE_OUTCOME at 2026-03-01"):
        list(open_windows(path, n_regions=4))
    _win, rep = windows(path, n_regions=4, on_error="skip")
    assert rep.bad_by_reason["late_event"] == 1 and rep.unknown_region == 1


def test_directory_of_runs_and_gzip(logs, tmp_path):
    first = esper_events(batches=1, crisis=None, drop_epoch=None)
    second = esper_events(batches=1, crisis=None, drop_epoch=None,
                          start="2026-03-02T09:00:00+00:00", seed=1)
    write_esper_log(tmp_path, first)
    run2 = write_esper_log(tmp_path, second)
    run2.with_suffix(".jsonl.gz").write_bytes(gzip.compress(run2.read_bytes()))
    run2.unlink()
    win, rep = windows(tmp_path)
    assert len(rep.files) == 2 and rep.files[1].endswith("events.jsonl.gz")
    assert sorted(win) == list(range(2 * E))  # the second run is the next batch
    assert win[E]["active_seeds"].tolist() == [0] * 4


def test_emit_esper_and_duckdb(decided, logs):
    duckdb = pytest.importorskip("duckdb")
    tmp, _cur, _old = logs
    out, summary, _err = decided["cur"]
    emitted = tmp / "narset.jsonl"
    rows = [json.loads(line) for line in emitted.read_text().splitlines()]
    assert len(rows) == summary["emit"]["events"] == 2 * E * 4
    first = rows[0]
    assert list(first) == ["event_id", "event_type", "timestamp", "seed_id", "slot_id", "epoch",
                           "group_id", "message", "data", "severity"]
    assert first["event_type"] == "NARSET_ALLOCATION" and first["group_id"] == "A"
    assert first["data"]["env_id"] == 0 and first["data"]["inner_epoch"] == 1
    assert list(first["data"])[:8] == ["env_id", "slot_id", "window", "batch", "inner_epoch",
                                       "region", "step", "x_T"]
    # The documented query (docs/telemetry.md): telemetry and decisions side by side.
    con = duckdb.connect()
    con.execute(f"""
        CREATE VIEW events AS
        SELECT event_type, timestamp, epoch, slot_id, data
        FROM read_json(['{tmp}/cur/telemetry_*/events.jsonl', '{emitted}'],
                       format = 'newline_delimited',
                       columns = {{event_type: 'VARCHAR', timestamp: 'TIMESTAMP',
                                  epoch: 'BIGINT', slot_id: 'VARCHAR', data: 'JSON'}})""")
    after = con.execute("""
        SELECT r.data->>'panic_reason' AS reason, n.epoch AS inner_epoch,
               CAST(n.data->>'mode' AS INTEGER) AS mode
        FROM (SELECT * FROM events WHERE event_type = 'GOVERNOR_ROLLBACK') r
        ASOF JOIN (SELECT * FROM events WHERE event_type = 'NARSET_ALLOCATION') n
          ON CAST(n.data->>'env_id' AS INTEGER) = CAST(r.data->>'env_id' AS INTEGER)
         AND n.timestamp >= r.timestamp
        ORDER BY r.timestamp""").fetchall()
    assert [a[:2] for a in after] == [("governor_divergence", 7)] + [
        ("governor_nan", e) for e in range(8, 12)]
    assert after[-1][2] == 1  # the env is in repair by the last rollback
    calm = con.execute("""
        SELECT max(CAST(data->>'mode' AS INTEGER)) FROM events
        WHERE event_type = 'NARSET_ALLOCATION' AND CAST(data->>'env_id' AS INTEGER) <> 2
        """).fetchall()
    assert calm == [(0,)]


def test_emit_refusals(logs, tmp_path):
    _tmp, cur, _old = logs
    own = tmp_path / "own.jsonl"
    own.write_text("\n".join(synthetic_event_log(n_windows=2, n_regions=3)) + "\n")
    code, err = run_cli("decide", "--events", str(own), "--out", str(tmp_path / "a"),
                        "--no-progress", "--emit", "esper", str(tmp_path / "e.jsonl"))
    assert code == 2 and "--emit esper needs Esper telemetry" in err
    assert not (tmp_path / "e.jsonl").exists()
    code, err = run_cli("decide", "--events", str(cur), "--out", str(tmp_path / "b"),
                        "--no-progress", "--emit", "esper", str(tmp_path / "b" / "e.jsonl"))
    assert code == 2 and "must not be inside --out" in err
    code, err = run_cli("decide", "--events", str(cur), "--out", str(tmp_path / "b"),
                        "--no-progress", "--emit", "csv", str(tmp_path / "e.csv"))
    assert code == 2 and "unknown format 'csv'" in err
