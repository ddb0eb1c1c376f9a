"""Discovery: the sites every kind finds by reading the model, and what a forward adds.

Static discovery asks each registered kind for its sites. With example inputs,
one observed train-mode forward (see :mod:`surgery._observe`) adds what only
running shows (dropout called from helper functions, randomness that is not
dropout) and tells how many random ops each site drew.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from ._gate import kind_of
from ._kinds import KINDS, kind_named
from ._kinds.functional import FunctionalKind, call_path
from ._kinds.unclassified import unclassified_site
from ._observe import ObservedCall, observe
from ._site import Site
from ._tree import ModuleIndex, parent_path, qualname

__all__ = ["discover"]


def discover(index: ModuleIndex, example_inputs: Any = None) -> list[Site]:
    """Every site of the indexed model, in module order."""
    sites = _static_sites(index)
    if example_inputs is not None:
        sites = _observed_sites(index, sites, example_inputs)
    return sites


def _static_sites(index: ModuleIndex) -> list[Site]:
    claimed: set[int] = set()
    sites = [site for kind in KINDS for site in kind.discover(index, claimed)]
    order = {path: position for position, path in enumerate(index.modules)}
    return sorted(
        sites, key=lambda site: order.get(site.path, order.get(site.owner, 0))
    )


def _observed_sites(
    index: ModuleIndex, known: list[Site], example_inputs: Any
) -> list[Site]:
    """The known sites, the ones only a forward reveals, and each one's draws."""
    module_sites = [site.path for site in known if site.path in index.modules]
    seen = observe(index.model, example_inputs, site_modules=module_sites)
    draws: dict[str, int] = defaultdict(int, seen.in_site_modules)
    paths = {path for site in known for path in site.paths}
    read_by: dict[str, list[Site]] = defaultdict(list)
    for site in known:
        if kind_named(site.kind).reads_through_owner:
            read_by[site.owner].append(site)

    found: list[Site] = []
    functional = FunctionalKind()
    for call in seen.calls:
        if any(_within(call.module, path) for path in module_sites):
            continue  # a dropout module's own forward: counted as that module
        path = _explained_by(index, call, paths, read_by)
        if path is None:
            site = functional.observed_site(index, call.module, call.call, call.p)
            found.append(site)
            paths.add(site.path)
            path = site.path
        draws[path] += call.random_ops

    for random in seen.unclassified:
        module = index.modules.get(random.module)
        cls = qualname(module) if module is not None else ""
        found.append(unclassified_site(random.module, random.op, random.count, cls))
        draws[found[-1].path] += random.count
    return [
        dataclasses.replace(site, random_ops=draws.get(site.path, 0))
        for site in known + found
    ]


def _explained_by(
    index: ModuleIndex,
    call: ObservedCall,
    paths: set[str],
    read_by: dict[str, list[Site]],
) -> str | None:
    """The known site a call belongs to, if any."""
    module = index.modules.get(call.module)
    if module is not None and kind_of(module) is not None:
        # A gate surgery put in a traced graph: its owner's call site.
        owner = parent_path(call.module)
        return FunctionalKind.call_of_gate(index, owner, call.module)
    if call.own and call_path(call.module, call.call) in paths:
        return call_path(call.module, call.call)
    readers = read_by.get(call.module, [])
    for site in readers:
        # A gate that is off passes 0.0 whatever its configured rate.
        passed = (site.p, site.original_p, *((0.0,) if site.mode == "off" else ()))
        if call.p in passed:
            return site.path  # a float attribute or a module's .p passed on
    if not call.own and readers:
        return readers[0].path
    return None


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(f"{ancestor}.")
