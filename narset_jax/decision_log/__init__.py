"""The decision log: Narset's decisions as Parquet, with a manifest, and bit-for-bit replay.

Layout of a log directory ``DIR``:

- ``DIR/decisions/part-NNNNN.parquet``: one row per region and window, in window-major
  order. Columns are [`narset_jax.Decision.column_names`][]: the decision fields
  (``region``, ``step``, ``x_T``, ``x_E``, ...) then the raw inputs under their telemetry
  names (``loss``, ..., ``valid``, ``boundary``). Each part is written to a temporary file
  and renamed, so a part that exists is complete.
- ``DIR/manifest.json``: written **last**. It records the config, params, seed, package
  versions, the columns and, for every part, its row count, window range and sha256, and
  its own ``"digest"`` (sha256 over its canonical content, or HMAC-SHA256 with a key).
  ``"complete": true`` marks a finished log; an interrupted run writes ``"complete": false``
  with the reason. After every part the manifest is rewritten as a journal with
  ``"status": "writing"``, so even a run killed outright can be verified up to its last
  finished part.
- ``DIR/INCOMPLETE``: present from the first write until the manifest marks the log
  complete. A directory with this file, or without a manifest, is not a complete log.

``narset simulate`` and ``narset decide`` write through
[`narset_jax.decision_log.OutputDir`][]: the output directory is locked for the run, the
new output is staged beside it and replaces the old one only once complete. What the log
guarantees, and against what, is in ``docs/reliability.md``.

[`narset_jax.decision_log.replay`][] feeds the logged raw inputs back through the
controller, window by window, and compares every decision field bit for bit (or, with
other params, reports how the decisions would differ: a what-if analysis).

Modules: ``layout`` (file names, format tag, sha256), ``manifest`` (digest and field
checks), ``lock``, ``outdir``, ``errors``, ``writer``, ``reader``, ``replay`` and ``truth``
(``DIR/ground_truth.arrow``: which regions of a simulated run spoof, for ``narset audit``).
"""

from narset_jax.decision_log.errors import (
    DecisionLogError,
    LogVerificationError,
    OutputBusyError,
    Terminated,
)
from narset_jax.decision_log.layout import (
    FORMAT,
    FORMAT_VERSION,  # noqa: F401 - the layout's names, importable here as before
    MANIFEST,  # noqa: F401
    MARKER,  # noqa: F401
    PARTS_DIR,  # noqa: F401
)
from narset_jax.decision_log.manifest import load_key
from narset_jax.decision_log.outdir import OutputDir, check_json_path, sigterm_as_interrupt
from narset_jax.decision_log.reader import DecisionLog, read_decision_log
from narset_jax.decision_log.replay import ReplayReport, jitted_step, replay
from narset_jax.decision_log.truth import GroundTruth, read_truth, write_truth
from narset_jax.decision_log.writer import DecisionLogWriter, versions

__all__ = [
    "FORMAT",
    "DecisionLog",
    "DecisionLogError",
    "DecisionLogWriter",
    "GroundTruth",
    "LogVerificationError",
    "OutputBusyError",
    "OutputDir",
    "ReplayReport",
    "Terminated",
    "check_json_path",
    "jitted_step",
    "load_key",
    "read_decision_log",
    "read_truth",
    "replay",
    "sigterm_as_interrupt",
    "versions",
    "write_truth",
]
