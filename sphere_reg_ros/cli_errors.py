"""Exit codes and one-line error messages shared by the ``sphere-reg`` commands.

Every command that reads a file checks it before any long job starts (a CT loaded, a
registration or training run) and refuses a bad one with exactly one line on stderr,
``sphere-reg COMMAND: FILE: problem``, and exit code 2; no traceback. Exit codes:

* ``register``: 0 registered and the pose may be used; 1 registered but failed or rejected by a
  quality gate; 2 bad input or usage.
* every other command: 0 success; 1 the job ran but failed; 2 bad input or usage.

This module imports nothing of the package, so every command module can use it.
"""

from __future__ import annotations

import sys

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "REGISTER_EXIT_CODES",
    "one_line",
    "refuse",
    "failed",
]

EXIT_OK = 0
#: the job ran but failed (``register``: registered but failed or rejected by a quality gate).
EXIT_FAILED = 1
#: bad input or usage: a missing, unreadable, corrupt or unsuitable file, or a bad option value
#: (argparse's own usage errors exit with 2 as well).
EXIT_BAD_INPUT = 2

#: ``--help`` epilog of the commands other than ``register``.
EXIT_CODES = (
    "exit codes: 0 success; 1 the job ran but failed; 2 bad input or usage (one line on "
    "stderr naming the file and the problem, before any long work starts)"
)
#: ``--help`` epilog of ``register``.
REGISTER_EXIT_CODES = (
    "exit codes: 0 registered and the pose may be used (converged, every quality gate "
    "passed); 1 registered but failed or rejected by a quality gate (the reason is in "
    "report.txt); 2 bad input or usage (one line on stderr naming the file and the "
    "problem, before the CT is loaded where possible)"
)


def one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` on one line (whitespace runs, newlines included, become one space);
    the exception's type name when it has no message."""
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text


def refuse(command: str, exc: BaseException | str) -> int:
    """Print ``sphere-reg COMMAND: message`` (one line) on stderr; returns :data:`EXIT_BAD_INPUT`."""
    print(f"sphere-reg {command}: {one_line(exc)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def failed(command: str, exc: BaseException | str) -> int:
    """Print ``sphere-reg COMMAND: failed: message`` (one line) on stderr; returns :data:`EXIT_FAILED`."""
    detail = (
        f"{type(exc).__name__}: {one_line(exc)}"
        if isinstance(exc, BaseException)
        else one_line(exc)
    )
    print(f"sphere-reg {command}: failed: {detail}", file=sys.stderr)
    return EXIT_FAILED
