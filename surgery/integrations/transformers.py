"""A transformers ``TrainerCallback`` that steps dropout schedules.

Importing this module imports transformers; ``import surgery`` does not.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from .._schedule import DropoutSchedule
from . import Every, check_every, check_schedules, move_all

__all__ = ["DropoutScheduleCallback"]


class DropoutScheduleCallback(TrainerCallback):
    """Keep dropout schedules at the trainer's step (or epoch) count.

    After every optimizer step (``every="step"``) or finished epoch
    (``every="epoch"``) each schedule is moved to ``state.global_step`` (or
    the number of finished epochs). At the start of training the schedules
    are moved there too, so ``trainer.train(resume_from_checkpoint=...)``
    continues each schedule where the checkpoint left it; nothing needs to be
    saved beside the trainer's own state.

    Args:
        *schedules: The schedules to drive; build them on the model before
            handing it to the ``Trainer``.
        every: ``"step"`` or ``"epoch"``.

    Example:
        >>> from torch import nn
        >>> import surgery
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> schedule = surgery.LinearDropout(model, start=0.1, end=0.0, steps=100)
        >>> callback = DropoutScheduleCallback(schedule)
        >>> # Trainer(model=model, ..., callbacks=[callback]).train()
    """

    def __init__(self, *schedules: DropoutSchedule, every: Every = "step") -> None:
        super().__init__()
        self.schedules = check_schedules(schedules)
        self.every = check_every(every)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        position = int(state.global_step) if self.every == "step" else _done(state)
        move_all(self.schedules, position)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every == "step":
            move_all(self.schedules, int(state.global_step))

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every == "epoch":
            move_all(self.schedules, _done(state))


def _done(state: TrainerState) -> int:
    """Epochs finished so far; ``state.epoch`` is fractional mid-epoch."""
    # The slack absorbs float error at an epoch's end (1.9999999 is 2 done).
    return math.floor((state.epoch or 0.0) + 1e-6)
