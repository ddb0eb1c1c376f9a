"""What the command line can fail with, and the exit code of each failure.

Library errors keep their own types; these are the failures that only the
command line has (a bad flag value, a model file it cannot read), each with
the exit code the README documents.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOAD",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "CliError",
    "LoadProblem",
    "UsageProblem",
    "VerificationFailed",
]

EXIT_OK = 0
EXIT_VERIFY = 1
EXIT_USAGE = 2
EXIT_LOAD = 3
EXIT_FAILED = 4


class CliError(Exception):
    """A failure the command line reports in one line and exits with."""

    exit_code: ClassVar[int] = EXIT_FAILED


class UsageProblem(CliError):
    """A flag, argument or input file is wrong: the user can fix the call."""

    exit_code = EXIT_USAGE


class LoadProblem(CliError):
    """MODEL could not be loaded: missing, unreadable, or refused."""

    exit_code = EXIT_LOAD


class VerificationFailed(CliError):
    """``--verify`` or a recipe's verify step found a claim that did not hold."""

    exit_code = EXIT_VERIFY
