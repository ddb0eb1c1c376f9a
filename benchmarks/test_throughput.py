"""Forward throughput of every dropout variant of each workload, against eval.

One benchmark per workload and dtype runs :func:`surgery.compare_throughput`
(eager, and compiled for the workloads ``--bench-compile`` names) and keeps
its whole report, and the targets worked out from it, in ``extra_info``.
The figures are recorded, not asserted: ``benchmarks/report.py`` says which
targets were met and by how much the others were missed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import workloads
from support import Case, Settings

import surgery


@dataclass(frozen=True)
class Target:
    """Forward time of one variant over another's, at most ``limit``."""

    name: str
    variant: surgery._bench.Variant
    against: surgery._bench.Variant
    limit: float


TARGETS = (
    Target("stripped train / eval", "strip", "eval", 1.01),
    Target("gates off / stripped", "gate_off", "strip", 1.01),
    Target("gates train / original train", "gate_train", "train", 1.02),
)


def targets_of(report: surgery.ThroughputReport) -> list[dict[str, Any]]:
    """Each target, eager and compiled, with its value and its noise."""
    results = []
    for compiled in sorted({row.compiled for row in report.rows}):
        for target in TARGETS:
            row = report.row(target.variant, compiled=compiled)
            base = report.row(target.against, compiled=compiled)
            # Variants are timed in interleaved rounds, so the rounds pair up:
            # their ratios show how far the noise alone moves the figure.
            paired = [
                mine / theirs
                for mine, theirs in zip(
                    row.round_seconds, base.round_seconds, strict=True
                )
            ]
            value = row.seconds_per_batch / base.seconds_per_batch
            results.append(
                {
                    "target": target.name,
                    "compiled": compiled,
                    "value": value,
                    "limit": target.limit,
                    "met": value <= target.limit,
                    "round_ratios": paired,
                    "round_ratio_median": statistics.median(paired),
                }
            )
    return results


@pytest.fixture(scope="session")
def workload_of(settings: Settings) -> Callable[[str], workloads.Workload]:
    """Builds each workload once per run, whatever the dtypes measured."""
    built: dict[str, workloads.Workload] = {}

    def get(name: str) -> workloads.Workload:
        if name not in built:
            built[name] = workloads.BUILDERS[name](settings.size)
        return built[name]

    return get


@pytest.mark.usefixtures("within_budget")
def test_throughput(
    benchmark: Any,
    case: Case,
    settings: Settings,
    workload_of: Callable[[str], workloads.Workload],
) -> None:
    workload = workload_of(case.model)
    benchmark.group = "throughput"

    report = benchmark.pedantic(
        surgery.compare_throughput,
        args=(workload.model, workload.inputs),
        kwargs={
            "example_kwargs": workload.kwargs,
            "compile": case.compiled,
            "device": settings.device,
            "dtype": case.dtype,
            "seconds": settings.seconds * workload.timing_scale,
            "rounds": settings.rounds * workload.timing_scale,
            # Eager: the random-op count has run the model once already.
            # Compiled: the first forward compiles, the second is the estimate.
            "warmup": 2 if case.compiled else 1,
        },
        rounds=1,
        iterations=1,
    )

    benchmark.extra_info.update(
        {
            "kind": "throughput",
            "workload": case.model,
            "shape": workload.shape,
            "report": report.to_dict(),
            "targets": targets_of(report),
        }
    )
