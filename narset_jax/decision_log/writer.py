"""Writing a decision log: [`narset_jax.decision_log.DecisionLogWriter`][] appends
Parquet parts and writes the manifest last; ``versions`` records what made the numbers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.atomic import atomic_path, write_json, write_text
from narset_jax.decision_log.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MARKER,
    PARTS_DIR,
    sha256_file,
)

_PART_RE = re.compile(r"^part-\d{5}\.parquet$")
_MARKER_TEXT = (
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
            "sha256": sha256_file(target),
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
