"""Golden outputs: the user-facing jobs give the same numbers, bit for bit, as when the
goldens were recorded (before the closed-loop layer was reshaped, issue 13).

Each job runs as the user runs it, in a fresh ``narset`` / ``python -m`` process with
JAX's defaults (one CPU device, 32-bit), not under this suite's conftest settings:

* the ``make run`` job (``narset simulate --scenario crisis --regions 3000 --steps 150
  --seed 0``): the decision log compared by value, column by column, plus summary.json;
* ``python -m sims.table --json`` (every controller on every scenario, default sizes);
* a small ``narset phase`` grid (phase.json and the CSV);
* a five-iteration ``narset tune`` (history, evaluation, params, checkpoint arrays);
* ``narset decide`` on the synthetic event log of ``tests/test_cli_decide.py``.

Timings, versions, dates and paths are left out of the comparison; everything else is
compared exactly (floats as JSON writes them, arrays by the SHA-256 of their bytes).

A changed golden is a bug until someone can say why it changed. To record new goldens
(only then): ``NARSET_RECORD_GOLDENS=1 .venv/bin/python -m pytest tests/test_goldens.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from narset_jax.testing import synthetic_event_log

GOLDEN_DIR = Path(__file__).parent / "goldens"
RECORD = os.environ.get("NARSET_RECORD_GOLDENS") == "1"

# Keys whose values depend on the clock, the machine, the versions or the output path.
_VOLATILE = {
    "created", "finished", "versions", "wall_seconds", "region_windows_per_second",
    "region_windows_per_s", "seconds", "compile_s", "run_s", "total_s", "outputs", "files",
    "out", "sha256", "bytes", "device", "machine", "progress_s",
}


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in sorted(obj.items()) if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str) and "/" in obj:
        return Path(obj).name  # a path: only its file name is part of the output
    return obj


def _array_digest(a: np.ndarray) -> list:
    a = np.ascontiguousarray(a)
    return [str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]


def _parquet_digest(files: list[Path]) -> dict:
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in files]
    out = {"n_rows": int(sum(t.num_rows for t in tables))}
    for name in tables[0].column_names:
        col = np.concatenate([t.column(name).to_numpy() for t in tables])
        out[name] = _array_digest(col)
    return out


def digest(path: Path) -> dict:
    """A comparable digest of one output directory (or file)."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    out: dict = {}
    parts = sorted(path.rglob("*.parquet"))
    if parts:
        out["decisions"] = _parquet_digest(parts)
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".csv", ".toml", ".npz"}:
            out[str(f.relative_to(path))] = _file_digest(f)
    return out


def _file_digest(f: Path):
    if f.suffix == ".json":
        return _scrub(json.loads(f.read_text()))
    if f.suffix == ".csv":
        with f.open() as fh:
            return list(csv.reader(fh))
    if f.suffix == ".npz":
        with np.load(f, allow_pickle=False) as z:
            return {k: _npz_entry(z[k]) for k in sorted(z.files)}
    return f.read_text()


def _npz_entry(a: np.ndarray):
    if a.dtype.kind == "U" and a.ndim == 0:  # a JSON document stored as a string
        return _scrub(json.loads(str(a)))
    return _array_digest(a)


def _run(argv: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in {"XLA_FLAGS", "JAX_ENABLE_X64", "JAX_PLATFORMS"}}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


NARSET = ["-m", "narset_jax.cli"]

JOBS = {
    "simulate_make_run": lambda d: (
        NARSET + ["simulate", "--scenario", "crisis", "--regions", "3000", "--steps", "150",
                  "--seed", "0", "--out", str(d / "out")], d / "out"),
    "table": lambda d: (
        ["-m", "sims.table", "--quiet", "--json", str(d / "table.json")], d / "table.json"),
    "phase": lambda d: (
        NARSET + ["phase", "--x", "beta:0.1:1:3", "--y", "gap:0:0.4:3", "--scenario", "crisis",
                  "--regions", "64", "--steps", "40", "--seeds", "2", "--out", str(d / "out"),
                  "--json", str(d / "out" / "summary.json")], d / "out"),
    "tune": lambda d: (
        NARSET + ["tune", "--scenario", "crisis", "--iters", "5", "--regions", "64", "--steps",
                  "30", "--batch", "2", "--holdout", "steady", "--baselines", "static_split",
                  "--eval-seeds", "8", "--eval-regions", "64", "--eval-steps", "30",
                  "--no-progress", "--out", str(d / "out"),
                  "--json", str(d / "out" / "summary.json")], d / "out"),
    "decide": lambda d: (
        NARSET + ["decide", "--events", str(d / "events.jsonl"), "--regions", "512",
                  "--chunk-windows", "16", "--no-progress", "--out", str(d / "out"),
                  "--json", str(d / "out" / "summary.json")], d / "out"),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_golden(job, tmp_path):
    (tmp_path / "events.jsonl").write_text("\n".join(synthetic_event_log()) + "\n")
    argv, result = JOBS[job](tmp_path)
    _run(argv, tmp_path)
    got = json.loads(json.dumps(digest(result)))
    golden = GOLDEN_DIR / f"{job}.json"
    if RECORD:
        GOLDEN_DIR.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(golden.read_text())
    assert sorted(got) == sorted(want), f"{job}: files differ"
    for key in want:
        if isinstance(want[key], dict) and isinstance(got[key], dict):
            for sub in sorted(set(want[key]) | set(got[key])):
                assert got[key].get(sub) == want[key].get(sub), f"{job}: {key} / {sub} changed"
        else:
            assert got[key] == want[key], f"{job}: {key} changed"
