"""One walk over a module tree, and the path helpers every kind shares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from ._errors import SiteError

__all__ = ["ModuleIndex", "join", "qualname", "replace_module"]


def join(owner: str, name: str) -> str:
    """The path of ``name`` inside the module at ``owner`` (``""`` is the root)."""
    return f"{owner}.{name}" if owner else name


def parent_path(path: str) -> str:
    """The path of the module that holds ``path``."""
    return path.rpartition(".")[0]


def qualname(obj: object) -> str:
    """``module.Class`` of a class or of an instance's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class ModuleIndex:
    """Every module of a model once, with all the paths it is registered under.

    Built by one walk in ``named_modules(remove_duplicate=False)`` order, so
    that kinds do not walk the tree once each. Modules inside a surgery
    replacement (the module a gate calls) are left out: they belong to the
    replacement's site.
    """

    model: nn.Module
    paths: dict[int, list[str]] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    first: list[str] = field(default_factory=list, repr=False)
    """The first path of each module, in walk order. ``replace_module`` keeps
    it valid: a replacement takes over the paths of what it replaces."""

    @classmethod
    def build(cls, model: nn.Module) -> ModuleIndex:
        index = cls(model)
        paths, modules, first = index.paths, index.modules, index.first

        # A walk of our own rather than a filter over named_modules(): pruning
        # a replacement's subtree is then free, where testing every path
        # against every replacement grew quadratically with the sites.
        def visit(path: str, module: nn.Module) -> None:
            known = paths.get(id(module))
            if known is None:
                paths[id(module)] = [path]
                first.append(path)
            else:
                known.append(path)
            modules[path] = module
            if "_surgery_kind" in module.__dict__:
                return
            prefix = f"{path}." if path else ""
            for name, child in module._modules.items():
                if child is not None:
                    visit(prefix + name, child)

        visit("", model)
        return index

    def __iter__(self) -> Iterator[tuple[str, nn.Module]]:
        """Each module once, under the first path it is registered at."""
        # Every kind walks the index on every find and rewrite: a list made
        # once keeps that walk to one lookup per module.
        modules = self.modules
        for path in self.first:
            yield path, modules[path]

    def aliases(self, module: nn.Module) -> tuple[str, ...]:
        """The paths of ``module`` after its first one."""
        return tuple(self.paths.get(id(module), [])[1:])

    def get(self, path: str) -> nn.Module:
        try:
            return self.modules[path]
        except KeyError:
            raise SiteError(f"no module at path {path!r}") from None


def replace_module(index: ModuleIndex, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered, so shared modules stay shared."""
    paths = index.paths.get(id(old))
    if not paths:
        raise SiteError(f"{type(old).__name__} is not part of this model")
    if paths == [""]:
        raise SiteError(
            "the model itself is a dropout module; wrap it in a container "
            "(nn.Sequential) so there is a parent to put the replacement in"
        )
    for path in paths:
        owner, _, name = path.rpartition(".")
        index.get(owner)._modules[name] = new
    index.paths[id(new)] = index.paths.pop(id(old))
    for path in paths:
        index.modules[path] = new
