"""The site record: one place where a forward pass may drop activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = ["MODES", "Mode", "Site", "State"]

Mode = Literal["train", "on", "off"]
"""How a gated site behaves: follow ``training``, always drop, or never drop."""

State = Literal["original", "gated", "stripped"]
"""What surgery has done to a site."""

MODES: tuple[Mode, ...] = ("train", "on", "off")


@dataclass(frozen=True)
class Site:
    """A dropout site found in a model. A record only: it holds no behaviour.

    Attributes:
        path: The one stable name of the site, used by selectors and reports.
            For a dropout module it is the module's path
            (``encoder.layer.0.output.dropout``); for a float attribute it is
            the owner's path and the attribute name (``layers.0.self_attn.dropout``).
        kind: Which adapter owns the site (``"module"``, ``"read_p"``,
            ``"attribute"``, ``"drop_path"``, ...).
        owner: Path of the module whose forward code uses the site (``""`` is
            the root).
        cls: Qualified name of the class that implements the site originally:
            the dropout class, or the owner's class for a float attribute.
        p: The probability the site is configured with now (for a gate, its
            own ``p`` whatever its mode; ``0.0`` once stripped).
        original_p: The probability the model came with.
        state: ``"original"``, ``"gated"`` or ``"stripped"``.
        mode: The gate's mode when ``state == "gated"``, else ``None``.
        mechanism: How surgery controls the site, in words a person reads.
        aliases: Other paths under which the same module is registered.
        random_ops: How many random ops the site drew in the forward that
            ``find(..., example_inputs=...)`` observed; ``None`` when no
            forward was observed.
        module: The object selectors see: the original dropout module, or the
            owner module for an attribute. Not part of equality or ``repr``.
    """

    path: str
    kind: str
    owner: str
    cls: str
    p: float
    original_p: float
    state: State
    mode: Mode | None
    mechanism: str
    aliases: tuple[str, ...] = ()
    random_ops: int | None = None
    module: nn.Module | None = field(default=None, compare=False, repr=False)

    @property
    def paths(self) -> tuple[str, ...]:
        """The path and every alias."""
        return (self.path, *self.aliases)
