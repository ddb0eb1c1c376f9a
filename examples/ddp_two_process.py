"""Two-process DistributedDataParallel training of a gated model, on CPU.

Each process builds the same model, gates its dropout, wraps it in
``DistributedDataParallel`` (backend gloo) and trains on its own shard of the
data while a schedule switches the embedding dropout off after a few steps
and a cosine schedule fades the rest. After every step the processes gather
their sites' settings and check that they agree; at the end they check that
the weights agree too, and rank 0 saves a checkpoint that loads into the
original, ungated class.

Run: python examples/ddp_two_process.py
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import surgery
from surgery.demo import DemoTransformer, demo_inputs

STEPS = 6


def settings(model: torch.nn.Module) -> list[tuple[str, str | None, float]]:
    return [(site.path, site.mode, site.p) for site in surgery.find(model)]


def worker(rank: int, world: int, port: int, checkpoint: str) -> None:
    torch.set_num_threads(1)  # two processes share the CPU cores
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DemoTransformer()
    surgery.gate(model)
    schedules = [
        surgery.EarlyDropout(model, "embed_dropout", p=0.1, until=3),
        surgery.CosineDropout(
            model, exclude="embed_dropout", start=0.2, end=0.0, steps=STEPS
        ),
    ]
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)

    torch.manual_seed(1 + rank)  # each rank draws its own dropout masks
    tokens = demo_inputs(batch=4, seed=rank)
    targets = torch.tensor([0, 1, 2, 3])
    for step in range(STEPS):
        loss = torch.nn.functional.cross_entropy(ddp(tokens), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for schedule in schedules:
            schedule.step()

        gathered: list[object] = [None] * world
        dist.all_gather_object(gathered, settings(model))
        agree = all(other == gathered[0] for other in gathered)
        if rank == 0:
            p = schedules[1].get_last_p()["blocks.0.mlp.2"]
            embed = schedules[0].get_last_p()["embed_dropout"]
            print(
                f"step {step}: loss {loss.item():.3f}  embed p={embed:.2f}  "
                f"mlp p={p:.3f}  gates identical on both ranks: {agree}"
            )

    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    copies = [torch.empty_like(weights) for _ in range(world)]
    dist.all_gather(copies, weights)
    if rank == 0:
        print(f"weights identical on both ranks: {torch.equal(copies[0], copies[1])}")
        torch.save(model.state_dict(), checkpoint)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "gated.pt")
        mp.spawn(worker, args=(2, free_port(), checkpoint), nprocs=2)

        # The gated model's checkpoint has the original keys: load it plainly.
        plain = DemoTransformer()
        result = plain.load_state_dict(torch.load(checkpoint, weights_only=True))
        clean = not result.missing_keys and not result.unexpected_keys
        print(f"checkpoint loads into the original class with the same keys: {clean}")


if __name__ == "__main__":
    main()
