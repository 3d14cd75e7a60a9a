"""One writer per output directory: an advisory ``flock`` on a lock file beside it
(``.NAME.lock``), held for the whole run. A second writer is refused at once, with the
holder's PID.

The lock file is never deleted (deleting it would let two runs lock two different files of
the same name); its content is the holder's PID and host, cleared on release. ``flock`` is
released by the kernel when the holder exits, however it exits, so a killed run never
leaves a stale lock. On NFS ``flock`` may be emulated or local to one client (see
``docs/reliability.md``).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from narset_jax.atomic import write_error
from narset_jax.decision_log.errors import DecisionLogError, OutputBusyError
from narset_jax.decision_log.layout import lock_path


class DirLock:
    """The lock of output directory ``out`` (see the module docstring).

    ``acquire()`` raises [`narset_jax.decision_log.errors.OutputBusyError`][] (one line,
    naming the holder's PID) if another process, or another writer in this one, holds it.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out).resolve()
        self.path = lock_path(self.out)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> DirLock:
        if self._fh is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise write_error(self.path, err, "create the lock file") from None
        fh = os.fdopen(fd, "r+b", buffering=0)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            fh.close()
            raise OutputBusyError(
                f"{self.out}: another narset run ({holder}) is writing this output; wait for "
                f"it to finish or choose another directory (lock file {self.path})"
            ) from None
        except OSError as err:
            fh.close()
            raise DecisionLogError(f"{self.path}: cannot lock: {err.strerror or err}") from None
        try:
            fh.truncate(0)
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # the lock holds even if its note cannot be written
        self._fh = fh
        return self

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.truncate(0)
        except OSError:
            pass
        fh.close()  # closing the last descriptor releases the flock

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fh) -> str:
    """The holder's note (it writes it right after locking: wait a little for it)."""
    for _ in range(40):
        try:
            fh.seek(0)
            text = fh.read(4096).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text:
            return text.splitlines()[0]
        time.sleep(0.025)
    return "pid unknown"
