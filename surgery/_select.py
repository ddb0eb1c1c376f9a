"""The selector language shared by every function that takes ``select``.

A selector is one of:

- a string glob, matched with ``fnmatch`` against the whole site path (``*``
  also crosses dots: ``"encoder.*.dropout"``);
- a string starting with ``re:``, a regular expression that must
  ``fullmatch`` the path;
- a class or a tuple of classes, matched with ``isinstance`` against the
  site's module (the original dropout module, or the owner of a float
  attribute);
- a predicate ``(path, module) -> bool``;
- a list of these: a site is selected if any one matches.

A site's aliases (other paths of a shared module) match too. Excludes win
over selects. Every entry of ``select`` must match at least one site, or
:class:`~surgery.SelectionError` names the closest paths; an ``exclude`` entry
that matches nothing is probably a typo and warns.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeAlias, cast

from torch import nn

from ._errors import SelectionError
from ._site import Site
from ._warn import warn

__all__ = ["Selector", "select_sites"]

Selector: TypeAlias = (
    str
    | type[nn.Module]
    | tuple[type[nn.Module], ...]
    | Callable[[str, nn.Module], bool]
    | Sequence["Selector"]
)


@dataclass(frozen=True)
class _Matcher:
    text: str
    test: Callable[[Site], bool]
    is_pattern: bool


def select_sites(
    sites: Sequence[Site],
    select: Selector | None = None,
    exclude: Selector | None = None,
) -> list[Site]:
    """The sites that ``select`` picks and ``exclude`` does not."""
    chosen = list(sites)
    if select is not None:
        matchers = _compile(select, "select")
        for matcher in matchers:
            if not any(matcher.test(site) for site in sites):
                raise SelectionError(_no_match(matcher, sites))
        chosen = [s for s in chosen if any(m.test(s) for m in matchers)]
    if exclude is not None:
        matchers = _compile(exclude, "exclude")
        for matcher in matchers:
            if not any(matcher.test(site) for site in sites):
                warn(f"exclude {matcher.text} matched no dropout site; is it a typo?")
        chosen = [s for s in chosen if not any(m.test(s) for m in matchers)]
    return chosen


def _compile(selector: Selector, role: str) -> list[_Matcher]:
    if isinstance(selector, str):
        return [_string_matcher(selector, role)]
    if _is_classes(selector):
        return [_class_matcher(selector)]  # type: ignore[arg-type]  # checked above
    if callable(selector):
        return [_predicate_matcher(cast(Callable[[str, nn.Module], bool], selector))]
    if isinstance(selector, (list, tuple)):
        if not selector:
            raise SelectionError(f"{role} is empty; pass None to mean every site")
        return [matcher for entry in selector for matcher in _compile(entry, role)]
    raise SelectionError(
        f"{role} must be a glob, 're:<regex>', a class, a predicate "
        f"(path, module) -> bool, or a list of these; got {type(selector).__name__}"
    )


def _is_classes(selector: object) -> bool:
    if isinstance(selector, type):
        return True
    return (
        isinstance(selector, tuple)
        and bool(selector)
        and all(isinstance(entry, type) for entry in selector)
    )


def _class_matcher(classes: type | tuple[type, ...]) -> _Matcher:
    names = ", ".join(
        cls.__name__ for cls in (classes if isinstance(classes, tuple) else (classes,))
    )
    return _Matcher(
        f"of type {names}",
        lambda site: isinstance(site.module, classes),
        is_pattern=False,
    )


def _predicate_matcher(predicate: Callable[[str, nn.Module], bool]) -> _Matcher:
    def test(site: Site) -> bool:
        module = site.module
        if module is None:
            return False
        return any(bool(predicate(path, module)) for path in site.paths)

    name = getattr(predicate, "__name__", repr(predicate))
    return _Matcher(f"predicate {name}", test, is_pattern=False)


def _string_matcher(text: str, role: str) -> _Matcher:
    if text.startswith("re:"):
        try:
            regex = re.compile(text[3:])
        except re.error as error:
            raise SelectionError(
                f"{role} {text!r} is not a valid regex: {error}"
            ) from None
        return _Matcher(
            repr(text),
            lambda site: any(regex.fullmatch(p) for p in site.paths),
            is_pattern=True,
        )
    return _Matcher(
        repr(text),
        lambda site: any(fnmatchcase(p, text) for p in site.paths),
        is_pattern=True,
    )


def _no_match(matcher: _Matcher, sites: Sequence[Site]) -> str:
    if not sites:
        return (
            f"select {matcher.text} matched nothing: the model has no dropout site "
            "that surgery can see without running it"
        )
    paths = [site.path for site in sites]
    if matcher.is_pattern:
        needle = matcher.text.strip("'\"").removeprefix("re:")
        near = difflib.get_close_matches(needle, paths, n=3, cutoff=0.0)
    else:
        near = paths[:3]
    return (
        f"select {matcher.text} matched none of the {len(sites)} dropout sites. "
        f"Closest paths: {', '.join(near)}. "
        "List every site with surgery.find(model)."
    )
