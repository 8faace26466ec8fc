"""Errors that end a command with a one-line message and an exit code (never a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the operator (config, arguments, files): exit code 2 with one line."""

    exit_code = 2


class RuntimeFailure(Exception):
    """The command could not do its job (peer unreachable, archive unwritable): exit code 1."""

    exit_code = 1


class DataError(UserError):
    """A file the operator handed over is damaged or not what it claims (a bundle with a bad
    checksum, a truncated file): exit code 65, sysexits' EX_DATAERR, so scripts can tell it from a
    mistyped argument (2)."""

    exit_code = 65
