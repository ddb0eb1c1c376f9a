"""Kind: randomness seen at run time that is not dropout.

LayerDrop's ``torch.rand([]) < p``, noise injection and sampling draw random
numbers too. Surgery reports them, with their module path, when it observes a
forward (``find(model, example_inputs=...)``), and never rewrites them.
"""

from __future__ import annotations

from collections.abc import Iterator

from .._errors import SiteError
from .._site import Mode, Site
from .._tree import ModuleIndex
from .base import Hold, Undo

__all__ = ["UnclassifiedKind", "unclassified_site"]


def unclassified_site(module: str, op: str, count: int, cls: str) -> Site:
    """The record of random op ``op`` run ``count`` times by ``module``'s own code."""
    return Site(
        path=f"{module}:{op.rpartition('.')[2]}",
        kind=UnclassifiedKind.name,
        owner=module,
        cls=cls,
        p=float("nan"),
        original_p=float("nan"),
        state="original",
        mode=None,
        mechanism=f"none: {op} x{count} is not dropout; left as it is",
    )


class UnclassifiedKind:
    """Reported only; every rewrite of it is refused with a reason."""

    name = "unclassified"
    reads_through_owner = False

    def discover(self, index: ModuleIndex, claimed: set[int]) -> Iterator[Site]:
        return iter(())

    def _refuse(self, site: Site) -> Undo:
        raise SiteError(
            f"{site.path}: random op in {site.owner or 'the model'} that is not "
            "dropout (LayerDrop, noise, sampling); surgery does not rewrite it. "
            "Exclude it, or change that module's own settings"
        )

    def strip(self, index: ModuleIndex, site: Site) -> Undo:
        return self._refuse(site)

    def gate(self, index: ModuleIndex, site: Site, *, mode: Mode, p: float) -> Undo:
        return self._refuse(site)

    def configure(
        self, index: ModuleIndex, site: Site, *, mode: Mode, p: float
    ) -> Undo:
        return self._refuse(site)

    def restore(self, index: ModuleIndex, site: Site) -> Undo:
        return lambda: None

    def hold(self, index: ModuleIndex, site: Site) -> Hold | None:
        return None
