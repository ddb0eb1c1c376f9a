"""Files the command line writes: checked before any work, replaced atomically.

Every output goes first to a hidden temporary file beside the target and is
renamed over it only once complete, so a reader never sees half a file and a
failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UsageProblem
from .render import as_json

__all__ = ["atomic_path", "check_output", "write_json"]


def check_output(
    out: Path,
    *,
    inputs: Sequence[Path],
    overwrite: bool,
    flag: str = "-o/--output",
) -> Path:
    """Refuse an output that cannot be written or would replace an input.

    Runs before any model is loaded, so a bad ``-o`` costs nothing.

    Returns:
        ``out`` as an absolute path.
    """
    target = out.expanduser().absolute()
    if target.is_dir():
        raise UsageProblem(f"{flag} {out} is a folder; give the name of a file")

    for source in inputs:
        if _same_file(target, source) and not overwrite:
            raise UsageProblem(
                f"{flag} {out} is the input {source}; write elsewhere, or pass "
                "--overwrite to replace the input"
            )

    parent = target.parent
    if not parent.exists():
        raise UsageProblem(f"{flag} {out}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UsageProblem(f"{flag} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageProblem(f"{flag} {out}: no permission to write in {parent}")
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageProblem(f"{flag} {out} exists and is read-only")
    return target


def _same_file(a: Path, b: Path) -> bool:
    if not a.exists() or not b.exists():
        return a.resolve() == b.resolve()
    return os.path.samefile(a, b)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The temporary name keeps ``target``'s suffix, since some writers choose a
    format by it. If the block raises, the temporary file (or folder) is
    removed and ``target`` is left as it was.
    """
    fd, name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".partial{target.suffix}", dir=target.parent
    )
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        if not temporary.exists():
            raise OSError(f"the writer left no file for {target}")
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def write_json(target: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``target``, atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(as_json(payload) + "\n")


def _fsync(path: Path) -> None:
    if path.is_file():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
