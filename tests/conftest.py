"""Shared fixtures: tiny models and a deterministic RNG for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every test starts from the same global RNG state and leaves it as found."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """No compiled graph or guard outlives the test that compiled it."""
    yield
    torch._dynamo.reset()


# The vision zoo needs timm and torchvision, a multi-GB install: it runs only
# through its own command (see the README), never in the default test run.
collect_ignore = [] if os.environ.get("SURGERY_ZOO") == "1" else ["zoo"]
