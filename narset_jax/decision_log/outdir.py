"""A run's output directory as one transaction: [`narset_jax.decision_log.OutputDir`][].

``narset simulate`` and ``narset decide`` write their log, summary and figures into a
fresh staging directory beside ``--out`` (``.NAME.narset-new``) while holding the output's
lock ([`narset_jax.decision_log.lock.DirLock`][]), and the finished output replaces the
old one in one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux). Until then the
old log is untouched, so bad input found halfway, a full disk or a signal leave it as it
was. An output directory holding anything but a narset output is refused unless
``force``. See ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from narset_jax.atomic import exchange, fsync_dir, write_error
from narset_jax.decision_log.errors import DecisionLogError, Terminated
from narset_jax.decision_log.layout import (
    FORMAT,
    MANIFEST,
    MARKER,
    OWN_ENTRIES,
    PART_RE,
    PARTS_DIR,
    PLOTS_DIR,
    SUMMARY,
    TRUTH,
    staging_path,
    trash_path,
)
from narset_jax.decision_log.lock import DirLock
from narset_jax.errors import UserError

__all__ = ["OutputDir", "check_json_path", "sigterm_as_interrupt"]


def _note(msg: str) -> None:
    print(f"narset: note: {msg}", file=sys.stderr)


def _count(windows: int) -> str:
    return f"{windows} window" + ("" if windows == 1 else "s")


def _rmtree(path: Path) -> None:
    """Remove a tree, making read-only directories in it writable first (best effort)."""

    def retry(func, p, *_):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):  # pragma: no cover - onerror is deprecated there
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered after the block) while directories are
    swapped, so that a signal never leaves the swap half done."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _inspect(out: Path) -> tuple[bool, list[str]]:
    """``(holds a narset log, entries that are someone else's)``."""
    if not out.exists():
        return False, []
    try:
        names = sorted(os.listdir(out))
    except OSError as err:
        raise write_error(out, err, "list") from None
    foreign = [n for n in names if n not in OWN_ENTRIES]
    has_log = False
    if MANIFEST in names:
        try:
            m = json.loads((out / MANIFEST).read_bytes()[:1 << 24])
            has_log = isinstance(m, dict) and m.get("format") == FORMAT
        except (OSError, ValueError, RecursionError):
            pass
        if not has_log:
            foreign.append(f"{MANIFEST} (not a narset manifest)")
    if MARKER in names:
        try:
            ours = (out / MARKER).read_text(errors="replace").startswith("This decision log")
        except OSError:
            ours = False
        has_log = has_log or ours
        if not ours:
            foreign.append(f"{MARKER} (not narset's marker)")
    for sub, ok in ((PARTS_DIR, lambda n: bool(PART_RE.match(n)) or n.startswith(".part-")),
                    (PLOTS_DIR, lambda n: n.endswith(".png") or n.startswith("."))):
        d = out / sub
        if sub not in names:
            continue
        if not d.is_dir():
            foreign.append(f"{sub} (not a directory)")
            continue
        try:
            inside = sorted(os.listdir(d))
        except OSError as err:
            raise write_error(d, err, "list") from None
        foreign += [f"{sub}/{n}" for n in inside if not ok(n)]
        has_log = has_log or (sub == PARTS_DIR and any(PART_RE.match(n) for n in inside))
    if names and not has_log and not foreign:
        foreign = [n for n in names if n != SUMMARY] or names  # a summary without a log
    return has_log, foreign


class OutputDir:
    """The output directory ``out`` of one run, written as a transaction.

    ```python
    with OutputDir(out, force=False) as od:   # locks out; refuses someone else's files
        write the log, summary, figures into od.stage
        od.commit()                           # the new output replaces the old one
    ```

    **On success** (``commit()``): ``od.stage`` becomes ``out``, atomically where the
    platform can swap two directories; the old output is deleted. With ``force`` and files
    in ``out`` that are not narset's, those files are kept and narset's entries
    (``manifest.json``, ``decisions/``, ``summary.json``, ``plots/``, ``INCOMPLETE``) are
    replaced one by one, the manifest last.

    **On failure** (an exception leaves the block before ``commit()``): nothing of ``out``
    changes if the run had written no log part, or if ``out`` holds an old log (the old
    log is kept and the failed run's partial log stays in the staging directory). Else
    the partial log becomes ``out``, so that ``narset replay OUT --allow-partial`` verifies
    it. ``od.note`` says which, in one phrase; it is added to a ``UserError``'s message and
    as a note to any other exception.

    **Refused** (one-line ``UserError``): ``out`` is not a directory, or lies under a file;
    another run holds its lock (the message names its PID); it holds files that are not a
    narset output and ``force`` is false.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False,
                 notify: Callable[[str], None] = _note):
        self.shown = os.fspath(out)
        self.out = Path(out).resolve()
        self.force = force
        self.notify = notify
        self.stage = staging_path(self.out)
        self.lock = DirLock(self.out)
        self.had_log = False
        self.foreign: list[str] = []
        self.committed = False
        self.note = ""

    # -- opening --------------------------------------------------------------------------

    def __enter__(self) -> OutputDir:
        out = self.out
        for anc in (out, *out.parents):
            if anc.exists():
                if not anc.is_dir():
                    where = "exists and is not a directory" if anc == out else (
                        f"lies under {anc}, which is not a directory")
                    raise DecisionLogError(f"--out {self.shown}: {where}")
                break
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(out.parent, err, "create the directory") from None
        self.lock.acquire()
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _open(self) -> None:
        self.had_log, self.foreign = _inspect(self.out)
        if self.foreign and not self.force:
            shown = ", ".join(self.foreign[:3]) + (", ..." if len(self.foreign) > 3 else "")
            raise DecisionLogError(
                f"--out {self.shown}: holds files that are not a narset output ({shown}); "
                "pass --force to write there anyway (those files are kept), or choose "
                "another directory"
            )
        for stale in (self.stage, trash_path(self.out)):
            if os.path.lexists(stale):
                self.notify(f"removing {stale}: left by an earlier run of this output that "
                            "was killed or failed")
                _rmtree(stale)
                if os.path.lexists(stale):
                    raise DecisionLogError(
                        f"{stale}: left by an earlier run of {self.shown}, and cannot be "
                        "removed; remove it by hand"
                    )
        try:
            self.stage.mkdir()
        except OSError as err:
            raise write_error(self.stage, err, "create the directory") from None

    # -- closing --------------------------------------------------------------------------

    def commit(self) -> None:
        """The staged output replaces ``out`` (see the class docstring)."""
        with _signals_held():
            old = self._install()
            self.committed = True
        _rmtree(old)
        for left in (self.stage, trash_path(self.out)):
            if os.path.lexists(left):
                self.notify(f"could not remove all of the old output, left in {left}")

    def _install(self) -> Path:
        """Put the staged output in place; returns what is left to delete (the old
        output), which the caller removes after the swap."""
        out, stage = self.out, self.stage
        try:
            if self.foreign:
                old = self._install_entries()
            elif not out.exists():
                os.rename(stage, out)
                old = stage  # gone
            elif exchange(stage, out):
                old = stage  # now the old output
            else:
                old = trash_path(out)
                os.rename(out, old)
                os.rename(stage, out)
            fsync_dir(out.parent)
        except OSError as err:
            raise write_error(out, err, "replace") from None
        return old

    def _install_entries(self) -> Path:
        """``--force`` beside someone else's files: narset's entries one by one, the old
        manifest out first and the new one in last."""
        out, stage, old = self.out, self.stage, trash_path(self.out)
        old.mkdir(exist_ok=True)
        present = [n for n in (MANIFEST, MARKER, PARTS_DIR, SUMMARY, PLOTS_DIR, TRUTH)
                   if os.path.lexists(out / n)]
        for name in present:
            os.rename(out / name, old / name)
        for name in (MARKER, PARTS_DIR, SUMMARY, PLOTS_DIR, TRUTH, MANIFEST):
            if os.path.lexists(stage / name):
                os.rename(stage / name, out / name)
        _rmtree(stage)
        return old

    def _stage_windows(self) -> int | None:
        """Windows in the staged log's manifest, ``None`` if it lists no part."""
        try:
            m = json.loads((self.stage / MANIFEST).read_text())
            if m.get("parts"):
                return int(m.get("n_windows") or 0)
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return None

    def abort(self) -> str:
        """Settle a failed run (see the class docstring); returns ``note``."""
        windows = self._stage_windows()
        shown = self.shown
        if windows is None:
            _rmtree(self.stage)
            self.note = (f"the previous log in {shown} is unchanged" if self.had_log
                         else "nothing was written")
        elif self.had_log:
            self.note = (f"the previous log in {shown} is unchanged; this run's partial log "
                         f"({_count(windows)}) is in {self.stage}")
        else:
            try:
                with _signals_held():
                    old = self._install()
                _rmtree(old)
                self.note = (f"the partial log ({_count(windows)}) is in {shown}; "
                             f"'narset replay {shown} --allow-partial' verifies it")
            except UserError:
                self.note = f"this run's partial log ({_count(windows)}) is in {self.stage}"
        return self.note

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is not None and not self.committed:
                try:
                    note = self.abort()
                except Exception as err:  # noqa: BLE001 - the run's own error comes first
                    note = f"cleaning up failed too ({type(err).__name__}: {err})"
                    self.note = note
                if isinstance(exc, UserError) and len(exc.args) == 1 and isinstance(
                        exc.args[0], str):
                    exc.args = (f"{exc.args[0]}; {note}",)
                else:
                    exc.add_note(note)
        finally:
            self.lock.release()
        return False


def check_json_path(json_path: str | os.PathLike | None, out: str | os.PathLike, *,
                    summary_ok: bool = True) -> None:
    """``--json PATH`` may not point into the output directory ``out`` (it would overwrite
    the log, or be deleted when the new output replaces the old), except, if
    ``summary_ok``, ``OUT/summary.json``, which is the same summary. (``narset replay``
    passes ``summary_ok=False``: its report is not the run's summary.) Raises a one-line
    ``UserError``."""
    if json_path is None:
        return
    j, o = Path(json_path).resolve(), Path(out).resolve()
    if summary_ok and j == o / SUMMARY:
        return
    staged = staging_path(o)
    if j.is_relative_to(o) or j.is_relative_to(staged):
        hint = f" ({Path(out) / SUMMARY} is written anyway)" if summary_ok else ""
        raise DecisionLogError(
            f"--json {json_path}: inside the log directory {out}, whose files it would "
            f"overwrite; name a file elsewhere{hint}"
        )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises [`narset_jax.decision_log.errors.Terminated`][] (a
    ``KeyboardInterrupt``) in the main thread, so a terminated run stops as Ctrl-C stops
    it: partial manifest, no temporary part left, the output settled by
    [`narset_jax.decision_log.OutputDir`][]. A second SIGTERM during that cleanup is
    ignored (SIGKILL is not)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("terminated (SIGTERM)")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
