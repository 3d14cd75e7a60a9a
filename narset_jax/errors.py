"""Errors shown to users as one line."""


class UserError(Exception):
    """Bad input from the user: a file, a flag or a value. The message is one line and
    names the field or file (and position) at fault. ``narset`` prints it as
    ``narset COMMAND: error: <message>`` with exit status 2 (3 when it is also an
    ``OSError``, a failed write); the exit statuses are listed in ``narset_jax.cli``."""
