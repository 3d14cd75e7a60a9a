"""The decision log: writing, completeness markers, reading, replay and tamper detection."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from narset_jax.decision_log import (
    DecisionLogError,
    DecisionLogWriter,
    LogVerificationError,
    read_decision_log,
    replay,
)
from narset_jax.params import NarsetParams
from narset_jax.step import DECISION_COLUMNS, init_state, narset_step
from narset_jax.telemetry import Telemetry

N, T = 8, 6
PARAMS = NarsetParams()
_step = jax.jit(narset_step)


def windows(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for t in range(T):
        crisis = 2 <= t < 5
        out.append(
            Telemetry.filled(
                N,
                jnp.float32,
                loss=np.where(rng.uniform(size=N) < 0.1, np.nan, 1.0 - 0.01 * t),
                rollbacks=rng.poisson(1.0 if crisis else 0.05, N),
                anomalies=rng.poisson(3.0 if crisis else 0.2, N),
                lstm_health=rng.uniform(1, 12 if crisis else 4, N),
                growth_ratio=rng.uniform(1, 6, N),
                churn=rng.uniform(0, 8, N),
                valid=rng.uniform(size=N) > 0.1,
                boundary=rng.uniform(size=N) > 0.3,
            )
        )
    return out


def decide(params=PARAMS, region_ids=None):
    state = init_state(N, jnp.float32, region_ids=region_ids)
    out = []
    for tel in windows():
        state, d = _step(params, state, tel)
        out.append(d)
    return out


def stack(ds):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *ds)


def write_log(path, ds=None, chunks=(3, 3), **kw):
    ds = decide() if ds is None else ds
    with DecisionLogWriter(path, params=PARAMS, config={"source": "test"}, seed=3, **kw) as w:
        i = 0
        for c in chunks:
            w.write(stack(ds[i : i + c]))
            i += c
    return w.manifest


def test_write_read_round_trip(tmp_path):
    ids = jnp.arange(100, 100 + N, dtype=jnp.int32)
    ds = decide(region_ids=ids)
    manifest = write_log(tmp_path, ds)
    assert manifest["complete"] and manifest["n_rows"] == N * T and manifest["n_windows"] == T
    assert [p["file"] for p in manifest["parts"]] == [
        "decisions/part-00000.parquet",
        "decisions/part-00001.parquet",
    ]
    assert manifest["parts"][1]["first_step"] == 3 and manifest["parts"][1]["last_step"] == 5
    assert manifest["params"] == PARAMS.to_dict() and manifest["seed"] == 3
    assert {"narset_jax", "jax", "jaxlib", "pyarrow"} <= set(manifest["versions"])
    assert not (tmp_path / "INCOMPLETE").exists()
    log = read_decision_log(tmp_path)
    assert log.column_names == list(DECISION_COLUMNS)
    assert log.bad_parts() == []
    table = log.read_table()
    assert table.num_rows == N * T
    # Window-major rows: row t * N + r.
    np.testing.assert_array_equal(table.column("step").to_numpy(), np.repeat(np.arange(T), N))
    np.testing.assert_array_equal(table.column("region").to_numpy(), np.tile(np.asarray(ids), T))
    x = np.stack([np.asarray(d.x_T) for d in ds]).reshape(-1)
    np.testing.assert_array_equal(table.column("x_T").to_numpy(), x)
    assert table.schema.field("valid").type == "bool"
    assert table.schema.field("mode").type == "int32"
    assert log.params().to_dict() == PARAMS.to_dict()


def test_replay_verifies_bit_for_bit(tmp_path):
    write_log(tmp_path)
    report = replay(tmp_path)
    assert report.ok and report.first_mismatch is None
    assert report.n_windows == T and report.n_rows == N * T and report.mismatches == {}


def _tamper(path, part, row, column, value):
    f = path / part
    table = pq.read_table(f)
    cols = {name: table.column(name).to_numpy(zero_copy_only=False).copy()
            for name in table.column_names}
    cols[column][row] = value
    import pyarrow as pa

    pq.write_table(pa.table(cols, schema=table.schema), f)


def test_a_tampered_decision_is_caught(tmp_path):
    manifest = write_log(tmp_path)
    part = manifest["parts"][1]["file"]
    # Window 4 (second row block of part 1), region index 5.
    _tamper(tmp_path, part, 1 * N + 5, "x_E", 0.123)
    report = replay(tmp_path)
    assert not report.ok
    assert report.bad_parts == [part]  # the file no longer matches its sha256
    assert report.first_mismatch == (5, 4, "x_E")
    assert report.mismatches == {"x_E": 1}
    # A forger who fixes the part's hash in the manifest breaks the manifest's digest.
    mf = tmp_path / "manifest.json"
    data = json.loads(mf.read_text())
    from narset_jax.decision_log.layout import sha256_file
    from narset_jax.decision_log.manifest import make_digest

    data["parts"][1]["sha256"] = sha256_file(tmp_path / part)
    data["parts"][1]["bytes"] = (tmp_path / part).stat().st_size
    mf.write_text(json.dumps(data))
    with pytest.raises(LogVerificationError, match="digest mismatch"):
        replay(tmp_path)
    # Even with the manifest's digest recomputed too (no key), the replay finds the changed
    # decision.
    data["digest"] = make_digest(data)
    mf.write_text(json.dumps(data))
    report = replay(tmp_path)
    assert report.bad_parts == [] and report.first_mismatch == (5, 4, "x_E")


def test_a_tampered_input_is_caught(tmp_path):
    manifest = write_log(tmp_path)
    part = manifest["parts"][0]["file"]
    _tamper(tmp_path, part, 1 * N + 2, "anomalies", 50.0)
    report = replay(tmp_path)
    # The input itself is the logged column; the decisions it drives differ downstream.
    assert report.first_mismatch is not None
    region, step, field = report.first_mismatch
    assert (region, step) == (2, 1) and field != "anomalies"


def test_what_if_under_other_params(tmp_path):
    write_log(tmp_path)
    other = NarsetParams(beta=1.0, theta_enter=0.2, theta_exit=0.1, k_enter=1.0)
    report = replay(tmp_path, other)
    assert report.what_if and report.first_mismatch is not None
    assert report.diff["mean_abs_dx_T"] > 0
    assert 0 <= report.diff["mode_agreement"] <= 1
    assert report.to_dict()["first_mismatch"]["field"]


def test_interrupted_log_is_marked_partial(tmp_path):
    ds = decide()
    with pytest.raises(KeyboardInterrupt):
        with DecisionLogWriter(tmp_path, params=PARAMS) as w:
            w.write(stack(ds[:3]))
            assert (tmp_path / "INCOMPLETE").exists()
            # The journal: the manifest as of the last part, never marked complete.
            journal = json.loads((tmp_path / "manifest.json").read_text())
            assert journal["complete"] is False and journal["status"] == "writing"
            assert journal["n_windows"] == 3
            raise KeyboardInterrupt
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is False and "KeyboardInterrupt" in manifest["reason"]
    assert manifest["status"] == "partial" and "after 3 windows" in manifest["reason"]
    assert (tmp_path / "INCOMPLETE").exists()
    with pytest.raises(DecisionLogError, match="partial log"):
        read_decision_log(tmp_path)
    report = replay(tmp_path, allow_partial=True)
    assert report.partial and report.ok and report.n_windows == 3


def test_killed_writer_leaves_a_journal_verifiable_up_to_its_last_part(tmp_path):
    w = DecisionLogWriter(tmp_path, params=PARAMS)
    with pytest.raises(DecisionLogError, match="no manifest.json: the run was interrupted"):
        read_decision_log(tmp_path)  # killed before its first part: nothing to verify
    w.write(stack(decide()[:2]))
    w.write(stack(decide()[2:3]))
    # No close(): as if the process was killed.
    with pytest.raises(DecisionLogError, match="partial log .*unfinished"):
        read_decision_log(tmp_path)
    report = replay(tmp_path, allow_partial=True)
    assert report.ok and report.n_windows == 3 and report.status == "writing"


def test_rewriting_a_directory_drops_the_old_log(tmp_path):
    write_log(tmp_path, chunks=(2, 2, 2))
    assert len(list((tmp_path / "decisions").glob("part-*.parquet"))) == 3
    w = DecisionLogWriter(tmp_path, params=PARAMS)
    assert not (tmp_path / "manifest.json").exists()
    assert list((tmp_path / "decisions").glob("part-*.parquet")) == []
    w.write(stack(decide()[:1]))
    w.close()
    assert read_decision_log(tmp_path).manifest["n_windows"] == 1


def test_bad_logs_give_one_line_errors(tmp_path):
    with pytest.raises(DecisionLogError, match="no such decision-log directory"):
        read_decision_log(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DecisionLogError, match="line 1"):
        read_decision_log(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DecisionLogError, match=r"manifest\.json: not UTF-8"):
        read_decision_log(tmp_path)
    write_log(tmp_path / "ok")
    (tmp_path / "ok" / "decisions" / "part-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(DecisionLogError, match="part-00001.parquet"):
        replay(tmp_path / "ok")
    with pytest.raises(ValueError, match="regions"):
        with DecisionLogWriter(tmp_path / "x", n_regions=3) as w:
            w.write(stack(decide()[:1]))
