"""Issue 14: the decision log as a ledger, through the commands that write it.

One test (or a few) per finding, each failing on the code before the fix:

1. two real concurrent ``narset simulate`` processes on one ``--out``: the second is
   refused at once, naming the first's PID; the first's log verifies;
4. write failures are one line, never a traceback: ``--out`` under a file, a read-only
   filesystem, a full disk (a real 1 MiB tmpfs where it can be mounted) and a file-size
   limit (``RLIMIT_FSIZE``: EFBIG), figures that cannot be written (the log and
   ``summary.json`` are kept);
5. an old log survives bad input and failed runs; someone else's files in ``--out`` are
   refused unless ``--force``; ``--json`` may not point into the log;
6. a real SIGTERM stops a run as Ctrl-C does; after a real SIGKILL the journal verifies
   the finished parts;
7. ``decide --on-error stop`` keeps every window decided before the bad line;
10. a size far beyond memory is refused up front, in one line.

The manifest's own checks (finding 2) are in ``tests/test_ledger_manifest.py``. Sizes are
tiny and shared (64 regions, float32), so each program compiles once per process.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from narset_jax.cli import main
from narset_jax.decision_log import (
    DecisionLogWriter,
    OutputBusyError,
    read_decision_log,
    replay,
)
from narset_jax.decision_log.layout import lock_path, staging_path
from narset_jax.testing import synthetic_event_log

R, T = 64, 20
SIM = ["simulate", "--regions", str(R), "--steps", str(T), "--no-plots", "--no-progress"]
DECIDE = ["decide", "--regions", str(R), "--chunk-windows", "16", "--no-progress"]
ENV = {k: v for k, v in os.environ.items() if k not in {"XLA_FLAGS", "JAX_ENABLE_X64"}}
ENV["JAX_PLATFORMS"] = "cpu"
NARSET = [sys.executable, "-m", "narset_jax.cli"]


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if not x.startswith("narset: note:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def spawn(*argv, prefix=()):
    return subprocess.Popen([*(prefix or NARSET), *map(str, argv)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(pred, proc, timeout=120.0):
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the run ended first (exit {proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out")
        time.sleep(0.01)


def journal_parts(log_dir) -> int:
    try:
        return len(json.loads((log_dir / "manifest.json").read_text())["parts"])
    except (OSError, ValueError, KeyError):
        return 0


def verifies(path, windows=None, partial=False):
    rep = replay(path, allow_partial=partial)
    assert rep.ok, rep.to_dict()
    assert windows is None or rep.n_windows == windows
    return rep


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    f = tmp_path_factory.mktemp("events") / "events.jsonl"
    f.write_text("\n".join(synthetic_event_log()) + "\n")
    return f


# -- 1. concurrent writers ----------------------------------------------------------------


def test_a_second_concurrent_simulate_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = spawn(*SIM, "--chunk", "1", "--out", out)
    try:
        lock = lock_path(out)
        wait_for(lambda: lock.is_file() and f"pid {first.pid} " in lock.read_text(), first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock held
        second = spawn(*SIM, "--out", out)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        line = one_line(err)
        assert line.startswith("narset simulate: error: ") and f"pid {first.pid} " in line
        assert "another narset run" in line
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    verifies(out, T)
    assert len(list((out / "decisions").iterdir())) == T  # one part per window, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_the_library_writer_takes_the_lock_too(tmp_path):
    w = DecisionLogWriter(tmp_path / "log")
    with pytest.raises(OutputBusyError, match=f"pid {os.getpid()} "):
        DecisionLogWriter(tmp_path / "log")
    w.close()
    DecisionLogWriter(tmp_path / "log").close()  # released with the first writer


def test_a_rerun_replaces_the_whole_log(tmp_path):
    out = tmp_path / "out"
    assert cli(*SIM, "--chunk", "2", "--out", out)[0] == 0
    assert len(list((out / "decisions").iterdir())) == T // 2
    assert cli(*SIM, "--chunk", "10", "--seed", "1", "--out", out)[0] == 0
    assert sorted(p.name for p in (out / "decisions").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]
    assert read_decision_log(out).manifest["seed"] == 1 and verifies(out, T)


# -- 6. SIGTERM and SIGKILL ---------------------------------------------------------------


def test_sigterm_stops_like_ctrl_c_and_sigkill_leaves_a_verifiable_journal(tmp_path):
    outs = {sig: tmp_path / sig.name for sig in (signal.SIGTERM, signal.SIGKILL)}
    runs = {sig: spawn(*SIM, "--steps", "2000", "--chunk", "1", "--out", out)
            for sig, out in outs.items()}  # long runs, stopped after a few parts
    for sig, proc in runs.items():
        wait_for(lambda o=outs[sig]: journal_parts(staging_path(o)) >= 3, proc)
        proc.send_signal(sig)
    # SIGTERM: a partial manifest, no temporary part, exit 143; the partial log is --out.
    term, out = runs[signal.SIGTERM], outs[signal.SIGTERM]
    _, err = term.communicate(timeout=120)
    assert term.returncode == 143
    line = one_line(err)
    assert line.startswith("narset simulate: terminated (SIGTERM): the partial log (")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and manifest["reason"].startswith("terminated")
    k = manifest["n_windows"]
    assert k >= 3 and (out / "INCOMPLETE").exists() and not staging_path(out).exists()
    assert sorted(p.name for p in (out / "decisions").iterdir()) == [
        f"part-{i:05d}.parquet" for i in range(k)]  # no stray temporary part
    code, text, _ = cli("replay", out, "--no-progress")
    assert code == 2 and "partial log (terminated (SIGTERM)" in _
    code, text, _ = cli("replay", out, "--allow-partial", "--no-progress")
    assert code == 0 and f"OK: {k} windows x {R} regions (partial log)" in text
    # SIGKILL: nothing can run; the journal in the staging directory verifies its parts.
    kill, out = runs[signal.SIGKILL], outs[signal.SIGKILL]
    kill.communicate(timeout=120)
    assert kill.returncode == -signal.SIGKILL and not out.exists()
    stage = staging_path(out)
    code, _, err = cli("replay", out, "--allow-partial", "--no-progress")
    assert code == 2 and f"journaled partial log in {stage}" in one_line(err)
    code, text, _ = cli("replay", stage, "--allow-partial", "--no-progress")
    k = journal_parts(stage)
    assert code == 0 and f"OK: {k} windows x {R} regions (partial log)" in text and k >= 3
    assert verifies(stage, k, partial=True).status == "writing"
    # The next run of that output clears what the killed one left, and says so.
    code, _, err = cli(*SIM, "--out", out)
    assert code == 0 and f"removing {stage}" in err and not stage.exists()
    verifies(out, T)


# -- 4. write failures --------------------------------------------------------------------


def test_out_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for argv in (SIM, DECIDE + ["--events", tmp_path / "file"]):
        code, _, err = cli(*argv, "--out", tmp_path / "file" / "sub")
        assert code != 0 and str(tmp_path / "file") in one_line(err)


@contextlib.contextmanager
def tmpfs(path, options):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_filesystem_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code, _, err = cli(*SIM, "--out", ro / "out")
        assert code != 0 and str(ro) in one_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 directory anyway "
                    "(the read-only tmpfs test covers an unwritable directory)")
def test_an_unwritable_directory_is_one_line(tmp_path):  # pragma: no cover - as root
    d = tmp_path / "locked"
    d.mkdir(mode=0o555)
    code, _, err = cli(*SIM, "--out", d / "out")
    assert code != 0 and str(d) in one_line(err)


def test_a_full_disk_is_one_line_and_keeps_the_old_log(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        out = disk / "out"
        assert cli(*SIM, "--out", out)[0] == 0
        old = (out / "manifest.json").read_bytes()
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 48 * 1024))
        code, _, err = cli(*SIM, "--chunk", "1", "--seed", "1", "--out", out)
        line = one_line(err)
        assert code != 0 and "No space left on device" in line, line
        assert f"the previous log in {out} is unchanged" in line
        assert (out / "manifest.json").read_bytes() == old
        verifies(out, T)
        stage = staging_path(out)
        if stage.exists():  # the failed run's journaled parts, named in the message
            assert str(stage) in line and verifies(stage, partial=True).n_windows >= 1
        (disk / "filler").unlink()
        assert cli(*SIM, "--out", out)[0] == 0 and not stage.exists()


def test_a_file_size_limit_efbig_leaves_a_verifiable_partial_log(tmp_path):
    out = tmp_path / "out"
    limited = [sys.executable, "-c",
               "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
               "from narset_jax.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = spawn(*SIM, "--steps", "60", "--chunk", "1", "--out", out, prefix=limited)
    _, err = proc.communicate(timeout=120)
    line = one_line(err)
    assert proc.returncode not in (0, 70) and "File too large" in line, err
    assert "the partial log (" in line and str(out) in line
    rep = verifies(out, partial=True)
    assert 1 <= rep.n_windows < 60 and rep.partial
    assert not any(p.name.startswith(".") for p in (out / "decisions").iterdir())


def test_figures_that_fail_keep_the_log_and_summary(tmp_path, monkeypatch):
    import narset_jax.plots.simulate as plots

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plots, "plot_ecology", refuse)
    out = tmp_path / "out"
    code, _, err = cli(*[a for a in SIM if a != "--no-plots"], "--out", out)
    line = one_line(err)
    assert code == 1 and "figures not written (PermissionError: " in line
    assert "summary.json" in line and "are complete" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plots_error"].startswith("PermissionError") and summary["metrics"]
    assert "plots" not in summary["outputs"]
    verifies(out, T)


# -- 5. an old log, someone else's files, --json --------------------------------------------


def test_an_old_log_survives_bad_input(tmp_path, events):
    out = tmp_path / "out"
    assert cli(*DECIDE, "--events", events, "--out", out)[0] == 0
    old = (out / "manifest.json").read_bytes()
    bad_params = tmp_path / "bad.toml"
    bad_params.write_text("alpha = []\n")
    code, _, err = cli(*DECIDE, "--events", events, "--params", bad_params, "--out", out)
    assert code == 2 and "alpha" in one_line(err)
    lines = synthetic_event_log()
    lines.insert(len(lines) // 2, '{"region": 1, "window": 20, "kind": "loss"}')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = cli(*DECIDE, "--events", bad, "--out", out)
    line = one_line(err)
    assert code == 2 and "missing field" in line
    assert f"the previous log in {out} is unchanged" in line
    assert "this run's partial log" in line and str(staging_path(out)) in line
    assert (out / "manifest.json").read_bytes() == old and replay(out).ok
    assert json.loads((out / "summary.json").read_text())["log"]["windows"] == 41


def test_someone_elses_files_are_refused_unless_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(*SIM, "--out", out)
    line = one_line(err)
    assert code == 2 and "notes.txt" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not staging_path(out).exists()
    assert cli(*SIM, "--out", out, "--force")[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and verifies(out, T)
    assert cli(*SIM, "--out", out, "--force", "--seed", "2")[0] == 0  # and again
    assert (out / "notes.txt").read_text() == "mine" and verifies(out, T)
    (out / "decisions" / "README").write_text("inside narset's own directory")
    assert cli(*SIM, "--out", out)[0] == 2
    assert cli(*SIM, "--out", out, "--force")[0] == 0  # narset's entries are replaced whole
    assert not (out / "decisions" / "README").exists() and (out / "notes.txt").exists()


def test_json_may_not_point_into_the_log(tmp_path, events):
    out = tmp_path / "out"
    assert cli(*SIM, "--out", out, "--json", out / "summary.json")[0] == 0  # the same file
    old = (out / "manifest.json").read_bytes()
    for target in (out / "manifest.json", out / "decisions" / "x.json", out):
        for argv in (SIM, DECIDE + ["--events", events]):
            code, _, err = cli(*argv, "--out", out, "--json", target)
            assert code != 0 and "--json" in one_line(err), err
    for target in (out / "manifest.json", out / "summary.json"):  # replay's report either
        code, _, err = cli("replay", out, "--json", target, "--no-progress")
        assert code == 2 and "inside the log directory" in one_line(err)
    assert (out / "manifest.json").read_bytes() == old and verifies(out, T)


# -- 7. decide --on-error stop ------------------------------------------------------------


def test_on_error_stop_keeps_every_window_decided_before_the_bad_line(tmp_path):
    lines = synthetic_event_log()
    at = next(i for i, x in enumerate(lines) if '"window": 30' in x)
    lines.insert(at, '{"region": 1, "window": 30, "kind": "loss"}')
    events = tmp_path / "bad.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, err = cli(*DECIDE, "--events", events, "--out", out)
    line = one_line(err)
    assert code == 2 and f"{events}:{at + 1}: missing field" in line
    kept = int(line.split("stopped there: the ")[1].split()[0])
    assert kept > 16 and kept % 16  # more than whole parts: the pending windows too
    assert f"the partial log ({kept} windows) is in {out}" in line
    manifest = read_decision_log(out, allow_partial=True).manifest
    assert manifest["n_windows"] == kept and f"the {kept} windows" in manifest["reason"]
    assert manifest["ingest"]["windows"] >= kept
    code, text, _ = cli("replay", out, "--allow-partial", "--no-progress")
    assert code == 0 and f"OK: {kept} windows" in text


# -- 10. sizes beyond memory ----------------------------------------------------------------


@pytest.mark.parametrize("regions", ["1e12", "1000000000000"])
def test_a_size_beyond_memory_is_refused_up_front(tmp_path, events, regions):
    for argv in (["simulate", "--regions", regions, "--steps", "2"],
                 ["decide", "--events", events, "--regions", regions]):
        out = tmp_path / argv[0]
        code, _, err = cli(*argv, "--out", out, "--no-progress")
        line = one_line(err)
        assert code == 2 and "--regions 1000000000000: needs about" in line
        assert "of memory" in line and not out.exists()
