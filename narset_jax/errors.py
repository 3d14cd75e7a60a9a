"""Errors shown to users as one line."""


class UserError(Exception):
    """Bad input from the user: a file, a flag or a value. The message is one line and
    names the field or file (and position) at fault."""
