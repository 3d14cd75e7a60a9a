"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

An interrupted run therefore never leaves a truncated file under the final name. A write
that fails (a full disk, a file-size limit, a read-only or unwritable directory) raises
[`narset_jax.atomic.WriteError`][]: one line naming the file, still an ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from narset_jax.errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written: ``"<path>: cannot write: <reason>"`` (one line). Also an
    ``OSError`` with the original ``errno``, so ``except OSError`` still catches it."""


def write_error(path: str | os.PathLike, err: OSError, verb: str = "write") -> WriteError:
    """A [`narset_jax.atomic.WriteError`][] for ``err`` raised while writing ``path``."""
    if isinstance(err, WriteError):
        return err
    code = getattr(err, "errno", None)
    if isinstance(code, int) and code:
        reason = os.strerror(code)
    else:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    where = getattr(err, "filename", None) or path
    out = WriteError(f"{where}: cannot {verb}: {reason}")
    out.errno = code
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left as it was; an ``OSError`` becomes a
    [`narset_jax.atomic.WriteError`][] naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that a rename in it survives a power cut (best effort: some
    filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    **Returns:** ``False`` where the platform or filesystem cannot (nothing was changed);
    the caller then falls back to two renames.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (_errno.ENOSYS, _errno.EINVAL, _errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json_value(obj):
    """``obj`` as plain JSON values (NumPy scalars and arrays converted), exactly as
    [`narset_jax.atomic.write_json`][] writes it and ``json.loads`` reads it back."""
    return json.loads(json.dumps(obj, default=_default))
