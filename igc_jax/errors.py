"""The one exception type for the user's mistakes, and how every command line reports it.

A `UserError` (bad config, flag, data or path) is the user's to fix: the command prints its
message as one line, `error: ...`, on stderr and exits 2, before anything expensive when possible.
Every other exception is a bug in igc-jax: it keeps its full traceback and exits 1.
`UserError` subclasses ValueError so code that catches ValueError keeps working.
"""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake in the user's input; its message names the field or file, the value and what is
    allowed, on one line."""


def one_line(message: str) -> str:
    """The message as one stderr line (a multi-line message is joined, never cut)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report(message: str, code: int = EXIT_USER_ERROR) -> int:
    """Print `error: <message>` as one line on stderr; the exit status to return."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print `error: <message>` as one line on stderr and exit with `code`."""
    sys.exit(report(message, code))
