"""What every ``jacverify`` subcommand shares: exit statuses, the usage error, the per-target time
limit and the check of output paths. Importing it does not import torch."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

__all__ = ["EXIT_OK", "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_UNVERIFIED", "Usage", "Timeout",
           "exit_status", "time_limit", "writable_path"]

# The exit statuses of every subcommand (README "Exit status").
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_UNVERIFIED = 0, 1, 2, 3


class Usage(Exception):
    """A usage error: printed as one line, exit status 2."""


class Timeout(BaseException):
    """Raised by the alarm; a BaseException so the user's code and jacverify's own
    ``except Exception`` (a method that raises is "unsupported") do not swallow it."""



def exit_status(statuses: list[str]) -> int:
    """The exit status of a run whose targets ended with ``statuses``: 1 if any failed, else 3 if
    any is unverified or none passed, else 0.

    >>> exit_status(["passed", "skipped"]), exit_status(["passed", "unverified"])
    (0, 3)
    >>> exit_status(["failed", "unverified"]), exit_status(["skipped"]), exit_status([])
    (1, 3, 3)
    """
    if "failed" in statuses:
        return EXIT_MISMATCH
    if "unverified" in statuses or "passed" not in statuses:
        return EXIT_UNVERIFIED
    return EXIT_OK


def writable_path(option: str, path: str | None) -> None:
    """Refuse an output path that cannot be written, before any work is done (a usage error)."""
    if path is None:
        return
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise Usage(f"{option} {path!r} is a directory; give a file path")
    if not os.path.isdir(parent):
        raise Usage(f"{option} {path!r}: the directory {parent!r} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (os.path.exists(target) and not os.access(target, os.W_OK)):
        raise Usage(f"{option} {path!r} is not writable")


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the target after ``seconds`` (between Python bytecodes; POSIX main thread only)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
