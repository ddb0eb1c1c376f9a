"""find(example_inputs=...): one observed forward, every random op accounted for."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import surgery
from surgery import count_random_ops


def _helper_dropout(x: Tensor, training: bool) -> Tensor:
    return F.dropout(x, 0.3, training)


class Layer(nn.Module):
    """Dropout hidden in a helper function, and batch-norm statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: Tensor) -> Tensor:
        return _helper_dropout(self.norm(self.lin(x)), self.training)


class Encoder(nn.Module):
    """LayerDrop and noise: randomness that is not dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])
        self.layerdrop = 0.0
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            if self.training and torch.rand([]) < self.layerdrop:
                continue
            x = layer(x)
        return self.head(x + 0.01 * torch.randn_like(x))


@pytest.fixture
def model() -> Encoder:
    return Encoder().eval()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(4, 8)


def test_static_find_does_not_pretend_to_see_helper_calls(model: Encoder) -> None:
    assert [site.path for site in surgery.find(model)] == ["head.1"]


def test_observed_forward_finds_calls_and_other_randomness(
    model: Encoder, x: Tensor
) -> None:
    sites = {site.path: site for site in surgery.find(model, example_inputs=x)}

    assert sites["layers.0:dropout#0"].kind == "functional"
    assert sites["layers.0:dropout#0"].p == 0.3
    assert sites["layers.1:dropout#0"].mechanism.startswith("eager intercept")
    assert sites["head.1"].kind == "module"
    assert sites[":rand"].kind == "unclassified"
    assert sites[":randn_like"].kind == "unclassified"
    assert "aten.rand x2" in sites[":rand"].mechanism


def test_observing_changes_nothing(model: Encoder, x: Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()

    surgery.find(model, example_inputs=x)

    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_strip_with_inputs_removes_dropout_and_says_what_it_left(
    model: Encoder, x: Tensor
) -> None:
    with pytest.warns(surgery.SurgeryWarning, match=r"not dropout.*:rand") as caught:
        surgery.strip(model, example_inputs=x)
    assert caught[0].filename == __file__

    left = count_random_ops(model.train(), x).by_op()
    assert left == {"aten.rand": 2, "aten.randn_like": 1}


def test_randomness_that_is_not_dropout_is_never_rewritten(
    model: Encoder, x: Tensor
) -> None:
    with pytest.raises(surgery.SiteError, match=r":randn_like.*not dropout"):
        surgery.strip(model, ":randn*", example_inputs=x)
    assert surgery.find(model)[0].state == "original"


def test_dropout_free_model_observes_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert surgery.find(model, example_inputs=torch.ones(2, 4)) == []


def test_keyword_inputs_are_passed_as_keywords() -> None:
    class Keywords(nn.Module):
        def forward(self, *, tokens: Tensor) -> Tensor:
            return F.dropout(tokens, 0.5, self.training)

    model = nn.Sequential()
    model.add_module("inner", Keywords())
    sites = surgery.find(model.inner, example_inputs={"tokens": torch.ones(3)})
    assert [site.path for site in sites] == [":dropout#0"]


def test_every_random_op_is_attributed_to_one_site(model: Encoder, x: Tensor) -> None:
    total = count_random_ops(model.train(), x).count

    sites = surgery.find(model, example_inputs=x)

    assert sum(site.random_ops or 0 for site in sites) == total
    assert {site.path: site.random_ops for site in sites} == {
        "layers.0:dropout#0": 1,
        "layers.1:dropout#0": 1,
        "head.1": 1,
        ":rand": 2,
        ":randn_like": 1,
    }
    assert all(site.random_ops is None for site in surgery.find(model))


def test_draws_of_float_attributes_inside_fused_kernels_are_theirs() -> None:
    model = nn.Sequential(nn.LSTM(4, 4, num_layers=3, dropout=0.2))
    x = torch.randn(5, 2, 4)

    (site,) = surgery.find(model, example_inputs=x)

    assert site.path == "0.dropout"
    assert site.random_ops == count_random_ops(model.train(), x).count == 2
