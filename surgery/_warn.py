"""Warnings that point at the caller's line, not at surgery's internals."""

from __future__ import annotations

import os
import sys
import warnings

from ._errors import SurgeryWarning

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[Warning] = SurgeryWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside surgery."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
    warnings.warn(message, category, stacklevel=level)
