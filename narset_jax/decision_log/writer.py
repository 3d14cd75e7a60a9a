"""Writing a decision log: [`narset_jax.decision_log.DecisionLogWriter`][] appends
Parquet parts, journals the manifest after every part and writes the final manifest last;
``versions`` records what made the numbers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.atomic import atomic_path, to_json_value, write_error, write_json, write_text
from narset_jax.decision_log.errors import Terminated
from narset_jax.decision_log.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MARKER,
    PART_RE,
    PARTS_DIR,
    part_name,
    sha256_file,
)
from narset_jax.decision_log.lock import DirLock
from narset_jax.decision_log.manifest import DIGEST, make_digest

MARKER_TEXT = (
    "This decision log is incomplete: it is being written, or the run was interrupted.\n"
    "manifest.json, written last, marks a complete log with \"complete\": true.\n"
)


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

    After every part the manifest is rewritten (atomically) as a journal, marked
    ``"status": "writing"``, so a writer killed outright (SIGKILL, a power cut after the
    fsync) leaves a log that ``replay(..., allow_partial=True)`` verifies up to its last
    finished part. Every manifest carries its own ``"digest"`` (sha256 of its canonical
    content, or HMAC-SHA256 with ``sign_key``; [`narset_jax.decision_log.manifest`][]).

    ```python
    with DecisionLogWriter(out, params=params, config={"scenario": "crisis"}, seed=0) as w:
        for chunk in chunks:
            w.write(decisions)            # a Decision with [T, N] (or [N]) fields
    ```

    **Arguments:**

    - ``out_dir``: the log directory (created if needed). A previous log there is
      replaced: its manifest, marker and parts are removed first. (``narset simulate``
      and ``narset decide`` write into a fresh staging directory instead, and replace the
      old log only when the run completes: [`narset_jax.decision_log.OutputDir`][].)
    - ``params``: the [`narset_jax.NarsetParams`][] that made the decisions (stored with
      ``to_dict()``; replay rebuilds them from it). Optional for logs of other sources.
    - ``n_regions``: optional; checked against every chunk.
    - ``dtype``: the decisions' float dtype (inferred from the first chunk if ``None``).
    - ``config``: JSON-serialisable run configuration (e.g. scenario, controller).
    - ``seed``: the run's seed, if any.
    - ``extra``: more top-level manifest entries.
    - ``compression``: Parquet compression (``"zstd"``).
    - ``sign_key``: bytes of an HMAC key: the manifest's digest becomes an HMAC-SHA256,
      which only a holder of the key can recompute.
    - ``lock``: hold the directory's lock ([`narset_jax.decision_log.lock.DirLock`][]) from
      here to ``close()``, so that a second writer is refused. ``False`` where the caller
      holds the output's lock already.
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
        sign_key: bytes | None = None,
        lock: bool = True,
    ):
        self.path = Path(out_dir)
        self.sign_key = sign_key
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
        self._lock = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.path, err, "create the directory") from None
        if lock:
            self._lock = DirLock(self.path).acquire()
        try:
            self._prepare()
        except BaseException:
            self._release()
            raise

    # -- setup ------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            # The old manifest goes first: from here on the directory never looks complete.
            with contextlib.suppress(FileNotFoundError):
                (self.path / MANIFEST).unlink()
            write_text(self.path / MARKER, MARKER_TEXT)
            parts = self.path / PARTS_DIR
            parts.mkdir(exist_ok=True)
            for old in parts.iterdir():
                if PART_RE.match(old.name) or old.name.startswith(".part-"):
                    with contextlib.suppress(FileNotFoundError):
                        old.unlink()
        except OSError as err:
            raise write_error(self.path, err) from None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        name = part_name(index)
        target = self.path / name
        with atomic_path(target, suffix=".parquet") as tmp:
            # Dictionary encoding only slows down (and grows) float decision columns.
            pq.write_table(table, tmp, compression=self.compression, use_dictionary=False)
        try:
            entry: dict[str, Any] = {
                "file": name,
                "rows": int(table.num_rows),
                "bytes": target.stat().st_size,
                "sha256": sha256_file(target),
            }
        except OSError as err:
            raise write_error(target, err, "read back") from None
        if "step" in cols and cols["step"].size:
            entry["first_step"] = int(cols["step"].min())
            entry["last_step"] = int(cols["step"].max())
        self.parts.append(entry)
        self.n_rows += entry["rows"]
        # The journal: the manifest as of this part, so that a run killed from here on
        # can still be verified up to here.
        self._write_manifest(self._manifest(status="writing"))
        return entry

    append = write

    # -- closing ----------------------------------------------------------------------

    @property
    def n_windows(self) -> int:
        """Windows written so far."""
        return (self.n_rows // self.n_regions) if self.n_regions else 0

    def _manifest(self, status: str, reason: str | None = None) -> dict[str, Any]:
        """The manifest as of now (plain JSON values, signed), ``status`` one of
        ``complete``, ``partial`` (stopped) and ``writing`` (the journal)."""
        complete = status == "complete"
        params = None
        if self.params is not None:
            params = self.params.to_dict() if hasattr(self.params, "to_dict") else self.params
        steps = [p for p in self.parts if "first_step" in p]
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": complete,
            "status": status,
            "created": self._created,
            "finished": _now(),
            "n_regions": self.n_regions,
            "n_rows": self.n_rows,
            "n_windows": self.n_windows,
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
        if status == "writing":
            manifest["reason"] = reason or (
                "unfinished: the writer is still running, or was killed after this part"
            )
        elif not complete:
            manifest["reason"] = reason or "interrupted"
        manifest.update(self.extra)
        manifest.pop(DIGEST, None)
        manifest = to_json_value(manifest)
        manifest[DIGEST] = make_digest(manifest, self.sign_key)
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.path / MANIFEST, manifest)

    def close(self, *, complete: bool = True, reason: str | None = None) -> dict[str, Any]:
        """Write the manifest (last). ``complete=False`` marks a partial log and keeps the
        ``INCOMPLETE`` marker. Returns the manifest; a second call returns it again. The
        directory's lock is released either way."""
        if self._closed:
            return self.manifest
        try:
            manifest = self._manifest("complete" if complete else "partial", reason)
            self._write_manifest(manifest)
            if complete:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / MARKER).unlink()
            else:
                write_text(self.path / MARKER,
                           MARKER_TEXT + f"Partial: {manifest['reason']}.\n")
            self.manifest = manifest
            self._closed = True
        finally:
            self._release()
        return manifest

    def __enter__(self) -> DecisionLogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(complete=True)
        elif not self._closed:
            if issubclass(exc_type, Terminated):
                reason = "terminated (SIGTERM)"
            elif issubclass(exc_type, KeyboardInterrupt):
                reason = "interrupted (KeyboardInterrupt)"
            else:
                msg = str(exc).splitlines()[0] if str(exc) else ""
                reason = f"stopped by {exc_type.__name__}: {msg}".rstrip(": ")
            reason += f", after {self.n_windows} windows"
            with contextlib.suppress(Exception):
                self.close(complete=False, reason=reason)
            self._release()
        return False
