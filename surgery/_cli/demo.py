"""The main job: the whole pipeline step on the built-in demo model.

Inspect the model, strip every dropout site, verify the rewrite, export it
to ``torch.export`` with proof that no random op is left, and time it
against eval mode; then a summary a person reads in ten seconds.
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from .._api import find, gate, set_dropout, strip
from .._bench import compare_throughput
from .._pipeline import export_step, verify_step
from .._randomops import count_random_ops
from .._report import format_sites
from ..demo import build_demo_model, demo_inputs

__all__ = ["DemoSummary", "run_demo"]

_STEPS = 5
_EXPORT_NAME = "demo.pt2"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo found, proved and measured."""

    sites: int
    kinds: dict[str, int]
    random_ops_before: int
    random_ops_after: int
    deterministic_after: bool
    gate_same_draws: bool
    claims_passed: int
    claims: int
    export: str
    export_kept: bool
    export_bytes: int
    export_random_ops: int
    export_matches_eager: bool
    train_vs_eval: float
    stripped_vs_eval: float

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The ten-second summary."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.kinds.items())
        where = self.export if self.export_kept else f"{_EXPORT_NAME} (temporary)"
        matches = "equal to" if self.export_matches_eager else "DIFFERENT from"
        return [
            "Summary",
            f"  found     {self.sites} dropout sites ({kinds})",
            f"  stripped  all of them: random ops per train-mode forward "
            f"{self.random_ops_before} -> {self.random_ops_after}"
            + (", deterministic" if self.deterministic_after else ", STILL RANDOM"),
            "  gated     the same draws as the original under a seed: "
            + ("yes" if self.gate_same_draws else "NO"),
            f"  verified  {self.claims_passed} of {self.claims} claims hold",
            f"  exported  {where}, {self.export_bytes / 1000:.0f} kB: "
            f"{self.export_random_ops} random ops, output {matches} eager",
            f"  timed     stripped train-mode forward {self.stripped_vs_eval:.2f}x "
            f"eval time (original train mode {self.train_vs_eval:.2f}x)",
        ]


def run_demo(
    out: TextIO | None, *, keep: Path | None = None, seconds: float = 1.0
) -> DemoSummary:
    """Run the pipeline on the demo model, narrating to ``out`` (``None``: quiet).

    Args:
        out: Where the narration and the summary go.
        keep: A folder to keep the exported program in; default: a
            temporary folder, removed afterwards.
        seconds: About how long the benchmark times the model.

    Returns:
        The summary, also for ``--json``.
    """

    def say(text: str = "") -> None:
        if out is not None:
            print(text, file=out)

    model = build_demo_model()
    x = demo_inputs()
    say("surgery demo: a small transformer with dropout of every kind, in train mode")
    say()

    sites = find(model)
    kinds = dict(Counter(site.kind for site in sites))
    say(f"1/{_STEPS} inspect: {len(sites)} dropout sites")
    say(format_sites(sites))
    say()

    stripped = strip(copy.deepcopy(model))
    before, after = (
        count_random_ops(model, x).count,
        count_random_ops(stripped, x).count,
    )
    say(
        f"2/{_STEPS} strip: every site stripped; a train-mode forward ran "
        f"{before} random ops, now {after}"
    )
    random_before, random_after = _differ(model, x), _differ(stripped, x)
    say(
        "    two train-mode forwards on one input: "
        f"{'differ' if random_before else 'agree'} before, "
        f"{'differ' if random_after else 'agree'} after"
        + ("" if random_after else " (deterministic)")
    )
    same_draws, gated_off_differ = _gated(model, x)
    off = "still random" if gated_off_differ else "deterministic"
    say(
        f"    gated instead: same draws as the original under a seed ({same_draws}); "
        f"gates off: {off}"
    )

    report = verify_step(model, stripped, (x,), {}, require_off=[s.path for s in sites])
    held = sum(claim.passed for claim in report.claims)
    names = ", ".join(claim.name for claim in report.claims)
    say(f"3/{_STEPS} verify: {held} of {len(report.claims)} claims hold ({names})")

    exported = _export(stripped, x, keep, say)

    say(f"5/{_STEPS} bench: forward throughput for about {seconds:g} s")
    batch = demo_inputs(batch=16, length=32)
    timing = compare_throughput(
        model, batch, variants=("train", "eval", "strip"), seconds=seconds, rounds=3
    )
    say(timing.to_text())
    say()

    summary = DemoSummary(
        sites=len(sites),
        kinds=kinds,
        random_ops_before=before,
        random_ops_after=after,
        deterministic_after=not random_after,
        gate_same_draws=same_draws,
        claims_passed=held,
        claims=len(report.claims),
        export=str(exported.path),
        export_kept=keep is not None,
        export_bytes=exported.size,
        export_random_ops=exported.random_ops,
        export_matches_eager=exported.matches,
        train_vs_eval=timing.row("train").time_vs_eval,
        stripped_vs_eval=timing.row("strip").time_vs_eval,
    )
    for line in summary.lines():
        say(line)
    return summary


def _differ(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether two forwards on the same input give different outputs."""
    with torch.random.fork_rng(devices=[]):
        return not torch.equal(model(x), model(x))


def _gated(model: torch.nn.Module, x: torch.Tensor) -> tuple[bool, bool]:
    """Gate a copy: same draws as ``model`` under one seed; with gates off, random?"""
    gated = gate(copy.deepcopy(model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = model(x)
        torch.manual_seed(0)
        same = bool(torch.equal(gated(x), expected))
    set_dropout(gated, mode="off")
    return same, _differ(gated, x)


@dataclass(frozen=True)
class _Exported:
    path: Path
    size: int
    random_ops: int
    matches: bool


def _export(
    stripped: torch.nn.Module,
    x: torch.Tensor,
    keep: Path | None,
    say: Callable[[str], None],
) -> _Exported:
    """Export, read the file back, and check it: no random op, same output."""
    with tempfile.TemporaryDirectory(prefix="surgery-demo-") as scratch:
        folder = keep if keep is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _EXPORT_NAME
        export_step(stripped, (x,), {}, path, "pt2")

        program = torch.export.load(str(path)).module()
        random_ops = count_random_ops(program, x).count
        matches = bool(torch.equal(program(x), stripped.eval()(x)))
        stripped.train()
        size = path.stat().st_size
    say(
        f"4/{_STEPS} export: {path.name} (torch.export program, {size / 1000:.0f} kB), "
        f"{random_ops} random ops in the program, output "
        f"{'equal to' if matches else 'DIFFERENT from'} the eager model's"
    )
    return _Exported(path, size, random_ops, matches)
