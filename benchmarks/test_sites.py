"""What find plus strip costs: a curve over the number of sites, and Llama-7B.

Targets: 10,000 sites in under 100 ms, growing linearly from 10; a Llama-7B
shaped model on the meta device in under a second with no memory allocated
for its parameters. A fresh model is built for every round, outside the
timing, since strip changes it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
import torch
import workloads
from support import rss_bytes
from torch import nn

import surgery

SIZES = (10, 100, 1_000, 3_000, 10_000)


def _find_and_strip(model: nn.Module, split: list[tuple[float, float, int]]) -> None:
    start = time.perf_counter()
    found = surgery.find(model)
    middle = time.perf_counter()
    surgery.strip(model)
    split.append((middle - start, time.perf_counter() - middle, len(found)))


@pytest.mark.parametrize("sites", SIZES)
def test_find_and_strip_curve(benchmark: Any, sites: int) -> None:
    split: list[tuple[float, float, int]] = []
    benchmark.group = "find+strip"

    benchmark.pedantic(
        _find_and_strip,
        setup=lambda: ((workloads.synthetic(sites), split), {}),
        rounds=3 if sites >= 3_000 else 10,
        iterations=1,
    )

    assert {found for _, _, found in split} == {sites}
    benchmark.extra_info.update(
        {
            "kind": "find_strip",
            "sites": sites,
            "modules": 3 * sites + 1,
            "find_s": statistics.median(find for find, _, _ in split),
            "strip_s": statistics.median(strip for _, strip, _ in split),
        }
    )


def test_find_and_strip_llama_7b_on_meta(benchmark: Any) -> None:
    split: list[tuple[float, float, int]] = []
    models: list[nn.Module] = []
    memory: list[int] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        models.append(workloads.llama_7b_on_meta())
        memory.append(rss_bytes())
        return (models[-1], split), {}

    def measured(model: nn.Module, into: list[tuple[float, float, int]]) -> None:
        _find_and_strip(model, into)
        memory[-1] = rss_bytes() - memory[-1]

    cuda_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    benchmark.group = "find+strip"
    benchmark.pedantic(measured, setup=setup, rounds=3, iterations=1)

    model = models[-1]
    parameters = sum(param.numel() for param in model.parameters())
    assert all(param.is_meta for param in model.parameters())
    sites = surgery.find(model)
    assert {site.state for site in sites} == {"stripped"}
    benchmark.extra_info.update(
        {
            "kind": "meta_llama",
            "parameters": parameters,
            "sites": len(sites),
            "site_kinds": sorted({site.kind for site in sites}),
            "all_parameters_on_meta": True,
            "rss_growth_bytes": max(memory),
            "cuda_allocated_growth_bytes": (
                torch.cuda.memory_allocated() - cuda_before
                if torch.cuda.is_available()
                else None
            ),
            "find_s": statistics.median(find for find, _, _ in split),
            "strip_s": statistics.median(strip for _, strip, _ in split),
        }
    )
