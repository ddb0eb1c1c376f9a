"""What a kind of site is: the adapter interface every kind implements.

A kind knows how to find its own sites and how to strip, gate, configure and
restore one of them. Everything else in surgery (selection, the transaction
that undoes a failed rewrite, reports, verification, export, the CLI) works on
:class:`~surgery.Site` records and calls these methods, never on a kind's
internals.

Each mutating method returns an *undo*: a callable that puts back exactly what
the call changed. The caller keeps them, and runs them in reverse if a later
step fails, so a rewrite either happens in full or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from .._site import Mode, Site, State
from .._tree import ModuleIndex

__all__ = ["Hold", "HoldAttribute", "RecordKind", "SiteKind", "Undo"]

Undo = Callable[[], None]


class Hold(Protocol):
    """Silences one site for the length of one forward, then lets it go."""

    def apply(self) -> None: ...

    def release(self) -> None: ...


class SiteKind(Protocol):
    """The adapter for one kind of dropout site."""

    name: str
    """Short name shown as ``Site.kind``."""

    reads_through_owner: bool
    """True when the owner's code decides, from its own ``training`` flag,
    whether the site drops (a float attribute, a module read for ``.p``).
    Forcing such a site on means presenting ``training=True`` to the owner."""

    def discover(self, index: ModuleIndex, claimed: set[int]) -> Iterator[Site]:
        """Yield this kind's sites, in every state, without running the model.

        ``claimed`` holds ``id()`` of modules that kinds earlier in the
        registry already own as sites; skip them, and add the ones you take.
        """
        ...

    def strip(self, index: ModuleIndex, site: Site) -> Undo:
        """Make an original site drop nothing."""
        ...

    def gate(self, index: ModuleIndex, site: Site, *, mode: Mode, p: float) -> Undo:
        """Put an original site under a gate with this mode and probability."""
        ...

    def configure(
        self, index: ModuleIndex, site: Site, *, mode: Mode, p: float
    ) -> Undo:
        """Change the mode and probability of a gated site."""
        ...

    def restore(self, index: ModuleIndex, site: Site) -> Undo:
        """Put back exactly what a gated or stripped site replaced."""
        ...

    def hold(self, index: ModuleIndex, site: Site) -> Hold | None:
        """How to silence this site while its owner is forced into training.

        Only asked of kinds that read through the owner; ``None`` when the
        site drops nothing anyway (stripped).
        """
        ...


@dataclass
class HoldAttribute:
    """A hold that zeroes a float attribute and puts its value back after."""

    owner: nn.Module
    name: str
    # Not part of equality: two holds on the same attribute are the same hold.
    saved: float = field(default=0.0, compare=False)

    def apply(self) -> None:
        self.saved = getattr(self.owner, self.name)
        setattr(self.owner, self.name, 0.0)

    def release(self) -> None:
        setattr(self.owner, self.name, self.saved)


class RecordKind:
    """A kind whose verbs all come down to writing one record per site.

    Subclasses implement :meth:`_write`, which puts a site in a state (with a
    gate mode and rate when gated) and returns the undo.
    """

    def _write(
        self,
        index: ModuleIndex,
        site: Site,
        *,
        state: State,
        mode: Mode | None,
        rate: float,
    ) -> Undo:
        raise NotImplementedError

    def strip(self, index: ModuleIndex, site: Site) -> Undo:
        return self._write(index, site, state="stripped", mode=None, rate=0.0)

    def gate(self, index: ModuleIndex, site: Site, *, mode: Mode, p: float) -> Undo:
        return self._write(index, site, state="gated", mode=mode, rate=p)

    def configure(
        self, index: ModuleIndex, site: Site, *, mode: Mode, p: float
    ) -> Undo:
        return self._write(index, site, state="gated", mode=mode, rate=p)

    def restore(self, index: ModuleIndex, site: Site) -> Undo:
        return self._write(
            index, site, state="original", mode=None, rate=site.original_p
        )
