"""Online use: the functional form traces once, the stateful wrapper matches it, and the
events -> telemetry helper follows the ingest rules."""

import json
import runpy
from pathlib import Path

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import narset_jax as nj
from narset_jax.ingest import IngestError, open_windows
from narset_jax.online import EventWindowBuilder, OnlineNarset, telemetry_from_events

N = 6
ROOT = Path(__file__).resolve().parents[1]


class TraceCounter:
    """Counts jaxpr traces (any function) while active."""

    def __init__(self):
        self.count = 0

    def _listen(self, name, *_args, **_kw):
        if name == "/jax/core/compile/jaxpr_trace_duration":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def _window_events(rng, w, n=N):
    events = []
    for r in range(n):
        if rng.random() < 0.15:
            continue  # region silent this window
        base = {"region": r, "window": w}
        events.append({**base, "kind": "loss", "value": float(1 + rng.random())})
        events.append({**base, "kind": "lstm_health", "h_rms": float(rng.uniform(0, 12))})
        if rng.random() < 0.3:
            events.append({**base, "kind": "governor_rollback", "panic_reason": "divergence"})
        if rng.random() < 0.3:
            events.append({**base, "kind": "ppo_anomaly", "anomaly": "value_collapse"})
        events.append({**base, "kind": "seed_op", "op": "set_alpha", "delta_alpha": 0.1})
        events.append({**base, "kind": "seed_counts", "active": 2, "fossilised": 1 + w})
        if rng.random() < 0.5:
            events.append({**base, "kind": "boundary"})
    rng.shuffle(events)
    return events


@pytest.fixture(scope="module")
def stream():
    rng = np.random.default_rng(1)
    return [_window_events(rng, w) for w in range(12)]


def test_functional_form_traces_once(stream):
    params = nj.NarsetParams()
    ctl = nj.Narset(params)
    state = ctl.init(N)
    builder = EventWindowBuilder(N)
    windows = [builder.build(ev) for ev in stream]
    state, decision = ctl.step(state, windows[0])  # compiles (or hits the cache)
    with TraceCounter() as traces:
        for tel in windows[1:]:
            state, decision = ctl.step(state, tel)
        # New params values are traced arguments: no retrace either.
        state, decision = nj.Narset(params.replace(beta=0.7, alpha=3.0)).step(state, windows[0])
        decision.x_T.block_until_ready()
    assert traces.count == 0
    assert decision.x_T.shape == (N,) and int(decision.step[0]) == len(windows)


def test_online_wrapper_matches_functional_and_traces_once(stream):
    online = OnlineNarset(nj.NarsetParams(), N)
    ctl = nj.Narset(nj.NarsetParams())
    state = ctl.init(N)
    builder = EventWindowBuilder(N)
    first = online.step_events(stream[0])
    state, ref = ctl.step(state, builder.build(stream[0]))
    # Loose inputs (float64 numpy, Python scalars, numeric flags) are cast, not retraced.
    loose = {k: np.asarray(v, np.float64) for k, v in nj.Telemetry.calm(N).to_dict().items()}
    loose = nj.Telemetry(**{**loose, "loss": 2.0, "churn": 3, "boundary": True})
    with TraceCounter() as traces:
        for events in stream[1:]:
            got = online.step_events(events)
            state, ref = ctl.step(state, builder.build(events))
            for name, col in got.columns().items():
                np.testing.assert_array_equal(np.asarray(col), np.asarray(ref.columns()[name]))
        online.step(loose).x_T.block_until_ready()
    assert traces.count == 0
    assert first.x_T.dtype == jnp.float32
    assert int(online.state.step[0]) == len(stream) + 1
    assert online.report.windows == len(stream) and online.report.unknown_region == 0
    online.reset()
    assert int(online.state.step[0]) == 0


def test_builder_matches_file_ingest(tmp_path, stream):
    path = tmp_path / "events.jsonl"
    with open(path, "w") as fh:
        for events in stream:
            fh.writelines(json.dumps(e) + "\n" for e in events)
    from_file = [cols for _, cols in open_windows(path, n_regions=N)]
    builder = EventWindowBuilder(N, dtype=np.float64)
    for w, events in enumerate(stream):
        tel = builder.build(events)
        for k, v in tel.to_dict().items():
            np.testing.assert_array_equal(v, from_file[w][k], err_msg=f"window {w} {k}")


def test_telemetry_from_events_example():
    tel = telemetry_from_events(
        [
            {"region": 0, "window": 7, "kind": "loss", "value": 0.42},
            {"region": 0, "window": 7, "kind": "lstm_health", "h_rms": 3.1},
            '{"region": 1, "window": 7, "kind": "loss", "value": NaN}',
            {"region": 1, "window": 7, "kind": "boundary"},
            {"region": 2, "window": 7, "kind": "lstm_health", "h_rms": 1.0},
        ],
        n_regions=3,
    )
    assert tel.valid.tolist() == [True, True, False]  # region 2: no loss reading
    np.testing.assert_allclose(tel.loss[:1], [0.42])
    assert np.isnan(tel.loss[1]) and tel.nonfinite.tolist() == [0, 1, 0]
    assert tel.boundary.tolist() == [False, True, False]
    assert tel.lstm_health[0] == np.float32(3.1) and tel.loss.dtype == np.float32


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"region": 3, "window": 0, "kind": "loss", "value": 1.0}, "unknown region: 3"),
        ({"region": 0, "window": 0, "kind": "lstm_health", "h_rms": -1.0}, "out of range"),
        ({"region": 0, "window": 0, "kind": "growth_ratio", "value": 0.5}, "out of range"),
        ({"region": 0, "window": 0, "kind": "loss"}, "missing field: loss event needs 'value'"),
        ({"region": 0, "window": 0, "kind": "nope"}, "unknown kind"),
        ("{not json", "not json"),
        ({"region": 0, "window": 1, "kind": "boundary"}, "differs from this call's window 0"),
    ],
)
def test_bad_events_strict_and_lenient(event, match):
    good = {"region": 1, "window": 0, "kind": "loss", "value": 1.0}
    with pytest.raises(ValueError, match=match) as info:
        telemetry_from_events([good, event], n_regions=3)
    assert "index 1" in str(info.value)
    builder = EventWindowBuilder(3, strict=False)
    tel = builder.build([good, event])
    rep = builder.report
    assert rep.bad_lines + rep.unknown_region + sum(rep.out_of_range.values()) == 1
    assert tel.valid.tolist() == [False, True, False]


def test_builder_windows_must_advance():
    builder = EventWindowBuilder(2)
    builder.build([{"region": 0, "window": 4, "kind": "boundary"}])
    with pytest.raises(IngestError, match="window backwards: window 4 after window 4"):
        builder.build([{"region": 1, "window": 4, "kind": "boundary"}])
    assert builder.build([]).valid.tolist() == [False, False]
    builder.build([{"region": 1, "window": 5, "kind": "boundary"}])


def test_level_values_carry_between_windows():
    builder = EventWindowBuilder(1)
    builder.build(
        [
            {"region": 0, "window": 0, "kind": "loss", "value": 2.0},
            {"region": 0, "window": 0, "kind": "seed_counts", "active": 3, "fossilised": 5},
            {"region": 0, "window": 0, "kind": "growth_ratio", "value": 2.5},
        ]
    )
    tel = builder.build([{"region": 0, "window": 1, "kind": "lstm_health", "h_rms": 6.0}])
    assert tel.valid.tolist() == [True]
    assert (tel.loss[0], tel.active_seeds[0], tel.fossilised_seeds[0]) == (2.0, 3.0, 5.0)
    assert (tel.growth_ratio[0], tel.lstm_health[0]) == (2.5, 6.0)
    assert builder.report.carried["loss"] == 1


def test_online_rejects_bad_telemetry_shape():
    online = OnlineNarset(None, 4)
    with pytest.raises(ValueError, match=r"Telemetry.loss must have shape \(4,\)"):
        online.step(nj.Telemetry.calm(3))
    with pytest.raises(TypeError):
        online.step({"loss": 1.0})


def test_example_script_runs(capsys):
    # In-process, with N regions, so it reuses this file's compiled step.
    example = runpy.run_path(str(ROOT / "examples" / "online.py"), run_name="example")
    assert example["main"](["--regions", str(N), "--windows", "40"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # During the crisis (window 39), the crisis regions are in repair and the calm ones not.
    row = next(line for line in lines if line.split()[0] == "39").split()
    assert row[1:4] == ["1.00", "/", "0.00"]
    assert "per window" in lines[-1]


# ---- Esper's own telemetry, one event at a time ----------------------------------------


def _esper_run(tmp_path):
    from narset_jax.testing import esper_events, write_esper_log

    events = esper_events()
    return events, write_esper_log(tmp_path, events)


def test_feed_esper_matches_decide_bit_for_bit(tmp_path):
    """Fed one event at a time, the online API builds the windows ``narset decide`` builds
    from the file, and its decisions are the decision log's, bit for bit."""
    from narset_jax.decide import run_decide
    from narset_jax.decision_log import read_decision_log
    from narset_jax.ingest.esper import scan_esper
    from narset_jax.ingest.esper_coverage import carried_inputs, loss_source

    events, path = _esper_run(tmp_path)
    scan = scan_esper([str(path)])
    online = OnlineNarset.for_esper(
        nj.NarsetParams(), n_envs=4, carried=carried_inputs(scan.codes, scan.types),
        loss_from=loss_source(scan.codes))
    decided = []
    for event in events:  # dicts, as Nissa's FileOutput writes them
        decided += online.feed_esper(event)
    decided += online.finish_esper()
    assert [w for w, _ in decided] == list(range(24))
    run_decide(path, out=tmp_path / "log", progress=False)
    table = read_decision_log(tmp_path / "log").read_table()
    for name in ("x_T", "x_E", "mode", "tier_E", "loss", "rollbacks", "anomalies", "valid"):
        got = np.stack([np.asarray(d.columns()[name]) for _, d in decided])
        want = table.column(name).to_numpy(zero_copy_only=False).reshape(24, 4)
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert online.esper_report.coverage["inputs"]["rollbacks"]["sources"] == {
        "GOVERNOR_ROLLBACK": 5}


def test_nissa_backend_runs_narset_live(tmp_path):
    """A Nissa output backend fed ``TelemetryEvent``-like objects (an enum event type, a
    datetime, a dataclass payload), as a live Esper run's hub would."""
    import dataclasses
    import datetime as dt
    import enum

    from narset_jax.online import NarsetNissaBackend, esper_event_dict

    events, _path = _esper_run(tmp_path)
    kinds = enum.Enum("TelemetryEventType", sorted({e["event_type"] for e in events}))

    @dataclasses.dataclass
    class Payload:
        fields: dict

        def to_dict(self):
            return self.fields

    @dataclasses.dataclass
    class TelemetryEvent:
        event_type: object
        timestamp: dt.datetime
        data: object
        epoch: int | None = None
        slot_id: str | None = None
        seed_id: str | None = None
        group_id: str = "default"
        message: str = ""
        severity: str = "info"

    seen = []
    online = OnlineNarset.for_esper(nj.NarsetParams(), n_envs=4, strict=False)
    backend = NarsetNissaBackend(online, lambda w, d: seen.append((w, int(d.mode[2]))))
    backend.start()
    for e in events:
        obj = TelemetryEvent(kinds[e["event_type"]], dt.datetime.fromisoformat(e["timestamp"]),
                             Payload(e["data"]), e["epoch"], e["slot_id"])
        assert esper_event_dict(obj)["event_type"] == e["event_type"]
        backend.emit(obj)
    backend.close()
    assert [w for w, _ in seen] == list(range(24)) and backend.decided == 24
    assert any(m for w, m in seen if w >= 16) and not any(m for w, m in seen if w < 16)


def test_feed_esper_bad_events():
    online = OnlineNarset.for_esper(nj.NarsetParams(), n_envs=2, epochs_per_batch=3)
    with pytest.raises(IngestError, match=r"event: index 0: missing field: an Esper event "):
        online.feed_esper({"timestamp": "2026-01-01T00:00:00+00:00"})
    lenient = OnlineNarset.for_esper(nj.NarsetParams(), n_envs=2, epochs_per_batch=3,
                                     strict=False)
    assert lenient.feed_esper('{"event_type": "EPOCH_COMPLETED", "timestamp": 3}') == []
    assert lenient.esper_report.bad_by_reason["wrong_type"] == 1
    with pytest.raises(TypeError, match="for_esper"):
        OnlineNarset(nj.NarsetParams(), 2).feed_esper({})
