"""Issue 14, finding 2: the manifest is verified, not trusted as written.

Its own digest is checked first (any edit, params included, fails); then every field's type
(one line naming the field, never a ``ZeroDivisionError``, ``TypeError`` or ``KeyError``);
then that the fields agree (``n_rows``, ``n_windows``, part names, step ranges) and with the
files on disk. A forger without a key can recompute the sha256 (what that still catches, and
what it cannot, is below); with ``--sign-key`` they cannot recompute the HMAC.
"""

import contextlib
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from narset_jax.cli import main
from narset_jax.decision_log import (
    DecisionLogError,
    DecisionLogWriter,
    LogVerificationError,
    jitted_step,
    read_decision_log,
    replay,
)
from narset_jax.decision_log.manifest import make_digest
from narset_jax.params import NarsetParams
from narset_jax.step import init_state
from narset_jax.telemetry import Telemetry

N, T = 8, 6
KEY = b"k" * 32


def _decisions():
    rng = np.random.default_rng(1)
    state, step, out = init_state(N, jnp.float32), jitted_step(), []
    for t in range(T):
        tel = Telemetry.filled(
            N, jnp.float32, loss=np.full(N, 1.0 - 0.01 * t), anomalies=rng.poisson(2.0, N),
            rollbacks=rng.poisson(0.5, N), lstm_health=rng.uniform(1, 8, N),
            valid=np.ones(N, bool), boundary=rng.uniform(size=N) > 0.5,
        )
        state, d = step(NarsetParams(), state, tel)
        out.append(d)
    return out


def _write(path, sign_key=None):
    ds = _decisions()
    with DecisionLogWriter(path, params=NarsetParams(), seed=0, sign_key=sign_key) as w:
        for i in (0, 2, 4):  # three parts of two windows: steps 0-1, 2-3, 4-5
            w.write(jax.tree.map(lambda *xs: jnp.stack(xs), *ds[i:i + 2]))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ledger")
    _write(root / "plain")
    _write(root / "signed", sign_key=KEY)
    (root / "key").write_bytes(KEY)
    return root


@pytest.fixture
def log(logs, tmp_path):
    shutil.copytree(logs / "plain", tmp_path / "log")
    return tmp_path / "log"


def load(path):
    return json.loads((path / "manifest.json").read_text())


def save(path, m, reseal=False):
    """Write an edited manifest; ``reseal``: recompute its sha256 digest, as a forger
    without a key can."""
    if reseal:
        m["digest"] = make_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def replay_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["replay", *map(str, argv), "--no-progress"])
    return code, out.getvalue() + err.getvalue()


def test_an_untouched_log_verifies(logs):
    code, text = replay_cli(logs / "plain")
    assert code == 0 and "OK: 6 windows x 8 regions, manifest sha256" in text
    assert read_decision_log(logs / "plain").digest == "sha256"


@pytest.mark.parametrize("delete_file", [False, True])
def test_removing_the_last_part_entry_is_caught(log, delete_file):
    m = load(log)
    last = m["parts"].pop()
    if delete_file:
        (log / last["file"]).unlink()
    save(log, m)
    code, text = replay_cli(log)
    assert code == 1 and "FAILED" in text and "digest mismatch" in text
    assert len(text.strip().splitlines()) == 1
    # A forger who also fixes the counts and the digest (no key): the counts must agree
    # with the parts ...
    m["last_step"] = 3
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match="n_rows: 48, but the parts hold 32"):
        read_decision_log(log)
    m["n_rows"], m["n_windows"] = 32, 4
    save(log, m, reseal=True)
    if not delete_file:  # ... and no part file may be left out of a complete log
        with pytest.raises(LogVerificationError, match="part-00002.parquet: a part file the "
                           "manifest does not list"):
            read_decision_log(log)
    else:  # a consistent shorter log: only a key tells it from the truth (docs/reliability.md)
        assert replay(log).ok


def test_an_empty_parts_list_is_caught(log):
    m = load(log)
    m["parts"] = []
    save(log, m)
    assert replay_cli(log)[0] == 1
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match="n_rows: 48, but the parts hold 0 rows"):
        read_decision_log(log)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_rows", 40, "n_rows: 40, but the parts hold 48"),
        ("n_windows", 5, r"n_windows: 5 windows x 8 regions != n_rows 48"),
        ("last_step", 7, r"first_step: 0\.\.7 does not match the parts' 0\.\.5"),
    ],
)
def test_counts_are_compared(log, key, value, message):
    m = load(log)
    m[key] = value
    save(log, m)
    with pytest.raises(LogVerificationError, match="digest mismatch"):
        read_decision_log(log)
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match=message):
        read_decision_log(log)


def test_a_params_edit_that_changes_no_decision_is_caught(log):
    m = load(log)
    m["params"]["alpha"] = m["params"]["alpha"] * 1.25
    save(log, m)
    code, text = replay_cli(log)
    assert code == 1 and "digest mismatch: the manifest was changed" in text


def test_steps_must_follow_on(log):
    m = load(log)
    m["parts"][1]["first_step"], m["parts"][1]["last_step"] = 4, 5
    m["parts"][2]["first_step"], m["parts"][2]["last_step"] = 2, 3
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match=r"parts\[1\]\.first_step: 4: steps must "
                       "follow on"):
        read_decision_log(log)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x/decisions/part-00000.parquet",
                                  "decisions/part-00001.parquet"])
def test_part_paths_stay_inside_the_log(log, path):
    m = load(log)
    m["parts"][0]["file"] = path
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match=r"parts\[0\]\.file: expected "
                       "'decisions/part-00000.parquet'"):
        read_decision_log(log)


def test_a_part_symlinked_out_of_the_log_is_caught(log, tmp_path):
    outside = tmp_path / "elsewhere.parquet"
    part = log / "decisions" / "part-00000.parquet"
    shutil.move(part, outside)
    os.symlink(outside, part)
    with pytest.raises(LogVerificationError, match="resolves outside the log"):
        read_decision_log(log)


def _set(path, value):
    def edit(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


@pytest.mark.parametrize(
    "path, value, field",
    [
        (["n_regions"], 0, "n_regions: expected an integer >= 1, got 0"),
        (["n_regions"], "8", "n_regions: expected an integer >= 1"),
        (["n_regions"], None, r"n_regions: missing \(null\) in a log with rows"),
        (["n_rows"], True, "n_rows: expected an integer >= 0, got true"),
        (["n_windows"], KeyError, "n_windows: missing"),
        (["parts"], "x", "parts: expected a list of parts"),
        (["parts"], KeyError, "parts: missing"),
        (["parts", 0], 5, r"parts\[0\]: expected an object"),
        (["parts", 0, "rows"], "16", r"parts\[0\]\.rows: expected an integer"),
        (["parts", 0, "sha256"], "abc", r"parts\[0\]\.sha256: expected 64 lowercase hex"),
        (["parts", 0, "file"], KeyError, r"parts\[0\]\.file: missing"),
        (["columns"], [[1, 2]], r"columns\[0\]: expected \[name, type\]"),
        (["dtype"], "complex128", "dtype: expected one of"),
        (["complete"], "yes", "complete: expected true or false"),
        (["status"], "partial", "status: 'partial' contradicts"),
        (["format_version"], 7, "format_version: 7 is not one this narset reads"),
        (["seed"], 1.5, "seed: expected an integer"),
        (["config"], [], "config: expected an object"),
        (["params"], {"alpha": "x"}, "params: .*alpha must be a number"),
        (["params"], {"nonsense": 1}, "params: .*unknown NarsetParams key"),
        (["versions"], {"jax": 4}, "versions.jax: expected a version string"),
    ],
)
def test_malformed_fields_are_one_line_naming_the_field(log, path, value, field):
    m = load(log)
    _set(path, value)(m)
    save(log, m, reseal=True)
    with pytest.raises(LogVerificationError, match=field):
        replay(log)  # (params are parsed when replay needs them, not by read_decision_log)
    code, text = replay_cli(log)
    assert code == 1 and len(text.strip().splitlines()) == 1, text
    assert "manifest.json" in text and "Traceback" not in text


@pytest.mark.parametrize("content", [b"\x00\x01\xff" * 50, b"[1, 2]", b"{\"format\": 1}"])
def test_a_binary_or_foreign_manifest_names_the_file(log, content):
    (log / "manifest.json").write_bytes(content)
    code, text = replay_cli(log)
    assert code == 1 and f"{log / 'manifest.json'}:" in text
    assert len(text.strip().splitlines()) == 1


def test_signed_logs_need_the_key_and_refuse_a_resealed_manifest(logs, tmp_path):
    signed = tmp_path / "signed"
    shutil.copytree(logs / "signed", signed)
    key, other = logs / "key", tmp_path / "other"
    other.write_bytes(b"o" * 32)
    assert read_decision_log(signed, key=KEY).digest.startswith("hmac-sha256 (key id ")
    code, text = replay_cli(signed, "--sign-key", key)
    assert code == 0 and "manifest hmac-sha256" in text
    code, text = replay_cli(signed)
    assert code == 1 and "signed with HMAC-SHA256" in text and "pass --sign-key" in text
    code, text = replay_cli(signed, "--sign-key", other)
    assert code == 1 and "signed with another key" in text
    # The unsigned log, checked with a key: refused (it could be a forger's rewrite).
    code, text = replay_cli(logs / "plain", "--sign-key", key)
    assert code == 1 and "not signed" in text
    # A forger without the key edits params and recomputes what they can.
    m = load(signed)
    m["params"]["alpha"] = m["params"]["alpha"] * 1.25
    digest = m["digest"]
    save(signed, m, reseal=True)  # a plain sha256 instead of the HMAC
    assert "not signed" in replay_cli(signed, "--sign-key", key)[1]
    m["digest"] = make_digest(m, b"f" * 32)  # an HMAC with their own key
    save(signed, m)
    assert "signed with another key" in replay_cli(signed, "--sign-key", key)[1]
    m["digest"] = {**digest, "hmac_sha256": "0" * 64}  # the right key id, a guessed HMAC
    save(signed, m)
    assert "HMAC mismatch" in replay_cli(signed, "--sign-key", key)[1]
    (tmp_path / "short").write_bytes(b"abc")
    code, text = replay_cli(signed, "--sign-key", tmp_path / "short")
    assert code == 2 and "at least 16" in text


def test_format_1_logs_are_verified_with_a_note(log):
    m = load(log)
    del m["digest"]
    m["format_version"] = 1
    save(log, m)
    code, text = replay_cli(log)
    assert code == 0 and "no digest (format 1)" in text and "OK: 6 windows" in text
    rep = replay(log)
    assert rep.ok and rep.digest == "no digest (format 1)" and rep.notes
    code, text = replay_cli(log, "--sign-key", log.parent.parent / "nokey")
    assert code == 2  # the key file does not exist: a usage error
    m["n_windows"] = 5  # without a digest the fields are still checked
    save(log, m)
    with pytest.raises(LogVerificationError, match="n_windows: 5 windows"):
        read_decision_log(log)
    m["n_windows"], m["format_version"] = 6, 2  # format 2 must carry its digest
    save(log, m)
    with pytest.raises(LogVerificationError, match="has no digest"):
        read_decision_log(log)


def test_a_missing_log_is_a_usage_error_not_a_failed_verification(tmp_path):
    code, text = replay_cli(tmp_path / "none")
    assert code == 2 and "no such decision-log directory" in text
    with pytest.raises(DecisionLogError):
        read_decision_log(tmp_path)
