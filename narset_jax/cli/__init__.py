"""The ``narset`` command line.

Each subcommand lives in its own module under ``narset_jax.cli`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Modules are imported lazily so that
``narset --help`` stays fast and one broken subcommand cannot take the others down.

Every subcommand takes ``--json PATH`` for a machine-readable summary. Bad input raises
:class:`narset_jax.errors.UserError` (or ``ValueError``), which is printed as one line on
stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("simulate", "replay", "tune", "sweep", "phase", "decide")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narset",
        description="Narset: a slow-timescale budget allocator, simulated and tuned in JAX.",
    )
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
    return parser


def _broken(sub, name: str, err: Exception) -> None:
    """Register ``name`` so that calling it reports why it cannot load, in one line."""
    from narset_jax.errors import UserError

    def run(args):
        raise UserError(f"subcommand unavailable ({type(err).__name__}: {err})")

    p = sub.add_parser(name, help=f"(unavailable: {type(err).__name__})")
    p.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    from narset_jax.errors import UserError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"narset {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"narset {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
