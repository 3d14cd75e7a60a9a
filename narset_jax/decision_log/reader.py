"""Reading a decision log: [`narset_jax.decision_log.read_decision_log`][] verifies the
manifest completely (its digest first, then every field's type, then that the fields agree
with each other and with the files on disk) and returns a
[`narset_jax.decision_log.DecisionLog`][], which reads the parts and checks each against
its manifest entry as it goes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.decision_log.errors import DecisionLogError, LogVerificationError
from narset_jax.decision_log.layout import (
    FORMAT,
    MANIFEST,
    MARKER,
    PART_RE,
    PARTS_DIR,
    READ_VERSIONS,
    sha256_file,
    staging_path,
)
from narset_jax.decision_log.manifest import check_consistency, check_digest, check_fields
from narset_jax.errors import UserError

__all__ = ["DecisionLog", "DecisionLogError", "LogVerificationError", "read_decision_log"]


@dataclass
class DecisionLog:
    """A decision log directory and its verified manifest (see
    [`narset_jax.decision_log.read_decision_log`][]).

    ``digest`` says what vouched for the manifest (``"sha256"``, ``"hmac-sha256 (key id
    ...)"`` or ``"no digest (format 1)"``); ``notes`` are facts a verifier should see that
    do not make the log wrong (a format-1 log, files left by a killed writer).
    """

    path: Path
    manifest: dict[str, Any]
    digest: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "complete" if self.complete else "partial"))

    @property
    def n_regions(self) -> int:
        return int(self.manifest.get("n_regions") or 0)

    @property
    def column_names(self) -> list[str]:
        return [c[0] for c in self.manifest.get("columns", [])]

    def params(self):
        """The logged [`narset_jax.NarsetParams`][] (``None`` if the log has none)."""
        from narset_jax.params import NarsetParams

        data = self.manifest.get("params")
        if data is None:
            return None
        try:
            return NarsetParams.from_dict(data, source=str(self.path / MANIFEST))
        except (UserError, ValueError, TypeError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LogVerificationError(f"{self.path / MANIFEST}: params: {msg}") from None

    def bad_parts(self) -> list[str]:
        """Parts whose sha256, size (or presence) does not match the manifest."""
        bad = []
        for part in self.manifest.get("parts", []):
            f = self.path / part["file"]
            try:
                ok = f.is_file() and f.stat().st_size == part["bytes"] and (
                    sha256_file(f) == part["sha256"]
                )
            except OSError as err:
                raise DecisionLogError(f"{f}: cannot read: {err.strerror or err}") from None
            if not ok:
                bad.append(part["file"])
        return bad

    def _read_part(self, part):
        import pyarrow.parquet as pq

        f = self.path / part["file"]
        try:
            table = pq.read_table(f)
        except FileNotFoundError:
            raise LogVerificationError(f"{f}: part listed in the manifest is missing") from None
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LogVerificationError(f"{f}: unreadable Parquet: {msg}") from None
        if table.num_rows != part["rows"]:
            raise LogVerificationError(
                f"{f}: {table.num_rows} rows, the manifest says {part['rows']}"
            )
        if table.column_names != self.column_names:
            raise LogVerificationError(f"{f}: its columns differ from the manifest's")
        return table

    def iter_parts(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """``(manifest entry, pyarrow.Table)`` for each part, in order."""
        for part in self.manifest.get("parts", []):
            yield part, self._read_part(part)

    def iter_windows(self) -> Iterator[dict[str, np.ndarray]]:
        """One ``column -> [N] array`` dict per window, in order. A window whose ``step``
        column is not the one its part's step range says raises
        [`narset_jax.decision_log.LogVerificationError`][]."""
        n = self.n_regions
        for part, table in self.iter_parts():
            cols = {
                name: table.column(name).to_numpy(zero_copy_only=False).reshape(-1, n)
                for name in table.column_names
            }
            first = part.get("first_step")
            for t in range(table.num_rows // n):
                row = {k: v[t] for k, v in cols.items()}
                if first is not None and "step" in row and not np.all(row["step"] == first + t):
                    raise LogVerificationError(
                        f"{self.path / part['file']}: window {t} is not step {first + t}, "
                        "as the manifest's step range says"
                    )
                yield row

    def read_table(self):
        """The whole log as one ``pyarrow.Table``."""
        import pyarrow as pa

        tables = [t for _, t in self.iter_parts()]
        if not tables:
            return pa.table({name: [] for name in self.column_names})
        return pa.concat_tables(tables)


def _staging_hint(path: Path) -> str:
    stage = staging_path(Path(os.path.abspath(path)))
    if (stage / MANIFEST).is_file():
        return (f"; a run that was killed left its journaled partial log in {stage} "
                f"(narset replay {stage} --allow-partial)")
    return ""


def load_manifest(mf: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` (one-line errors naming the file: unreadable, not UTF-8,
    malformed JSON, not an object)."""
    try:
        raw = mf.read_bytes()
    except OSError as err:
        raise DecisionLogError(f"{mf}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LogVerificationError(
            f"{mf}: not UTF-8 text (byte {err.start}): not a manifest, or corrupted"
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise LogVerificationError(
            f"{mf}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except RecursionError:
        raise LogVerificationError(f"{mf}: malformed JSON: nested too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LogVerificationError(f"{mf}: not a {FORMAT} manifest")
    return manifest


def read_decision_log(
    path: str | os.PathLike, *, allow_partial: bool = False, key: bytes | None = None
) -> DecisionLog:
    """Open a decision log directory and verify its manifest.

    In order: the manifest's own digest (a manifest edited after it was written fails
    here, whatever the edit); the type of every field; that the fields agree (rows,
    windows, regions, part names and order, step ranges without gaps); that every part
    stays inside the directory; and, for a complete log, that no part file on disk is
    missing from the manifest. The parts' sha256 are checked by
    [`DecisionLog.bad_parts`][narset_jax.decision_log.DecisionLog.bad_parts] (and by
    ``replay``), their rows and steps as they are read.

    **Arguments:**

    - ``path``: the directory written by [`narset_jax.decision_log.DecisionLogWriter`][].
    - ``allow_partial``: accept a log whose manifest says ``"complete": false``: stopped
      (``"status": "partial"``) or the journal of a writer that was killed or is still
      running (``"status": "writing"``).
    - ``key``: the HMAC key the log was signed with (``narset ... --sign-key FILE``). With
      a key, an unsigned manifest is refused; without one, a signed manifest is.

    **Raises:** [`narset_jax.decision_log.DecisionLogError`][] if the directory or manifest
    is missing, or the log is partial and ``allow_partial`` is false;
    [`narset_jax.decision_log.LogVerificationError`][] (a subclass) if the manifest is
    unreadable, edited, forged or inconsistent.
    """
    path = Path(path)
    if not path.is_dir():
        raise DecisionLogError(f"{path}: no such decision-log directory{_staging_hint(path)}")
    mf = path / MANIFEST
    if not mf.is_file():
        why = "the run was interrupted or is still writing" if (path / MARKER).exists() else (
            "not a decision log"
        )
        raise DecisionLogError(f"{path}: no {MANIFEST}: {why}{_staging_hint(path)}")
    manifest = load_manifest(mf)
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise LogVerificationError(
            f"{mf}: format_version: {version!r} is not one this narset reads "
            f"({', '.join(map(str, READ_VERSIONS))})"
        )
    digest = check_digest(manifest, str(mf), key)
    check_fields(manifest, str(mf))
    check_consistency(manifest, str(mf))
    log = DecisionLog(path=path, manifest=manifest, digest=digest)
    if digest.startswith("no digest"):
        log.notes.append(f"{mf}: no digest (format 1): its fields were checked, not vouched for")
    _check_files(log, mf)
    if not log.complete and not allow_partial:
        raise DecisionLogError(
            f"{path}: partial log ({manifest.get('reason', 'interrupted')}); "
            f"{manifest['n_windows']} windows; pass --allow-partial (allow_partial=True) "
            "to verify them"
        )
    if not manifest["parts"]:
        log.notes.append(f"{path}: the log has no windows")
    return log


def _check_files(log: DecisionLog, mf: Path) -> None:
    """Every part stays inside the directory (no symlink out); part files on disk that the
    manifest does not list fail a complete log, and are noted in a partial one."""
    root = log.path.resolve()
    for part in log.manifest["parts"]:
        f = (log.path / part["file"]).resolve()
        if not f.is_relative_to(root):
            raise LogVerificationError(f"{log.path / part['file']}: resolves outside the log")
    parts_dir = log.path / PARTS_DIR
    try:
        names = sorted(os.listdir(parts_dir)) if parts_dir.is_dir() else []
    except OSError as err:
        raise DecisionLogError(f"{parts_dir}: cannot list: {err.strerror or err}") from None
    listed = len(log.manifest["parts"])
    unlisted = [n for n in names if (m := PART_RE.match(n)) and int(m.group(1)) >= listed]
    temps = [n for n in names if n.startswith(".part-")]
    if unlisted and log.complete:
        raise LogVerificationError(
            f"{parts_dir / unlisted[0]}: a part file the manifest does not list "
            f"({len(unlisted)} such; a part was added or its manifest entry removed)"
        )
    if unlisted:
        log.notes.append(
            f"{parts_dir}: {len(unlisted)} part file(s) after the last one in the manifest "
            f"({unlisted[0]}...), written when the run stopped; not verified"
        )
    if temps:
        log.notes.append(
            f"{parts_dir}: {len(temps)} temporary file(s) of a write that was cut off; ignored"
        )
