"""Event-log ingest: a hand-written log with known windows, malformed lines of every kind,
unknown regions and out-of-range values, lag and ordering, Parquet input."""

import gzip
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narset_jax.ingest import (
    MISSING_FILL,
    REASONS,
    IngestError,
    open_windows,
    parse_event,
)
from narset_jax.telemetry import TELEMETRY_FIELDS

NAN = float("nan")


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _ev(region, window, kind, **extra):
    return json.dumps({"region": region, "window": window, "kind": kind, **extra})


# A hand-written log: 3 regions (ids 0..2, inferred), windows 0..3. Lines are interleaved
# across regions; region 1's last window-0 event comes after region 0's window-1 events
# (allowed with lag 2). Window 2 has no events at all.
HAND_LOG = [
    _ev(0, 0, "loss", value=1.0),
    _ev(1, 0, "loss", value=0.5),
    _ev(0, 0, "loss", value=3.0),
    _ev(0, 0, "lstm_health", h_rms=2.0),
    _ev(1, 0, "governor_rollback", panic_reason="nan"),
    _ev(0, 0, "lstm_health", h_rms=4.5),
    _ev(1, 0, "ppo_anomaly", anomaly="ratio_explosion"),
    _ev(0, 0, "seed_counts", active=2, fossilised=3),
    _ev(1, 0, "ppo_anomaly", anomaly="numerical_instability"),
    _ev(0, 0, "growth_ratio", value=1.5),
    _ev(1, 0, "seed_op", op="germinate"),
    _ev(0, 0, "boundary"),
    _ev(1, 0, "seed_op", op="set_alpha", delta_alpha=0.5),
    '{"region": 0, "window": 1, "kind": "loss", "value": NaN}',
    _ev(0, 1, "loss", value=1.5),
    _ev(1, 0, "seed_op", op="set_alpha", delta_alpha=-0.25),
    _ev(1, 1, "lstm_health", h_rms=7.0),
    _ev(2, 1, "lstm_health", h_rms=1.0),
    "",
    _ev(2, 3, "loss", value=0.9),
    '{"region": 0, "window": 3, "kind": "growth_ratio", "value": Infinity}',
    _ev(2, 3, "growth_ratio", value=2.5),
    _ev(2, 3, "boundary"),
]


def _fill(**cells):
    out = {k: MISSING_FILL[k] for k in TELEMETRY_FIELDS}
    out.update(cells)
    return out


def _expected():
    w0 = [
        _fill(
            loss=2.0,
            lstm_health=4.5,
            active_seeds=2,
            fossilised_seeds=3,
            growth_ratio=1.5,
            valid=True,
            boundary=True,
        ),
        _fill(
            loss=0.5,
            rollbacks=1,
            anomalies=2,
            nonfinite=2,
            churn=3,
            alpha_shock=0.5**2 + 0.25**2,
            valid=True,
        ),
        _fill(),
    ]
    w1 = [
        # NaN reading left out of the mean, counted once in nonfinite; levels carried.
        _fill(
            loss=1.5,
            nonfinite=1,
            lstm_health=4.5,
            active_seeds=2,
            fossilised_seeds=3,
            growth_ratio=1.5,
            valid=True,
        ),
        # No loss this window: carried from window 0.
        _fill(loss=0.5, lstm_health=7.0, valid=True),
        # Events, but no loss reading yet, ever: missing.
        _fill(),
    ]
    w2 = [_fill(), _fill(), _fill()]
    w3 = [
        # Only a non-finite growth reading: NaN (the controller holds that signal).
        _fill(
            loss=1.5,
            nonfinite=1,
            lstm_health=4.5,
            active_seeds=2,
            fossilised_seeds=3,
            growth_ratio=NAN,
            valid=True,
        ),
        _fill(),
        # The LSTM reading of (missing) window 1 is carried.
        _fill(loss=0.9, lstm_health=1.0, growth_ratio=2.5, valid=True, boundary=True),
    ]
    return [w0, w1, w2, w3]


def _columns(rows):
    return {k: np.array([row[k] for row in rows]) for k in TELEMETRY_FIELDS}


def _assert_window(got, rows, window):
    want = _columns(rows)
    for k in TELEMETRY_FIELDS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"window {window}, field {k}")


def test_hand_written_log(tmp_path):
    path = _write(tmp_path / "events.jsonl", HAND_LOG)
    stream = open_windows(path)
    got = list(stream)
    assert [w for w, _ in got] == [0, 1, 2, 3]
    for (w, cols), rows in zip(got, _expected(), strict=True):
        _assert_window(cols, rows, w)
    rep = stream.report
    assert rep.n_regions == 3
    assert rep.lines == len(HAND_LOG)
    assert rep.events == len(HAND_LOG) - 1  # one blank line
    assert rep.bad_lines == 0 and rep.unknown_region == 0 and rep.out_of_range == {}
    assert rep.nonfinite_values == 2
    assert (rep.windows, rep.first_window, rep.last_window) == (4, 0, 3)
    assert rep.region_windows_valid == 6
    assert rep.region_windows_missing == 6
    assert rep.region_windows_without_loss == 1
    assert rep.carried["loss"] == 2


def test_gzip_and_regions_override(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(HAND_LOG) + "\n")
    stream = open_windows(path, n_regions=5)
    got = list(stream)
    assert stream.n_regions == 5 and got[0][1]["loss"].shape == (5,)
    for (w, cols), rows in zip(got, _expected(), strict=True):
        _assert_window(cols, rows + [_fill(), _fill()], w)


def test_chunks_stack_windows(tmp_path):
    path = _write(tmp_path / "events.jsonl", HAND_LOG)
    chunks = list(open_windows(path).chunks(3, dtype=np.float32))
    assert [first for first, _ in chunks] == [0, 3]
    tel = chunks[0][1]
    assert tel.loss.shape == (3, 3) and tel.loss.dtype == np.float32
    assert tel.valid.dtype == bool
    assert chunks[1][1].loss.shape == (1, 3)
    np.testing.assert_array_equal(tel.valid[1], [True, True, False])


# ---- malformed lines ------------------------------------------------------------------------

MALFORMED = [
    ("not_json", '{"region": 0, "window": 1, "kind": "loss", "value": 1.0'),
    ("not_json", "loss 0 1 1.0"),
    ("unknown_kind", _ev(0, 1, "gradient_norm", value=1.0)),
    ("missing_field", _ev(0, 1, "loss")),
    ("missing_field", json.dumps({"window": 1, "kind": "loss", "value": 1.0})),
    ("missing_field", json.dumps({"region": 0, "kind": "loss", "value": 1.0})),
    ("missing_field", json.dumps({"region": 0, "window": 1, "value": 1.0})),
    ("missing_field", _ev(0, 1, "seed_op", op="set_alpha")),
    ("missing_field", _ev(0, 1, "seed_counts", active=1)),
    ("missing_field", _ev(0, 1, "governor_rollback")),
    ("missing_field", _ev(0, 1, "ppo_anomaly")),
    ("missing_field", _ev(0, 1, "lstm_health")),
    ("missing_field", _ev(0, 1, "growth_ratio")),
    ("wrong_type", _ev(0, 1, "loss", value="1.0")),
    ("wrong_type", _ev(0, 1, "loss", value=True)),
    ("wrong_type", _ev("0", 1, "loss", value=1.0)),
    ("wrong_type", _ev(0, 1.5, "loss", value=1.0)),
    ("wrong_type", _ev(0, -1, "loss", value=1.0)),
    ("wrong_type", json.dumps({"region": 0, "window": 1, "kind": 3})),
    ("wrong_type", "[1, 2, 3]"),
    ("wrong_type", _ev(0, 1, "governor_rollback", panic_reason="boredom")),
    ("wrong_type", _ev(0, 1, "ppo_anomaly", anomaly=None)),
    ("wrong_type", _ev(0, 1, "seed_op", op="graft")),
    ("wrong_type", _ev(0, 1, "seed_op", op="set_alpha", delta_alpha=[0.1])),
    ("wrong_type", _ev(0, 1, "seed_counts", active=1.5, fossilised=0)),
    ("wrong_type", _ev(0, 1, "lstm_health", h_rms={"v": 1})),
    ("wrong_type", _ev(0, 1, "growth_ratio", value=None)),
]


@pytest.mark.parametrize(("reason", "line"), MALFORMED)
def test_malformed_line_stops_with_line_number(tmp_path, reason, line):
    lines = [_ev(0, 0, "loss", value=1.0), _ev(1, 0, "loss", value=1.0), line]
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(IngestError) as info:
        list(open_windows(path, n_regions=2))
    err = info.value
    assert (err.line, err.reason) == (3, reason)
    assert str(err).startswith(f"{path}:3: {reason.replace('_', ' ')}: ")
    assert "\n" not in str(err)


@pytest.mark.parametrize(("reason", "line"), MALFORMED)
def test_parse_event_names_the_reason(reason, line):
    with pytest.raises(IngestError) as info:
        parse_event(line)
    assert info.value.reason == reason


def test_window_backwards_and_late_event(tmp_path):
    back = [_ev(0, 3, "loss", value=1.0), _ev(0, 2, "loss", value=1.0)]
    with pytest.raises(
        IngestError, match=r":2: window backwards: region 0 window 2 after window 3"
    ):
        list(open_windows(_write(tmp_path / "a.jsonl", back), n_regions=1))
    # Region 1 reports window 0 after window 2 has closed it (lag 2).
    late = [_ev(0, 0, "loss", value=1.0), _ev(0, 2, "loss", value=1.0), _ev(1, 0, "boundary")]
    with pytest.raises(IngestError, match=r":3: late event: region 1 window 0") as info:
        list(open_windows(_write(tmp_path / "b.jsonl", late), n_regions=2))
    assert info.value.reason == "late_event"
    # A larger lag accepts it.
    windows = list(open_windows(tmp_path / "b.jsonl", n_regions=2, lag=3))
    assert windows[0][1]["valid"].tolist() == [True, False]  # region 1 had no loss yet


def test_skip_counts_every_reason(tmp_path):
    good = [_ev(0, 0, "loss", value=1.0), _ev(1, 0, "loss", value=2.0)]
    bad = [line for _, line in MALFORMED]
    lines = good + bad + [_ev(0, 4, "loss", value=1.0), _ev(0, 3, "loss", value=1.0)]
    lines += [_ev(0, 6, "loss", value=1.0), _ev(1, 2, "boundary")]  # backwards, then late
    path = _write(tmp_path / "bad.jsonl", lines)
    stream = open_windows(path, n_regions=2, on_error="skip")
    windows = list(stream)
    rep = stream.report
    expected = {r: sum(1 for reason, _ in MALFORMED if reason == r) for r in REASONS}
    expected["window_backwards"] += 1
    expected["late_event"] += 1
    assert rep.bad_by_reason == expected
    assert rep.bad_lines == len(MALFORMED) + 2
    assert rep.events == 4
    assert [w for w, _ in windows] == [0, 1, 2, 3, 4, 5, 6]
    assert rep.errors[0].startswith(f"{path}:3: ")


def test_unknown_region_and_out_of_range_are_counted(tmp_path):
    lines = [
        _ev(0, 0, "loss", value=1.0),
        _ev(2, 0, "loss", value=1.0),  # unknown with n_regions=2
        _ev(-1, 0, "loss", value=1.0),  # unknown
        _ev(1, 0, "loss", value=-3.0),  # a negative loss is fine
        _ev(1, 0, "lstm_health", h_rms=-0.5),
        _ev(1, 0, "seed_counts", active=-1, fossilised=0),
        _ev(1, 0, "seed_counts", active=1, fossilised=-2),
        _ev(1, 0, "growth_ratio", value=0.5),
        _ev(1, 1_000_000, "loss", value=1.0),  # a window far past the others
        _ev(1, 1, "loss", value=1.0),
    ]
    for on_error in ("stop", "skip"):
        stream = open_windows(
            _write(tmp_path / "oor.jsonl", lines), n_regions=2, on_error=on_error, max_gap=1000
        )
        windows = list(stream)
        rep = stream.report
        assert rep.unknown_region == 2 and rep.unknown_region_ids == [2, -1]
        assert rep.out_of_range == {
            "h_rms": 1,
            "active": 1,
            "fossilised": 1,
            "growth_ratio": 1,
            "window": 1,
        }
        assert rep.bad_lines == 0 and rep.events == 3
        assert len(rep.errors) == 7
        assert [w for w, _ in windows] == [0, 1]
        w0 = windows[0][1]
        assert w0["loss"].tolist() == [1.0, -3.0]
        assert w0["lstm_health"].tolist() == [0.0, 0.0]  # the bad reading was not used
        assert w0["growth_ratio"].tolist() == [1.0, 1.0]


def test_inferred_region_count_guard(tmp_path):
    from narset_jax.errors import UserError

    path = _write(tmp_path / "huge.jsonl", [_ev(10**9, 0, "loss", value=1.0)])
    with pytest.raises(UserError, match=r"huge.jsonl:1: region id 1000000000 implies"):
        open_windows(path)
    stream = open_windows(path, n_regions=2)
    assert list(stream) == [] and stream.report.unknown_region_ids == [10**9]


def test_first_window_and_lag_one(tmp_path):
    lines = [_ev(0, 5, "loss", value=1.0), _ev(0, 6, "loss", value=2.0)]
    path = _write(tmp_path / "late_start.jsonl", lines)
    assert [w for w, _ in open_windows(path)] == [5, 6]
    stream = open_windows(path, first_window=3, lag=1)
    assert [w for w, _ in stream] == [3, 4, 5, 6]
    assert stream.report.first_window == 3
    with pytest.raises(IngestError, match="late event"):
        list(open_windows(path, first_window=6))


def test_empty_and_missing_files(tmp_path):
    from narset_jax.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        open_windows(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no well-formed event"):
        open_windows(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(UserError, match="lag"):
        open_windows(_write(tmp_path / "x.jsonl", [_ev(0, 0, "boundary")]), lag=0)
    assert list(open_windows(_write(tmp_path / "e.jsonl", [""]), n_regions=2)) == []


# ---- Parquet ---------------------------------------------------------------------------------


def _parquet_rows(windows):
    """Flatten per-window rows into a table with region and window columns, skipping
    missing cells (a table only has rows for what was observed)."""
    rows = {k: [] for k in ("region", "window", *TELEMETRY_FIELDS)}
    for w, cells in enumerate(windows):
        for r, cell in enumerate(cells):
            if not cell["valid"]:
                continue
            rows["region"].append(r)
            rows["window"].append(w)
            for k in TELEMETRY_FIELDS:
                rows[k].append(cell[k])
    return rows


def test_parquet_matches_jsonl(tmp_path):
    expected = _expected()
    path = tmp_path / "tel.parquet"
    pq.write_table(pa.table(_parquet_rows(expected)), path, row_group_size=3)
    stream = open_windows(path, batch_rows=4)
    got = list(stream)
    assert stream.n_regions == 3 and stream.report.format == "parquet"
    assert [w for w, _ in got] == [0, 1, 2, 3]
    for (w, cols), rows in zip(got, expected, strict=True):
        _assert_window(cols, rows, w)
    assert stream.report.nonfinite_values == 1
    assert stream.report.region_windows_valid == 6


def test_parquet_bad_rows(tmp_path):
    rows = _parquet_rows(_expected())
    # Duplicate the first row (region 0, window 0), then an unknown region, a negative count.
    for k in rows:
        rows[k].insert(1, rows[k][0])
    rows["region"][2] = 7
    rows["rollbacks"][3] = -1.0
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(rows), path)
    with pytest.raises(IngestError, match=r"bad.parquet: row 2: window backwards: .* repeats"):
        list(open_windows(path, n_regions=3))
    stream = open_windows(path, n_regions=3, on_error="skip")
    list(stream)
    rep = stream.report
    assert rep.bad_by_reason["window_backwards"] == 1
    assert rep.unknown_region == 1 and rep.unknown_region_ids == [7]
    assert rep.out_of_range == {"rollbacks": 1}


def test_parquet_missing_column_and_nulls(tmp_path):
    from narset_jax.errors import UserError

    rows = _parquet_rows(_expected())
    del rows["churn"]
    pq.write_table(pa.table(rows), tmp_path / "a.parquet")
    with pytest.raises(UserError, match="no column 'churn'"):
        open_windows(tmp_path / "a.parquet")
    rows = _parquet_rows(_expected())
    rows["loss"][1] = None
    pq.write_table(pa.table(rows), tmp_path / "b.parquet")
    with pytest.raises(IngestError, match=r"row 2: missing field: 'loss' is null"):
        list(open_windows(tmp_path / "b.parquet"))


def test_missing_fill_is_neutral():
    assert MISSING_FILL["valid"] is False and math.isfinite(MISSING_FILL["loss"])
