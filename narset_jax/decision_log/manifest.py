"""The manifest as a ledger entry: its digest (sha256, or HMAC-SHA256 with a key) over its
canonical content, and the checks that every field has its type and that the fields agree
with each other (rows, windows, parts, steps, file names).

The canonical content is the manifest without ``"digest"``, as JSON with sorted keys, no
whitespace and ASCII escapes. JSON round-trips Python floats exactly, so a reader computes
the writer's bytes from the parsed file.

What each level protects against is in ``docs/reliability.md``: the sha256 catches any
edit made without recomputing it (a hand edit, a script, a bad sector, a truncated copy);
the HMAC also catches a forger who recomputes it, unless they hold the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from narset_jax.decision_log.errors import LogVerificationError
from narset_jax.decision_log.layout import FORMAT, READ_VERSIONS, STATUSES, part_name
from narset_jax.errors import UserError

DIGEST = "digest"
SHA256 = "sha256"
HMAC_SHA256 = "hmac-sha256"
MIN_KEY_BYTES = 16
DTYPES = ("float16", "bfloat16", "float32", "float64")


# -- digests ----------------------------------------------------------------------------


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the digest covers: every entry but ``"digest"``, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(key: bytes) -> str:
    """A short public fingerprint of a signing key (names the key, reveals nothing)."""
    return hashlib.sha256(b"narset-decision-log-key\0" + key).hexdigest()[:16]


def load_key(path: str | os.PathLike) -> bytes:
    """The signing key: the file's bytes, as they are (at least 16).

    **Raises:** [`narset_jax.errors.UserError`][] naming the file if it cannot be read or
    is too short.
    """
    try:
        with open(path, "rb") as fh:
            key = fh.read()
    except OSError as err:
        raise UserError(f"--sign-key {path}: cannot read: {err.strerror or err}") from None
    if len(key) < MIN_KEY_BYTES:
        raise UserError(
            f"--sign-key {path}: {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(e.g. head -c 32 /dev/urandom > FILE)"
        )
    return key


def make_digest(manifest: Mapping[str, Any], key: bytes | None = None) -> dict[str, str]:
    """The ``"digest"`` entry for ``manifest`` (plain JSON values): sha256 of the canonical
    content, or with ``key`` its HMAC-SHA256 and the key's fingerprint."""
    body = canonical_bytes(manifest)
    if key is None:
        return {"algorithm": SHA256, SHA256: hashlib.sha256(body).hexdigest()}
    return {
        "algorithm": HMAC_SHA256,
        "hmac_sha256": hmac.new(key, body, hashlib.sha256).hexdigest(),
        "key_id": key_id(key),
    }


def check_digest(manifest: Mapping[str, Any], where: str, key: bytes | None = None, *,
                 what: str = "manifest") -> str:
    """Check the manifest's own digest (first, before anything else is trusted). Any
    document carrying a digest made by [`make_digest`][] is checked the same way
    (``what`` names it in the messages, e.g. ``"file"`` for the ground truth).

    **Returns:** what was verified, e.g. ``"sha256"``, ``"hmac-sha256 (key 1a2b...)"`` or
    ``"no digest (format 1)"``.

    **Raises:** [`narset_jax.decision_log.LogVerificationError`][] if it does not match,
    is missing from a format-2 manifest, is signed and no key was given, or a key was given
    and the manifest is not signed with it.
    """
    version = manifest.get("format_version")
    digest = manifest.get(DIGEST)
    if digest is None:
        if version == 1:
            if key is not None:
                raise LogVerificationError(
                    f"{where}: not signed (format 1 has no digest), but --sign-key was given"
                )
            return "no digest (format 1)"
        raise LogVerificationError(f"{where}: the {what} has no digest (format {version})")
    if not isinstance(digest, dict) or not isinstance(digest.get("algorithm"), str):
        raise LogVerificationError(f"{where}: digest: malformed ({_show(digest)})")
    algorithm = digest["algorithm"]
    if algorithm == SHA256:
        if key is not None:
            raise LogVerificationError(
                f"{where}: not signed (plain sha256 digest), but --sign-key was given: "
                f"the {what} may have been rewritten without the key"
            )
        want = make_digest(manifest)[SHA256]
        if not hmac.compare_digest(str(digest.get(SHA256)), want):
            raise LogVerificationError(
                f"{where}: digest mismatch: the {what} was changed after it was written"
            )
        return SHA256
    if algorithm == HMAC_SHA256:
        kid = str(digest.get("key_id"))
        if key is None:
            raise LogVerificationError(
                f"{where}: signed with HMAC-SHA256 (key id {kid}); pass --sign-key to verify"
            )
        if kid != key_id(key):
            raise LogVerificationError(
                f"{where}: signed with another key (key id {kid}, --sign-key is {key_id(key)})"
            )
        want = make_digest(manifest, key)["hmac_sha256"]
        if not hmac.compare_digest(str(digest.get("hmac_sha256")), want):
            raise LogVerificationError(
                f"{where}: HMAC mismatch: the {what} was changed after it was signed"
            )
        return f"{HMAC_SHA256} (key id {kid})"
    raise LogVerificationError(f"{where}: digest: unknown algorithm {algorithm!r}")


# -- fields -----------------------------------------------------------------------------


def _show(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _is_int(v: Any, minimum: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, problem: str):
        raise LogVerificationError(f"{self.where}: {field}: {problem}")

    def int(self, obj: Mapping, key: str, field: str, minimum: int | None = 0,
            optional: bool = False) -> int | None:
        if key not in obj:
            if optional:
                return None
            self.fail(field, "missing")
        v = obj[key]
        if v is None and optional:
            return None
        if not _is_int(v, minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            self.fail(field, f"expected an integer{bound}, got {_show(v)}")
        return v

    def typed(self, obj: Mapping, key: str, field: str, types: tuple, what: str,
              optional: bool = False):
        if key not in obj:
            if optional:
                return None
            self.fail(field, "missing")
        v = obj[key]
        if not isinstance(v, types):
            self.fail(field, f"expected {what}, got {_show(v)}")
        return v


def check_fields(m: Mapping[str, Any], where: str) -> None:
    """Check the type of every field the reader and replay use (any other entry, e.g.
    ``first_window`` or ``ingest`` from ``narset decide``, is carried as is).

    **Raises:** [`narset_jax.decision_log.LogVerificationError`][] naming the field.
    """
    c = _Checker(where)
    if m.get("format") != FORMAT:
        c.fail("format", f"expected {FORMAT!r}, got {_show(m.get('format'))}")
    version = m.get("format_version")
    if not _is_int(version) or version not in READ_VERSIONS:
        c.fail("format_version", f"{_show(version)} is not one this narset reads "
               f"({', '.join(map(str, READ_VERSIONS))})")
    c.typed(m, "complete", "complete", (bool,), "true or false")
    status = c.typed(m, "status", "status", (str,), "a string")
    if status not in STATUSES or (version == 1 and status == "writing"):
        c.fail("status", f"unknown status {_show(status)}")
    if (status == "complete") != m["complete"]:
        c.fail("status", f"{status!r} contradicts \"complete\": {_show(m['complete'])}")
    for key in ("created", "finished"):
        c.typed(m, key, key, (str,), "a timestamp string")
    c.typed(m, "reason", "reason", (str,), "a string", optional=True)
    c.int(m, "n_regions", "n_regions", minimum=1, optional=True)
    c.int(m, "n_rows", "n_rows")
    c.int(m, "n_windows", "n_windows")
    c.int(m, "first_step", "first_step", minimum=None, optional=True)
    c.int(m, "last_step", "last_step", minimum=None, optional=True)
    dtype = c.typed(m, "dtype", "dtype", (str, type(None)), "a dtype name or null",
                    optional=True)
    if dtype is not None and dtype not in DTYPES:
        c.fail("dtype", f"expected one of {', '.join(DTYPES)}, got {_show(dtype)}")
    columns = c.typed(m, "columns", "columns", (list,), "a list of [name, type]")
    names = []
    for i, col in enumerate(columns):
        if (not isinstance(col, list) or len(col) != 2
                or not all(isinstance(s, str) and s for s in col)):
            c.fail(f"columns[{i}]", f"expected [name, type], got {_show(col)}")
        names.append(col[0])
    if len(set(names)) != len(names):
        c.fail("columns", "a column name repeats")
    parts = c.typed(m, "parts", "parts", (list,), "a list of parts")
    for i, part in enumerate(parts):
        f = f"parts[{i}]"
        if not isinstance(part, dict):
            c.fail(f, f"expected an object, got {_show(part)}")
        c.typed(part, "file", f"{f}.file", (str,), "a file name")
        c.int(part, "rows", f"{f}.rows")
        c.int(part, "bytes", f"{f}.bytes")
        sha = c.typed(part, "sha256", f"{f}.sha256", (str,), "a hex sha256")
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            c.fail(f"{f}.sha256", f"expected 64 lowercase hex digits, got {_show(sha)}")
        c.int(part, "first_step", f"{f}.first_step", minimum=None, optional=True)
        c.int(part, "last_step", f"{f}.last_step", minimum=None, optional=True)
    c.typed(m, "params", "params", (dict, type(None)), "an object or null", optional=True)
    c.int(m, "seed", "seed", minimum=None, optional=True)
    config = c.typed(m, "config", "config", (dict,), "an object", optional=True) or {}
    c.typed(config, "controller", "config.controller", (str, type(None)), "a name",
            optional=True)
    versions = c.typed(m, "versions", "versions", (dict,), "an object", optional=True)
    for k, v in (versions or {}).items():
        if not isinstance(v, str):
            c.fail(f"versions.{k}", f"expected a version string, got {_show(v)}")


def check_consistency(m: Mapping[str, Any], where: str) -> None:
    """Check that the fields agree: the parts' rows add up to ``n_rows``; ``n_rows`` is
    ``n_windows`` whole windows of ``n_regions``; part ``i`` is
    ``decisions/part-{i:05d}.parquet`` (so every path stays inside the log); steps run
    on without gaps or overlaps from part to part, and match the top-level range.

    Call after [`check_fields`][narset_jax.decision_log.manifest.check_fields].
    """
    c = _Checker(where)
    parts, n = m["parts"], m.get("n_regions")
    total = sum(p["rows"] for p in parts)
    if total != m["n_rows"]:
        c.fail("n_rows", f"{m['n_rows']}, but the parts hold {total} rows")
    if n is None:
        if parts or m["n_rows"] or m["n_windows"]:
            c.fail("n_regions", "missing (null) in a log with rows")
    elif m["n_windows"] * n != m["n_rows"]:
        c.fail("n_windows", f"{m['n_windows']} windows x {n} regions != n_rows {m['n_rows']}")
    if parts and not m["columns"]:
        c.fail("columns", "empty in a log with parts")
    with_steps = [("first_step" in p and p["first_step"] is not None) for p in parts]
    if any(with_steps) and not all(with_steps):
        c.fail("parts", "some parts have a step range and some do not")
    prev = None
    for i, p in enumerate(parts):
        f = f"parts[{i}]"
        if p["file"] != part_name(i):
            c.fail(f"{f}.file", f"expected {part_name(i)!r} (part {i}, inside the log), "
                   f"got {_show(p['file'])}")
        if n is not None and p["rows"] % n:
            c.fail(f"{f}.rows", f"{p['rows']} is not a whole number of windows of {n} regions")
        if not with_steps[i]:
            continue
        first, last = p["first_step"], p.get("last_step")
        if last is None or last < first:
            c.fail(f"{f}.last_step", f"{_show(last)} is not >= first_step {first}")
        if n is not None and (last - first + 1) * n != p["rows"]:
            c.fail(f"{f}.rows", f"{p['rows']} rows, but steps {first}..{last} of {n} regions")
        if prev is not None and first != prev + 1:
            c.fail(f"{f}.first_step", f"{first}: steps must follow on from the previous "
                   f"part's last step {prev} (parts out of order, missing or overlapping)")
        prev = last
    if all(with_steps) and parts:
        want = (parts[0]["first_step"], parts[-1]["last_step"])
    else:
        want = (None, None)
    got = (m.get("first_step"), m.get("last_step"))
    if any(with_steps) and got != want:
        c.fail("first_step", f"{got[0]}..{got[1]} does not match the parts' {want[0]}..{want[1]}")
