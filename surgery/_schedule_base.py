"""The machinery every dropout schedule shares: selection, stepping, saving.

The curves themselves live in :mod:`surgery._schedule`; this module holds
their base class, the checks their options go through and the registry that
keeps two live schedules off the same site.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

from ._api import find, set_dropout
from ._errors import SelectionError, SurgeryError
from ._gate import GatedDropout, check_mode, check_p
from ._select import Selector
from ._site import Mode, Site

__all__ = ["Check", "DropoutSchedule", "Setting"]

logger = logging.getLogger("surgery")

Setting = tuple[Mode | None, float]
"""A mode (``None`` keeps each site's own) and a probability for one site."""

Check = Callable[[Any, str], Any]
"""Cleans one option, named by the second argument, or raises ValueError."""

# Every schedule still alive, so a new one can refuse sites already driven.
_LIVE: weakref.WeakSet[DropoutSchedule] = weakref.WeakSet()


class DropoutSchedule:
    """Base of every schedule: selection, stepping, checkpointing.

    Subclasses define :meth:`settings` (what each site gets at a step), map
    in ``_config`` each constructor option ``state_dict`` saves to the check
    that cleans it, and end ``__init__`` with ``self._start(**options)``,
    which sets and checks the options, claims the sites and applies step 0.

    Attributes:
        model: The model whose sites the schedule drives.
        paths: The selected site paths, in module order.
    """

    _config: ClassVar[Mapping[str, Check]] = {}

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
    ) -> None:
        sites = find(model, select, exclude=exclude)
        if not sites:
            raise SelectionError(
                f"{type(self).__name__}: select and exclude left no dropout site; "
                "list the sites with surgery.find(model)"
            )
        self.model = model
        self.paths: tuple[str, ...] = tuple(site.path for site in sites)
        self._claims = {_claim_key(site): site.path for site in sites}
        # Sites that are not modules (float attributes) never get a gate object.
        self._no_gate = frozenset(
            site.path for site in sites if not _is_module_path(model, site.path)
        )
        self._last_step = 0
        self._detached = False
        self._applied: dict[str, Setting] = {}

    def _start(self, **options: object) -> None:
        """Set and check the options, claim the sites and apply step 0.

        The last line of every subclass's ``__init__``.
        """
        for name, value in options.items():
            setattr(self, name, value)
        self._validate()

        _check_disjoint(self)
        self._apply()
        _LIVE.add(self)

    @property
    def last_step(self) -> int:
        """The step whose value is applied now (0 right after construction)."""
        return self._last_step

    def settings(self, step: int) -> dict[str, Setting]:
        """The mode and probability each selected site gets at ``step``."""
        raise NotImplementedError

    def get_last_p(self) -> dict[str, float]:
        """The probability each site drops with now (0.0 while switched off)."""
        return {
            path: 0.0 if mode == "off" else p
            for path, (mode, p) in self.settings(self._last_step).items()
        }

    def step(self) -> None:
        """Advance one step and apply the new value."""
        self.seek(self._last_step + 1)

    def seek(self, step: int) -> None:
        """Jump to ``step`` and apply its value (trainer callbacks use this)."""
        self._check_attached()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self._last_step = step
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the step, the site paths and the options."""
        return {
            "schedule": type(self).__name__,
            "last_step": self._last_step,
            "paths": list(self.paths),
            "config": {name: _plain(getattr(self, name)) for name in self._config},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: restore options and step, and apply.

        Raises:
            SelectionError: The state was saved by another kind of schedule
                or for other sites.
        """
        self._check_attached()
        name = state.get("schedule")
        if name != type(self).__name__:
            raise SelectionError(
                f"this state was saved by a {name} schedule; "
                f"load it into a {name}, not a {type(self).__name__}"
            )
        saved = tuple(state["paths"])
        if saved != self.paths:
            missing = sorted(set(saved) - set(self.paths))
            extra = sorted(set(self.paths) - set(saved))
            raise SelectionError(
                f"{name}: the saved state drives other sites than this schedule "
                f"(only saved: {missing or 'none'}; only here: {extra or 'none'}); "
                "build the schedule with the selection it was saved with"
            )
        before = {key: getattr(self, key) for key in self._config}
        try:
            for key, value in state["config"].items():
                setattr(self, key, value)
            self._validate()
        except Exception:
            for key, value in before.items():
                setattr(self, key, value)
            raise
        self._last_step = int(state["last_step"])
        self._applied.clear()
        self._apply()

    def detach(self) -> None:
        """Stop driving the sites, so that another schedule may take them."""
        self._detached = True
        _LIVE.discard(self)

    def _validate(self) -> None:
        """Clean each option with its check; a ValueError names the bad one."""
        for name, check in self._config.items():
            setattr(self, name, check(getattr(self, name), name))

    def _check_attached(self) -> None:
        if self._detached:
            raise SurgeryError(
                f"this {type(self).__name__} was detached; build a new schedule"
            )

    def _apply(self) -> None:
        slow: dict[Setting, list[str]] = defaultdict(list)
        for path, setting in self.settings(self._last_step).items():
            mode, p = setting
            gate = self._gate_at(path)
            if gate is not None and mode in (None, gate.mode):
                # Only a new rate: set it on the gate, and skip a walk over
                # the whole model on every training step.
                gate.rate = p
            elif path in self._no_gate and self._applied.get(path) == setting:
                # A float attribute already holds this value.
                continue
            else:
                slow[setting].append(path)
                continue
            self._applied[path] = setting

        for (mode, p), paths in slow.items():
            set_dropout(self.model, _one_of(paths), mode=mode, p=p)
            self._applied.update(dict.fromkeys(paths, (mode, p)))
        logger.debug("%s: step %d applied", type(self).__name__, self._last_step)

    def _gate_at(self, path: str) -> GatedDropout | None:
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return None
        return module if isinstance(module, GatedDropout) else None


def _claim_key(site: Site) -> tuple[nn.Module | None, str]:
    """What identifies a site across paths and wrappers (DDP, compile)."""
    name = site.path.rpartition(".")[2] if site.kind == "attribute" else ""
    return (site.module, name)


def _check_disjoint(new: DropoutSchedule) -> None:
    for other in list(_LIVE):
        shared = sorted(
            path for key, path in new._claims.items() if key in other._claims
        )
        if shared:
            raise SelectionError(
                f"{type(new).__name__} would drive sites that a live "
                f"{type(other).__name__} already drives: {', '.join(shared)}. "
                "Give the schedules disjoint selections (exclude=...), or call "
                ".detach() on the earlier one first."
            )


def _one_of(paths: Sequence[str]) -> Callable[[str, nn.Module], bool]:
    """A selector predicate that picks exactly these site paths."""
    chosen = frozenset(paths)
    return lambda path, _: path in chosen


def _is_module_path(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _plain(value: object) -> object:
    """Options as plain Python, so a state saves with torch.save or as JSON."""
    return list(value) if isinstance(value, (list, tuple)) else value


def probability(value: object, name: str) -> float:
    """An option that is a dropout probability."""
    return check_p(value, where=name)


def optional_mode(value: object, name: str) -> Mode | None:
    """An option that is a mode, or ``None`` to keep each site's own."""
    return None if value is None else check_mode(value)


def count(*, minimum: int) -> Check:
    """An option that is an int of at least ``minimum`` (a step count)."""
    return lambda value, name: _check_count(value, name, minimum=minimum)


def _check_count(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
