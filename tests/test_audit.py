"""``narset audit``: it finds the spoofers of simulated runs (the shipped pattern and
others), flags no more honest regions than its stated false-positive rate allows, works on
a ``narset decide`` log without ground truth, and refuses bad or tampered input in one
line. Every simulated run is 200 regions x 100 windows under the global pool (where
spoofers compete for one budget; one compile for all runs)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import duckdb
import numpy as np
import pytest

from narset_jax.audit import audit_arrays, audit_log
from narset_jax.audit import score as sc
from narset_jax.cli import main
from narset_jax.decision_log import (
    LogVerificationError,
    read_decision_log,
    read_truth,
)
from narset_jax.testing import synthetic_event_log

N, T = 200, 100
FPR = 0.01


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def false_flag_bound(n_honest: int, fpr: float, level: float = 0.005) -> int:
    """The largest number of honest regions flagged that a Binomial(n_honest, fpr) count
    reaches with probability >= level: more is beyond the stated false-positive rate."""
    k, tail = 0, 1.0
    while True:
        p_k = math.comb(n_honest, k) * fpr**k * (1 - fpr) ** (n_honest - k)
        tail -= p_k
        if tail < level:
            return k
        k += 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Simulated logs: the shipped spoofing scenario, two honest ones, and two other
    spoofing patterns (rare large spikes; dense small spikes by many spoofers in a crisis)."""
    tmp = tmp_path_factory.mktemp("audit")
    (tmp / "rare.toml").write_text(
        'base = "spoofing"\nname = "rare_big"\nspoof_rate = 0.12\nspoof_size = 1.8\n'
        "spoofer_fraction = 0.06\n")
    (tmp / "dense.toml").write_text(
        'base = "crisis"\nname = "dense_small"\nbudget = "global"\nspoofer_fraction = 0.25\n'
        "spoof_rate = 0.8\nspoof_size = 0.5\n")
    out = {}
    for name, scenario, seed in [("spoofing", "spoofing", 0), ("steady", "steady", 1),
                                 ("crisis", "crisis", 2), ("rare", str(tmp / "rare.toml"), 3),
                                 ("dense", str(tmp / "dense.toml"), 4)]:
        d = tmp / name
        code, _, err = run_cli("simulate", "--scenario", scenario, "--regions", str(N),
                               "--steps", str(T), "--seed", str(seed), "--out", str(d),
                               "--budget", "global", "--no-plots", "--no-progress")
        assert code == 0, err
        out[name] = d
    return out


def test_simulate_records_the_ground_truth(runs):
    log = read_decision_log(runs["spoofing"])
    truth = read_truth(log)
    assert truth is not None and truth.regions.tolist() == list(range(N))
    # The recorded spoofers are the regions whose telemetry carries the shipped pattern's
    # fakes: rollbacks of 1 with an LSTM reading of at least 12, never in honest regions'
    # reports together (checked on the log with SQL).
    parts = str(runs["spoofing"] / "decisions" / "*.parquet")
    faked = {r for (r,) in duckdb.sql(
        f"select distinct region from read_parquet('{parts}') "
        "where rollbacks >= 1 and lstm_health >= 12 and anomalies >= 4").fetchall()}
    assert faked and faked <= set(truth.regions[truth.spoofer].tolist())
    assert truth.n_spoofers == truth.meta["n_spoofers"] > 0
    honest = read_truth(read_decision_log(runs["steady"]))
    assert honest is not None and honest.n_spoofers == 0


def test_audit_finds_the_spoofers(runs, tmp_path):
    code, out, err = run_cli("audit", str(runs["spoofing"]), "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["ground_truth"] and report["truth"]["n_spoofers"] > 0
    assert report["precision"] >= 0.7 and report["recall"] >= 0.5
    assert "precision" in out and "recall" in out
    ranked = report["regions"]
    assert len(ranked) == N and [r["rank"] for r in ranked] == list(range(1, N + 1))
    zs = [r["z"] for r in ranked]
    assert zs == sorted(zs, reverse=True)
    top = ranked[0]
    assert top["flagged"] and top["spoofer"]
    assert set(top["evidence"]) >= {"transient_rate", "transient_share", "spike_windows",
                                    "loss_corroboration", "mesh_correlation", "spend_ratio"}


@pytest.mark.parametrize("name", ["rare", "dense"])
def test_audit_is_not_tuned_to_one_spoofing_pattern(runs, name):
    report = audit_log(runs[name])
    t = report.truth
    assert t["n_spoofers"] > 0
    assert t["precision"] >= 0.7 and t["recall"] >= 0.5, t
    n_honest = t["n_honest"]
    assert t["false_positives"] <= false_flag_bound(n_honest, FPR), t


@pytest.mark.parametrize("name", ["steady", "crisis"])
def test_no_spoofers_no_more_flags_than_the_stated_rate(runs, name):
    code, out, err = run_cli("audit", str(runs[name]))
    assert code == 0, err
    report = audit_log(runs[name])
    assert report.truth["n_spoofers"] == 0 and report.truth["precision"] is None
    assert len(report.flagged) <= false_flag_bound(N, FPR), [
        (r["region"], r["z"]) for r in report.flagged]
    assert "no spoofers" in out
    # A stricter rate never flags more.
    assert len(audit_log(runs[name], fpr=1e-4).flagged) <= len(report.flagged)


def test_decide_log_has_no_ground_truth(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(synthetic_event_log()) + "\n")
    out = tmp_path / "log"
    code, _, err = run_cli("decide", "--events", str(events), "--out", str(out), "--regions",
                           "512", "--chunk-windows", "16", "--no-progress")
    assert code == 0, err
    code, text, err = run_cli("audit", str(out), "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    assert "no ground truth" in text
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["source"] == "decide" and not report["ground_truth"]
    assert report["precision"] is None and report["recall"] is None
    assert len(report["regions"]) == 512


def test_bad_input_is_one_line(runs, tmp_path):
    code, _, err = run_cli("audit", str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1 and "no such decision-log directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("audit", str(tmp_path / "empty"))
    assert code == 2 and "manifest.json" in err and err.count("\n") == 1
    code, _, err = run_cli("audit", str(runs["steady"]), "--fpr", "1.5")
    assert code == 2 and "--fpr" in err
    code, _, err = run_cli("audit", str(runs["steady"]), "--json",
                           str(runs["steady"] / "manifest.json"))
    assert code == 2 and err.count("\n") == 1


def test_tampered_or_foreign_ground_truth_is_refused(runs, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.ipc as ipc

    src = runs["spoofing"]
    log_dir = tmp_path / "copy"
    shutil.copytree(src, log_dir)
    truth_file = log_dir / "ground_truth.arrow"
    with ipc.open_file(str(truth_file)) as r:
        table = r.read_all()
    # Relabel a spoofer as honest, keep the metadata: the columns' sha256 catches it.
    spoofer = table.column("spoofer").to_numpy(zero_copy_only=False).copy()
    spoofer[np.argmax(spoofer)] = False
    forged = pa.table({"region": table.column("region"), "spoofer": spoofer})
    forged = forged.replace_schema_metadata(table.schema.metadata)
    with ipc.new_file(str(truth_file), forged.schema) as w:
        w.write_table(forged)
    with pytest.raises(LogVerificationError, match="columns_sha256"):
        audit_log(log_dir)
    # Another run's ground truth beside this log: refused (it names another manifest).
    shutil.copy(runs["dense"] / "ground_truth.arrow", truth_file)
    code, _, err = run_cli("audit", str(log_dir))
    assert code == 2 and "belongs to another log" in err


def test_score_functions():
    # A one-window spike on a calm series is transient; a plateau is not.
    i = np.zeros((9, 2))
    i[4, 0] = 5.0
    i[2:7, 1] = 5.0
    e = sc.transient_excess(i)
    assert e[4, 0] == 5.0 and e[:, 1].max() == 0.0
    # Alternate-window spikes (never two in a row) and two-window spikes both count.
    alt = np.zeros((10, 1))
    alt[::2] = 3.0
    two = np.zeros((10, 1))
    two[4:6] = 3.0
    assert sc.transient_excess(alt).sum() > 0 and sc.transient_excess(two).sum() > 0
    # Missing windows are left out, not read as calm.
    scales = dict(scale_rollbacks=0.25, scale_anomalies=1.0, scale_nonfinite=0.25,
                  lstm_warn=5.0, lstm_critical=10.0)
    ones = np.ones((3, 2))
    got = sc.instability(ones, ones, 0 * ones, np.array([[6.0, np.inf]] * 3), ones,
                         np.array([[True, True], [False, True], [True, True]]), scales)
    assert got[0, 0] == pytest.approx(4 + 1 + 0.2) and np.isnan(got[1, 0])
    assert np.isnan(got[:, 1]).all()
    z, centre, scale = sc.robust_z(np.array([0.0, 1.0, 2.0, 3.0, 100.0]))
    assert centre == 2.0 and scale == pytest.approx(1.4826) and z[-1] > 60
    assert sc.robust_z(np.zeros(5))[0].tolist() == [0.0] * 5
    assert sc.threshold(0.5) == pytest.approx(0.0, abs=1e-12)
    pr = sc.precision_recall(np.array([3.0, 2.0, 1.0, 0.0]),
                             np.array([True, False, True, False]),
                             np.array([True, True, False, False]))
    assert pr["precision"] == pr["recall"] == 0.5
    assert pr["flagged_precision"] == 0.5 and pr["false_positive_rate"] == 0.5


def test_audit_arrays_flags_a_planted_spoofer_and_nobody_in_noise():
    rng = np.random.default_rng(0)
    t, n = 80, 60
    anomalies = rng.poisson(0.3, (t, n)).astype(float)
    cols = {
        "rollbacks": np.zeros((t, n)), "anomalies": anomalies, "nonfinite": np.zeros((t, n)),
        "lstm_health": 1 + 0.05 * rng.standard_normal((t, n)), "loss": np.full((t, n), 2.0),
        "valid": np.ones((t, n), bool), "spent": np.ones((t, n)), "price": np.zeros((t, n)),
        "mode_weight": np.zeros((t, n)),
    }
    scales = dict(scale_rollbacks=0.25, scale_anomalies=1.0, scale_nonfinite=0.25,
                  lstm_warn=5.0, lstm_critical=10.0)
    calm = audit_arrays(cols, scales)
    assert calm["flagged"].sum() <= false_flag_bound(n, FPR)
    cols["rollbacks"][1::5, 7] = 1.0  # region 7 reports isolated rollbacks
    res = audit_arrays(cols, scales, truth=np.arange(n) == 7)
    assert res["order"][0] == 7 and res["flagged"][7] and res["truth"]["precision"] == 1.0


def test_signed_log_needs_its_key(runs, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    d = tmp_path / "signed"
    code, _, err = run_cli("simulate", "--scenario", "spoofing", "--regions", str(N), "--steps",
                           str(T), "--seed", "0", "--out", str(d), "--budget", "global",
                           "--no-plots", "--no-progress", "--sign-key", str(key))
    assert code == 0, err
    code, _, err = run_cli("audit", str(d))
    assert code == 2 and "--sign-key" in err and err.count("\n") == 1
    code, out, err = run_cli("audit", str(d), "--sign-key", str(key))
    assert code == 0, err
    signed = audit_log(d, key=key.read_bytes())
    assert signed.truth == audit_log(runs["spoofing"]).truth  # the same run, signed
    assert signed.truth["precision"] >= 0.7
