"""The ``narset`` command line.

Each subcommand lives in its own module under ``narset_jax.cli`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Modules are imported lazily so that
``narset --help`` stays fast and one broken subcommand cannot take the others down.

Every subcommand takes ``--json PATH`` for a machine-readable summary. Every error is
printed as one line on stderr, ``narset COMMAND: error: ...`` naming the file, field or
line at fault, with a non-zero exit status (``EXIT_CODES``); ``--debug`` (before or after
the subcommand) prints the traceback too:

====  ==================================================================================
0     success
1     ``narset replay``: a logged decision differs or the log does not verify (a result,
      not an error); ``narset simulate``: the log and summary were written but a figure
      failed
2     bad input: a flag, a value, a file that is missing, malformed or too big for this
      machine ([`narset_jax.errors.UserError`][], ``ValueError``, ``FileNotFoundError``;
      also argparse's usage errors)
3     the system refused a file operation (any other ``OSError``, a failed write included:
      not a directory, permission denied, no space left on device, file too large, ...),
      naming the path where known
4     out of memory (``MemoryError``, or XLA's ``RESOURCE_EXHAUSTED``)
5     input nested too deeply to process (``RecursionError``)
70    internal error: an unexpected exception, i.e. a bug (``EX_SOFTWARE``; not 1, which
      is ``replay``'s verdict)
130   interrupted (Ctrl-C)
143   terminated (SIGTERM; handled as Ctrl-C is: the log is left partial, never complete)
====  ==================================================================================
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

SUBCOMMANDS = ("simulate", "replay", "tune", "sweep", "phase", "decide", "audit", "attack")

EXIT_MISMATCH = 1
EXIT_USER = 2
EXIT_OS = 3
EXIT_MEMORY = 4
EXIT_RECURSION = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    0: "success",
    EXIT_MISMATCH: "replay: a decision differs or the log does not verify; simulate: a "
                   "figure failed (log and summary written)",
    EXIT_USER: "bad input (a flag, a value or a file; or too big for this machine)",
    EXIT_OS: "the system refused a file operation (not a directory, permission, disk full)",
    EXIT_MEMORY: "out of memory",
    EXIT_RECURSION: "input nested too deeply",
    EXIT_INTERNAL: "internal error (a bug: run with --debug and report the traceback)",
    EXIT_INTERRUPTED: "interrupted",
    143: "terminated (SIGTERM, handled as Ctrl-C: the log is left partial)",
}

# Arguments that name a file or directory the command writes.
_OUTPUTS = ("out", "json", "plot", "figures")


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4d} {text}" for code, text in EXIT_CODES.items())
    return (
        "Errors are one line on stderr naming the file, field or line; --debug (before or\n"
        "after the subcommand) also prints the traceback.\n\nexit status:\n" + codes
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narset",
        description="Narset: a slow-timescale budget allocator, simulated and tuned in JAX.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback as well as the one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"narset_jax.cli.{name}")
        except ModuleNotFoundError as err:  # subcommand not built in this checkout
            if err.name != f"narset_jax.cli.{name}":
                _broken(sub, name, err)
            continue
        except Exception as err:  # a broken subcommand must not take the others down
            _broken(sub, name, err)
            continue
        module.add_parser(sub)
    for p in sub.choices.values():  # --debug after the subcommand too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the traceback too")
    return parser


def _broken(sub, name: str, err: Exception) -> None:
    """Register ``name`` so that calling it reports why it cannot load, in one line."""
    from narset_jax.errors import UserError

    def run(args):
        raise UserError(f"subcommand unavailable ({type(err).__name__}: {err})")

    p = sub.add_parser(name, help=f"(unavailable: {type(err).__name__})")
    p.set_defaults(run=run)


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text.strip() else type(err).__name__


def _os_message(err: OSError) -> str:
    """``"<path>: <errno text>"`` (or the text and the errno name when no path is known)."""
    text = err.strerror or _first_line(err)
    if err.filename is not None:
        where = os.fsdecode(err.filename) if not isinstance(err.filename, int) else (
            f"file descriptor {err.filename}")
        if err.filename2 is not None:
            where += f" -> {os.fsdecode(err.filename2)}"
        return f"{where}: {text}"
    name = errno.errorcode.get(err.errno) if isinstance(err.errno, int) else None
    return f"{text} ({name})" if name else text


def _is_xla_oom(err: BaseException) -> bool:
    return type(err).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and (
        "RESOURCE_EXHAUSTED" in str(err)
    )


def classify(err: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message (after ``narset COMMAND: ``) of ``err``."""
    from narset_jax.errors import UserError

    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        # A UserError that is also an OSError (a failed write) already names its file.
        msg = _first_line(err) if isinstance(err, UserError) else _os_message(err)
        return EXIT_OS, f"error: {msg}"
    if isinstance(err, UserError):
        return EXIT_USER, f"error: {_first_line(err)}"
    if isinstance(err, RecursionError):
        return EXIT_RECURSION, (
            f"error: input nested too deeply to process ({_first_line(err)})"
        )
    if isinstance(err, MemoryError) or _is_xla_oom(err):
        detail = _first_line(err)
        detail = "" if detail == type(err).__name__ else f": {detail}"
        return EXIT_MEMORY, (
            f"error: out of memory ({type(err).__name__}{detail}); use a smaller size"
        )
    if isinstance(err, FileNotFoundError):
        return EXIT_USER, f"error: {_os_message(err)}"
    if isinstance(err, ValueError):
        return EXIT_USER, f"error: {_first_line(err)}"
    return EXIT_INTERNAL, (
        f"internal error: {type(err).__name__}: {_first_line(err)} (a bug; run with --debug "
        "for the traceback)"
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work, so that a long run does not fail at its last write: each output
    (``--out`` and ``--figures``, directories; ``--json`` and ``--plot``, files) must not
    be of the other kind, must lie under a directory rather than a regular file, and that
    directory must be writable; else an ``OSError`` naming the path and the flag."""
    for attr in _OUTPUTS:
        value = getattr(args, attr, None)
        if not isinstance(value, str | os.PathLike) or os.fspath(value) in ("", "-"):
            continue
        flag = f"--{attr} {os.fspath(value)}"
        path = Path(value).absolute()
        if attr in ("out", "figures") and path.exists() and not path.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, f"not a directory ({flag} names a directory)", str(path)
            )
        if attr in ("json", "plot") and path.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"is a directory ({flag} names a file)",
                                    str(path))
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, f"not a directory, so {flag} cannot be written", str(parent)
            )
        if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES, f"permission denied, so {flag} cannot be written", str(parent)
            )


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        check_outputs(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"narset {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - every error becomes one line and a status
        code, message = classify(err)
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exception(err, file=sys.stderr)
        print(f"narset {args.command}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
