"""Dropout on in some branches and off in others, changing with the epoch.

A two-branch classifier trains in a plain PyTorch loop. Each branch gets its
own schedule: the wide branch starts with strong dropout that fades out, the
narrow branch only gets dropout late in training (to fight late overfitting),
and the classifier head follows the stochastic-depth rule across its layers.
Halfway through, the run is checkpointed and resumed into a fresh model, and
the schedules continue exactly where they stopped.

Run: python examples/branch_schedule.py
"""

from __future__ import annotations

import io

import torch
from torch import Tensor, nn

import surgery


class TwoBranchNet(nn.Module):
    """Two feature branches, concatenated, then a small classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1))
        self.narrow = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Sequential(
            nn.Linear(72, 32),
            nn.Dropout(0.1),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.Dropout(0.1),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(32, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([self.wide(x), self.narrow(x)], dim=1))


def make_schedules(model: nn.Module) -> list[surgery.DropoutSchedule]:
    """One schedule per branch; their selections must not overlap."""
    return [
        surgery.CosineDropout(model, "wide.*", start=0.5, end=0.0, steps=6),
        surgery.LateDropout(model, "narrow.*", p=0.3, start=4),
        surgery.DepthDropout(model, "head.*", max_p=0.2),
    ]


def data(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=generator)
    y = x[:, :3].argmax(dim=1)
    return x, y


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> float:
    model.train()
    total = 0.0
    for batch in torch.arange(len(x)).split(32):
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)


def describe(model: nn.Module) -> str:
    """Each branch's effective drop probabilities, as the sites report them."""
    parts = []
    for branch in ("wide", "narrow", "head"):
        rates = [
            0.0 if site.mode == "off" else site.p
            for site in surgery.find(model, f"{branch}.*")
        ]
        parts.append(f"{branch}=" + "/".join(f"{p:.2f}" for p in rates))
    return "  ".join(parts)


def main() -> None:
    torch.manual_seed(0)
    x, y = data(seed=1)
    model = TwoBranchNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedules = make_schedules(model)

    checkpoint = io.BytesIO()
    for epoch in range(8):
        loss = train_epoch(model, optimizer, x, y)
        print(f"epoch {epoch}  loss {loss:.3f}  {describe(model)}")
        for schedule in schedules:
            schedule.step()
        if epoch == 3:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedules": [s.state_dict() for s in schedules],
                    "rng": torch.get_rng_state(),
                },
                checkpoint,
            )
    finished = {name: p.detach().clone() for name, p in model.named_parameters()}

    # Resume from the epoch-3 checkpoint into fresh objects.
    checkpoint.seek(0)
    state = torch.load(checkpoint, weights_only=True)
    resumed = TwoBranchNet()
    resumed.load_state_dict(state["model"])
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    optimizer.load_state_dict(state["optimizer"])
    schedules = make_schedules(resumed)
    for schedule, saved in zip(schedules, state["schedules"], strict=True):
        schedule.load_state_dict(saved)
    torch.set_rng_state(state["rng"])
    print(f"resumed at step {schedules[0].last_step}: {describe(resumed)}")
    for _ in range(4, 8):
        train_epoch(resumed, optimizer, x, y)
        for schedule in schedules:
            schedule.step()

    same = all(torch.equal(p, finished[name]) for name, p in resumed.named_parameters())
    print(f"resumed run ends with the same weights as the uninterrupted one: {same}")


if __name__ == "__main__":
    main()
