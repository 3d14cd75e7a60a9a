"""The decision log: Narset's decisions as Parquet, with a manifest, and bit-for-bit replay.

Layout of a log directory ``DIR``:

- ``DIR/decisions/part-NNNNN.parquet``: one row per region and window, in window-major
  order. Columns are [`narset_jax.Decision.column_names`][]: the decision fields
  (``region``, ``step``, ``x_T``, ``x_E``, ...) then the raw inputs under their telemetry
  names (``loss``, ..., ``valid``, ``boundary``). Each part is written to a temporary file
  and renamed, so a part that exists is complete.
- ``DIR/manifest.json``: written **last**. It records the config, params, seed, package
  versions, the columns and, for every part, its row count, window range and sha256.
  ``"complete": true`` marks a finished log; an interrupted run writes ``"complete": false``
  with the reason (or, if it was killed outright, no manifest at all).
- ``DIR/INCOMPLETE``: present from the first write until the manifest marks the log
  complete. A directory with this file, or without a manifest, is not a complete log.

[`narset_jax.decision_log.replay`][] feeds the logged raw inputs back through the
controller, window by window, and compares every decision field bit for bit (or, with
other params, reports how the decisions would differ: a what-if analysis).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.atomic import atomic_path, write_json, write_text
from narset_jax.errors import UserError

__all__ = [
    "FORMAT",
    "DecisionLog",
    "DecisionLogError",
    "DecisionLogWriter",
    "ReplayReport",
    "jitted_step",
    "read_decision_log",
    "replay",
    "versions",
]

FORMAT = "narset-decision-log"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MARKER = "INCOMPLETE"
PARTS_DIR = "decisions"
_PART_RE = re.compile(r"^part-\d{5}\.parquet$")
_MARKER_TEXT = (
    "This decision log is incomplete: it is being written, or the run was interrupted.\n"
    "manifest.json, written last, marks a complete log with \"complete\": true.\n"
)


class DecisionLogError(UserError, ValueError):
    """A missing, incomplete, tampered or unreadable decision log (one line, naming the
    file)."""


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers: narset-jax, JAX, jaxlib,
    NumPy, pyarrow and Python."""
    import jax
    import pyarrow

    import narset_jax

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except Exception:  # noqa: BLE001 - reported as unknown
        jaxlib_version = "unknown"
    return {
        "narset_jax": narset_jax.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _columns_of(decisions) -> dict[str, Any]:
    if isinstance(decisions, Mapping):
        return dict(decisions)
    if hasattr(decisions, "columns"):
        return decisions.columns()
    raise TypeError(
        f"expected a Decision or a mapping of columns, got {type(decisions).__name__}"
    )


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    return np.dtype(dtype).name


class DecisionLogWriter:
    """Append decisions to a log directory in Parquet parts; write the manifest last.

    Use it as a context manager: leaving the block normally writes the complete
    manifest; leaving it by an exception (``KeyboardInterrupt`` included) writes a manifest
    marked ``"complete": false`` with the reason, keeps the ``INCOMPLETE`` marker, and
    re-raises.

    ```python
    with DecisionLogWriter(out, params=params, config={"scenario": "crisis"}, seed=0) as w:
        for chunk in chunks:
            w.write(decisions)            # a Decision with [T, N] (or [N]) fields
    ```

    **Arguments:**

    - ``out_dir``: the log directory (created if needed). A previous log there is
      replaced: its manifest, marker and parts are removed first.
    - ``params``: the [`narset_jax.NarsetParams`][] that made the decisions (stored with
      ``to_dict()``; replay rebuilds them from it). Optional for logs of other sources.
    - ``n_regions``: optional; checked against every chunk.
    - ``dtype``: the decisions' float dtype (inferred from the first chunk if ``None``).
    - ``config``: JSON-serialisable run configuration (e.g. scenario, controller).
    - ``seed``: the run's seed, if any.
    - ``extra``: more top-level manifest entries.
    - ``compression``: Parquet compression (``"zstd"``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        params=None,
        n_regions: int | None = None,
        dtype=None,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
        compression: str = "zstd",
    ):
        self.path = Path(out_dir)
        self.params = params
        self.n_regions = n_regions
        self.dtype = _dtype_name(dtype)
        self.config = dict(config or {})
        self.seed = seed
        self.extra = dict(extra or {})
        self.compression = compression
        self.parts: list[dict[str, Any]] = []
        self.n_rows = 0
        self.columns: list[tuple[str, str]] | None = None
        self.manifest: dict[str, Any] | None = None
        self._created = _now()
        self._closed = False
        self._prepare()

    # -- setup ------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # The old manifest goes first: from here on the directory never looks complete.
        with contextlib.suppress(FileNotFoundError):
            (self.path / MANIFEST).unlink()
        write_text(self.path / MARKER, _MARKER_TEXT)
        parts = self.path / PARTS_DIR
        parts.mkdir(exist_ok=True)
        for old in parts.iterdir():
            if _PART_RE.match(old.name) or old.name.startswith(".part-"):
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()

    # -- writing ----------------------------------------------------------------------

    def write(self, decisions) -> dict[str, Any]:
        """Append one chunk: a [`narset_jax.Decision`][] (fields ``[T, N]`` or ``[N]``) or a
        mapping of column name to array. Rows are window-major (``t * N + r``).

        **Returns:** the new part's manifest entry.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._closed:
            raise RuntimeError("DecisionLogWriter is closed")
        cols = {k: np.asarray(v) for k, v in _columns_of(decisions).items()}
        if not cols:
            raise ValueError("no columns to write")
        shapes = {v.shape for v in cols.values()}
        if len(shapes) != 1:
            raise ValueError(f"columns must share one shape, got {sorted(shapes)}")
        (shape,) = shapes
        if len(shape) not in (1, 2):
            raise ValueError(f"columns must be [N] or [T, N], got shape {shape}")
        n = shape[-1]
        if self.n_regions is None:
            self.n_regions = n
        elif n != self.n_regions:
            raise ValueError(f"chunk has {n} regions, the log has {self.n_regions}")
        if self.dtype is None and "x_T" in cols:
            self.dtype = cols["x_T"].dtype.name
        table = pa.table({k: pa.array(v.reshape(-1)) for k, v in cols.items()})
        schema = [(f.name, str(f.type)) for f in table.schema]
        if self.columns is None:
            self.columns = schema
        elif schema != self.columns:
            raise ValueError("chunk columns differ from the log's first chunk")
        index = len(self.parts)
        name = f"{PARTS_DIR}/part-{index:05d}.parquet"
        target = self.path / name
        with atomic_path(target, suffix=".parquet") as tmp:
            # Dictionary encoding only slows down (and grows) float decision columns.
            pq.write_table(table, tmp, compression=self.compression, use_dictionary=False)
        entry: dict[str, Any] = {
            "file": name,
            "rows": int(table.num_rows),
            "bytes": target.stat().st_size,
            "sha256": _sha256(target),
        }
        if "step" in cols and cols["step"].size:
            entry["first_step"] = int(cols["step"].min())
            entry["last_step"] = int(cols["step"].max())
        self.parts.append(entry)
        self.n_rows += entry["rows"]
        return entry

    append = write

    # -- closing ----------------------------------------------------------------------

    def close(self, *, complete: bool = True, reason: str | None = None) -> dict[str, Any]:
        """Write the manifest (last). ``complete=False`` marks a partial log and keeps the
        ``INCOMPLETE`` marker. Returns the manifest; a second call returns it again."""
        if self._closed:
            return self.manifest
        params = None
        if self.params is not None:
            params = self.params.to_dict() if hasattr(self.params, "to_dict") else self.params
        steps = [p for p in self.parts if "first_step" in p]
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": bool(complete),
            "status": "complete" if complete else "partial",
            "created": self._created,
            "finished": _now(),
            "n_regions": self.n_regions,
            "n_rows": self.n_rows,
            "n_windows": (self.n_rows // self.n_regions) if self.n_regions else 0,
            "first_step": min(p["first_step"] for p in steps) if steps else None,
            "last_step": max(p["last_step"] for p in steps) if steps else None,
            "dtype": self.dtype,
            "columns": self.columns or [],
            "parts": self.parts,
            "params": params,
            "seed": self.seed,
            "config": self.config,
            "versions": versions(),
        }
        if not complete:
            manifest["reason"] = reason or "interrupted"
        manifest.update(self.extra)
        write_json(self.path / MANIFEST, manifest)
        if complete:
            with contextlib.suppress(FileNotFoundError):
                (self.path / MARKER).unlink()
        else:
            write_text(
                self.path / MARKER,
                _MARKER_TEXT + f"Partial: {manifest['reason']} after {self.n_rows} rows.\n",
            )
        self.manifest = manifest
        self._closed = True
        return manifest

    def __enter__(self) -> DecisionLogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(complete=True)
        elif not self._closed:
            reason = "interrupted (KeyboardInterrupt)" if exc_type is KeyboardInterrupt else (
                f"stopped by {exc_type.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            with contextlib.suppress(Exception):
                self.close(complete=False, reason=reason.rstrip(": "))
        return False


# ---------------------------------------------------------------------------------------
# Reading.


@dataclass
class DecisionLog:
    """A decision log directory and its manifest (see
    [`narset_jax.decision_log.read_decision_log`][])."""

    path: Path
    manifest: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def n_regions(self) -> int:
        return int(self.manifest["n_regions"])

    @property
    def column_names(self) -> list[str]:
        return [c[0] for c in self.manifest.get("columns", [])]

    def params(self):
        """The logged [`narset_jax.NarsetParams`][] (``None`` if the log has none)."""
        from narset_jax.params import NarsetParams

        data = self.manifest.get("params")
        if data is None:
            return None
        return NarsetParams.from_dict(data, source=str(self.path / MANIFEST))

    def bad_parts(self) -> list[str]:
        """Parts whose sha256 (or presence) does not match the manifest."""
        bad = []
        for part in self.manifest.get("parts", []):
            f = self.path / part["file"]
            if not f.is_file() or _sha256(f) != part["sha256"]:
                bad.append(part["file"])
        return bad

    def _read_part(self, part):
        import pyarrow.parquet as pq

        f = self.path / part["file"]
        try:
            return pq.read_table(f)
        except FileNotFoundError:
            raise DecisionLogError(f"{f}: part listed in the manifest is missing") from None
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DecisionLogError(f"{f}: unreadable Parquet: {msg}") from None

    def iter_parts(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """``(manifest entry, pyarrow.Table)`` for each part, in order."""
        for part in self.manifest.get("parts", []):
            yield part, self._read_part(part)

    def iter_windows(self) -> Iterator[dict[str, np.ndarray]]:
        """One ``column -> [N] array`` dict per window, in order."""
        n = self.n_regions
        for part, table in self.iter_parts():
            rows = table.num_rows
            if rows % n:
                raise DecisionLogError(
                    f"{self.path / part['file']}: {rows} rows is not a multiple of "
                    f"{n} regions"
                )
            cols = {
                name: table.column(name).to_numpy(zero_copy_only=False).reshape(-1, n)
                for name in table.column_names
            }
            for t in range(rows // n):
                yield {k: v[t] for k, v in cols.items()}

    def read_table(self):
        """The whole log as one ``pyarrow.Table``."""
        import pyarrow as pa

        tables = [t for _, t in self.iter_parts()]
        if not tables:
            return pa.table({name: [] for name in self.column_names})
        return pa.concat_tables(tables)


def read_decision_log(path: str | os.PathLike, *, allow_partial: bool = False) -> DecisionLog:
    """Open a decision log directory.

    **Arguments:**

    - ``path``: the directory written by [`narset_jax.decision_log.DecisionLogWriter`][].
    - ``allow_partial``: accept a log whose manifest says ``"complete": false``.

    **Raises:** [`narset_jax.decision_log.DecisionLogError`][] if the directory or manifest is
    missing (an interrupted or unfinished run), the manifest is malformed, or the log is
    partial and ``allow_partial`` is false.
    """
    path = Path(path)
    if not path.is_dir():
        raise DecisionLogError(f"{path}: no such decision-log directory")
    mf = path / MANIFEST
    if not mf.is_file():
        why = "the run was interrupted or is still writing" if (path / MARKER).exists() else (
            "not a decision log"
        )
        raise DecisionLogError(f"{path}: no {MANIFEST}: {why}")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as err:
        raise DecisionLogError(
            f"{mf}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DecisionLogError(f"{mf}: not a {FORMAT} manifest")
    for key in ("n_regions", "parts", "columns"):
        if key not in manifest:
            raise DecisionLogError(f"{mf}: manifest lacks {key!r}")
    if not manifest.get("complete") and not allow_partial:
        raise DecisionLogError(
            f"{path}: partial log ({manifest.get('reason', 'interrupted')}); "
            "pass allow_partial to read it"
        )
    return DecisionLog(path=path, manifest=manifest)


# ---------------------------------------------------------------------------------------
# Replay.


@dataclass
class ReplayReport:
    """The result of [`narset_jax.decision_log.replay`][].

    **Fields:**

    - ``first_mismatch``: ``(region, step, field)`` of the first decision that differs
      (in window order, then region order, then column order), or ``None``.
    - ``mismatches``: column -> number of rows where it differs.
    - ``rows_mismatched``: rows with at least one differing column.
    - ``bad_parts``: parts whose sha256 does not match the manifest (file tampering).
    - ``n_windows``, ``n_regions``, ``n_rows``: what was replayed.
    - ``partial``: the log is marked partial.
    - ``what_if``: decisions were re-made with params other than the logged ones.
    - ``diff``: for a what-if, summary statistics of the differences (mean ``|dx_T|``,
      ``|dx_E|``, ``|dspent|``, mode agreement, overdrive and lysis shares old vs new).
    - ``log``: the directory.
    """

    first_mismatch: tuple[int, int, str] | None
    mismatches: dict[str, int]
    rows_mismatched: int
    bad_parts: list[str]
    n_windows: int
    n_regions: int
    n_rows: int
    partial: bool
    what_if: bool
    log: str
    diff: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every part's hash and every decision matched."""
        return not self.bad_parts and self.first_mismatch is None

    def to_dict(self) -> dict[str, Any]:
        fm = self.first_mismatch
        return {
            "ok": self.ok,
            "first_mismatch": None
            if fm is None
            else {"region": fm[0], "step": fm[1], "field": fm[2]},
            "mismatches": self.mismatches,
            "rows_mismatched": self.rows_mismatched,
            "bad_parts": self.bad_parts,
            "n_windows": self.n_windows,
            "n_regions": self.n_regions,
            "n_rows": self.n_rows,
            "partial": self.partial,
            "what_if": self.what_if,
            "diff": self.diff,
            "log": self.log,
        }


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise bit equality (NaN equals NaN of the same bits; floats compared as
    integers of their width)."""
    if a.dtype != b.dtype:
        b = b.astype(a.dtype)
    if np.issubdtype(a.dtype, np.floating):
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        return a.view(width) == b.view(width)
    return a == b


_DIFF_FIELDS = ("x_T", "x_E", "spent")
_JITTED: dict[int, tuple[Callable, Callable]] = {}


def jitted_step(step_fn: Callable | None = None) -> Callable:
    """``jax.jit`` of a step function ``(params, state, telemetry) -> (state, decision)``
    (default [`narset_jax.step.narset_step`][]), cached per function.

    Writers that want [`narset_jax.decision_log.replay`][] to reproduce their decisions bit
    for bit should make them with this, one window per call: XLA on CPU may contract
    multiply-adds into FMAs differently when the same step is compiled inside a larger
    program (a ``lax.scan`` with other work, a masked rollout), which changes last bits.
    """
    import jax

    from narset_jax.step import narset_step

    fn = narset_step if step_fn is None else step_fn
    hit = _JITTED.get(id(fn))
    if hit is None or hit[0] is not fn:
        hit = (fn, jax.jit(fn))
        _JITTED[id(fn)] = hit
    return hit[1]


def replay(
    path: str | os.PathLike,
    params=None,
    *,
    step_fn: Callable | None = None,
    allow_partial: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-run the controller on a log's raw inputs, window by window, and compare.

    Each window's raw telemetry columns are fed, in the logged region order, to the step
    (starting from a fresh [`narset_jax.NarsetState`][] with the logged region ids), and
    every logged column is compared with the re-made decision bit for bit.

    **Arguments:**

    - ``path``: the log directory.
    - ``params``: ``None`` to verify with the logged params; other
      [`narset_jax.NarsetParams`][] re-decide the same inputs (a what-if: the report's
      ``diff`` summarises the changes, and mismatches are expected).
    - ``step_fn``: ``(params, state, telemetry) -> (state, decision)``; default
      [`narset_jax.step.narset_step`][]. Logs of other controllers (e.g. the simulator's
      baselines) need theirs.
    - ``allow_partial``: replay a partial log (the windows it has).
    - ``progress``: called with the number of windows done after each window.

    **Returns:** a [`narset_jax.decision_log.ReplayReport`][].

    **Raises:** [`narset_jax.decision_log.DecisionLogError`][] for a missing, partial (unless
    allowed) or unreadable log, or one without params when none are given.
    """
    import jax.numpy as jnp

    from narset_jax.step import init_state
    from narset_jax.telemetry import BOOL_FIELDS, TELEMETRY_FIELDS, Telemetry

    log = read_decision_log(path, allow_partial=allow_partial)
    logged = log.params()
    what_if = params is not None
    if params is None:
        if logged is None:
            raise DecisionLogError(f"{log.path}: the manifest has no params; pass params")
        params = logged
    missing = [k for k in TELEMETRY_FIELDS + ("region",) if k not in log.column_names]
    if missing:
        raise DecisionLogError(
            f"{log.path}: cannot replay: the log lacks column(s) {', '.join(missing)}"
        )
    dtype = jnp.dtype(log.manifest.get("dtype") or "float32")
    step = jitted_step(step_fn)
    n = log.n_regions
    bad_parts = log.bad_parts()
    counts: dict[str, int] = {}
    first = None
    rows_bad = 0
    windows = 0
    state = None
    region_ids = None
    sums = {f"mean_abs_d{k}": 0.0 for k in _DIFF_FIELDS}
    agree = {"mode_agreement": 0.0, "overdrive_old": 0.0, "overdrive_new": 0.0,
             "lysis_old": 0.0, "lysis_new": 0.0}
    for row in log.iter_windows():
        if state is None:
            region_ids = row["region"]
            state = init_state(n, dtype, region_ids=region_ids)
        elif not np.array_equal(row["region"], region_ids):
            raise DecisionLogError(f"{log.path}: region order changes at window {windows}")
        tel = Telemetry(
            **{
                k: jnp.asarray(row[k], bool if k in BOOL_FIELDS else dtype)
                for k in TELEMETRY_FIELDS
            }
        )
        state, decision = step(params, state, tel)
        new = {k: np.asarray(v) for k, v in decision.columns().items()}
        any_bad = np.zeros(n, bool)
        first_here = None
        for name in log.column_names:
            if name not in new:
                continue
            same = _same(row[name], new[name])
            if not same.all():
                bad = ~same
                counts[name] = counts.get(name, 0) + int(bad.sum())
                any_bad |= bad
                idx = int(np.argmax(bad))
                if first_here is None or idx < first_here[0]:
                    first_here = (idx, name)
        if first is None and first_here is not None:
            idx, name = first_here
            first = (int(region_ids[idx]), int(row["step"][idx]), name)
        rows_bad += int(any_bad.sum())
        if what_if:
            for k in _DIFF_FIELDS:
                sums[f"mean_abs_d{k}"] += float(np.abs(new[k] - row[k]).mean())
            agree["mode_agreement"] += float((new["mode"] == row["mode"]).mean())
            agree["overdrive_old"] += float((row["overdrive_T"] | row["overdrive_E"]).mean())
            agree["overdrive_new"] += float((new["overdrive_T"] | new["overdrive_E"]).mean())
            agree["lysis_old"] += float((row["tier_E"] == 2).mean())
            agree["lysis_new"] += float((new["tier_E"] == 2).mean())
        windows += 1
        if progress is not None:
            progress(windows)
    diff = {}
    if what_if and windows:
        diff = {k: v / windows for k, v in {**sums, **agree}.items()}
    return ReplayReport(
        first_mismatch=first,
        mismatches=counts,
        rows_mismatched=rows_bad,
        bad_parts=bad_parts,
        n_windows=windows,
        n_regions=n,
        n_rows=windows * n,
        partial=not log.complete,
        what_if=what_if,
        log=str(log.path),
        diff=diff,
    )
