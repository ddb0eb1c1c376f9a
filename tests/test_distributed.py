"""Gated and stripped models under DDP and FSDP2: two CPU processes, gloo.

Each test spawns two processes (a few seconds each), so every scenario that
can share a process group runs inside one spawn; the workers assert, and a
failed assertion in either rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import surgery
from surgery.demo import DemoTransformer, demo_inputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(),
        reason="torch.distributed with gloo is not available in this build",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(worker: Callable[..., None], *args: Any) -> None:
    mp.spawn(worker, args=(_free_port(), *args), nprocs=WORLD, join=True)


def _join(rank: int, port: int) -> None:
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )


def _leave() -> None:
    # Both ranks finish every collective before either tears gloo down: a rank
    # that leaves while the other still talks to it can abort the process.
    dist.barrier()
    dist.destroy_process_group()


def _settings(model: nn.Module) -> list[tuple[str, str, str | None, float]]:
    return [(s.path, s.state, s.mode, s.p) for s in surgery.find(model)]


def _same_on_every_rank(value: object, what: str) -> None:
    gathered: list[object] = [None] * WORLD
    dist.all_gather_object(gathered, value)
    assert all(other == gathered[0] for other in gathered), f"{what}: {gathered}"


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(
    model: nn.Module,
    rank: int,
    steps: int = STEPS,
    schedules: tuple[surgery.DropoutSchedule, ...] = (),
    watch: nn.Module | None = None,
) -> list[float]:
    """A few SGD steps on this rank's data; checks gates agree after each."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tokens = demo_inputs(batch=4, seed=rank)
    targets = torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(tokens), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for schedule in schedules:
            schedule.step()
        if watch is not None:
            _same_on_every_rank(_settings(watch), "site settings")
        losses.append(loss.item())
    return losses


def _random_ops_in(model: nn.Module, prefix: str) -> int:
    tokens = demo_inputs()
    with surgery.RandomOpCounter(model) as counter:
        model(tokens)
    return sum(n for path, n in counter.by_module().items() if path.startswith(prefix))


def _check_reproduces_original(rank: int) -> None:
    """With the same seed per rank, gates that follow training change nothing."""

    def run(rewrite: Callable[[nn.Module], Any]) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = DemoTransformer()
        kept = rewrite(model)
        torch.manual_seed(100 + rank)  # a different stream on each rank
        losses = _train(DistributedDataParallel(model), rank, steps=4)
        del kept
        return losses, _flat_parameters(model)

    original = run(lambda model: None)
    for name, rewrite in [
        ("gate", surgery.gate),
        ("constant schedules at the original rates", _original_rates_schedule),
    ]:
        losses, weights = run(rewrite)
        assert losses == original[0], f"{name}, rank {rank}"
        assert torch.equal(weights, original[1]), f"{name}, rank {rank}"


def _original_rates_schedule(model: nn.Module) -> list[surgery.DropoutSchedule]:
    return [
        surgery.ConstantDropout(model, site.path, p=site.p, mode="train")
        for site in surgery.find(model)
    ]


def _ddp_worker(rank: int, port: int) -> None:
    _join(rank, port)
    torch.manual_seed(0)

    # Gated before wrapping, with schedules on disjoint selections.
    model = DemoTransformer()
    surgery.gate(model)
    schedules = (
        surgery.LinearDropout(model, "blocks.*", start=0.3, end=0.0, steps=STEPS),
        surgery.EarlyDropout(model, exclude="blocks.*", p=0.2, until=1),
    )
    ddp = DistributedDataParallel(model)
    _train(ddp, rank, schedules=schedules, watch=model)
    _same_on_every_rank(_flat_parameters(model).tolist(), "weights after DDP")
    assert {s.p for s in surgery.find(model, "blocks.*")} == {0.0}

    # Gated after wrapping: paths go through the wrapper's "module." prefix.
    torch.manual_seed(0)
    wrapped = DistributedDataParallel(DemoTransformer())
    surgery.set_dropout(wrapped, "module.blocks.*", mode="off")
    late = surgery.LateDropout(wrapped, exclude="module.blocks.*", p=0.3, start=2)
    _train(wrapped, rank, schedules=(late,), watch=wrapped)
    assert _random_ops_in(wrapped.module, "blocks") == 0
    assert _random_ops_in(wrapped.module, "embed_dropout") == 1

    # Stripped, then wrapped: nothing random runs and every parameter trains.
    torch.manual_seed(0)
    stripped = surgery.strip(DemoTransformer())
    _train(DistributedDataParallel(stripped), rank)
    assert surgery.count_random_ops(stripped, demo_inputs()).count == 0

    # A gated checkpoint loads into the original class, and back.
    plain = DemoTransformer()
    plain.load_state_dict(model.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            plain.state_dict().values(), model.state_dict().values(), strict=True
        )
    )
    fresh = surgery.gate(DemoTransformer())
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(_flat_parameters(fresh), _flat_parameters(model))

    _check_reproduces_original(rank)
    _leave()


def test_ddp_trains_gated_and_stripped_models_and_reproduces_the_original() -> None:
    _spawn(_ddp_worker)


def _fsdp_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    _join(rank, port)
    full = StateDictOptions(full_state_dict=True)  # every rank gets every tensor

    def shard(model: nn.Module) -> nn.Module:
        for block in model.blocks:  # type: ignore[union-attr]
            fully_shard(block)
        fully_shard(model)
        return model

    # Gated before sharding, with a schedule; the gates agree on both ranks.
    torch.manual_seed(0)
    model = surgery.gate(DemoTransformer())
    depth = surgery.DepthDropout(model, "*drop_path", max_p=0.3)
    linear = surgery.LinearDropout(
        model, exclude="*drop_path", start=0.2, end=0.0, steps=2
    )
    shard(model)
    _train(model, rank, schedules=(depth, linear), watch=model)

    # Gated after sharding, and stripped before it: both train.
    torch.manual_seed(0)
    after = shard(DemoTransformer())
    surgery.set_dropout(after, "blocks.0.*", mode="off", p=0.5)
    _train(after, rank, watch=after)
    assert _random_ops_in(after, "blocks.0") == 0
    torch.manual_seed(0)
    stripped = shard(surgery.strip(DemoTransformer()))
    _train(stripped, rank)
    assert surgery.count_random_ops(stripped, demo_inputs()).count == 0

    # torch.distributed.checkpoint of the gated, sharded model loads into
    # the original class, unsharded.
    expected = get_model_state_dict(model, options=full)
    dcp.save(get_model_state_dict(model), checkpoint_id=os.path.join(folder, "gated"))
    plain = DemoTransformer()
    loaded = plain.state_dict()
    dcp.load(loaded, checkpoint_id=os.path.join(folder, "gated"))
    plain.load_state_dict(loaded)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, expected[key]), key

    # And back: the original's checkpoint into a gated model built on meta,
    # sharded, then materialised, as for a model too large for one process.
    dcp.save(plain.state_dict(), checkpoint_id=os.path.join(folder, "plain"))
    with torch.device("meta"):
        big = DemoTransformer()
    surgery.gate(big)
    shard(big)
    big.to_empty(device="cpu")
    sharded = get_model_state_dict(big)
    dcp.load(sharded, checkpoint_id=os.path.join(folder, "plain"))
    set_model_state_dict(big, sharded)
    for key, value in get_model_state_dict(big, options=full).items():
        assert torch.equal(value, expected[key]), key
    _train(big, rank, steps=1)
    _leave()


def test_fsdp2_trains_gated_and_stripped_models_and_checkpoints(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")
    _spawn(_fsdp_worker, str(tmp_path))


def test_ddp_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ddp_two_process.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "gates identical on both ranks: False" not in done.stdout
    assert "weights identical on both ranks: True" in done.stdout
    assert "with the same keys: True" in done.stdout
