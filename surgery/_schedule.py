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

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from ._api import find  # noqa: F401  (EarlyDropout's example calls it)
from ._schedule_base import (
    Check,
    DropoutSchedule,
    Setting,
    count,
    optional_mode,
    probability,
)
from ._select import Selector
from ._site import Mode

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


def _milestones(value: Sequence[object], name: str) -> list[int]:
    milestones = [count(minimum=1)(m, name) for m in value]
    if milestones != sorted(set(milestones)):
        raise ValueError(f"milestones must increase strictly, got {milestones}")
    return milestones


def _probabilities(value: Sequence[object], name: str) -> list[float]:
    return [probability(v, name) for v in value]


class ConstantDropout(DropoutSchedule):
    """The same probability (and optionally mode) at every step.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = ConstantDropout(model, p=0.3)
        >>> schedule.get_last_p()
        {'1': 0.3}
    """

    p: float
    mode: Mode | None
    _config: ClassVar[Mapping[str, Check]] = {"p": probability, "mode": optional_mode}

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
        self._start(p=p, mode=mode)

    def settings(self, step: int) -> dict[str, Setting]:
        return dict.fromkeys(self.paths, (self.mode, self.p))


class _Ramp(DropoutSchedule):
    """From ``start`` to ``end`` over ``steps`` steps, then held at ``end``."""

    start: float
    end: float
    steps: int
    _config: ClassVar[Mapping[str, Check]] = {
        "start": probability,
        "end": probability,
        "steps": count(minimum=1),
    }

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
        self._start(start=start, end=end, steps=steps)

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

    milestones: list[int]
    values: list[float]
    _config: ClassVar[Mapping[str, Check]] = {
        "milestones": _milestones,
        "values": _probabilities,
    }

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
        self._start(milestones=list(milestones), values=list(values))

    def _validate(self) -> None:
        # The counts are compared before the values are checked one by one.
        milestones = _milestones(self.milestones, "milestones")
        if len(self.values) != len(milestones) + 1:
            raise ValueError(
                f"values needs one entry more than milestones ({len(milestones) + 1}), "
                f"got {len(self.values)}"
            )
        self.milestones = milestones
        self.values = _probabilities(self.values, "values")

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

    p: float
    until: int
    _config: ClassVar[Mapping[str, Check]] = {
        "p": probability,
        "until": count(minimum=0),
    }

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
        self._start(p=p, until=until)

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

    p: float
    start: int
    _config: ClassVar[Mapping[str, Check]] = {
        "p": probability,
        "start": count(minimum=0),
    }

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
        self._start(p=p, start=start)

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

    max_p: float
    _config: ClassVar[Mapping[str, Check]] = {"max_p": probability}

    def __init__(
        self,
        model: nn.Module,
        select: Selector | None = None,
        *,
        exclude: Selector | None = None,
        max_p: float,
    ) -> None:
        super().__init__(model, select, exclude=exclude)
        self._start(max_p=max_p)

    def settings(self, step: int) -> dict[str, Setting]:
        last = len(self.paths) - 1
        return {
            path: (None, self.max_p * i / last if last else 0.0)
            for i, path in enumerate(self.paths)
        }
