"""Monte Carlo dropout: ``n`` looped forwards against one forward on a repeated batch.

For each workload, :func:`surgery.mc_sample` draws ``N`` samples of one small
batch, looped and batched; pytest-benchmark groups the two so its table shows
the ratio. Small inference batches are where MC dropout is used and where
looping pays the per-forward overhead ``N`` times.

    .venv/bin/python -m pytest benchmarks/test_bench_mc.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import workloads
from support import Settings
from torch import Tensor, nn

import surgery
from surgery.demo import build_demo_model, demo_inputs

N = 32


def _demo(device: torch.device) -> tuple[nn.Module, Tensor, str]:
    batch = 4 if device.type == "cpu" else 64
    shape = f"demo transformer (2 x 32), batch {batch} x 8"
    return build_demo_model(), demo_inputs(batch=batch), shape


def _mlp(device: torch.device) -> tuple[nn.Module, Tensor, str]:
    torch.manual_seed(0)
    model = workloads.MLP(features=256, hidden=1024, depth=4, classes=10, dropout=0.1)
    batch = 16 if device.type == "cpu" else 256
    features = torch.randn(batch, 256, generator=torch.Generator().manual_seed(4))
    return model, features, f"MLP 256 -> 4 x 1024 -> 10, batch {batch}"


WORKLOADS: dict[str, Callable[[torch.device], tuple[nn.Module, Tensor, str]]] = {
    "demo": _demo,
    "mlp": _mlp,
}


@pytest.mark.parametrize("batched", [False, True], ids=["looped", "batched"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_mc_sample(
    benchmark: Any, settings: Settings, name: str, batched: bool
) -> None:
    model, inputs, shape = WORKLOADS[name](settings.device)
    model = model.to(settings.device).eval()
    inputs = inputs.to(settings.device)
    synchronize = (
        torch.cuda.synchronize if settings.device.type == "cuda" else (lambda: None)
    )

    def draw() -> Tensor:
        samples = surgery.mc_sample(model, inputs, N, batched=batched, seed=0)
        synchronize()
        return samples

    benchmark.group = f"mc_sample {name}"
    benchmark.extra_info.update({"workload": shape, "samples": N, "batched": batched})
    samples = benchmark.pedantic(draw, rounds=settings.rounds, warmup_rounds=1)
    assert samples.shape[:2] == (N, inputs.shape[0])
