"""Monte Carlo dropout: how sure is a small classifier, and where is it not?

A small MLP learns two Gaussian blobs. At inference it is in eval mode, and
``surgery.mc_sample`` draws many stochastic predictions with only its
dropout sites switched on. The spread of those predictions is near zero at
the blob centres and large where the classes meet and off the data (though
MC dropout, like the network itself, can stay overconfident very far away).
Afterwards the model is exactly as it was: eval mode, same dropout
settings, same random generator state.

Run: python examples/mc_uncertainty.py
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

import surgery


def blobs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two Gaussian blobs in 2-D, centred at (-2, 0) and (2, 0)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])[labels]
    return centres + 0.7 * torch.randn(n, 2, generator=generator), labels


def train(model: nn.Module, x: Tensor, y: Tensor) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(2, 64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 2),
    )
    train(model, *blobs(512, seed=1))
    model.eval()

    points = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 6.0]])
    names = ["blob A centre", "blob B centre", "between blobs", "far above"]
    before = (surgery.find(model), torch.get_rng_state())

    samples = surgery.mc_sample(model, points, 200, batched=True, seed=0)
    probs = samples.softmax(dim=-1)  # (200, points, classes)
    mean = surgery.mc_mean(probs)
    spread = surgery.mc_variance(probs).sqrt()
    print("point           p(class B)  MC std")
    for name, p, s in zip(names, mean[:, 1], spread[:, 1], strict=True):
        print(f"{name:<15} {p.item():10.3f}  {s.item():6.3f}")

    timings = {}
    for batched in (False, True):
        start = time.perf_counter()
        surgery.mc_sample(model, points, 200, batched=batched, seed=0)
        timings[batched] = time.perf_counter() - start
    print(
        f"200 samples: looped {timings[False] * 1e3:.1f} ms, "
        f"batched {timings[True] * 1e3:.1f} ms"
    )

    unchanged = surgery.find(model) == before[0] and torch.equal(
        torch.get_rng_state(), before[1]
    )
    print(
        f"model still in eval mode: {not model.training}; sites and RNG unchanged: "
        f"{unchanged}"
    )


if __name__ == "__main__":
    main()
