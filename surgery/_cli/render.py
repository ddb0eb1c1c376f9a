"""What the command line shows: rich on a terminal, plain when piped, or JSON.

Results go to stdout; progress, warnings and errors go to stderr, so
``surgery inspect MODEL --json | jq`` sees only JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

__all__ = ["Screen", "as_json"]


class Screen:
    """The command's terminal: where and how results, progress and notes go.

    Args:
        json_mode: Print results as JSON only.
        out: Where results go (stdout by default).
        err: Where progress, warnings and errors go (stderr by default).
    """

    def __init__(
        self,
        *,
        json_mode: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._rich_out = _is_terminal(self.out) and not json_mode
        self._rich_err = _is_terminal(self.err)
        self._console = Console(file=self.out) if self._rich_out else None
        self._err_console = Console(file=self.err) if self._rich_err else None

    def line(self, text: str = "") -> None:
        """A line of the human-readable result; nothing in JSON mode."""
        if self.json_mode:
            return
        if self._console is not None:
            self._console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.out)

    def note(self, text: str) -> None:
        """A side remark for the person at the terminal, on stderr."""
        print(text, file=self.err)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
    ) -> None:
        """A table: boxed on a terminal, fixed-width columns when piped."""
        if self.json_mode:
            return
        if self._console is not None:
            table = Table(title=title, title_justify="left")
            for number, header in enumerate(headers):
                # The first column names the row (a site path): never cut it.
                table.add_column(header, no_wrap=number == 0)
            for row in rows:
                table.add_row(*row)
            self._console.print(table)
            return
        if title:
            print(title, file=self.out)
        print(_plain_table(headers, rows), file=self.out)

    def json(self, payload: Any) -> None:
        """The machine-readable result: one JSON document on stdout."""
        print(as_json(payload), file=self.out)

    @contextmanager
    def progress(self, label: str) -> Iterator[None]:
        """A spinner on a terminal's stderr while a step runs; nothing when piped.

        Whatever the libraries underneath print meanwhile goes to stderr:
        stdout carries only the result.
        """
        with redirect_stdout(self.err):
            if self._err_console is None:
                yield
                return
            with self._err_console.status(label):
                yield
        self._err_console.print(f"[green]done[/green] {label}", highlight=False)


def as_json(payload: Any) -> str:
    """Strict JSON (no NaN or Infinity, which many readers reject)."""
    return json.dumps(_finite(payload), indent=2, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
