"""Bad input never gives a traceback (issue 14): every user or environment error, in every
command, is one line on stderr naming the file, field or line, with a documented non-zero
exit status; ``--debug`` shows the traceback.

The commands run in-process (``narset_jax.cli.main``); only the file-size-limit test needs
a subprocess. Every ``decide`` run uses the same region count and dtype, so its jitted
step compiles once for the whole file.
"""

import contextlib
import errno
import gzip
import io
import json
import os
import re
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import narset_jax.cli.sweep as cli_sweep
from narset_jax.cli import (
    EXIT_INTERNAL,
    EXIT_MEMORY,
    EXIT_OS,
    EXIT_RECURSION,
    EXIT_USER,
    classify,
    main,
)
from narset_jax.ingest import IngestError, open_windows, parse_event
from narset_jax.params import NarsetParams, ParamsError
from narset_jax.telemetry import TELEMETRY_FIELDS
from narset_jax.testing import synthetic_event_log

R = 64
COMMON = ["--regions", str(R), "--no-progress"]
DEEP = "[" * 10_000 + "]" * 10_000
NESTED = "not json: nested too deeply (an event is a flat object)"
REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def one_line(err: str) -> str:
    """The only line of ``err`` (and no traceback)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def lines():
    return synthetic_event_log(n_windows=6)


def write(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- 3. truncated or corrupt gzip, deep JSON ----------------------------------------------


def test_truncated_gzip_names_the_file_and_the_last_complete_line(tmp_path, lines):
    data = ("\n".join(lines) + "\n").encode()
    packed = gzip.compress(data)
    cut = packed[: len(packed) * 2 // 3]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)
    code, err = run_cli("decide", "--events", path, "--out", tmp_path / "log", *COMMON)
    assert code == EXIT_USER
    m = re.match(
        rf"narset decide: error: {re.escape(str(path))}:(\d+): truncated gzip: .*"
        r"the last complete line is (\d+)\b",
        one_line(err),
    )
    assert m and int(m[1]) == int(m[2]) + 1
    # Every line that decompresses before the cut is read (none lost in a buffer).
    complete = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
    assert int(m[2]) == complete
    # The stream API keeps the windows closed before the cut; the fault stops "skip" too.
    seen = []
    with pytest.raises(IngestError, match="truncated gzip") as info:
        for w, _cols in open_windows(path, n_regions=R, on_error="skip"):
            seen.append(w)
    assert seen == list(range(len(seen))) and len(seen) >= 1
    assert info.value.reason == "truncated_gzip" and info.value.line == complete + 1


def test_junk_after_the_gzip_stream_is_one_line(tmp_path, lines):
    path = tmp_path / "junk.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()) + b"not gzip\n")
    code, err = run_cli("decide", "--events", path, "--out", tmp_path / "log", *COMMON)
    assert code == EXIT_USER
    line = one_line(err)
    assert line.startswith(f"narset decide: error: {path}:{len(lines) + 1}: corrupt gzip: ")
    assert f"the last complete line is {len(lines)}" in line


def test_deep_json_line_is_skipped_and_counted(tmp_path, lines):
    path = write(tmp_path / "deep.jsonl", [*lines[:3], DEEP, *lines[3:]])
    summary = tmp_path / "summary.json"
    code, err = run_cli("decide", "--events", path, "--out", tmp_path / "log", *COMMON,
                        "--on-error", "skip", "--json", summary)
    assert code == 0, err
    ingest = json.loads(summary.read_text())["ingest"]
    assert ingest["bad_lines"] == 1 and ingest["bad_by_reason"]["not_json"] == 1
    assert ingest["errors"] == [f"{path}:4: {NESTED}"]


def test_deep_json_line_stops_naming_the_line(tmp_path, lines):
    path = write(tmp_path / "deep.jsonl", [*lines[:3], DEEP, *lines[3:]])
    code, err = run_cli("decide", "--events", path, "--out", tmp_path / "log", *COMMON)
    assert code == EXIT_USER
    assert one_line(err).startswith(f"narset decide: error: {path}:4: {NESTED}")


def test_deep_json_without_orjson(tmp_path, lines, monkeypatch):
    """The standard library's decoder raises RecursionError: counted as malformed too."""
    import narset_jax.ingest as ingest
    import narset_jax.ingest.jsonl as jsonl
    import narset_jax.ingest.schema as schema

    monkeypatch.setattr(schema, "_orjson_loads", None)
    for mod in (schema, jsonl, ingest):
        monkeypatch.setattr(mod, "fast_decode", json.loads)
    path = write(tmp_path / "deep.jsonl", [*lines[:3], DEEP, *lines[3:]])
    stream = open_windows(path, on_error="skip")  # the region pass reads the deep line too
    assert len(list(stream)) == len(list(open_windows(write(tmp_path / "e.jsonl", lines))))
    assert stream.report.bad_by_reason["not_json"] == 1
    with pytest.raises(IngestError, match="nested too deeply"):
        parse_event(DEEP)


# ---- 8. params, scenario and tune settings TOML: wrong types -------------------------------


@pytest.mark.parametrize("command", ["simulate", "decide"])
def test_list_in_params_toml_names_file_and_field(tmp_path, lines, command):
    params = tmp_path / "params.toml"
    params.write_text("beta = 0.5\nalpha = [2.0]\n")
    out = tmp_path / "out"
    if command == "simulate":
        argv = ["simulate", "--regions", "4", "--steps", "2", "--no-plots", "--no-progress"]
    else:
        argv = ["decide", "--events", write(tmp_path / "e.jsonl", lines), *COMMON]
    code, err = run_cli(*argv, "--params", params, "--out", out)
    assert code == EXIT_USER
    assert one_line(err) == (
        f"narset {command}: error: {params}: NarsetParams.alpha must be a number, "
        "got a list ([2.0])"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("alpha = {x = 1}", "NarsetParams.alpha must be a number, got a table"),
        ('alpha = "2"', "NarsetParams.alpha must be a number, got a string ('2')"),
        ("alpha = true", "NarsetParams.alpha must be a number, got a boolean (true)"),
        ("cost = 1", "NarsetParams.cost must be a string, got 1"),
        ("alpha = " + "[" * 5000 + "]" * 5000, "malformed TOML: nested too deeply"),
    ],
)
def test_params_toml_types(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text + "\n")
    with pytest.raises(ParamsError) as info:
        NarsetParams.from_toml(path)
    assert str(info.value) == f"{path}: {message}"


def test_scenario_and_tune_settings_toml_types(tmp_path):
    import sims
    from narset_jax.errors import UserError
    from sims.tune import read_config

    path = tmp_path / "s.toml"
    path.write_text("noise = [0.1]\n")
    with pytest.raises(sims.ScenarioError) as info:
        sims.load_scenario(path)
    assert str(info.value) == f"{path}: noise must be a number, got a list ([0.1])"
    for text, message in (
        ("[optimiser]\nlearning_rate = [0.1]\n",
         "[optimiser] learning_rate must be a number, got a list ([0.1])"),
        ('[optimiser]\nbatch = "4"\n', "[optimiser] batch must be an integer, got a string"),
        ('[relaxation]\nremat = "yes"\n', "[relaxation] remat must be true or false"),
        ("optimiser = 1\n", "optimiser must be a [table], got 1"),
    ):
        path.write_text(text)
        with pytest.raises(UserError, match=re.escape(f"{path}: {message}")):
            read_config(path)


# ---- 9. values that overflow the log's dtype -------------------------------------------------


def test_float32_overflow_counts_as_out_of_range(tmp_path, lines):
    extra = [
        '{"region": 1, "window": 0, "kind": "loss", "value": 1e308}',
        '{"region": 2, "window": 0, "kind": "lstm_health", "h_rms": 1e39}',
        '{"region": 3, "window": 0, "kind": "seed_op", "op": "set_alpha", "delta_alpha": 1e20}',
    ]
    # Each square fits float32; their sum (window 1's alpha_shock) does not: clipped, counted.
    shock = json.dumps({"region": 4, "window": 1, "kind": "seed_op", "op": "set_alpha",
                        "delta_alpha": 1.5e19})
    w1 = next(i for i, line in enumerate(lines) if '"window": 2' in line)
    path = write(tmp_path / "big.jsonl",
                 [*lines[:5], *extra, *lines[5:w1], shock, shock, *lines[w1:]])
    base = open_windows(write(tmp_path / "plain.jsonl", lines), n_regions=R)
    list(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning
        stream = open_windows(path, n_regions=R)
        chunks = list(stream.chunks(4, np.float32))
    rep = stream.report
    assert rep.out_of_range == {"loss": 1, "h_rms": 1, "delta_alpha": 1, "alpha_shock": 1}
    assert rep.nonfinite_values == base.report.nonfinite_values  # not non-finite either
    assert any("1e+308 overflows float32" in e for e in rep.errors)
    for _w, tel in chunks:
        for k in ("loss", "lstm_health", "alpha_shock"):
            assert not np.isinf(getattr(tel, k)).any()
    assert float(chunks[0][1].alpha_shock[1, 4]) == float(np.finfo(np.float32).max)
    # In float64 every one of these values fits.
    wide = open_windows(path, n_regions=R, dtype="float64")
    list(wide.chunks(4, np.float64))
    assert wide.report.out_of_range == {}


def test_float32_overflow_in_decide_and_parquet(tmp_path, lines):
    path = write(tmp_path / "big.jsonl",
                 [*lines[:5], '{"region": 1, "window": 0, "kind": "loss", "value": 1e308}',
                  *lines[5:]])
    summary = tmp_path / "summary.json"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*overflow.*")
        code, err = run_cli("decide", "--events", path, "--out", tmp_path / "log", *COMMON,
                            "--json", summary)
    assert code == 0, err
    assert json.loads(summary.read_text())["ingest"]["out_of_range"] == {"loss": 1}
    # A Parquet cell beyond float32 is counted and clipped.
    rows = {k: [] for k in ("region", "window", *TELEMETRY_FIELDS)}
    for w, cols in open_windows(write(tmp_path / "e.jsonl", lines), n_regions=R):
        for r in np.flatnonzero(cols["valid"]):
            rows["region"].append(int(r))
            rows["window"].append(w)
            for k in TELEMETRY_FIELDS:
                rows[k].append(cols[k][r])
    rows["loss"][3] = 1e308
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table(rows), table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream = open_windows(table, n_regions=R)
        chunks = list(stream.chunks(8, np.float32))
    assert stream.report.out_of_range == {"loss": 1}
    loss = np.concatenate([tel.loss for _w, tel in chunks])
    assert not np.isinf(loss).any() and (loss == np.finfo(np.float32).max).sum() == 1


# ---- 4. write and environment failures -------------------------------------------------------


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain"
    path.write_text("a regular file\n")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--regions", "4", "--steps", "2", "--out", "{plain}/out"],
        ["simulate", "--regions", "4", "--steps", "2", "--out", "{plain}"],
        ["decide", "--events", "{events}", *COMMON, "--out", "{plain}/out"],
        ["decide", "--events", "{events}", *COMMON, "--out", "{tmp}/o", "--json", "{plain}/s"],
        ["phase", "--x", "beta:0.1:1:2", "--y", "gap:0:0.5:2", "--out", "{plain}/out"],
        ["tune", "--scenario", "steady", "--iters", "1", "--regions", "4", "--steps", "2",
         "--out", "{plain}/out"],
        ["sweep", "--regions", "8", "--json", "{plain}/sweep.json"],
        ["sweep", "--regions", "8", "--json", "{tmp}"],
        ["replay", "{tmp}/none", "--json", "/proc/version/r.json"],
    ],
)
def test_unwritable_output_is_one_line(tmp_path, plain, lines, argv):
    events = write(tmp_path / "e.jsonl", lines)
    argv = [a.format(plain=plain, tmp=tmp_path, events=events) for a in argv]
    code, err = run_cli(*argv)
    assert code == EXIT_OS
    line = one_line(err)
    assert line.startswith(f"narset {argv[0]}: error: ")
    assert str(plain) in line or str(tmp_path) in line or "/proc/version" in line


def test_write_failure_after_the_run_is_one_line(tmp_path, lines):
    """/proc looks writable to root, but nothing can be created there."""
    code, err = run_cli("decide", "--events", write(tmp_path / "e.jsonl", lines), *COMMON,
                        "--out", tmp_path / "log", "--json", "/proc/narset-summary.json")
    assert code in (EXIT_USER, EXIT_OS)
    assert "/proc" in one_line(err)


def test_file_size_limit_is_one_line(tmp_path, lines):
    """A full-disk style failure (RLIMIT_FSIZE: writes fail with EFBIG) in a subprocess."""
    events = write(tmp_path / "e.jsonl", lines)
    out = tmp_path / "log"
    limited = (
        "import resource, runpy, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write fails with EFBIG instead
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, resource.RLIM_INFINITY))\n"
        "runpy.run_module('narset_jax.cli', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", limited, "decide", "--events", str(events), "--out", str(out),
         *COMMON],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode in (EXIT_USER, EXIT_OS), proc.stderr
    line = one_line(proc.stderr)
    assert os.strerror(errno.EFBIG) in line and str(tmp_path) in line


@pytest.mark.parametrize(
    "err, code, text",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), EXIT_OS,
         "error: No space left on device (ENOSPC)"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y.json"), EXIT_OS,
         "error: /x/y.json: No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), EXIT_OS,
         "error: /x: Permission denied"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), EXIT_USER,
         "error: /x: No such file or directory"),
        (MemoryError(), EXIT_MEMORY, "error: out of memory (MemoryError); use a smaller size"),
        (RecursionError("maximum recursion depth exceeded"), EXIT_RECURSION,
         "error: input nested too deeply to process (maximum recursion depth exceeded)"),
        (KeyError("x"), EXIT_INTERNAL,
         "internal error: KeyError: 'x' (a bug; run with --debug for the traceback)"),
    ],
)
def test_classify(err, code, text):
    assert classify(err) == (code, text)


@pytest.mark.parametrize("exc, code", [
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_OS),
    (MemoryError("cannot allocate"), EXIT_MEMORY),
    (RecursionError("too deep"), EXIT_RECURSION),
    (KeyError("bug"), EXIT_INTERNAL),
])
def test_any_error_from_a_command_is_one_line(monkeypatch, exc, code):
    def run(args):
        raise exc

    monkeypatch.setattr(cli_sweep, "run", run)
    got, err = run_cli("sweep")
    assert got == code
    assert one_line(err).startswith(("narset sweep: error: ", "narset sweep: internal error: "))
    got, err = run_cli("sweep", "--debug")
    assert got == code and "Traceback" in err and type(exc).__name__ in err


# ---- 10. sizes beyond memory: sweep, phase, tune -------------------------------------------


def test_sweep_refuses_regions_beyond_memory():
    code, err = run_cli("sweep", "--regions", "1e12")
    assert code == EXIT_USER
    line = one_line(err)
    assert line.startswith("narset sweep: error: --regions 1000000000000: needs about ")
    assert "TiB of memory" in line


def test_phase_refuses_a_grid_beyond_memory(tmp_path):
    out = tmp_path / "phase"
    code, err = run_cli("phase", "--x", "beta:0.02:1:100000", "--y", "gap:0:0.5:100000",
                        "--out", out)
    assert code == EXIT_USER
    line = one_line(err)
    assert line.startswith("narset phase: error: a 100000 x 100000 grid x 2 seeds x 256 regions")
    assert "needs about" in line and not out.exists()


def test_tune_refuses_sizes_beyond_memory(tmp_path):
    base = ["tune", "--scenario", "steady", "--iters", "1", "--steps", "10",
            "--out", tmp_path / "tune"]
    code, err = run_cli(*base, "--regions", 10**12)
    assert code == EXIT_USER and "needs about" in one_line(err)
    code, err = run_cli(*base, "--regions", "4", "--eval-regions", 10**13)
    assert code == EXIT_USER
    assert one_line(err).startswith("narset tune: error: --eval-regions 10000000000000: needs")


def test_memory_checks_take_the_available_memory():
    from narset_jax.errors import UserError
    from sims.phase import Axis
    from sims.phase_job import check_phase_memory
    from sims.sweep import check_sweep_memory
    from sims.tune.settings import check_training_memory

    x, y = Axis.parse("beta:0.1:1:4"), Axis.parse("gap:0:0.5:4")
    check_phase_memory(x, y, regions=64, seeds=2, chunks=None, available=10**9)
    check_sweep_memory([100, 1000], available=10**9)
    s = {"scenarios": ["steady"], "batch": 4, "regions": 64, "steps": 10}
    check_training_memory(s, available=10**9)
    with pytest.raises(UserError, match="needs about"):
        check_phase_memory(x, y, regions=64, seeds=2, chunks=None, available=1000)
    with pytest.raises(UserError, match="--regions 1000 over 2 processes"):
        check_sweep_memory([100, 1000], processes=2, available=1000)
    with pytest.raises(UserError, match=r"--regions 64 x --steps 10 x 4 rollouts"):
        check_training_memory(s, available=1000)


# ---- --debug and the help -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where):
    argv = ["sweep", "--regions", "1e12"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    code, err = run_cli(*argv)
    assert code == EXIT_USER
    assert "Traceback (most recent call last)" in err and "check_fits" in err
    assert err.strip().splitlines()[-1].startswith("narset sweep: error: --regions")


def test_help_documents_exit_codes_and_debug(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and "exit status" in out
    for code in (EXIT_USER, EXIT_OS, EXIT_MEMORY, EXIT_RECURSION, EXIT_INTERNAL):
        assert re.search(rf"^  {code}\s", out, re.M)
