"""``narset decide``: event log -> decision log that ``replay`` verifies; bad input;
Parquet input; a 1e6-event log end to end in bounded memory (O(regions), not O(events)).

Every run here uses the same region count and dtype, so the jitted step compiles once for
the whole file.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narset_jax.cli import main
from narset_jax.decision_log import (
    DecisionLogError,
    LogVerificationError,
    read_decision_log,
    replay,
)
from narset_jax.decision_log.manifest import make_digest
from narset_jax.ingest import open_windows
from narset_jax.telemetry import TELEMETRY_FIELDS
from narset_jax.testing import synthetic_event_log

R = 512  # regions in every run (the synthetic logs use the first 64; the rest are missing)
CHUNK = 16  # windows per log part
COMMON = ["--regions", str(R), "--chunk-windows", str(CHUNK), "--no-progress"]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def decided(tmp_path_factory):
    """One decide run over the synthetic log, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("decide")
    events = write(tmp / "events.jsonl", synthetic_event_log())
    out = tmp / "log"
    code, err = run_cli(
        "decide", "--events", str(events), "--out", str(out), *COMMON, "--json", str(tmp / "s.json")
    )
    assert code == 0, err
    return events, out, tmp


def test_decide_writes_a_log_that_replays(decided):
    events, out, tmp = decided
    log = read_decision_log(out)
    assert log.complete and log.n_regions == R
    assert log.manifest["n_windows"] == 41  # windows 0..40
    assert len(log.manifest["parts"]) == 3  # 16 + 16 + 9 windows
    assert log.manifest["first_window"] == 0
    assert log.manifest["config"]["command"] == "decide"
    assert log.manifest["ingest"]["events"] > 0
    rep = replay(out)
    assert rep.ok and rep.n_windows == 41 and rep.first_mismatch is None
    # The logged raw inputs are the ingested windows.
    table = log.read_table()
    windows = [cols for _, cols in open_windows(events, n_regions=R)]
    for k in TELEMETRY_FIELDS:
        got = table.column(k).to_numpy(zero_copy_only=False).reshape(-1, R)
        want = np.stack([w[k] for w in windows]).astype(got.dtype)
        np.testing.assert_array_equal(got, want, err_msg=k)
    step = table.column("step").to_numpy().reshape(-1, R)
    np.testing.assert_array_equal(step[:, 0], np.arange(41))
    # The crisis regions went into repair during the crisis.
    mode = table.column("mode").to_numpy().reshape(-1, R)
    assert mode[24, :64:4].mean() > 0.9 and mode[24, 1:64:4].mean() < 0.1
    assert not table.column("valid").to_numpy().reshape(-1, R)[:, 64:].any()


def test_summary_json(decided):
    _events, out, tmp = decided
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((tmp / "s.json").read_text())
    ing = summary["ingest"]
    assert ing["bad_lines"] == 0 and ing["unknown_region"] == 0 and ing["out_of_range"] == {}
    assert ing["nonfinite_values"] == 1
    assert ing["windows"] == 41 and ing["n_regions"] == R
    assert summary["log"]["windows"] == 41 and summary["log"]["rows"] == 41 * R
    assert summary["n_regions"] == R and summary["chunk_windows"] == CHUNK


def _rewrite_part(out, part, fn):
    path = out / part["file"]
    table = pq.read_table(path)
    cols = {n: table.column(n).to_numpy(zero_copy_only=False).copy() for n in table.column_names}
    fn(cols)
    pq.write_table(pa.table(cols), path)
    return path


def test_tampered_log_is_caught_by_replay(decided, tmp_path):
    _events, out, _tmp = decided
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    log = read_decision_log(copy)
    part = log.manifest["parts"][1]

    def nudge(cols):
        i = 5 * R + 7  # window 16 + 5, region 7
        cols["x_E"][i] = np.nextafter(cols["x_E"][i], np.float32(np.inf))

    path = _rewrite_part(copy, part, nudge)
    rep = replay(copy)
    assert not rep.ok and rep.bad_parts == [part["file"]]
    assert rep.first_mismatch == (7, 21, "x_E") and rep.mismatches == {"x_E": 1}
    code, _err = run_cli("replay", str(copy), "--no-progress")
    assert code == 1
    # A forger who also fixes the manifest's hash breaks the manifest's own digest; one who
    # recomputes that too (there is no key) is still caught, by the re-made decision.
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parts"][1]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["parts"][1]["bytes"] = path.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LogVerificationError, match="digest mismatch"):
        replay(copy)
    manifest["digest"] = make_digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rep = replay(copy)
    assert not rep.ok and rep.bad_parts == [] and rep.first_mismatch == (7, 21, "x_E")


def test_replay_cli_verifies_decide_log(decided, tmp_path):
    _events, out, _tmp = decided
    code, err = run_cli("replay", str(out), "--no-progress", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_on_error_stop_names_the_line(tmp_path):
    lines = synthetic_event_log(n_windows=3)
    lines.insert(10, '{"region": 2, "window": 0, "kind": "loss"}')
    events = write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "log"
    code, err = run_cli("decide", "--events", str(events), "--out", str(out), *COMMON)
    assert code == 2
    assert err.strip() == (
        f"narset decide: error: {events}:11: missing field: loss event needs 'value'; "
        "stopped there: no window was decided before it; nothing was written"
    )
    with pytest.raises(DecisionLogError, match="no such decision-log directory"):
        read_decision_log(out)  # the log never looks complete
    assert not out.exists()


def test_on_error_skip_counts_in_summary(tmp_path):
    lines = synthetic_event_log(n_windows=3)
    bad = [
        "not json at all",
        '{"region": 0, "window": 0, "kind": "weather", "value": 1}',
        '{"region": 0, "window": 0, "kind": "loss"}',
        '{"region": 0, "window": 0, "kind": "loss", "value": "high"}',
        '{"region": 3, "window": 0, "kind": "loss", "value": 1.0}',  # region 3 went backwards
        '{"region": 999, "window": 2, "kind": "loss", "value": 1.0}',  # unknown region
        '{"region": 0, "window": 2, "kind": "lstm_health", "h_rms": -1}',  # out of range
    ]
    lines[-1:-1] = bad
    events = write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "log"
    code, err = run_cli(
        "decide", "--events", str(events), "--out", str(out), *COMMON, "--on-error", "skip"
    )
    assert code == 0, err
    ing = json.loads((out / "summary.json").read_text())["ingest"]
    assert ing["bad_lines"] == 5
    assert {k: v for k, v in ing["bad_by_reason"].items() if v} == {
        "not_json": 1,
        "unknown_kind": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "window_backwards": 1,
    }
    assert ing["unknown_region"] == 1 and ing["unknown_region_ids"] == [999]
    assert ing["out_of_range"] == {"h_rms": 1}
    assert len(ing["errors"]) == 7
    assert "5 bad lines skipped" in err and "2 events with unknown region" in err
    assert replay(out).ok


def test_params_file_and_bad_params(tmp_path, decided):
    events, _out, _tmp = decided
    good = tmp_path / "p.toml"
    good.write_text("beta = 0.6\nalpha = 3.0\n")
    out = tmp_path / "log"
    code, err = run_cli(
        "decide", "--events", str(events), "--out", str(out), *COMMON, "--params", str(good)
    )
    assert code == 0, err
    log = read_decision_log(out)
    assert log.manifest["params"]["beta"] == 0.6 and log.manifest["params"]["alpha"] == 3.0
    bad = tmp_path / "bad.toml"
    bad.write_text("beta = [oops\n")
    code, err = run_cli("decide", "--events", str(events), "--out", str(out), "--params", str(bad))
    assert code == 2 and "malformed TOML" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli("decide", "--events", str(tmp_path / "none.jsonl"), "--out", str(out))
    assert code == 2 and "no such file" in err


def test_parquet_input_gives_the_same_decisions(decided, tmp_path):
    events, out, _tmp = decided
    rows = {k: [] for k in ("region", "window", *TELEMETRY_FIELDS)}
    for w, cols in open_windows(events, n_regions=R):
        for r in np.flatnonzero(cols["valid"]):
            rows["region"].append(int(r))
            rows["window"].append(w)
            for k in TELEMETRY_FIELDS:
                rows[k].append(cols[k][r])
    table_path = tmp_path / "tel.parquet"
    pq.write_table(pa.table(rows), table_path, row_group_size=500)
    out2 = tmp_path / "log"
    code, err = run_cli("decide", "--events", str(table_path), "--out", str(out2), *COMMON)
    assert code == 0, err
    a, b = read_decision_log(out).read_table(), read_decision_log(out2).read_table()
    assert a.column_names == b.column_names
    for name in a.column_names:
        np.testing.assert_array_equal(
            a.column(name).to_numpy(zero_copy_only=False),
            b.column(name).to_numpy(zero_copy_only=False),
            err_msg=name,
        )


_KINDS = (
    '"kind": "loss", "value": 0.{v}',
    '"kind": "lstm_health", "h_rms": 1.{v}',
    '"kind": "seed_op", "op": "set_alpha", "delta_alpha": 0.0{v}',
    '"kind": "seed_counts", "active": 2, "fossilised": 3',
    '"kind": "growth_ratio", "value": 1.{v}',
    '"kind": "governor_rollback", "panic_reason": "divergence"',
    '"kind": "ppo_anomaly", "anomaly": "ratio_collapse"',
    '"kind": "boundary"',
)


def write_event_log(path, n_events: int, n_regions: int) -> None:
    """A synthetic log of ``n_events`` lines: each region sends one event of each kind per
    window (the last window may be partial)."""
    per_window = n_regions * len(_KINDS)
    template = "".join(
        f'{{{{"region": {r}, "window": {{w}}, {body.format(v=(r * 7919 + k) % 1000)}}}}}\n'
        for r in range(n_regions)
        for k, body in enumerate(_KINDS)
    )
    n_windows, rest = divmod(n_events, per_window)
    with open(path, "w") as fh:
        for w in range(n_windows):
            fh.write(template.format(w=w))
        if rest:
            fh.write("".join(template.format(w=n_windows).splitlines(True)[:rest]))


def _rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_million_event_log_end_to_end_bounded_memory(decided, tmp_path):
    events = tmp_path / "big.jsonl"
    write_event_log(events, 1_000_000, R)  # 8 events per region and window: 245 windows
    size_mb = os.path.getsize(events) / 2**20
    out = tmp_path / "log"
    peak = [_rss_mb()]
    base = peak[0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        code, err = run_cli("decide", "--events", str(events), "--out", str(out), *COMMON)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    assert code == 0, err
    log = read_decision_log(out)
    assert log.manifest["ingest"]["events"] == 1_000_000
    growth = peak[0] - base
    print(
        f"1e6 events ({size_mb:.0f} MB) -> {log.manifest['n_windows']} windows in "
        f"{seconds:.1f} s; RSS growth {growth:.1f} MB"
    )
    # The control: the same measurement sees what holding the events would cost.
    before = _rss_mb()
    with open(events, "rb") as fh:
        held = fh.readlines()
    control = _rss_mb() - before
    del held
    print(f"control: holding the lines {control:.0f} MB")
    assert control > size_mb > 50
    # Open windows and one part of decisions are a few MB.
    assert growth < 32, growth
