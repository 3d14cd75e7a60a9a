"""Reading a decision log: [`narset_jax.decision_log.read_decision_log`][] checks the
manifest and returns a [`narset_jax.decision_log.DecisionLog`][], which reads the parts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.decision_log.layout import FORMAT, MANIFEST, MARKER, sha256_file
from narset_jax.errors import UserError


class DecisionLogError(UserError, ValueError):
    """A missing, incomplete, tampered or unreadable decision log (one line, naming the
    file)."""


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
            if not f.is_file() or sha256_file(f) != part["sha256"]:
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
