"""The one exception type for the user's mistakes, and how every command line reports it.

A `UserError` (bad config, flag, data or path) is the user's to fix: the command prints its
message as one line, `error: ...`, on stderr and exits 2, before anything expensive when possible.
An `EnvironmentFailure` (no space left, write permission lost, the object store refusing a write
after its retries) is the machine's, not the input's: one line naming the path and the cause,
exit 3. Every other exception is a bug in igc-jax: it keeps its full traceback and exits 1.
`UserError` subclasses ValueError so code that catches ValueError keeps working.
"""
from __future__ import annotations

import errno
import sys

EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 3

# The OS errors that are the environment's (errno → what the line says).
_ERRNO_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "read-only file system"}
# The same causes as the text of errors that carry no errno (tensorstore's, orbax's).
_TEXT_CAUSES = (("No space left on device", "no space left on device"),
                ("Disk quota exceeded", "disk quota exceeded"),
                ("Read-only file system", "read-only file system"),
                ("Permission denied", "permission denied"),
                ("PERMISSION_DENIED", "permission denied"),
                ("Forbidden: ", "the object store denied access (HTTP 403)"))  # gcsfs's 403
# Object-store HTTP statuses that are the store's, once the clients' own retries gave up.
_HTTP_CAUSES = {403: "the object store denied access (HTTP 403)",
                429: "the object store kept refusing requests (HTTP 429)",
                500: "the object store kept failing (HTTP 500)",
                502: "the object store kept failing (HTTP 502)",
                503: "the object store kept failing (HTTP 503)",
                504: "the object store kept failing (HTTP 504)"}


class UserError(ValueError):
    """A mistake in the user's input; its message names the field or file, the value and what is
    allowed, on one line."""


class EnvironmentFailure(Exception):
    """The machine failed the run (disk full, permission lost, object store down); its message
    is one line naming the path, the cause and what is intact."""


def environment_cause(exc: BaseException) -> str | None:
    """What in the environment made `exc` happen ("no space left on device", ...), looking
    through its chain of causes, or None when it is not the environment's (a bug)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ERRNO_CAUSES:
            return _ERRNO_CAUSES[e.errno]
        code = getattr(e, "code", None)  # gcsfs's HttpError
        if type(e).__name__ == "HttpError" and _as_int(code) in _HTTP_CAUSES:
            return _HTTP_CAUSES[_as_int(code)]
        text = str(e)
        for needle, cause in _TEXT_CAUSES:
            if needle in text:
                return cause
        e = e.__cause__ or e.__context__
    return None


_REMEDIES = {"no space left on device": "free space and rerun the same command to resume",
             "disk quota exceeded": "free space and rerun the same command to resume",
             "permission denied": "restore write access and rerun the same command to resume",
             "read-only file system": "make it writable and rerun the same command to resume"}


def environment_failure(exc: BaseException, writing: str | None,
                        intact_step: int | None) -> EnvironmentFailure | None:
    """`exc` as the one-line failure of writing `writing` (default: the path its OS error names),
    saying which checkpoint is intact, or None when `exc` is not the environment's."""
    cause = environment_cause(exc)
    if cause is None:
        return None
    what = writing or _filename(exc) or "the workdir"
    intact = ("no checkpoint was written yet" if intact_step is None
              else f"the checkpoint at step {intact_step} is intact")
    remedy = _REMEDIES.get(cause, "rerun the same command to resume once that is fixed")
    return EnvironmentFailure(f"{cause} writing {what}; {intact}; {remedy}")


def _filename(exc: BaseException) -> str | None:
    e: BaseException | None = exc
    for _ in range(16):  # the chain, bounded
        if e is None:
            return None
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        e = e.__cause__ or e.__context__
    return None


def _as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


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
