"""The on-disk layout of a decision log: file names, the manifest's format tag and
versions, the parts' sha256, and the names narset uses beside an output directory (see
[`narset_jax.decision_log`][] for the layout itself).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FORMAT = "narset-decision-log"
# 2: the manifest carries its own digest ("digest") and is journaled (rewritten after every
# part with "status": "writing"). 1: no digest; still read and verified.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MARKER = "INCOMPLETE"
PARTS_DIR = "decisions"
SUMMARY = "summary.json"
PLOTS_DIR = "plots"
# Which regions spoof, beside a simulated run's log (narset_jax.decision_log.truth).
TRUTH = "ground_truth.arrow"
# What a narset output directory may hold (anything else is someone else's file).
OWN_ENTRIES = (MANIFEST, MARKER, PARTS_DIR, SUMMARY, PLOTS_DIR, TRUTH)

PART_RE = re.compile(r"^part-(\d{5})\.parquet$")
STATUSES = ("complete", "partial", "writing")


def part_name(index: int) -> str:
    """The manifest's ``file`` for part ``index``: ``decisions/part-NNNNN.parquet``."""
    return f"{PARTS_DIR}/part-{index:05d}.parquet"


def lock_path(out: Path) -> Path:
    """The lock file of output directory ``out``: ``.NAME.lock`` beside it."""
    return out.parent / f".{out.name}.lock"


def staging_path(out: Path) -> Path:
    """Where a run writes before its output replaces ``out``: ``.NAME.narset-new`` beside
    it. After a run killed outright, it holds that run's journaled partial log."""
    return out.parent / f".{out.name}.narset-new"


def trash_path(out: Path) -> Path:
    """Where the entries of an old output go while a forced run replaces them."""
    return out.parent / f".{out.name}.narset-old"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (a part's digest in the manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
