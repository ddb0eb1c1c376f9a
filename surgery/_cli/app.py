"""How a command ends: exit codes, one-line errors, warnings and ``--debug``.

Every failure becomes one line on stderr, ``surgery <command>: error: ...``,
naming the path or flag at fault, and an exit code:

====  ======================================================================
0     success
1     verification failed (``--verify``, ``--report``, a recipe's verify step)
2     usage error: a bad flag, selector, recipe, inputs file or output path
3     MODEL could not be loaded (missing, unreadable, or a refused pickle)
4     anything else: a rewrite or export that failed, an unexpected error
====  ======================================================================

``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from .._errors import RecipeError, SelectionError, SurgeryError, VerificationError
from .errors import EXIT_FAILED, EXIT_USAGE, EXIT_VERIFY, CliError
from .render import Screen

__all__ = ["SurgeryGroup", "screen_for"]

# Interrupted by the user, as shells report SIGINT.
_EXIT_INTERRUPTED = 130
# Raised for a group called without a command (click 8.2 and later).
_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name)
    for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)


class SurgeryGroup(click.Group):
    """A click group whose ``main`` maps every failure to a documented exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        with _warnings_as_lines(debug=debug), _debug_logging(debug):
            code = _guarded(
                lambda: super(SurgeryGroup, self).main(
                    argv,
                    prog_name or "surgery",
                    complete_var,
                    standalone_mode=False,
                    **extra,
                ),
                debug=debug,
                argv=argv,
            )
        if standalone_mode:
            sys.exit(code)
        return code


def screen_for(as_json: bool) -> Screen:
    """The screen of the running command (stdout and stderr as click set them)."""
    return Screen(json_mode=as_json)


def _guarded(invoke: Any, *, debug: bool, argv: list[str]) -> int:
    try:
        result = invoke()
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except _NO_ARGS_IS_HELP as error:
        # A bare ``surgery``: the help is the answer, not an error line.
        print(error.format_message(), file=sys.stderr)
        return int(error.exit_code)
    except click.ClickException as error:
        where = _command_path(error, argv)
        hint = f" (see '{where} --help')" if isinstance(error, click.UsageError) else ""
        return _fail(where, error.format_message() + hint, error.exit_code, debug)
    except click.Abort:
        return _fail(_command_path(None, argv), "aborted", _EXIT_INTERRUPTED, debug)
    except KeyboardInterrupt:
        return _fail(_command_path(None, argv), "interrupted", _EXIT_INTERRUPTED, debug)
    except CliError as error:
        return _fail(_command_path(None, argv), str(error), error.exit_code, debug)
    except (SelectionError, RecipeError) as error:
        return _fail(_command_path(None, argv), _flagged(error), EXIT_USAGE, debug)
    except VerificationError as error:
        return _fail(_command_path(None, argv), str(error), EXIT_VERIFY, debug)
    except SurgeryError as error:
        return _fail(_command_path(None, argv), str(error), EXIT_FAILED, debug)
    except Exception as error:
        message = f"unexpected {type(error).__name__}: {error}"
        if not debug:
            message += " (rerun with --debug for the traceback)"
        return _fail(_command_path(None, argv), message, EXIT_FAILED, debug)
    return result if isinstance(result, int) else 0


def _fail(where: str, message: str, code: int, debug: bool) -> int:
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    print(f"{where}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _flagged(error: SurgeryError) -> str:
    """Name the flag behind a selection error raised by the core."""
    text = str(error)
    for word in ("select ", "exclude "):
        if text.startswith(word):
            return "--" + text
    return text


def _command_path(error: click.ClickException | None, argv: list[str]) -> str:
    context = getattr(error, "ctx", None)
    if context is not None:
        return str(context.command_path)
    words = [word for word in argv if not word.startswith("-")]
    return f"surgery {words[0]}" if words else "surgery"


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _warnings_as_lines(*, debug: bool) -> Iterator[None]:
    """Show each warning once, as one line on stderr, while a command runs.

    Deprecation notices from the libraries underneath are for developers, not
    for the person running the command: they show only with ``--debug``.
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        print(f"surgery: warning: {_one_line(str(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        if not debug:
            for category in (
                DeprecationWarning,
                PendingDeprecationWarning,
                FutureWarning,
            ):
                warnings.simplefilter("ignore", category)
        warnings.showwarning = show
        yield


# Loggers of libraries underneath that warn about things a command's user
# cannot act on (the ONNX exporter lists every optional op it skips).
_QUIET_LOGGERS = ("torch.onnx",)


@contextmanager
def _debug_logging(debug: bool) -> Iterator[None]:
    if not debug:
        quiet = [logging.getLogger(name) for name in _QUIET_LOGGERS]
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        return
    logger = logging.getLogger("surgery")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("surgery: debug: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
