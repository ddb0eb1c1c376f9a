"""A Lightning ``Callback`` that steps dropout schedules.

Needs ``lightning`` (``lightning.pytorch``) or the standalone
``pytorch_lightning``; importing this module without either raises
``ImportError``. ``import surgery`` never imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .._schedule import DropoutSchedule
from . import Every, check_every, check_schedules, move_all

__all__ = ["DropoutScheduleCallback"]


def _import_lightning() -> ModuleType:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        "surgery.integrations.lightning needs Lightning: "
        "pip install lightning (or pytorch-lightning)"
    )


# Typed Any: Lightning is optional, so mypy cannot see its classes.
_Callback: Any = _import_lightning().Callback


class DropoutScheduleCallback(_Callback):  # type: ignore[misc]  # base is Any
    """Keep dropout schedules at the trainer's step (or epoch) count.

    After each training batch (``every="step"``) the schedules move to
    ``trainer.global_step``, which counts optimizer steps, so gradient
    accumulation is respected. With ``every="epoch"`` they move to the number
    of finished epochs when an epoch ends. At the start of training they move
    there too, so resuming from a Lightning checkpoint continues each
    schedule where it stopped without saving anything else.

    Args:
        *schedules: The schedules to drive, built on the ``LightningModule``
            (or the model inside it).
        every: ``"step"`` or ``"epoch"``.

    Example:
        >>> import surgery
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> callback = DropoutScheduleCallback(
        ...     surgery.EarlyDropout(model, p=0.1, until=500)
        ... )
        >>> # lightning.Trainer(callbacks=[callback]).fit(module)
    """

    def __init__(self, *schedules: DropoutSchedule, every: Every = "step") -> None:
        super().__init__()
        self.schedules = check_schedules(schedules)
        self.every = check_every(every)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        done = trainer.global_step if self.every == "step" else trainer.current_epoch
        move_all(self.schedules, int(done))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every == "step":
            move_all(self.schedules, int(trainer.global_step))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every == "epoch":
            # current_epoch still names the epoch that just ended.
            move_all(self.schedules, int(trainer.current_epoch) + 1)
