"""The decision log's errors, each one line naming the file (and field) at fault."""

from __future__ import annotations

from narset_jax.errors import UserError


class DecisionLogError(UserError, ValueError):
    """A missing, incomplete, tampered or unreadable decision log (one line, naming the
    file)."""


class LogVerificationError(DecisionLogError):
    """The log exists but does not verify: its manifest was edited, forged, corrupted or is
    inconsistent with itself or with the parts on disk. ``narset replay`` exits 1 on it."""


class OutputBusyError(DecisionLogError):
    """Another run holds the output directory's lock; the message names its PID."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a run holds an output directory, so that it
    stops as Ctrl-C does: the partial manifest is written and temporary files removed."""
