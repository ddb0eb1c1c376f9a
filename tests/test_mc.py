"""Monte Carlo dropout: distribution, what drops, and what is left as it was."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import surgery
from surgery import _mc
from surgery.demo import build_demo_model, demo_inputs

ROOT = Path(__file__).resolve().parents[1]

# How many standard errors an estimate may stray before a test calls it wrong:
# about one failure in 10^9 runs for a normal estimate.
Z = 6.0


def two_point_moments(p: float) -> tuple[float, float]:
    """Variance and fourth central moment of inverted dropout on a one.

    The output is 0 with probability p and 1 / (1 - p) otherwise; its mean
    is 1.
    """
    kept = 1.0 / (1.0 - p)
    variance = p * 1.0 + (1 - p) * (kept - 1) ** 2
    fourth = p * 1.0 + (1 - p) * (kept - 1) ** 4
    return variance, fourth


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_single_dropout_on_ones_has_the_known_mean_and_variance(
    p: float, batched: bool
) -> None:
    model = nn.Sequential(nn.Dropout(p)).eval()
    x = torch.ones(8, 64)
    n = 400

    samples = surgery.mc_sample(model, x, n, batched=batched, seed=1)
    assert samples.shape == (n, 8, 64)

    elements = x.numel()
    variance, fourth = two_point_moments(p)
    assert variance == pytest.approx(p / (1 - p))
    mean_error = math.sqrt(variance / (n * elements))
    assert surgery.mc_mean(samples).mean().item() == pytest.approx(
        1.0, abs=Z * mean_error
    )

    # The unbiased sample variance of n draws has variance
    # mu4 / n - sigma^4 (n - 3) / (n (n - 1)).
    spread = fourth / n - variance**2 * (n - 3) / (n * (n - 1))
    variance_error = math.sqrt(spread / elements)
    estimate = surgery.mc_variance(samples).mean().item()
    assert estimate == pytest.approx(variance, abs=Z * variance_error)


def test_looped_and_batched_agree_in_distribution_on_the_demo_model() -> None:
    model = build_demo_model().eval()
    tokens = demo_inputs(batch=3)
    n = 300

    looped = surgery.mc_sample(model, tokens, n, seed=2)
    batched = surgery.mc_sample(model, tokens, n, batched=True, seed=3)
    assert looped.shape == batched.shape == (n, 3, 4)
    assert not torch.equal(looped, batched)

    # Per output, the difference of the two means in standard errors.
    error = ((surgery.mc_variance(looped) + surgery.mc_variance(batched)) / n).sqrt()
    z = (surgery.mc_mean(looped) - surgery.mc_mean(batched)).abs() / error
    assert z.max().item() < Z
    ratio = surgery.mc_variance(looped) / surgery.mc_variance(batched)
    # Variance ratios of 300 draws: outside [0.5, 2] is far beyond 6 sigma.
    assert ratio.min().item() > 0.5
    assert ratio.max().item() < 2.0


def test_the_model_sites_modes_and_rng_are_as_before() -> None:
    model = build_demo_model()
    surgery.strip(model, "blocks.1.*")
    surgery.set_dropout(model, "blocks.0.mlp.*", mode="off", p=0.4)
    surgery.set_dropout(model, "embed_dropout", mode="on")
    model.train()
    model.blocks[0].eval()  # a mix of flags, to see each one put back
    flags = {name: module.training for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    sites = surgery.find(model)
    rng = torch.get_rng_state()

    first = surgery.mc_sample(model, demo_inputs(), 5)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert dict(model.named_modules()) == modules  # the very same objects
    assert surgery.find(model) == sites
    assert torch.equal(torch.get_rng_state(), rng)

    # The generator was put back, so the same call gives the same samples.
    assert torch.equal(surgery.mc_sample(model, demo_inputs(), 5), first)
    seeded = surgery.mc_sample(model, demo_inputs(), 5, seed=7)
    assert torch.equal(surgery.mc_sample(model, demo_inputs(), 5, seed=7), seeded)
    assert not torch.equal(surgery.mc_sample(model, demo_inputs(), 5, seed=8), seeded)
    assert torch.equal(torch.get_rng_state(), rng)


def test_only_the_selected_sites_drop() -> None:
    model = build_demo_model().train()
    surgery.set_dropout(model, "embed_dropout", mode="on")  # on, but not selected
    tokens = demo_inputs()

    with surgery.RandomOpCounter(model) as counter:
        surgery.mc_sample(model, tokens, 2, select="blocks.1.mlp.*")
    assert counter.by_module() == {"blocks.1.mlp.2": 2}
    assert surgery.find(model, "embed_dropout")[0].mode == "on"


def test_a_stripped_site_drops_while_selected_and_is_stripped_after() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    surgery.strip(model)
    x = torch.ones(2, 4)

    samples = surgery.mc_sample(model, x, 20, seed=0)
    assert (samples == 0).any()
    assert isinstance(model[1], surgery.StrippedDropout)


def test_exclude_and_an_empty_selection() -> None:
    model = build_demo_model()
    tokens = demo_inputs()
    with surgery.RandomOpCounter(model) as counter:
        surgery.mc_sample(model, tokens, 1, exclude="blocks.*")
    assert counter.count > 0
    assert all(not path.startswith("blocks") for path in counter.by_module())

    with pytest.raises(surgery.SelectionError, match="left no dropout site"):
        surgery.mc_sample(model, demo_inputs(), 1, select="blocks.*", exclude="*")
    with pytest.raises(surgery.SelectionError, match="Closest paths"):
        surgery.mc_sample(model, demo_inputs(), 1, select="encoder.*")


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor, scale: float = 1.0, *, bias: Tensor) -> dict[str, Any]:
        return {"logits": self.dropout(x) * scale + bias, "note": "not a tensor"}


@pytest.mark.parametrize("batched", [False, True, "auto"])
def test_positional_and_keyword_inputs_and_an_output_picker(batched: Any) -> None:
    model = _TwoInputs()
    x, bias = torch.ones(3, 4), torch.full((3, 4), 10.0)

    by_keyword = surgery.mc_sample(
        model,
        {"x": x, "scale": 2.0, "bias": bias},
        6,
        batched=batched,
        output=lambda out: out["logits"],
        seed=0,
    )
    assert by_keyword.shape == (6, 3, 4)
    assert set(by_keyword.unique().tolist()) <= {10.0, 14.0}

    with pytest.raises(surgery.SurgeryError, match="output="):
        surgery.mc_sample(model, {"x": x, "bias": bias}, 2, batched=batched)


def test_batched_refuses_inputs_and_outputs_it_cannot_split() -> None:
    model = nn.Sequential(nn.Dropout(0.5))
    with pytest.raises(surgery.SurgeryError, match="share their first"):
        surgery.mc_sample(
            _TwoInputs(),
            {"x": torch.ones(3, 4), "bias": torch.ones(4)},
            2,
            batched=True,
        )

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = nn.Dropout(0.5)

        def forward(self, x: Tensor) -> Tensor:
            return self.dropout(x).sum(dim=0)

    with pytest.raises(surgery.SurgeryError, match="batched along dimension 0"):
        surgery.mc_sample(Pooled(), torch.ones(3, 4), 2, batched=True)
    assert surgery.mc_sample(model, torch.ones(3, 4), 2).shape == (2, 3, 4)


def test_auto_loops_when_the_inputs_cannot_be_batched() -> None:
    model = nn.Sequential(nn.Dropout(0.5))
    scalar = torch.tensor(1.0)
    samples = surgery.mc_sample(model, scalar, 50, batched="auto", seed=0)
    assert samples.shape == (50,)
    assert set(samples.unique().tolist()) == {0.0, 2.0}


class _SmallMemory(nn.Module):
    """Runs out of memory on batches larger than ``limit`` rows."""

    def __init__(self, limit: int, error: type[Exception]) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.limit = limit
        self.error = error
        self.batches: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 1.00 GiB")
        self.batches.append(x.shape[0])
        return self.dropout(x)


def test_auto_halves_the_repeat_when_memory_runs_out() -> None:
    model = _SmallMemory(limit=12, error=torch.OutOfMemoryError)
    samples = surgery.mc_sample(model, torch.ones(3, 2), 10, batched="auto", seed=0)

    assert samples.shape == (10, 3, 2)
    assert model.batches == [6, 6, 6, 6, 6]  # 10 -> 5 -> 2 repeats per forward
    assert model.training  # as it was before the call


def test_auto_passes_on_errors_that_are_not_about_memory() -> None:
    model = _SmallMemory(limit=3, error=ValueError)
    with pytest.raises(ValueError, match="out of memory"):
        surgery.mc_sample(model, torch.ones(3, 2), 4, batched="auto")
    with pytest.raises(torch.OutOfMemoryError):
        surgery.mc_sample(
            _SmallMemory(limit=3, error=torch.OutOfMemoryError),
            torch.ones(3, 2),
            4,
            batched=True,
        )


def test_a_failing_forward_leaves_the_model_as_it_was() -> None:
    model = _SmallMemory(limit=0, error=RuntimeError).train()
    sites = surgery.find(model)
    with pytest.raises(RuntimeError):
        surgery.mc_sample(model, torch.ones(3, 2), 4)
    assert model.training
    assert surgery.find(model) == sites
    assert isinstance(model.dropout, nn.Dropout)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n": 0}, "n must be"), ({"n": 2, "batched": "yes"}, "batched must be")],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    model = nn.Sequential(nn.Dropout(0.5))
    with pytest.raises(ValueError, match=message):
        surgery.mc_sample(model, torch.ones(2), **kwargs)
    with pytest.raises(TypeError, match="inputs must be"):
        surgery.mc_sample(model, "text", 2)  # type: ignore[arg-type]


def test_mean_and_variance_helpers_check_their_input() -> None:
    samples = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(surgery.mc_mean(samples), torch.tensor([2.0, 4.0]))
    assert torch.equal(surgery.mc_variance(samples), torch.tensor([2.0, 8.0]))
    assert torch.equal(
        surgery.mc_variance(samples, correction=0), torch.tensor([1.0, 4.0])
    )
    with pytest.raises(ValueError, match="at least 2"):
        surgery.mc_variance(samples[:1])
    with pytest.raises(ValueError, match="shape"):
        surgery.mc_mean(torch.tensor(1.0))


def test_docstring_examples_run() -> None:
    results = doctest.testmod(_mc, extraglobs={"nn": nn, "torch": torch})
    assert results.attempted > 0
    assert results.failed == 0


def test_mc_uncertainty_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mc_uncertainty.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sites and RNG unchanged: True" in done.stdout
