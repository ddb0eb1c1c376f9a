"""``python -m surgery`` and the ``surgery`` console script.

The command line needs click and rich (the ``cli`` extra); the library does
not, so they are imported only here, when a command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Exit code of a command that could not run at all (see surgery._cli.app).
_EXIT_FAILED = 4
_HINT = (
    "surgery: error: the command line needs click and rich; "
    "install them with: pip install 'torch-surgery[cli]'"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``surgery`` command line and return its exit code."""
    try:
        import click  # noqa: F401  # probe: the command line needs both
        import rich  # noqa: F401
    except ImportError:
        print(_HINT, file=sys.stderr)
        return _EXIT_FAILED

    from ._cli.commands import cli

    return int(
        cli.main(list(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    )


if __name__ == "__main__":
    raise SystemExit(main())
