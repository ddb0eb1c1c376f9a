"""``python -m surgery`` and the ``surgery`` console script."""

from __future__ import annotations

import sys

from ._mainjob import run_demo


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in ([], ["demo"]):
        run_demo(sys.stdout)
        return 0
    print(
        f"usage: surgery demo  (unknown arguments: {' '.join(args)})", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
