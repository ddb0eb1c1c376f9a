"""The registry of site kinds, in the order they claim modules.

Adding a kind is one file implementing :class:`~surgery._kinds.base.SiteKind`
and one line here. Order matters only where two kinds could claim the same
module: the earlier one wins.
"""

from __future__ import annotations

from .attribute import FloatAttributeKind
from .base import SiteKind
from .drop_path import DropPathKind
from .functional import FunctionalKind
from .module import DropoutModuleKind
from .read_p import ReadForPKind
from .unclassified import UnclassifiedKind

__all__ = ["KINDS", "kind_named", "register_kind"]

KINDS: list[SiteKind] = [
    DropPathKind(),
    ReadForPKind(),
    DropoutModuleKind(),
    FloatAttributeKind(),
    FunctionalKind(),
    UnclassifiedKind(),
]


def register_kind(kind: SiteKind, *, before: str | None = None) -> None:
    """Add a kind of site; ``before`` names a kind it must claim ahead of."""
    if any(existing.name == kind.name for existing in KINDS):
        raise ValueError(f"a kind named {kind.name!r} is already registered")
    position = len(KINDS)
    if before is not None:
        position = [existing.name for existing in KINDS].index(before)
    KINDS.insert(position, kind)


def kind_named(name: str) -> SiteKind:
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"no site kind named {name!r}")
