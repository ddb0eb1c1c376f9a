"""Forcing an owner into training mode so that its "on" sites drop in eval.

Sites that the owner's code reads (a float attribute, a module read for
``.p``) drop only if the owner's own ``training`` flag is set: model code
writes ``p if self.training else 0.0``. A gate in mode ``"on"`` therefore
presents ``training=True`` to that owner for the length of its forward. Sites
of the same owner that are not "on" are held at zero meanwhile, since the model
is really in eval mode.

Some modules skip their dropout children entirely in eval mode through a
fused fast path (``nn.TransformerEncoderLayer``, and ``nn.TransformerEncoder``,
which turns its input into a nested tensor that a forced layer cannot take);
the flags those paths read are forced the same way when any site inside them
is "on". :func:`register_eval_fast_path` adds more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._kinds import kind_named
from ._kinds.base import Hold, Undo
from ._site import Site
from ._tree import ModuleIndex, parent_path, qualname

__all__ = ["has_forcing", "register_eval_fast_path", "sync_forcing"]

_RECORD = "_surgery_force"
# Class -> the modules (relative paths; "" is itself) whose training flag its
# eval fast path reads.
_FAST_PATH_CLASSES: dict[str, tuple[str, ...]] = {
    "torch.nn.modules.transformer.TransformerEncoderLayer": ("",),
    "torch.nn.modules.transformer.TransformerEncoder": ("layers.0",),
}


def register_eval_fast_path(
    cls: type[nn.Module] | str, *, reads: Sequence[str] = ("",)
) -> None:
    """Declare a class whose eval-mode forward skips its dropout children.

    Args:
        cls: The class, or its qualified name.
        reads: Whose ``training`` flag decides the fast path, as paths relative
            to the module (``""``, the default, is the module itself;
            ``"layers.0"`` is its first layer).

    Example:
        >>> register_eval_fast_path("mypkg.blocks.FusedBlock")
    """
    name = cls if isinstance(cls, str) else qualname(cls)
    _FAST_PATH_CLASSES[name] = tuple(reads)


@dataclass
class _ForceRecord:
    holds: list[Hold] = field(default_factory=list)
    flags: list[nn.Module] = field(default_factory=list)
    """The modules whose ``training`` flag is set for the forward."""
    saved: list[bool] = field(default_factory=list)
    armed: bool = False
    forcing: bool = False


# The hooks take their tensors as ``*_``: torch.compile then never wraps them as
# named locals, which on some versions reads ``.grad`` of a non-leaf tensor and
# warns (an error where warnings are errors).
def _pre_hook(module: nn.Module, *_: Any) -> None:
    record: _ForceRecord = module.__dict__[_RECORD]
    if not record.armed or module.training:
        return
    record.saved[:] = [flag.training for flag in record.flags]
    for flag in record.flags:
        flag.training = True
    record.forcing = True
    for hold in record.holds:
        hold.apply()


def _post_hook(module: nn.Module, *_: Any) -> None:
    record: _ForceRecord | None = module.__dict__.get(_RECORD)
    if record is None or not record.forcing:
        return
    for hold in record.holds:
        hold.release()
    for flag, was in zip(record.flags, record.saved, strict=True):
        flag.training = was
    record.forcing = False


def _forced_paths(index: ModuleIndex, site: Site) -> dict[str, tuple[str, ...]]:
    """The modules that must be forced for ``site`` to drop, with their flags."""
    forced: dict[str, tuple[str, ...]] = {}
    if kind_named(site.kind).reads_through_owner:
        forced[site.owner] = ("",)
    ancestor = site.path
    while ancestor:
        ancestor = parent_path(ancestor)
        reads = _FAST_PATH_CLASSES.get(qualname(index.get(ancestor)))
        if reads is not None:
            forced[ancestor] = (*forced.get(ancestor, ()), *reads)
    return forced


def has_forcing(index: ModuleIndex) -> bool:
    """True if any module of the model carries forcing hooks."""
    return any(_RECORD in module.__dict__ for module in index.modules.values())


def sync_forcing(index: ModuleIndex, sites: Sequence[Site]) -> Undo:
    """Install the hooks that "on" sites need, and arm them.

    Once installed, an owner keeps its hooks, disarmed, while its gated sites
    are in "train" or "off" mode, and the hook objects stay the same:
    torch.compile guards on a module's hooks and on the objects they read, so
    adding and removing them at every toggle would recompile every time.
    """
    armed: set[str] = set()
    gated: dict[str, set[str]] = {}
    for site in sites:
        if site.state != "gated":
            continue
        for path, reads in _forced_paths(index, site).items():
            gated.setdefault(path, set()).update(reads)
            if site.mode == "on":
                armed.add(path)

    undos: list[Undo] = []
    for path, module in index:
        # Hooks go on at the first "on" and stay while the owner has gated
        # sites; an owner never forced keeps no hook (and still scripts).
        if path in gated and (path in armed or _RECORD in module.__dict__):
            holds = _holds_for(index, path, sites)
            flags = _flags(module, gated[path])
            undos.append(_install(module, holds, flags, armed=path in armed))
        elif _RECORD in module.__dict__:
            undos.append(_remove(module))

    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo


def _flags(module: nn.Module, reads: set[str]) -> list[nn.Module]:
    inside = dict(module.named_modules())
    # A path the module does not have (an empty encoder) forces nothing.
    return [inside[path] for path in sorted(reads) if path in inside]


def _holds_for(index: ModuleIndex, path: str, sites: Sequence[Site]) -> list[Hold]:
    holds = []
    for site in sites:
        kind = kind_named(site.kind)
        if site.owner != path or not kind.reads_through_owner:
            continue
        if site.state == "gated" and site.mode == "on":
            continue
        hold = kind.hold(index, site)
        if hold is not None:
            holds.append(hold)
    return holds


def _install(
    module: nn.Module, holds: list[Hold], flags: list[nn.Module], *, armed: bool
) -> Undo:
    record: _ForceRecord | None = module.__dict__.get(_RECORD)
    if record is None:
        record = _ForceRecord()
        _attach(module, record)
        created = True
    else:
        created = False
    before_holds, before_flags = list(record.holds), list(record.flags)
    before_saved, before_armed = list(record.saved), record.armed

    # Keep the hold objects that are still wanted, and the lists themselves.
    record.holds[:] = [
        next((old for old in before_holds if old == hold), hold) for hold in holds
    ]
    record.flags[:] = flags
    # Sized once here: a compiled graph guards on the list's length.
    record.saved[:] = [False] * len(flags)
    record.armed = armed

    def undo() -> None:
        if created:
            _remove(module)
        else:
            record.holds[:] = before_holds
            record.flags[:] = before_flags
            record.saved[:] = before_saved
            record.armed = before_armed

    return undo


def _attach(module: nn.Module, record: _ForceRecord) -> None:
    module.__dict__[_RECORD] = record
    module.register_forward_pre_hook(_pre_hook)
    module.register_forward_hook(_post_hook, always_call=True)


def _remove(module: nn.Module) -> Undo:
    record: _ForceRecord | None = module.__dict__.pop(_RECORD, None)
    for hooks, fn in (
        (module._forward_pre_hooks, _pre_hook),
        (module._forward_hooks, _post_hook),
    ):
        for key in [k for k, v in hooks.items() if v is fn]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)

    def undo() -> None:
        if record is not None:
            _attach(module, record)

    return undo
