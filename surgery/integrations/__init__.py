"""Hooks that step dropout schedules inside the trainers people use.

Each submodule imports its trainer library when it is imported itself, never
on ``import surgery``:

- :mod:`surgery.integrations.transformers`: a ``TrainerCallback``;
- :mod:`surgery.integrations.lightning`: a Lightning ``Callback`` (needs
  ``lightning`` or ``pytorch_lightning``).

Both move every schedule to the trainer's own counter (optimizer steps, or
finished epochs) instead of counting their own calls, so a run resumed from a
checkpoint puts each schedule exactly where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

from .._schedule import DropoutSchedule

__all__ = ["Every", "check_every", "check_schedules", "move_all"]

Every = Literal["step", "epoch"]
"""What one schedule step is in a trainer: an optimizer step or an epoch."""


def check_schedules(schedules: Sequence[object]) -> tuple[DropoutSchedule, ...]:
    """The schedules, or a TypeError naming the argument that is not one."""
    if not schedules:
        raise TypeError("pass at least one dropout schedule to the callback")
    for position, schedule in enumerate(schedules):
        if not isinstance(schedule, DropoutSchedule):
            raise TypeError(
                f"argument {position} is a {type(schedule).__name__}, not a "
                "dropout schedule (surgery.LinearDropout, surgery.EarlyDropout, ...)"
            )
    return tuple(cast(Sequence[DropoutSchedule], schedules))


def check_every(every: object) -> Every:
    """``every`` if it is ``"step"`` or ``"epoch"``, else a ValueError."""
    if every == "step":
        return "step"
    if every == "epoch":
        return "epoch"
    raise ValueError(f"every must be 'step' or 'epoch', got {every!r}")


def move_all(schedules: Sequence[DropoutSchedule], step: int) -> None:
    """Put every schedule at ``step``, unless it is there already."""
    for schedule in schedules:
        if schedule.last_step != step:
            schedule.seek(step)
