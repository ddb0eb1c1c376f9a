"""Recompiles under torch.compile while modes toggle and a schedule moves p.

After a warm-up that runs every gate mode in train and eval mode once,
:func:`surgery.set_dropout` cycles the modes 100 times and then a
:class:`surgery.LinearDropout` schedule moves ``p`` through 100 values, one
forward after each change. The graphs dynamo compiles after the warm-up are
counted with ``torch._dynamo.testing.CompileCounter``, separately for sites
whose gate module drops (called dropout modules, drop-path) and sites whose
owner reads the probability (a module read for ``.p``, a float attribute).
Whether a call recompiles is dynamo's decision, taken before any backend sees
the graph, so the counter runs the graphs as they are (no inductor) on every
device: the count is the same, and the suite stays short.

Dynamo's recompile limit is left at its default, as users have it: when a
model reaches it, the run records that the rest ran eagerly, which is what a
user's training run would silently do.
"""

from __future__ import annotations

from itertools import cycle
from typing import Any

import pytest
import torch
import workloads
from support import Settings
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import surgery
from surgery.demo import build_demo_model, demo_inputs

STEPS = 100
GROUPS = {
    "module sites": ("module", "drop_path"),
    "owner-read sites": ("read_p", "attribute"),
}


def _workload(name: str) -> workloads.Workload:
    if name == "demo":
        model = build_demo_model()
        return workloads.Workload("demo", model, (demo_inputs(),), {}, "demo")
    return workloads.tiny_gpt()


def _limit_hits() -> int:
    """How many frames dynamo gave up on, the recompile limit among them."""
    frames = counters["frames"]
    return frames["total"] - frames["ok"]


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("name", ["demo", "gpt-tiny"])
def test_recompiles(benchmark: Any, settings: Settings, name: str, group: str) -> None:
    workload = _workload(name)
    model = workload.model.to(settings.device)
    inputs = tuple(t.to(settings.device) for t in workload.inputs)
    paths = [s.path for s in surgery.find(model) if s.kind in GROUPS[group]]
    if not paths:
        pytest.skip(f"{name} has no {group}")
    surgery.gate(model, paths)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)

    def forward() -> None:
        compiled(*inputs, **workload.kwargs)

    with torch.no_grad():
        for mode in ("train", "on", "off"):
            surgery.set_dropout(model, paths, mode=mode)
            for training in (True, False):
                model.train(training)
                forward()
        surgery.set_dropout(model, paths, mode="train")
        model.train()
        after_warm_up = counter.frame_count
        failed_before = _limit_hits()
        counts: dict[str, int] = {}

        def toggle_then_schedule() -> None:
            for _, mode in zip(
                range(STEPS), cycle(("on", "off", "train")), strict=False
            ):
                surgery.set_dropout(model, paths, mode=mode)
                forward()
            counts["modes"] = counter.frame_count - after_warm_up
            schedule = surgery.LinearDropout(
                model, paths, start=0.05, end=0.5, steps=STEPS
            )
            for _ in range(STEPS):
                schedule.step()
                forward()
            schedule.detach()
            counts["p"] = counter.frame_count - after_warm_up - counts["modes"]

        benchmark.group = "recompiles"
        benchmark.pedantic(toggle_then_schedule, rounds=1, iterations=1)

    kinds = sorted({s.kind for s in surgery.find(model) if s.path in paths})
    benchmark.extra_info.update(
        {
            "kind": "recompiles",
            "workload": name,
            "group": group,
            "site_kinds": kinds,
            "sites": len(paths),
            "device": str(settings.device),
            "graphs_at_warm_up": after_warm_up,
            "p_changes": STEPS,
            "recompiles_p": counts["p"],
            "mode_toggles": STEPS,
            "recompiles_modes": counts["modes"],
            "fell_back_to_eager": _limit_hits() > failed_before,
        }
    )
