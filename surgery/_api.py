"""The verbs: find, strip, gate, restore, set_dropout, and two context managers.

Every rewrite changes the model in place and returns it, as ``nn.Module.to``
does. A rewrite runs as one transaction: if any site fails, every site already
changed is put back and the model is exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from ._discover import discover
from ._errors import OptionError, SiteError
from ._exported import find_exported, is_exported, rewrite_exported
from ._force import has_forcing, sync_forcing
from ._gate import check_mode, check_p
from ._kinds import kind_named
from ._kinds.base import Undo
from ._select import Selector, select_sites
from ._site import Mode, Site, State
from ._tree import ModuleIndex
from ._warn import warn

__all__ = [
    "dropout_off",
    "dropout_on",
    "find",
    "gate",
    "restore",
    "set_dropout",
    "strip",
]

logger = logging.getLogger("surgery")

# Every verb takes a module; strip, gate and set_dropout also an exported program.
M = TypeVar("M", bound=nn.Module | torch.export.ExportedProgram)


def find(
    model: nn.Module | torch.export.ExportedProgram,
    select: Selector | None = None,
    *,
    exclude: Selector | None = None,
    example_inputs: Any = None,
) -> list[Site]:
    """List the dropout sites of ``model``, in module order.

    Finds dropout modules (called or read for ``.p``), float dropout
    attributes, registered drop-path classes, and dropout functions called in
    a module's ``forward``, in every state: original, gated or stripped.

    With ``example_inputs`` it also runs one train-mode forward (the model,
    its buffers and the global RNG state are left exactly as they were) and
    reports what reading code cannot show: dropout called from helper
    functions, and randomness that is not dropout (kind ``"unclassified"``).

    Args:
        model: The model to inspect. It is not changed.
        select: Which sites to return (see :mod:`surgery` for the selector
            language); ``None`` means all.
        exclude: Sites to leave out; wins over ``select``.
        example_inputs: A tensor, a tuple of positional arguments or a dict of
            keyword arguments to run the model on.

    Returns:
        One :class:`Site` per site.

    Raises:
        SelectionError: ``select`` matched no site.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> [(site.path, site.kind, site.p) for site in find(model)]
        [('1', 'module', 0.1)]
    """
    _check_model(model)
    if is_exported(model):
        return select_sites(find_exported(model), select, exclude)
    index = ModuleIndex.build(_module(model))
    return select_sites(discover(index, example_inputs), select, exclude)


def strip(
    model: M,
    select: Selector | None = None,
    *,
    exclude: Selector | None = None,
    example_inputs: Any = None,
) -> M:
    """Make the selected sites drop nothing, in train mode too. In place.

    Dropout modules become :class:`StrippedDropout` (an ``nn.Identity`` that
    answers ``p == 0.0``); float attributes become ``0.0``. ``state_dict`` is
    unchanged and :func:`restore` undoes it.

    ``example_inputs`` (as for :func:`find`) also reaches sites seen only at
    run time.

    An ``ExportedProgram`` (or its ``GraphModule``) is rewritten in its aten
    graph: dropout ops are removed, attention gets ``dropout_p=0.0`` and
    drop-path's ``bernoulli`` arithmetic goes; the program's verifier runs after.

    Returns:
        ``model`` itself, changed in place.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> strip(model)[1]
        StrippedDropout(stripped=Dropout)
    """
    if is_exported(model):
        return _rewrite_exported(model, select, exclude, mode="off", p=None)
    return _rewrite(model, select, exclude, _to_stripped, example_inputs)


def gate(
    model: M,
    select: Selector | None = None,
    *,
    exclude: Selector | None = None,
    example_inputs: Any = None,
) -> M:
    """Put the selected sites under a gate that follows ``training``. In place.

    The gated model behaves and draws random numbers exactly as before; use
    :func:`set_dropout` or the gates themselves to switch a site on or off or
    to change its probability. Sites already gated keep their settings.

    An exported program's mode is frozen at export, so there every op already
    behaves as it was exported: ``gate`` only checks the selection, and
    :func:`set_dropout` with ``mode=``/``p=`` changes the ops themselves.

    Returns:
        ``model`` itself, changed in place.
    """
    if is_exported(model):
        return _rewrite_exported(model, select, exclude, mode="train", p=None)
    return _rewrite(model, select, exclude, _to_gated, example_inputs)


def restore(model: M, select: Selector | None = None) -> M:
    """Undo :func:`strip`, :func:`gate` and :func:`set_dropout`. In place.

    Puts back the very module objects and attribute values the model had.

    Returns:
        ``model`` itself, changed in place.
    """
    return _rewrite(model, select, None, _to_original)


def set_dropout(
    model: M,
    select: Selector | None = None,
    *,
    exclude: Selector | None = None,
    mode: Mode | None = None,
    p: float | None = None,
    example_inputs: Any = None,
) -> M:
    """Set the mode and/or probability of the selected sites. In place.

    Sites not gated yet are gated first. ``mode`` is ``"train"`` (drop when
    the module is training, like plain dropout), ``"on"`` (drop in eval mode
    too: Monte Carlo dropout) or ``"off"`` (never drop); ``None`` keeps each
    site's mode. ``p=None`` keeps each site's probability.

    Returns:
        ``model`` itself, changed in place.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> _ = set_dropout(model, mode="on", p=0.3)
        >>> [(site.mode, site.p) for site in find(model)]
        [('on', 0.3)]
    """
    checked_mode = None if mode is None else check_mode(mode)
    checked_p = None if p is None else check_p(p)
    if checked_mode is None and checked_p is None:
        raise OptionError("set_dropout needs mode=, p= or both")

    if is_exported(model):
        return _rewrite_exported(model, select, exclude, mode=checked_mode, p=checked_p)

    def to_configured(index: ModuleIndex, site: Site) -> list[Undo]:
        return _to_configured(index, site, checked_mode, checked_p)

    return _rewrite(
        model, select, exclude, to_configured, example_inputs, arms=mode == "on"
    )


@contextmanager
def dropout_off(
    model: M, select: Selector | None = None, *, exclude: Selector | None = None
) -> Iterator[M]:
    """Turn the selected sites off inside the block, then put them back.

    Example:
        >>> model = nn.Sequential(nn.Dropout(0.5)).train()
        >>> x = torch.ones(8)
        >>> with dropout_off(model):
        ...     torch.equal(model(x), x)
        True
    """
    with _temporarily(model, select, exclude, "off"):
        yield model


@contextmanager
def dropout_on(
    model: M, select: Selector | None = None, *, exclude: Selector | None = None
) -> Iterator[M]:
    """Make the selected sites drop inside the block, in eval mode too."""
    with _temporarily(model, select, exclude, "on"):
        yield model


@contextmanager
def _temporarily(
    model: M, select: Selector | None, exclude: Selector | None, mode: Mode
) -> Iterator[None]:
    before = {site.path: site for site in find(model, select, exclude=exclude)}
    # A stripped site is off already: leave its stand-in where it is.
    changing = {
        path
        for path, site in before.items()
        if not (mode == "off" and site.state == "stripped")
    }
    if changing:
        set_dropout(model, lambda path, _: path in changing, mode=mode)
    try:
        yield
    finally:
        # Put back each site's state, mode and rate as they were on entry,
        # also when the block raised.
        def back(index: ModuleIndex, site: Site) -> list[Undo]:
            then = before[site.path]
            if then.state == "original":
                return _to_original(index, site)
            if then.state == "stripped":
                return _to_stripped(index, site)
            return _to_configured(index, site, then.mode, then.p)

        _rewrite(model, lambda path, _: path in before, None, back)


Transition = Callable[[ModuleIndex, Site], list[Undo]]


def _rewrite_exported(
    program: M,
    select: Selector | None,
    exclude: Selector | None,
    *,
    mode: Mode | None,
    p: float | None,
) -> M:
    chosen = select_sites(find_exported(program), select, exclude)
    rewrite_exported(program, {site.path for site in chosen}, mode=mode, p=p)
    return program


def _rewrite(
    model: M,
    select: Selector | None,
    exclude: Selector | None,
    transition: Transition,
    example_inputs: Any = None,
    *,
    arms: bool = False,
) -> M:
    _check_model(model)
    if is_exported(model):
        raise SiteError(
            "an exported program keeps no record of what a rewrite removed; "
            "export the eager model again instead"
        )
    index = ModuleIndex.build(_module(model))
    chosen = select_sites(discover(index, example_inputs), select, exclude)
    if select is None:
        chosen = _without_unclassified(chosen)
    undos: list[Undo] = []
    try:
        for site in chosen:
            undos.extend(transition(index, site))
        # Forcing hooks change only where a site turns on or already has them:
        # skip the second look at the model otherwise.
        if arms or has_forcing(index):
            undos.append(sync_forcing(index, discover(index)))
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise
    logger.debug(
        "%s: %d site(s) on %s", transition.__name__, len(chosen), type(model).__name__
    )
    return model


def _without_unclassified(sites: list[Site]) -> list[Site]:
    """Drop randomness that is not dropout from an implicit "every site", loudly."""
    left = [site for site in sites if site.kind == "unclassified"]
    if left:
        where = ", ".join(site.path for site in left)
        warn(
            f"{len(left)} random op site(s) are not dropout and were left as they "
            f"are: {where}"
        )
    return [site for site in sites if site.kind != "unclassified"]


def _to_original(index: ModuleIndex, site: Site) -> list[Undo]:
    if site.state == "original":
        return []
    return [_guard(site, lambda: kind_named(site.kind).restore(index, site))]


def _to_stripped(index: ModuleIndex, site: Site) -> list[Undo]:
    if site.state == "stripped":
        return []
    undos = _to_original(index, site)
    undos.append(_guard(site, lambda: kind_named(site.kind).strip(index, site)))
    return undos


def _to_gated(index: ModuleIndex, site: Site) -> list[Undo]:
    if site.state == "gated":
        return []
    undos = _to_original(index, site)
    kind = kind_named(site.kind)
    undos.append(
        _guard(site, lambda: kind.gate(index, site, mode="train", p=site.original_p))
    )
    return undos


def _to_configured(
    index: ModuleIndex, site: Site, mode: Mode | None, p: float | None
) -> list[Undo]:
    kind = kind_named(site.kind)
    if site.state == "gated":
        new_mode: Mode = mode or site.mode or "train"
        new_p = site.p if p is None else p
        return [
            _guard(site, lambda: kind.configure(index, site, mode=new_mode, p=new_p))
        ]
    undos = _to_original(index, site)
    new_p = site.original_p if p is None else p
    undos.append(
        _guard(site, lambda: kind.gate(index, site, mode=mode or "train", p=new_p))
    )
    return undos


def _guard(site: Site, step: Callable[[], Undo]) -> Undo:
    """Run one step on one site; name the site if it fails."""
    try:
        return step()
    except SiteError:
        raise
    except Exception as error:
        raise SiteError(
            f"could not rewrite {site.kind} site {site.path!r} ({site.cls}): "
            f"{error}. The model was left unchanged."
        ) from error


def _module(model: object) -> nn.Module:
    """``model`` as a module, once exported programs have been handled.

    A ``torch.compile`` wrapper stands for the module it compiles: its sites
    keep their own paths, and rewriting them makes the wrapper recompile.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    compiled = model.__dict__.get("_modules", {}).get("_orig_mod")
    if type(model).__name__ == "OptimizedModule" and isinstance(compiled, nn.Module):
        return compiled
    return model


def _check_model(model: object) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "a TorchScript module's code is compiled and cannot be rewritten; "
            "rewrite the eager model before scripting it, or list its random "
            "ops with surgery.check_export_ready"
        )
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        raise TypeError(
            f"expected an nn.Module, got {type(model).__name__}; "
            "pass the model itself (for a compiled model, its ._orig_mod)"
        )


def state_of(sites: Sequence[Site]) -> dict[str, State]:
    """Map each site path to its state: a compact view for logs and tests."""
    return {site.path: site.state for site in sites}
