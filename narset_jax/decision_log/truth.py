"""Ground truth beside a decision log: which regions of a simulated run spoof their
telemetry, for ``narset audit`` to score itself against.

``narset simulate`` writes ``DIR/ground_truth.arrow`` after the manifest: an Arrow IPC
file (``pyarrow.ipc``; ``pyarrow.feather.read_table`` reads it) with one row per region,
``region`` (int64, the log's region ids in log order) and ``spoofer`` (bool: the ecology's
spoofer mask, ``Outcome.spoofer``). Its schema metadata ``narset`` holds a JSON object:
what the file is, the counts, ``log`` (the manifest's ``"digest"`` entry: the file belongs
to that log and no other), ``columns_sha256`` (of the two columns' bytes) and its own
``digest`` over all of that (sha256, or HMAC-SHA256 with the run's ``--sign-key``), so an
edit to the file, or a file copied from another run, is refused.

The file is outside the manifest on purpose: the manifest and the parts stay exactly
what they were (the goldens compare them), and a log without ground truth (``narset
decide``, older runs) simply has no such file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from narset_jax.atomic import atomic_path
from narset_jax.decision_log.errors import LogVerificationError
from narset_jax.decision_log.layout import TRUTH
from narset_jax.decision_log.manifest import DIGEST, check_digest, make_digest

__all__ = ["TRUTH_FORMAT", "GroundTruth", "read_truth", "write_truth"]

TRUTH_FORMAT = "narset-ground-truth"
TRUTH_VERSION = 1
_META_KEY = b"narset"


@dataclass(frozen=True)
class GroundTruth:
    """Which regions spoof: ``regions`` (``[N]`` int64 ids, log order) and ``spoofer``
    (``[N]`` bool); ``meta`` is the file's metadata (``source``, ``what``, counts)."""

    regions: np.ndarray
    spoofer: np.ndarray
    meta: dict[str, Any]

    @property
    def n_spoofers(self) -> int:
        return int(self.spoofer.sum())


def _columns_sha256(regions: np.ndarray, spoofer: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(regions, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(spoofer, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_truth(
    out_dir: str | os.PathLike,
    regions,
    spoofer,
    *,
    manifest: dict[str, Any],
    source: str,
    what: str,
    sign_key: bytes | None = None,
) -> Path:
    """Write ``out_dir/ground_truth.arrow`` (atomically) for the log whose final
    ``manifest`` (as written, with its digest) is given. ``regions``: the log's region ids;
    ``spoofer``: bool per region. Returns the path."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    regions = np.asarray(regions).astype(np.int64).reshape(-1)
    spoofer = np.asarray(spoofer).astype(bool).reshape(-1)
    if regions.shape != spoofer.shape:
        raise ValueError(f"regions {regions.shape} and spoofer {spoofer.shape} differ")
    meta: dict[str, Any] = {
        "format": TRUTH_FORMAT,
        "format_version": TRUTH_VERSION,
        "source": source,
        "what": what,
        "n_regions": int(regions.size),
        "n_spoofers": int(spoofer.sum()),
        "log": manifest[DIGEST],
        "columns_sha256": _columns_sha256(regions, spoofer),
    }
    meta[DIGEST] = make_digest(meta, sign_key)
    table = pa.table({"region": regions, "spoofer": spoofer})
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True)})
    target = Path(out_dir) / TRUTH
    with atomic_path(target, suffix=".arrow") as tmp, ipc.new_file(str(tmp), table.schema) as w:
        w.write_table(table)
    return target


def _check_digest(meta: dict[str, Any], where: str, key: bytes | None) -> None:
    # The truth file always carries a digest (its format 1 is not the manifest's).
    if not isinstance(meta.get(DIGEST), dict):
        raise LogVerificationError(f"{where}: no digest")
    check_digest(meta, where, key, what="file")


def read_truth(log, key: bytes | None = None) -> GroundTruth | None:
    """The ground truth of ``log`` (a [`narset_jax.decision_log.DecisionLog`][]), or
    ``None`` when the directory has none (``narset decide`` logs, older runs).

    **Raises:** [`narset_jax.decision_log.LogVerificationError`][] naming the file if it is
    unreadable, edited (its digest or its columns' sha256), belongs to another log, or
    does not match the log's regions.
    """
    import pyarrow.ipc as ipc

    path = Path(log.path) / TRUTH
    if not path.is_file():
        return None
    where = str(path)
    try:
        with ipc.open_file(str(path)) as reader:
            table = reader.read_all()
    except OSError as err:
        raise LogVerificationError(f"{where}: cannot read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LogVerificationError(f"{where}: not an Arrow IPC file: {msg}") from None
    raw = (table.schema.metadata or {}).get(_META_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != TRUTH_FORMAT:
        raise LogVerificationError(f"{where}: not a {TRUTH_FORMAT} file (no metadata)")
    if meta.get("format_version") != TRUTH_VERSION:
        raise LogVerificationError(
            f"{where}: format_version {meta.get('format_version')!r} is not one this narset "
            f"reads ({TRUTH_VERSION})")
    _check_digest(meta, where, key)
    if meta.get("log") != log.manifest.get(DIGEST):
        raise LogVerificationError(f"{where}: belongs to another log (its log digest is not "
                                   "this manifest's)")
    if table.column_names != ["region", "spoofer"]:
        raise LogVerificationError(f"{where}: expected columns region, spoofer; got "
                                   f"{', '.join(table.column_names)}")
    regions = table.column("region").to_numpy().astype(np.int64)
    spoofer = table.column("spoofer").to_numpy(zero_copy_only=False).astype(bool)
    if meta.get("columns_sha256") != _columns_sha256(regions, spoofer):
        raise LogVerificationError(f"{where}: columns_sha256 mismatch: the rows were changed")
    if regions.size != log.n_regions:
        raise LogVerificationError(
            f"{where}: {regions.size} regions, the log has {log.n_regions}")
    return GroundTruth(regions=regions, spoofer=spoofer, meta=meta)
