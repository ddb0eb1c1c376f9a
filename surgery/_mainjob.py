"""The main job: what surgery does, shown on the built-in demo model."""

from __future__ import annotations

from typing import TextIO

import torch

from ._api import find, gate, restore, set_dropout, strip
from ._randomops import count_random_ops
from ._report import format_sites
from .demo import build_demo_model, demo_inputs

__all__ = ["run_demo"]


def _twice(model: torch.nn.Module, x: torch.Tensor) -> str:
    """Run the model twice on the same input and say whether outputs agree."""
    first, second = model(x), model(x)
    random_ops = count_random_ops(model, x).count
    verdict = (
        "identical (deterministic)" if torch.equal(first, second) else "differ (random)"
    )
    return f"two forward passes {verdict}; {random_ops} random op(s) per forward"


def run_demo(out: TextIO) -> None:
    """Find, strip, gate and restore the demo model's dropout, narrating each step."""
    model = build_demo_model()
    x = demo_inputs()
    say = lambda text="": print(text, file=out)  # noqa: E731  # local shorthand

    say("surgery demo: a small transformer with dropout of every kind, in train mode")
    say()
    say(format_sites(find(model)))
    say()
    say(f"original, train mode:       {_twice(model, x)}")

    strip(model)
    say(f"after strip, train mode:    {_twice(model, x)}")
    model.eval()
    reference = model(x)
    model.train()
    same = torch.equal(model(x), reference)
    say(f"  stripped train output equals eval output exactly: {same}")

    restore(model)
    gate(model)
    torch.manual_seed(0)
    gated = model(x)
    restore(model)
    torch.manual_seed(0)
    original = model(x)
    say(
        f"after gate (follow training): same draws as the original: {torch.equal(gated, original)}"
    )

    gate(model)
    set_dropout(model, "blocks.*", mode="off")
    say(f"gate, blocks off, rest on:  {_twice(model, x)}")
    model.eval()
    set_dropout(model, mode="on")
    say(f"eval mode, gates on (MC):   {_twice(model, x)}")
    restore(model)
    model.train()
    say()
    say(format_sites(find(model, "blocks.0.*")))
    say("restore put every site back: the table above shows them original again.")
