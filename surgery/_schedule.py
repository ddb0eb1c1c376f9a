"""Dropout schedules: set the probability or mode of chosen sites step by step.

A schedule has the shape of ``torch.optim.lr_scheduler``: it is built on a
model and a selection (the selector language of :func:`surgery.find`),
applies its value for step 0 at once, moves on with :meth:`~DropoutSchedule.step`
and saves and resumes with ``state_dict()`` / ``load_state_dict()``. A step
is whatever the caller counts: a batch, an optimizer step or an epoch.

Schedules act through :func:`surgery.set_dropout`, so they drive every kind of
site, gating a site first where needed; once a site's gate is in place and
keeps its mode, a new rate is written onto the gate directly, which spares a
walk over the whole model on every step. A schedule owns its sites: a gate
restored or stripped behind its back is gated again at the next step (a
float attribute is rewritten when its value next changes). Several schedules
may share a model as long as their sites are disjoint; a site driven by two
live schedules is an error.

Under ``torch.compile`` a new rate on a module site is data, not a guard, so
stepping never recompiles. A change of *mode* (an early or late schedule
switching on or off) compiles once per mode, and sites that are float
attributes (``nn.MultiheadAttention.dropout``) or are read for ``.p`` by
their owner recompile for each distinct value: the value is a Python float
inside the traced code.
"""

from __future__ import annotations

import logging
import math
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

__all__ = [
    "ConstantDropout",
    "CosineDropout",
    "DepthDropout",
    "DropoutSchedule",
    "EarlyDropout",
    "LateDropout",
    "LinearDropout",
    "StepDropout",
]

logger = logging.getLogger("surgery")

Setting = tuple[Mode | None, float]
"""A mode (``None`` keeps each site's own) and a probability for one site."""

# Every schedule still alive, so a new one can refuse sites already driven.
_LIVE: weakref.WeakSet[DropoutSchedule] = weakref.WeakSet()


class DropoutSchedule:
    """Base of every schedule: selection, stepping, checkpointing.

    Subclasses define :meth:`settings` (what each site gets at a step), list
    in ``_config`` the constructor options ``state_dict`` saves, check them
    in ``_validate`` and end ``__init__`` with ``self._start()``, which
    claims the sites and applies step 0.

    Attributes:
        model: The model whose sites the schedule drives.
        paths: The selected site paths, in module order.
    """

    _config: ClassVar[tuple[str, ...]] = ()

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

    def _start(self) -> None:
        """Claim the sites and apply step 0; the last line of every __init__."""
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
        """Check the options; subclasses raise ValueError naming the bad one."""

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


class ConstantDropout(DropoutSchedule):
    """The same probability (and optionally mode) at every step.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = ConstantDropout(model, p=0.3)
        >>> schedule.get_last_p()
        {'1': 0.3}
    """

    _config = ("p", "mode")

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        p: float,
        mode: Mode | None = None,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.p = p
        self.mode = mode
        self._validate()
        self._start()

    def _validate(self) -> None:
        self.p = check_p(self.p, where="p")
        if self.mode is not None:
            self.mode = check_mode(self.mode)

    def settings(self, step: int) -> dict[str, Setting]:
        return dict.fromkeys(self.paths, (self.mode, self.p))


class _Ramp(DropoutSchedule):
    """From ``start`` to ``end`` over ``steps`` steps, then held at ``end``."""

    _config = ("start", "end", "steps")

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        start: float,
        end: float,
        steps: int,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.start, self.end, self.steps = start, end, steps
        self._validate()
        self._start()

    def _validate(self) -> None:
        self.start = check_p(self.start, where="start")
        self.end = check_p(self.end, where="end")
        self.steps = _check_count(self.steps, "steps", minimum=1)

    def _fraction(self, step: int) -> float:
        raise NotImplementedError

    def settings(self, step: int) -> dict[str, Setting]:
        p = self.start + (self.end - self.start) * self._fraction(step)
        # Rounding can leave p a hair outside the segment's ends.
        p = min(max(p, min(self.start, self.end)), max(self.start, self.end))
        return dict.fromkeys(self.paths, (None, p))


class LinearDropout(_Ramp):
    """A straight line from ``start`` to ``end`` over ``steps`` steps.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = LinearDropout(model, start=0.0, end=0.4, steps=4)
        >>> schedule.step()
        >>> schedule.get_last_p()
        {'1': 0.1}
    """

    def _fraction(self, step: int) -> float:
        return min(step, self.steps) / self.steps


class CosineDropout(_Ramp):
    """Half a cosine from ``start`` to ``end`` over ``steps`` steps.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = CosineDropout(model, start=0.4, end=0.0, steps=2)
        >>> schedule.step()
        >>> round(schedule.get_last_p()["1"], 6)
        0.2
    """

    def _fraction(self, step: int) -> float:
        return (1.0 - math.cos(math.pi * min(step, self.steps) / self.steps)) / 2


class StepDropout(DropoutSchedule):
    """Piecewise constant: ``values[k]`` from ``milestones[k - 1]`` on.

    ``values`` has one more entry than ``milestones``: the first holds until
    the first milestone.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = StepDropout(model, milestones=[2], values=[0.1, 0.3])
        >>> for _ in range(2):
        ...     schedule.step()
        >>> schedule.get_last_p()
        {'1': 0.3}
    """

    _config = ("milestones", "values")

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        milestones: Sequence[int],
        values: Sequence[float],
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.milestones = list(milestones)
        self.values = list(values)
        self._validate()
        self._start()

    def _validate(self) -> None:
        milestones = [_check_count(m, "milestones", minimum=1) for m in self.milestones]
        if milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must increase strictly, got {milestones}")
        if len(self.values) != len(milestones) + 1:
            raise ValueError(
                f"values needs one entry more than milestones ({len(milestones) + 1}), "
                f"got {len(self.values)}"
            )
        self.milestones = milestones
        self.values = [check_p(v, where="values") for v in self.values]

    def settings(self, step: int) -> dict[str, Setting]:
        reached = sum(1 for milestone in self.milestones if step >= milestone)
        return dict.fromkeys(self.paths, (None, self.values[reached]))


class EarlyDropout(DropoutSchedule):
    """Dropout for the first ``until`` steps, then switched off.

    Before ``until`` the sites are in mode ``"train"`` with probability
    ``p``; from ``until`` on they are ``"off"`` and run no random op.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = EarlyDropout(model, p=0.2, until=1)
        >>> schedule.step()
        >>> [(site.mode, site.p) for site in find(model)]
        [('off', 0.2)]
    """

    _config = ("p", "until")

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        p: float,
        until: int,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.p, self.until = p, until
        self._validate()
        self._start()

    def _validate(self) -> None:
        self.p = check_p(self.p, where="p")
        self.until = _check_count(self.until, "until", minimum=0)

    def settings(self, step: int) -> dict[str, Setting]:
        mode: Mode = "train" if step < self.until else "off"
        return dict.fromkeys(self.paths, (mode, self.p))


class LateDropout(DropoutSchedule):
    """No dropout for the first ``start`` steps, then probability ``p``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = LateDropout(model, p=0.2, start=1)
        >>> schedule.get_last_p()
        {'1': 0.0}
        >>> schedule.step()
        >>> schedule.get_last_p()
        {'1': 0.2}
    """

    _config = ("p", "start")

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        p: float,
        start: int,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.p, self.start = p, start
        self._validate()
        self._start()

    def _validate(self) -> None:
        self.p = check_p(self.p, where="p")
        self.start = _check_count(self.start, "start", minimum=0)

    def settings(self, step: int) -> dict[str, Setting]:
        mode: Mode = "off" if step < self.start else "train"
        return dict.fromkeys(self.paths, (mode, self.p))


class DepthDropout(DropoutSchedule):
    """Rates growing linearly with depth, the stochastic-depth rule.

    The ``i``-th of ``n`` selected sites, in module order, gets
    ``max_p * i / (n - 1)``: the first ``0.0``, the last ``max_p``, as
    ``torch.linspace(0, max_p, n)`` gives (a single site gets ``0.0``). Each
    site keeps its rate at every step.

    Example:
        >>> blocks = nn.Sequential(*(nn.Dropout(0.0) for _ in range(3)))
        >>> DepthDropout(blocks, max_p=0.2).get_last_p()
        {'0': 0.0, '1': 0.1, '2': 0.2}
    """

    _config = ("max_p",)

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        max_p: float,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self.max_p = max_p
        self._validate()
        self._start()

    def _validate(self) -> None:
        self.max_p = check_p(self.max_p, where="max_p")

    def settings(self, step: int) -> dict[str, Setting]:
        last = len(self.paths) - 1
        return {
            path: (None, self.max_p * i / last if last else 0.0)
            for i, path in enumerate(self.paths)
        }


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


def _check_count(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _plain(value: object) -> object:
    """Options as plain Python, so a state saves with torch.save or as JSON."""
    return list(value) if isinstance(value, (list, tuple)) else value
