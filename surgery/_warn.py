"""Warnings that point at the caller's line, not at surgery's internals."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

from ._errors import SurgeryWarning

_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")

# Surgery's context managers run their setup inside contextlib's frames; the
# user's ``with`` line is the frame after those.
_SKIPPED_FILES = (_PACKAGE_DIR, os.path.abspath(contextlib.__file__))


def warn(message: str, category: type[Warning] = SurgeryWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside surgery."""
    # stacklevel=1 is this function; 2 is the frame that called it.
    level = 2
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_FILES):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
    warnings.warn(message, category, stacklevel=level)
