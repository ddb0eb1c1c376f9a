"""The exceptions and warnings that surgery raises.

Every error derives from :class:`SurgeryError`; the specific ones also derive
from the builtin they refine, so callers can catch either::

    SurgeryError
    ├── BenchmarkError(SurgeryError, ValueError)    a benchmark cannot run as asked
    ├── ExportError(SurgeryError, RuntimeError)     an export failed a check; no file
    ├── OptionError(SurgeryError, ValueError)       an option (p, mode) is out of range
    ├── SelectionError(SurgeryError, ValueError)    a selector matched nothing
    ├── RecipeError(SurgeryError, ValueError)       a recipe file is malformed
    ├── SiteError(SurgeryError, TypeError)          a site cannot do what was asked
    └── VerificationError(SurgeryError, AssertionError)
                                                    a checked claim did not hold

    SurgeryWarning(UserWarning)                     something was probably a mistake
"""

from __future__ import annotations

__all__ = [
    "BenchmarkError",
    "ExportError",
    "OptionError",
    "RecipeError",
    "SelectionError",
    "SiteError",
    "SurgeryError",
    "SurgeryWarning",
    "VerificationError",
]


class SurgeryError(Exception):
    """Base class of every error raised by surgery."""


class BenchmarkError(SurgeryError, ValueError):
    """A throughput comparison cannot run with the model, inputs or options given."""


class ExportError(SurgeryError, RuntimeError):
    """An export failed a check (random ops left, outputs differ); no file written."""


class OptionError(SurgeryError, ValueError):
    """An option such as ``p`` or ``mode`` has a value it cannot take."""


class SelectionError(SurgeryError, ValueError):
    """A ``select`` or ``exclude`` argument is malformed or matched no site."""


class RecipeError(SurgeryError, ValueError):
    """A recipe is malformed: unreadable TOML, an unknown key, a bad value."""


class SiteError(SurgeryError, TypeError):
    """A site cannot be rewritten or configured the way that was asked."""


class VerificationError(SurgeryError, AssertionError):
    """A numerical claim about a rewritten model did not hold."""


class SurgeryWarning(UserWarning):
    """Something surgery did or saw is probably not what the caller meant."""
