"""The on-disk layout of a decision log: file names, the manifest's format tag, and the
parts' sha256 (see [`narset_jax.decision_log`][] for the layout itself).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "narset-decision-log"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MARKER = "INCOMPLETE"
PARTS_DIR = "decisions"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (a part's digest in the manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
